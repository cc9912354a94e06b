"""Captions of benchmark samples: what the data gives (`txt` lines, json `caption` / `captions`, or a
scene's `labels.description`, synthetic-world's canonical caption from its exact ground truth).

    captions_of(sample)               reference captions (retrieval, captioning)
    relation_captions(sample, mode)   caption 0 true, the others its perturbations (caption-order tasks)
"""
from __future__ import annotations

from typing import Any

from benchmarks.data import Sample, SampleProblem

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def captions_of(sample: Sample) -> list[str]:
    """Reference captions: `txt` (one per line, clip_benchmark retrieval shards), json `caption(s)`, or
    the canonical description of a synthetic-world scene; [] when there is none."""
    if "txt" in sample.fields:
        try:
            text = sample.fields["txt"].decode("utf-8-sig")      # as training reads it (vlm.data.decode)
        except UnicodeDecodeError as e:
            raise SampleProblem("bad_text", sample, f"its txt caption is not UTF-8 (byte {e.start})") from None
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    meta = sample.meta()
    caps = meta.get("captions")
    if isinstance(caps, list):        # every one a text, or none used (`[null, 5]` was "None", "5"); blank ones dropped
        return [c for c in caps if c.strip()] if all(isinstance(c, str) for c in caps) else []
    if isinstance(meta.get("caption"), str):     # a blank caption is none (it was scored, or ended an open_clip run)
        return [meta["caption"]] if meta["caption"].strip() else []
    labels = meta.get("labels")
    desc = labels.get("description") if isinstance(labels, dict) else None
    return [desc] if isinstance(desc, str) and desc.strip() else []


def _texts(items: list) -> bool:
    """Every item a non-blank string."""
    return all(isinstance(c, str) and c.strip() for c in items)


def _name(o: dict[str, Any]) -> str:
    return f"{o['color']} {o['shape']}"


def relation_captions(sample: Sample, mode: str) -> list[str] | None:
    """Caption 0 correct, the rest wrong; None when the sample does not support the mode.

    given:     json `captions` as shipped (ARO / SugarCrepe style shards)
    spatial:   'the A is REL the B' vs the opposite relation vs the objects swapped (ARO VG-Relation)
    attribute: 'a c1 s1 and a c2 s2' vs the colours swapped between the shapes (ARO VG-Attribution)
    """
    meta = sample.meta()
    if mode == "given":
        caps = meta.get("captions")
        return list(caps) if isinstance(caps, list) and len(caps) >= 2 and _texts(caps) else None
    try:
        return _built_captions(meta, mode)
    except (KeyError, IndexError, TypeError, AttributeError) as e:     # labels not as synthetic-world writes them
        raise SampleProblem("bad_labels", sample, f"its json 'labels' do not give the objects mode '{mode}' needs "
                                                  f"({type(e).__name__}: {e})") from None


def _built_captions(meta: dict[str, Any], mode: str) -> list[str] | None:
    labels = meta.get("labels") or {}
    objs = labels.get("objects") or []
    if mode == "spatial":
        if "true_relation" not in labels:
            return None
        a, b, rel = objs[labels["a"]], objs[labels["b"]], labels["true_relation"]
        return [f"the {_name(a)} is {rel} the {_name(b)}.", f"the {_name(a)} is {OPPOSITE[rel]} the {_name(b)}.",
                f"the {_name(b)} is {rel} the {_name(a)}."]
    if mode == "attribute":
        if len(objs) < 2:
            return None
        a, b = objs[0], objs[1]
        if a["color"] == b["color"] or a["shape"] == b["shape"]:
            return None
        return [f"a {a['color']} {a['shape']} and a {b['color']} {b['shape']}.",
                f"a {b['color']} {a['shape']} and a {a['color']} {b['shape']}."]
    raise ValueError(f"unknown relation mode {mode!r}")
