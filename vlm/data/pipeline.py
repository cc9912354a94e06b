"""The training data pipeline: shards -> decoded samples -> a batch format (chat, pairs, clips) -> batches.

    pipe = ShardPipeline([{"shards": "data/caps/{000000..000099}.tar", "weight": 0.7},
                          {"shards": "data/vqa/", "weight": 0.3}],
                         model.processor, batch_size=8, max_len=2048, packing=True, num_workers=4)
    for batch in pipe:                       # runs a torch DataLoader when num_workers > 0
        hidden = model(**batch)
        ckpt["data"] = pipe.state_dict()     # exact: a restart yields exactly the batches that come next
    pipe.load_state_dict(ckpt["data"])

Chat batches (padding): input_ids, labels, attention_mask [B, L], media {modality: [Tensor]}; (packing):
input_ids, labels, position_ids, segment_ids [R, max_len], attention_mask (None: see `vlm.data.packing`),
media, seq_lens. Pair and clip batches: `vlm.data.formats`. Every batch also has sample_keys,
sample_seeds (per-sample randomness, the same under any rank / worker split) and _position.

How the position stays exact with prefetching workers: every (rank, worker) slot runs a stream that
is a pure function of (seed, epoch, slot) (`vlm.data.reader`). Each batch carries `_position =
(worker, refs consumed)` and the skip/convert events up to there; the main process, not the worker,
records them as batches are *handed out*, so batches prefetched but never used are not counted. The
DataLoader hands out batches worker by worker in a fixed cycle; the state keeps that cycle, and a
restart maps DataLoader workers to logical workers so the cycle continues where it stopped.

Bad samples are skipped and counted by reason in `pipe.stats` (`DataStats`); past `max_error_rate`
(after `min_samples`) iteration stops with a UserError naming the shard with the most errors.

Remote shards (`pipe:`, `http(s)://`, `s3://` ...: `vlm.data.remote`) stream whole shards per slot;
batches also carry the sizes of the remote shards their worker finished (`_shards`), which the state
keeps (`remote_shards`) so that a restart replays without reading them again.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from vlm.data.collate import die_with_parent, pack_batch, start_workers, unpack_batch
from vlm.data.decode import RawSample, SampleError, draft_size_of
from vlm.data.formats import ChatFormat, Format, build_format, sample_seed
from vlm.data.processor import Processed, Processor
from vlm.data.reader import (
    FILTERED,
    NOT_FOR_MODEL,
    SPLITS,
    DataStats,
    FileCache,
    SampleRef,
    Source,
    as_sources,
    ends_digest,
    read_fields,
    slot_refs,
)
from vlm.data.remote import (
    RemoteContext,
    RemoteSettings,
    is_placeholder,
    is_remote,
    resolve,
)
from vlm.errors import UserError

STATE_VERSION = 1


def data_streams(num_workers: int) -> int:
    """Data streams per rank for `num_workers` loader processes (0: the main process reads, one stream): what
    the pipeline splits a source by and keeps a position for (a mid-stage resume needs the same count)."""
    return max(1, num_workers)


@dataclass
class PipelineConfig:
    batch_size: int = 8                  # samples per batch (padding) or rows per batch (packing)
    max_len: int = 2048                  # tokens per sample (longer ones are cut or dropped), per packed row
    packing: bool = False
    max_media_per_row: int | None = None  # packing: media items per row (all modalities)
    shuffle_buffer: int = 1000           # samples per source and slot; 0/1 = shard order only
    split: str = "sample"                # how ranks x workers share a source: "sample" | "shard" (reader)
    seed: int = 0
    epochs: int | None = None            # None: repeat forever (training is counted in steps)
    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: bool = False             # page-locked batches for fast host-to-GPU copies
    rank: int | None = None              # default: torch.distributed / RANK, via webdataset
    world_size: int | None = None
    drop_last: bool = False              # drop the last partial batch of a finite stream
    max_error_rate: float = 0.05
    min_samples: int = 50                # the error rate is judged after this many samples
    draft: bool = True                   # JPEG decode at the smallest scale >= the encoder input
    fast_tokenizer: bool = True          # the Rust tokenizer directly (ids checked identical at start)
    format: str = "chat"                 # what a batch is (vlm.data.formats): chat | pairs | clips
    format_settings: dict = field(default_factory=dict)   # that format's settings (negatives, clip_seconds ...)
    remote_timeout: float = 30.0         # remote shards: seconds a connect / read may stall before a retry
    remote_retries: int = 3              # ... failed attempts in a row before the rest of a shard is skipped
    remote_backoff: float = 1.0          # ... seconds before the first retry (doubling)


# ---------------------------------------------------------------------------------------------
# sample processing (runs in the workers)
# ---------------------------------------------------------------------------------------------
class FastTokenizer:
    """What the chat template calls on its tokenizer, minus transformers' per-call overhead: the Rust
    tokenizer directly, and a cache for the short strings every sample repeats (role headers, newlines)."""

    PROBES = ("user\n", "assistant\n", "\n", " What colour is it?\nA red <|im_end|> circle.", "  two  spaces")

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._rust = getattr(tokenizer, "_tokenizer", None)
        self._cache: dict[str, list[int]] = {}

    def same_as_slow(self) -> bool:
        return self._rust is not None and all(
            self(s)["input_ids"] == self.tok(s, add_special_tokens=False)["input_ids"] for s in self.PROBES)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        if add_special_tokens or self._rust is None:
            return self.tok(text, add_special_tokens=add_special_tokens)
        ids = self._cache.get(text)
        if ids is None:
            ids = self._rust.encode(text, add_special_tokens=False).ids
            if len(text) <= 32 and len(self._cache) < 4096:
                self._cache[text] = ids
        return {"input_ids": list(ids)}

    def get_vocab(self) -> dict[str, int]:
        return self.tok.get_vocab()


def fast_processor(processor: Processor) -> Processor:
    """The same Processor over a FastTokenizer (if it gives the same ids on the probes)."""
    if processor.tokenizer is None:
        return processor
    fast = FastTokenizer(processor.tokenizer)
    return processor.with_tokenizer(fast) if fast.same_as_slow() else processor


class SampleProcessor:
    """ref -> one example of the batch format (decoded, preprocessed, templated, truncated), or
    SampleError(reason). Picklable: the processor it holds has no weights."""

    def __init__(self, processor: Processor, max_len: int, draft: bool = True, fast_tokenizer: bool = True,
                 format: str = "chat", format_settings: dict | None = None):
        self.processor = fast_processor(processor) if fast_tokenizer else processor
        self.max_len = max_len
        draft_size = draft_size_of(processor.preprocess.get("image")) if draft else None
        self.format: Format = build_format(format, self.processor, max_len, draft_size, **(format_settings or {}))

    def __call__(self, ref: SampleRef, files: FileCache, seed: int = 0) -> tuple[Any, list[str]]:
        if ref.error:
            raise SampleError(ref.error, ref.message)
        try:
            raw_fields = read_fields(ref, files)
        except OSError as e:
            raise SampleError("bad_tar", f"cannot read {ref.shard}: {e}") from None
        return self.format.make(ref.key, raw_fields, ref.shard, seed)

    def process(self, raw: RawSample) -> tuple[Processed, list[str]]:
        """A decoded conversation -> Processed + conversions made (the chat format's step)."""
        if not isinstance(self.format, ChatFormat):
            raise UserError("process() takes conversations: the pipeline's batch format is not 'chat'")
        return self.format.process(raw)


# ---------------------------------------------------------------------------------------------
# the per-slot batch stream (runs in the workers)
# ---------------------------------------------------------------------------------------------
class ShardDataset(torch.utils.data.IterableDataset):
    """Batches of one rank; each DataLoader worker plays the logical worker `worker_map[its id]`."""

    def __init__(self, sources: list[Source], sample_fn: SampleProcessor, cfg: PipelineConfig, rank: int,
                 world_size: int, pad_id: int):
        super().__init__()
        self.sources, self.sample_fn, self.cfg = sources, sample_fn, cfg
        self.rank, self.world_size, self.pad_id = rank, world_size, pad_id
        self.workers = data_streams(cfg.num_workers)
        self.worker_map = list(range(self.workers))
        self.positions = [0] * self.workers
        self.done = [False] * self.workers
        self.start_epoch = 0
        self.remote_shards: dict[str, list] = {}      # url -> [refs, error index, reason, message]
        self.epoch_shuffle = True      # a source smaller than the buffer shuffled per epoch (`reader.shuffled`);
        #                                False: a state saved before that continues its own stream exactly

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        w = self.worker_map[info.id if info is not None else 0]
        if self.done[w]:
            return
        if info is None or self.cfg.pin_memory:         # (the loader's pinning thread needs plain tensors)
            yield from self.batches(w, self.positions[w])
            return
        for batch in self.batches(w, self.positions[w]):
            yield pack_batch(batch)                     # a few transfers per batch, not one per tensor

    def batches(self, w: int, start: int) -> Iterator[dict]:
        """Logical worker w's batches from ref position `start` on, then an end marker if finite."""
        cfg = self.cfg
        remote = RemoteContext(RemoteSettings(cfg.remote_timeout, cfg.remote_retries, cfg.remote_backoff),
                               dict(self.remote_shards), replaying=start > 0)
        refs = slot_refs(self.sources, cfg.seed, self.rank * self.workers + w, self.world_size * self.workers,
                         cfg.shuffle_buffer, self.start_epoch, cfg.epochs, cfg.split, remote, self.epoch_shuffle)
        if start > 0:
            refs = self._replay(refs, start, remote)
        self.remote = remote
        files = FileCache()
        events: list[tuple] = []          # (ref index, kind, reason, shard, message)
        rows: list[list[tuple[Any, str, int, int]]] = [[]]   # packing: rows; padding: one list
        fmt = self.sample_fn.format
        # Never loop forever on unusable data: a source is dry when, since the last usable sample, it has given
        # twice as many refs as distinct samples (+ the shuffle buffer): it went round its whole share of the
        # data. Every source dry at once: stop with the reasons.
        streak: Counter = Counter()                        # source -> refs since the last usable sample
        distinct: dict[int, set] = {}                      # source -> the samples among them
        try:
            k = start - 1
            for k, (i, ref) in enumerate(refs, start):
                seed = sample_seed(cfg.seed, ref.key, ref.epoch)
                try:
                    sample, converted = self.sample_fn(ref, files, seed)
                except SampleError as e:
                    events.append((k, "skip", e.reason, ref.shard, f"{ref.key}: {e}" if ref.key else str(e)))
                    streak[i] += 1
                    distinct.setdefault(i, set()).add((ref.shard, ref.key))
                    if all(streak[j] >= 2 * len(distinct.get(j, ())) + max(1, cfg.shuffle_buffer) and streak[j]
                           for j in range(len(self.sources))):
                        self._no_usable_sample(w, events)
                    continue
                streak.clear()
                distinct.clear()
                events += [(k, "converted", c, ref.shard, "") for c in converted]
                item = (sample, ref.key, k, seed)
                if cfg.packing:
                    if not fmt.fits([s for s, *_ in rows[-1]], sample, cfg.max_media_per_row):
                        if len(rows) == cfg.batch_size:
                            yield self._batch(w, rows, events)
                            rows = [[]]
                        else:
                            rows.append([])
                    rows[-1].append(item)
                else:
                    rows[0].append(item)
                    if len(rows[0]) == cfg.batch_size:
                        yield self._batch(w, rows, events)
                        rows = [[]]
            full = len(rows) == cfg.batch_size if cfg.packing else len(rows[0]) == cfg.batch_size
            if rows[0] and (full or not cfg.drop_last):
                yield self._batch(w, rows, events)
            yield {"_end": True, "_position": (w, k + 1), "_events": events, "_shards": remote.drain()}
        finally:
            files.close()

    @staticmethod
    def _replay(refs: Iterator, start: int, remote: RemoteContext) -> Iterator:
        """Skip the first `start` refs (a resume); remote samples still buffered then are read again."""
        fetched: dict = {}
        for k, (i, ref) in enumerate(refs):
            if k < start:
                remote.consumed(ref)
                continue
            if k == start:
                fetched = remote.go_live()
            yield i, resolve(ref, fetched) if is_placeholder(ref) else ref

    def _no_usable_sample(self, w: int, events: list[tuple]) -> None:
        """A whole pass over every source gave this slot nothing to train on: stop, never loop forever. The
        reasons count distinct samples (a message names its sample), not the reads of the passes it took."""
        skips = [(e[2], e[4]) for e in events if e[1] == "skip"]
        reasons = Counter(r for r, _ in dict.fromkeys(skips))
        names = ", ".join(f"'{s.name}'" for s in self.sources)
        # the example: a sample that failed (bad audio ...) before one left out on purpose, and then one of the
        # most common reason (a few filtered samples beside hundreds of not_for_model: the latter is the cause)
        failed = [m for r, m in skips if r not in (FILTERED, NOT_FOR_MODEL)]
        example = failed[0] if failed else next(m for r, m in skips if r == reasons.most_common(1)[0][0])
        raise UserError(f"data source(s) {names}: a whole pass on rank {self.rank} (worker {w}) gave no usable "
                        f"sample (skipped: {', '.join(f'{r} {n}' for r, n in reasons.most_common())}; for example "
                        f"{example})")

    def _batch(self, w: int, rows: list[list[tuple[Any, str, int, int]]], events: list[tuple]) -> dict:
        end = max(k for row in rows for _, _, k, _ in row) + 1
        keys = [key for row in rows for _, key, _, _ in row]
        fmt = self.sample_fn.format
        if self.cfg.packing:
            batch = fmt.pack([[s for s, *_ in row] for row in rows], self.pad_id, keys)
        else:
            batch = fmt.collate([s for s, *_ in rows[0]], self.pad_id)
            batch["sample_keys"] = keys
        batch["sample_seeds"] = torch.tensor([seed for row in rows for *_, seed in row], dtype=torch.long)
        batch["_position"] = (w, end)
        batch["_events"] = [e for e in events if e[0] < end]
        batch["_shards"] = self.remote.drain()
        events[:] = [e for e in events if e[0] >= end]
        return batch


# ---------------------------------------------------------------------------------------------
# the pipeline (main process): iteration, accounting, state
# ---------------------------------------------------------------------------------------------
class ShardPipeline:
    """Iterable of batches over weighted shard sources; exact `state_dict()` / `load_state_dict()`."""

    def __init__(self, sources: Any, processor: Processor, config: PipelineConfig | None = None, *,
                 wrap_sample_fn: Callable[[SampleProcessor], SampleProcessor] | None = None,
                 stats_cls: type[DataStats] = DataStats, **overrides):
        """wrap_sample_fn: builds the per-sample function from the default one (e.g. a filter that
        drops samples by their json first); stats_cls: the DataStats kind kept in `stats`."""
        cfg = config or PipelineConfig()
        unknown = set(overrides) - {f.name for f in fields(PipelineConfig)}
        if unknown:
            raise UserError(f"unknown data pipeline settings: {sorted(unknown)}")
        self.cfg = cfg = PipelineConfig(**{**asdict(cfg), **overrides})
        if cfg.batch_size < 1 or cfg.max_len < 2:
            raise UserError(f"batch_size must be >= 1 and max_len >= 2, got {cfg.batch_size}, {cfg.max_len}")
        self.sources = as_sources(sources)
        self._shard_contents: list | None = None
        rank, world = cfg.rank, cfg.world_size
        if rank is None or world is None:
            from webdataset.utils import pytorch_worker_info
            rank, world, _, _ = pytorch_worker_info()
        if not 0 <= rank < world:
            raise UserError(f"rank {rank} is not in [0, world_size {world})")
        self.rank, self.world_size = rank, world
        slots = world * data_streams(cfg.num_workers)
        if cfg.split not in SPLITS:
            raise UserError(f"split must be one of {SPLITS}, got {cfg.split!r}")
        for s in self.sources:
            if (cfg.split == "shard" or s.remote) and len(s.shards) < slots:
                raise UserError(f"data source '{s.name}': {len(s.shards)} shards cannot be split by shard over "
                                f"{world} ranks x {data_streams(cfg.num_workers)} workers; " +
                                ("remote shards are dealt whole: give at least that many" if s.remote
                                 else "use split='sample'"))
        sample_fn = SampleProcessor(processor, cfg.max_len, cfg.draft, cfg.fast_tokenizer, cfg.format,
                                    cfg.format_settings)
        if cfg.packing and not sample_fn.format.packs:
            raise UserError(f"batch format '{cfg.format}' cannot be packed (packing: false)")
        if wrap_sample_fn is not None:
            sample_fn = wrap_sample_fn(sample_fn)
        self.dataset = ShardDataset(self.sources, sample_fn, cfg, rank, world, processor.pad_id)
        self.order = list(range(self.dataset.workers))  # logical workers in the order batches come
        self.stats_cls = stats_cls
        self.stats = stats_cls()

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict]:
        ds = self.dataset
        if all(ds.done):  # a finished finite pass: the next one starts at the following epoch
            self.set_epoch(ds.start_epoch + (self.cfg.epochs or 0))
        if self.cfg.num_workers == 0:
            stream: Iterator[dict] = ds.batches(0, ds.positions[0])
        else:
            ds.worker_map = self.order + [w for w in range(ds.workers) if ds.done[w]]
            stream = start_workers(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers,
                                                               prefetch_factor=self.cfg.prefetch_factor,
                                                               pin_memory=self.cfg.pin_memory,
                                                               worker_init_fn=die_with_parent))
        for batch in stream:
            batch = unpack_batch(batch)
            self._account(batch)
            if not batch.get("_end"):
                yield batch

    def _account(self, batch: dict) -> None:
        """Record a handed-out batch: its worker's position, its skip/convert events, the cycle."""
        ds = self.dataset
        w, end = batch["_position"]
        self.stats.samples += end - ds.positions[w]
        ds.positions[w] = end
        ds.remote_shards.update(batch.pop("_shards", {}))
        for _, kind, reason, shard, message in batch.pop("_events"):
            if kind == "skip":
                self.stats.skip(reason, shard, message)
            else:
                self.stats.converted[reason] += 1
        if w in self.order:
            self.order.remove(w)
        if batch.get("_end"):
            ds.done[w] = True
        else:
            self.order.append(w)
        self.stats.check(self.cfg.max_error_rate, self.cfg.min_samples)

    def set_epoch(self, epoch: int) -> None:
        """Start a fresh pass at `epoch` (its own shard order and shuffle)."""
        ds = self.dataset
        ds.start_epoch = epoch
        ds.positions = [0] * ds.workers
        ds.done = [False] * ds.workers
        self.order = list(range(ds.workers))

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> list:
        return [[s.name, len(s.shards), s.weight] for s in self.sources]

    def _contents(self) -> list:
        """Per source: a digest of its shard file names, the local shards' sizes in bytes and digests of their
        ends (None for a remote one), taken once: other shards at the same paths must not resume from positions
        into the old ones."""
        if self._shard_contents is None:
            local = [[x if not is_remote(x) and os.path.isfile(x) else None for x in s.shards] for s in self.sources]
            self._shard_contents = [
                {"names": hashlib.sha256("\n".join(os.path.basename(x) for x in s.shards).encode()).hexdigest()[:16],
                 "sizes": [os.path.getsize(x) if x else None for x in paths],
                 "ends": [ends_digest(x) if x else None for x in paths]}
                for s, paths in zip(self.sources, local)]
        return self._shard_contents

    def check_contents(self, saved: list | None, only: set[str] | None = None) -> None:
        """The shards are the ones a state (`state_dict()["contents"]`) was saved on: a one-line UserError naming
        the source and shard if not (a mid-stage resume, and a resume at a stage's end onto its data rebuilt in
        place: the run would mix two data sets). `only`: the names of the sources to compare."""
        if saved is None:                     # a state from before the contents were kept: nothing to compare
            return
        for s, old, new in zip(self.sources, saved, self._contents()):
            if only is not None and s.name not in only:
                continue
            if old.get("names") != new["names"]:
                raise UserError(f"data source '{s.name}': its shard files are not the ones the checkpoint was trained "
                                f"on (other names at the same paths); resume with that data, or start a new run")
            for shard, a, b in zip(s.shards, old.get("sizes", []), new["sizes"]):
                if a != b:
                    raise UserError(f"data source '{s.name}': shard {shard} changed since the checkpoint ({a} -> {b} "
                                    f"bytes); resume with the data the run was trained on, or start a new run")
            for shard, a, b in zip(s.shards, old.get("ends") or [], new["ends"]):    # states before: no "ends"
                if a != b:
                    raise UserError(f"data source '{s.name}': shard {shard} changed since the checkpoint (the same "
                                    f"size, other bytes); resume with the data the run was trained on, or start a "
                                    f"new run")

    def state_dict(self) -> dict:
        ds = self.dataset
        return {"version": STATE_VERSION, "seed": self.cfg.seed, "start_epoch": ds.start_epoch,
                "rank": self.rank, "world_size": self.world_size, "num_workers": ds.workers,
                "positions": list(ds.positions), "done": list(ds.done), "order": list(self.order),
                "sources": self._fingerprint(), "contents": self._contents(), "stats": self.stats.to_dict(),
                "epoch_shuffle": ds.epoch_shuffle,
                **({"remote_shards": {u: list(v) for u, v in ds.remote_shards.items()}} if ds.remote_shards else {})}

    def load_state_dict(self, state: dict) -> None:
        ds = self.dataset
        for k, mine in (("world_size", self.world_size), ("num_workers", ds.workers), ("rank", self.rank)):
            if state.get(k) != mine:
                raise UserError(f"data state was saved with {k}={state.get(k)}, this run has {mine}; "
                                f"resume with the same ranks and workers")
        if state.get("sources") != self._fingerprint():
            saved, mine = state.get("sources") or [], self._fingerprint()
            for old, new in zip(saved, mine):     # [name, shards, weight]: say which source and what changed
                if isinstance(old, list) and len(old) == 3 and old[0] == new[0] and old != new:
                    what = (f"{old[1]} shard(s) when the checkpoint was saved, {new[1]} now" if old[1] != new[1]
                            else f"weight {old[2]} when the checkpoint was saved, {new[2]} now")
                    raise UserError(f"data source '{new[0]}': {what}; resume with the data the run was trained on, "
                                    f"or start a new run")
            def names(xs) -> str:
                return ", ".join(str(x[0] if isinstance(x, list) and x else x) for x in xs)
            raise UserError(f"data state was saved for sources {names(saved)}, this run has {names(mine)}; resume "
                            f"with the data the run was trained on, or start a new run")
        self.check_contents(state.get("contents"))
        self.cfg.seed = int(state["seed"])
        ds.start_epoch = int(state["start_epoch"])
        ds.epoch_shuffle = bool(state.get("epoch_shuffle", False))       # states before it: their own stream
        ds.positions = [int(p) for p in state["positions"]]
        ds.done = [bool(d) for d in state["done"]]
        self.order = [int(w) for w in state["order"]]
        self.stats = self.stats_cls.from_dict(state["stats"])
        ds.remote_shards = {u: list(v) for u, v in state.get("remote_shards", {}).items()}
