"""Weights from local safetensors files only (never pickle), with one-line errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from vlm.errors import UserError


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Read a .safetensors file; a missing, pickled or corrupt file is a UserError. Under `torch.device("meta")`
    (a model skeleton: shapes only) the tensors are meta tensors of the stored shapes and dtypes, read from the
    file's header alone (a recipe check read a whole checkpoint for nothing)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    if p.suffix != ".safetensors":
        raise UserError(f"weights file {p} is not .safetensors (pickled checkpoints are not loaded)")
    try:
        if torch.empty(0).is_meta:
            dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
            meta = {}
            with safe_open(str(p), framework="pt") as f:
                for k in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                    stored = f.get_slice(k)
                    meta[k] = torch.empty(stored.get_shape(), dtype=dtypes.get(stored.get_dtype(), torch.float32))
            return meta
        return load_file(str(p))
    except Exception as err:  # safetensors raises SafetensorError / OSError on bad headers
        raise UserError(
            f"corrupt weights file {p}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err


def read_folder_weights(folder: str | Path) -> dict[str, Tensor]:
    """All tensors of a HF-style folder: ``model.safetensors`` or a sharded index."""
    root = Path(folder)
    single = root / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as err:
            raise UserError(f"corrupt weights index {index}: {err}") from err
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_safetensors(root / shard))
        return state
    shards = sorted(root.glob("*.safetensors"))
    if len(shards) == 1:
        return read_safetensors(shards[0])
    raise UserError(f"no model.safetensors in {root} (pickled .bin checkpoints are not loaded)")


def _find_prefix(target_keys: list[str], state: dict[str, Tensor]) -> str | None:
    """The prefix p with ``p + key in state`` for every target key, or None."""
    first = target_keys[0]
    candidates = {k[: len(k) - len(first)] for k in state if k.endswith(first)}
    for prefix in sorted(candidates, key=len):
        if all(prefix + k in state for k in target_keys):
            return prefix
    return None


# Older checkpoints store weight-normed convs (wav2vec2 / HuBERT pos_conv) as weight_g / weight_v.
_LEGACY_SUFFIXES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


def _with_aliases(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = dict(state)
    for key, value in state.items():
        for old, new in _LEGACY_SUFFIXES.items():
            if key.endswith(old):
                out.setdefault(key[: -len(old)] + new, value)
    return out


def load_into(targets: list[nn.Module], state: dict[str, Tensor], source: str) -> nn.Module:
    """Load ``state`` into the first of ``targets`` whose every key it holds (under a common
    prefix); extra keys in the file (e.g. a text tower) are ignored. Returns the target used."""
    state = _with_aliases(state)
    for module in targets:
        own = module.state_dict()
        keys = list(own)
        if not keys:
            continue
        prefix = _find_prefix(keys, state)
        if prefix is None:
            continue
        picked = {k: state[prefix + k] for k in keys}
        bad = [k for k in keys if tuple(picked[k].shape) != tuple(own[k].shape)]
        if bad:
            k = bad[0]
            raise UserError(
                f"weights file {source} does not fit: {prefix + k} has shape {tuple(picked[k].shape)}, "
                f"the encoder expects {tuple(own[k].shape)} ({len(bad)} mismatched tensors)"
            )
        if not any(t.is_meta for t in own.values()):       # a meta skeleton (shapes only) has nothing to copy into
            module.load_state_dict(picked, strict=True)
        return module
    own_keys = list(targets[0].state_dict())
    missing = [k for k in own_keys if not any(s.endswith(k) for s in state)]
    example = missing[0] if missing else own_keys[0]
    raise UserError(
        f"weights file {source} does not fit the encoder: {len(missing)} of {len(own_keys)} tensors "
        f"missing (e.g. {example!r})"
    )
