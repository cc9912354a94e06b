"""Sample filters: which samples a stage trains on, judged on the json (and member names) before any
media is decoded - the SAIL-VL curriculum's easy -> hard ordering, task and modality selection.

    f = SampleFilter(max_difficulty=0.3, tasks=["color", "shape"], modalities=["image"])
    pipe = ShardPipeline(src, proc, stats_cls=FilterStats, wrap_sample_fn=lambda base: Filtering(base, f))

A filtered sample counts as consumed, so the data position stays exact, and is reported under the
reason `filtered`, which is not a data error (it never counts toward the error rate). A stage also
drops, under `not_for_model`, samples whose media the model cannot take (an `<audio>` caption for an
image-only model), whatever its filter says: the batch format says which modalities it takes
(`Format.takes`), and the sample's are judged from its json and member names, before any decoding.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from vlm.data.decode import SampleError
from vlm.data.pipeline import SampleProcessor
from vlm.data.reader import (
    FILTERED,
    NOT_FOR_MODEL,
    DataStats,
    FileCache,
    SampleRef,
    read_fields,
)
from vlm.data.writer import sample_texts
from vlm.errors import UserError
from vlm.modalities import MODALITIES, file_kind, placeholder_modalities


@dataclass
class SampleFilter:
    """Which samples a stage trains on (all bounds optional; a missing score fails a bound on it)."""
    min_difficulty: float | None = None             # keep difficulty >= min
    max_difficulty: float | None = None             # keep difficulty < max (1.0 keeps 1.0 too)
    min_quality: float | None = None
    tasks: list[str] | None = None                  # keep only these json `task` values
    kind: str | None = None                         # caption: samples with a `caption` (or txt only); conversation
    modalities: list[str] | None = None             # keep samples whose media are all of these (text-only too)


def sample_modalities(meta: dict, extensions: list[str]) -> set[str]:
    """The modalities a sample's media are: its placeholders, or for a caption / bare clip its files
    (audio files are music when the json says `modality: music`)."""
    texts = sample_texts(meta)
    if texts is not None:
        return {m for t in texts for m in placeholder_modalities(t)}
    kinds = {file_kind(e) for e in extensions} - {None}
    music = meta.get("modality") == "music"
    return {("music" if music else "audio") if k == "audio" else k for k in kinds}


def failed_clause(meta: dict, f: SampleFilter, extensions: list[str] = ()) -> str | None:
    """The first field of a stage filter that a sample's json (and member extensions) fails, None if it passes."""
    d, q = meta.get("difficulty"), meta.get("quality")
    if f.min_difficulty is not None and not (isinstance(d, (int, float)) and d >= f.min_difficulty):
        return "min_difficulty"
    if f.max_difficulty is not None and not (isinstance(d, (int, float)) and
                                             (d < f.max_difficulty or d == f.max_difficulty == 1.0)):
        return "max_difficulty"
    if f.min_quality is not None and not (isinstance(q, (int, float)) and q >= f.min_quality):
        return "min_quality"
    if f.tasks is not None and meta.get("task") not in f.tasks:
        return "tasks"
    if f.kind is not None:
        is_caption = isinstance(meta.get("caption"), str) or "conversations" not in meta
        if is_caption != (f.kind == "caption"):
            return "kind"
    if f.modalities is not None and not sample_modalities(meta, extensions) <= set(f.modalities):
        return "modalities"
    return None


def keep_sample(meta: dict, f: SampleFilter, extensions: list[str] = ()) -> bool:
    """Whether a sample's json (and member extensions) pass a stage filter."""
    return failed_clause(meta, f, extensions) is None


SCORE_OF = {"min_difficulty": "difficulty", "max_difficulty": "difficulty", "min_quality": "quality"}


def check_filter_fields(f: SampleFilter, where: str) -> None:
    """The filter's own values: bounds in [0, 1], known kind and modalities."""
    for name in ("min_difficulty", "max_difficulty", "min_quality"):
        v = getattr(f, name)
        if v is not None and not 0 <= v <= 1:
            raise UserError(f"recipe field '{where}.{name}': must be in [0, 1], got {v}")
    if f.kind not in (None, "caption", "conversation"):
        raise UserError(f"recipe field '{where}.kind': {f.kind!r} is not one of ['caption', 'conversation']")
    for i, m in enumerate(f.modalities or []):
        if m not in MODALITIES:
            raise UserError(f"recipe field '{where}.modalities.{i}': unknown modality {m!r}; "
                            f"known: {sorted(MODALITIES)}")


def _json_of(ref: SampleRef, files: FileCache) -> dict | None:
    """The sample's json; None when it does not read as an object (the full decode names the error: judged
    by the filter instead, a corrupt json was 'filtered', not a bad sample counted toward the error rate)."""
    if not any(m[0] == "json" for m in ref.members):
        return {}                                     # `txt` alone: a caption without scores
    try:
        meta = json.loads(read_fields(ref.only({"json"}), files)["json"])
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def needs_filtering(base: SampleProcessor, sample_filter: SampleFilter) -> bool:
    """Whether a stage's samples must be judged before decoding: a filter, or a model that cannot take
    every modality of the table."""
    takes = base.format.takes()
    return sample_filter != SampleFilter() or (takes is not None and not set(MODALITIES) <= takes) \
        or not getattr(base.processor, "trains_text", True)


class Filtering(SampleProcessor):
    """A SampleProcessor that first reads a sample's json alone and drops it if the filter says so, or
    if it holds media the model cannot take (`not_for_model`). (A filter that keeps nothing of a rank's
    share stops the pipeline after a whole pass: ShardDataset.)"""

    def __init__(self, base: SampleProcessor, sample_filter: SampleFilter, where: str = "filter"):
        self.__dict__.update(base.__dict__)
        self.sample_filter, self.where = sample_filter, where
        self.takes = base.format.takes()
        self.trains_text = getattr(base.processor, "trains_text", True) or self.takes is None

    def __call__(self, ref: SampleRef, files: FileCache, seed: int = 0):
        meta = None if ref.error else _json_of(ref, files)
        if meta is not None:
            extensions, f = [m[0] for m in ref.members], self.sample_filter
            for key, bounded in (("difficulty", f.min_difficulty is not None or f.max_difficulty is not None),
                                 ("quality", f.min_quality is not None)):
                v = meta.get(key)
                if bounded and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise SampleError("bad_json", f"json '{key}' is {v!r}, not a number ({self.where} "
                                                  f"bounds it)")
            if not keep_sample(meta, self.sample_filter, extensions):
                raise SampleError(FILTERED, f"not in {self.where}")
            check_for_model(sample_modalities(meta, extensions), self.takes, self.trains_text)
        return super().__call__(ref, files, seed)


def check_for_model(have: set[str], takes: frozenset[str] | set[str] | None, trains_text: bool) -> None:
    """A SampleError `not_for_model` when a sample's media (`have`) are not all of the modalities the model
    takes (None: any), or it is text only and the model trains nothing on text (IAA: text-only input runs the
    frozen LLM alone; in a batch of its own it had no gradient and ended the run, in a batch with media it
    trained the adaptors on a path it never takes)."""
    if takes is not None and not have <= takes:
        raise SampleError(NOT_FOR_MODEL, f"{'/'.join(sorted(have - takes))} media; the model takes "
                                         f"{'/'.join(sorted(takes)) or 'text only'}")
    if not trains_text and not have:
        raise SampleError(NOT_FOR_MODEL, "text only: the model's text path is its frozen LLM, nothing to train")


class FilterStats(DataStats):
    """DataStats where filtered samples, and samples the model cannot take, are not errors (they do not
    count toward the error rate)."""

    NOT_ERRORS = DataStats.NOT_ERRORS | {FILTERED, NOT_FOR_MODEL}


def check_filter(shards: list[str], sample_filter: SampleFilter, where: str, limit: int = 5000) -> None:
    """UserError naming the filter if none of the first `limit` samples of its sources passes it, or if one
    of its `tasks` is absent from them and looks like a misspelling of a task there (`shpe` for `shape`: the
    stage would train on the other tasks only, without a word)."""
    from vlm.data.reader import expand_shards, is_remote, scan_shard
    local = [s for s in expand_shards(shards) if not is_remote(s)]
    if not local:
        return                                        # remote shards are not read before training starts
    files, seen, passed = FileCache(), 0, False
    media: Counter = Counter()                       # what the samples seen are, for the message
    tasks: Counter = Counter()                       # of the samples that do not pass
    all_tasks: set[str] = set()
    failed: Counter = Counter()                      # the filter field each sample that does not pass fails
    unscored: Counter = Counter()                    # of those: samples without the score their field bounds
    wanted = set(sample_filter.tasks or [])
    broken: Counter = Counter()                      # shard errors (bad_tar ...): not the filter's doing
    try:
        for shard in local:
            for ref in scan_shard(shard):
                meta = None if ref.error else _json_of(ref, files)
                if ref.error:
                    broken[ref.error] += 1
                if meta is None and not ref.error:
                    media["a json that does not read"] += 1
                elif meta is not None:
                    exts = [m[0] for m in ref.members]
                    all_tasks.add(str(meta.get("task", "-")))
                    clause = failed_clause(meta, sample_filter, exts)
                    if clause is None:
                        passed = True
                        if wanted <= all_tasks:
                            return
                    else:
                        media["+".join(sorted(sample_modalities(meta, exts))) or "text"] += 1
                        tasks[str(meta.get("task", "-"))] += 1
                        failed[clause] += 1
                        unscored[clause] += clause in SCORE_OF and meta.get(SCORE_OF[clause]) is None
                seen += 1
                if seen >= limit:
                    break
            if seen >= limit:
                break
    finally:
        files.close()
    if passed:
        _check_task_names(wanted - all_tasks, all_tasks, seen, where)
        return
    top = (lambda c: ", ".join(f"{k} {n}" for k, n in c.most_common(4)))
    if seen and sum(broken.values()) == seen:      # nothing read at all: say so, not that the filter keeps nothing
        raise UserError(f"recipe field '{where}': the stage's data has no readable sample among the first {seen} "
                        f"({top(broken)}; e.g. {local[0]}): check its shards")
    hint = ("; an audio file is 'music' when its sample's json says \"modality\": \"music\" (or set the "
            "filter's modalities to null)" if sample_filter.modalities and "music" in sample_filter.modalities
            and "audio" in media else "")
    if sample_filter.tasks and tasks and set(tasks) == {"-"}:      # data of another maker: no `task` field
        hint += (f"; none has a json `task` and the filter keeps tasks {', '.join(sample_filter.tasks[:4])} "
                 f"(a built-in recipe's filters select synthetic-world's tasks: override `{where}.tasks=null`, "
                 "and its difficulty bounds, for other data)")
    for clause, n in failed.most_common():
        if unscored[clause] == n:                      # data of another maker: no difficulty / quality scores
            hint += (f"; none of the {n} sample(s) its {clause} refuses has a json `{SCORE_OF[clause]}`: override "
                     f"`{where}.{clause}=null` for data without scores")
    raise UserError(f"recipe field '{where}': none of the first {seen} samples of the stage's data passes it "
                    f"(their media: {top(media) or '-'}; tasks: {top(tasks) or '-'}; the field each fails: "
                    f"{top(failed) or '-'}){hint}")


def _check_task_names(absent: set[str], present: set[str], seen: int, where: str) -> None:
    """A filter task found nowhere in the samples read that looks like one found: a misspelling (a task only
    further on in the data, unlike every task seen, passes)."""
    import difflib
    for task in sorted(absent):
        near = [t for t in difflib.get_close_matches(task, sorted(present - {"-"}), n=3, cutoff=0.75)
                if _edits(task, t) <= 2]      # 'captoin' for 'caption', not 'audio_tone' beside 'audio_caption'
        if near:
            raise UserError(f"recipe field '{where}.tasks': no sample among the first {seen} of the stage's data "
                            f"has task {task!r} (did you mean {near[0]!r}?)")


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]
