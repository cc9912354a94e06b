"""Reading shards: listing, tar scanning, the per-slot sample stream, and error statistics.

    shards = expand_shards("data/train-{000000..000009}.tar")    # or a folder, a glob, a list
    for ref in scan_shard(shards[0]): fields = read_fields(ref)  # {"jpg": b"...", "json": b"..."}

The stream is built on *references* (shard, key, member offsets), not on bytes: shard order,
per-(rank, worker) selection, the shuffle buffer and the mixture all run on references, and only
the samples a slot emits are read. So the stream of one slot is a pure function of
(seed, epoch, slot) and a position in it is one integer: resuming replays the references
(tar headers only, no decoding) and skips that many.

[Contract] slot = rank * num_workers + worker; within each source and epoch, the i-th sample of the
seeded shard order goes to slot i % (world_size * num_workers): every sample exactly once per epoch
over all ranks and workers, and every slot gets the same number of samples (±1). (`split="shard"`
deals whole shards instead, as `wds.split_by_node` + `wds.split_by_worker` do: for many slots over
many shards, where scanning every header in every slot would cost more than it balances.)

Remote shards (`pipe:CMD`, `http(s)://`, `s3://` ... : `vlm.data.remote`) are always dealt whole and
read as a stream; their refs carry the member bytes (`SampleRef.data`), and a replay to a resume
position stands placeholders in for samples of shards whose size the pipeline state knows.

Why not `webdataset.tarfile_to_samples`: it streams every byte through every worker; a sample-exact
split would then read the whole data set world_size * num_workers times. Here a slot reads the tar
headers (512 bytes each, `os.pread`, ~15 us) and only its own members' bytes. Grouping into samples
uses webdataset's key rule (`base_plus_ext`), and patterns its `braceexpand`.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vlm.data.remote import RemoteContext, is_remote, shard_refs
from vlm.data.tar import (  # noqa: F401
    _KEY_EXT,
    SampleRef,
    TarBroken,
    _octal,
    _pax_records,
    duplicate_member_message,
    split_sample_message,
    tar_members,
)
from vlm.errors import UserError

# Reasons that are not data errors (the sample is fine, the settings drop it): not in the error rate.
# too_short / no_audio: a clip under the stage's min_seconds, a sample without audio in an audio-clip stage;
# no_answer: a prompt without an assistant turn (an evaluation prompt), nothing to train on but not broken;
# too_few_negatives: a pair with fewer hard negatives than the contrastive objective's `negatives` asks.
NOT_ERRORS = frozenset({"too_long", "too_short", "no_audio", "no_answer", "too_few_negatives"})
# a stage filter's choices (vlm.data.filters): left out on purpose, never errors
FILTERED = "filtered"
NOT_FOR_MODEL = "not_for_model"       # media of a modality the model has no encoder for: fine data, not an error


# ---------------------------------------------------------------------------------------------
# shard lists
# ---------------------------------------------------------------------------------------------
def ends_digest(path: str, span: int = 1 << 16) -> str:
    """A digest of a file's first and last `span` bytes: a data set rebuilt into the same paths at the same
    sizes (another seed) differs there (the first and last samples), at the cost of two short reads."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        h.update(f.read(span))
        f.seek(max(span, os.fstat(f.fileno()).st_size - span))
        h.update(f.read())
    return h.hexdigest()


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A list / brace pattern / glob of tar files, or a folder (its index.json shards, else *.tar); a folder
    that a brace pattern or a glob names stands for its shards too. A shard reached twice (`a-{0,0,1}.tar`, a
    symlink beside its target) is an error: its samples were read twice, without a word (a review)."""
    out = _expand(spec)
    seen: dict[str, str] = {}
    for s in out:
        real = s if is_remote(s) else os.path.realpath(s)
        if real in seen:
            raise UserError(f"shard {real} is given twice ({seen[real]}; {s}): its samples would be read twice "
                            "(to read a source more often, give it a larger weight)")
        seen[real] = s
    return out


def _expand(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    import braceexpand

    if isinstance(spec, (list, tuple)):
        out = [s for item in spec for s in _expand(item)]
        if not out:
            raise UserError("no shards given")
        return out
    spec = os.fspath(spec)
    if is_remote(spec):
        return expand_urls(spec)
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    if os.path.isdir(spec):
        from vlm.data.writer import check_not_torn, root_splits
        check_not_torn(spec)
        index = os.path.join(spec, "index.json")
        splits = root_splits(spec)
        if splits is not None:
            splits = [s for s in splits if os.path.isdir(os.path.join(spec, s))]
            raise UserError(f"{spec}: a data set's root folder, not shards; give one of its split folders "
                            f"({', '.join(os.path.join(spec, s) for s in splits) or 'none here'})")
        if os.path.exists(index):
            try:
                with open(index) as f:
                    data = json.load(f)
                names = [s["file"] for s in data["shards"]]
                if not all(isinstance(n, str) and n for n in names):
                    raise TypeError("a shard 'file' that is not a name")
            except (ValueError, KeyError, TypeError, RecursionError) as e:
                raise UserError(f"{index}: not a shard index ({e.__class__.__name__}"
                                f"{': ' + str(e) if isinstance(e, TypeError) else ''})") from None
            paths = [os.path.join(spec, n) for n in names]
            missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
            if missing:                      # a partial copy: its samples would be one silent bad_tar each
                raise UserError(f"{index}: names {len(missing)} shard(s) that are not in {spec}: "
                                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
            return paths
        found = sorted(glob.glob(os.path.join(spec, "*.tar")))
        if not found:
            raise UserError(f"{spec}: folder has no .tar shards")
        return found
    out: list[str] = []
    for pat in braceexpand.braceexpand(spec):
        if glob.has_magic(pat):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise UserError(f"no shard matches {pat}")
            out += [s for hit in hits for s in (_expand(hit) if os.path.isdir(hit) else [hit])]
        elif os.path.isdir(pat):
            out += _expand(pat)
        elif os.path.exists(pat):
            out.append(pat)
        else:
            raise UserError(f"shard not found: {pat}")
    return out


def expand_urls(spec: str) -> list[str]:
    """A brace pattern of remote shards (`https://host/a-{000..009}.tar`, `pipe:curl -s URL/a-{0..9}.tar`);
    for fsspec URLs also a glob (`s3://bucket/a-*.tar`, listed once). Nothing else is read here."""
    import braceexpand
    out: list[str] = []
    for url in braceexpand.braceexpand(spec):
        if glob.has_magic(url) and not url.startswith(("pipe:", "http://", "https://")):
            try:
                import fsspec
                fs, _, paths = fsspec.get_fs_token_paths(url)
            except (ImportError, ValueError, OSError) as e:
                raise UserError(f"cannot list {url}: {e}") from None
            hits = sorted(fs.unstrip_protocol(p) for p in paths)
            if not hits:
                raise UserError(f"no shard matches {url}")
            out += hits
        elif glob.has_magic(url):
            raise UserError(f"{url}: a glob needs a listing; give the shards as a brace range {{000000..000099}}")
        else:
            out.append(url)
    return out


@dataclass
class Source:
    """One data source of a mixture: its shards and its weight (relative, need not sum to 1)."""

    shards: list[str]
    weight: float = 1.0
    name: str = ""

    @classmethod
    def of(cls, spec: Any, weight: float = 1.0, name: str = "") -> Source:
        if isinstance(spec, Source):
            return spec
        if isinstance(spec, dict):
            if "shards" not in spec:
                raise UserError(f"data source {spec} needs 'shards'")
            return cls.of(spec["shards"], float(spec.get("weight", 1.0)), str(spec.get("name", "")))
        shards = expand_shards(spec)
        return cls(shards, weight, name or (os.fspath(spec) if isinstance(spec, (str, os.PathLike))
                                            else Path(shards[0]).parent.name))

    @property
    def remote(self) -> bool:
        """Read as streams, whole shards per slot (`vlm.data.remote`)."""
        return any(is_remote(s) for s in self.shards)


def as_sources(spec: Any) -> list[Source]:
    """A Source, a {shards, weight, name} dict, a pattern/folder, or a list of those (several sources).

    A list of plain strings is ONE source (a shard list); a list containing Source/dict items is a mixture.
    """
    if isinstance(spec, (list, tuple)) and any(isinstance(s, (Source, dict)) for s in spec):
        sources = [Source.of(s) for s in spec]
    else:
        sources = [Source.of(spec)]
    for s in sources:
        if not s.weight > 0:
            raise UserError(f"data source '{s.name}': weight must be > 0, got {s.weight}")
    return sources


# ---------------------------------------------------------------------------------------------
# tar scanning
# ---------------------------------------------------------------------------------------------
def scan_shard(path: str) -> Iterator[SampleRef]:
    """The samples of one tar file, from its headers only (member data is seeked over, not read).

    A shard that cannot be opened yields one `bad_tar` ref; one cut short or corrupt yields a
    `truncated_tar` / `bad_tar` ref for the sample it breaks in, and ends. Members are grouped into
    samples by key as webdataset does it (consecutive members with the same `base_plus_ext` base).
    """
    try:
        f = open(path, "rb", buffering=0)
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        yield SampleRef(path, "", (), "bad_tar", f"{path}: cannot read tar ({e.strerror})")
        return
    key: str | None = None
    members: list[tuple[str, int, int]] = []
    done: set[str] = set()                  # keys already yielded: one seen again means members not adjacent
    with f:
        try:
            for name, offset, n in tar_members(f, size):
                m = _KEY_EXT.match(name)
                if m is None:
                    continue
                base, ext = m.groups()
                if base != key and key is not None:
                    yield _ref_of(path, key, members, done)
                    done.add(key)
                    members = []
                key = base
                members.append((ext.lower(), offset, n))
        except (TarBroken, ValueError) as e:
            broken = isinstance(e, TarBroken) and e.name and _KEY_EXT.match(e.name)
            if broken and key is not None and broken.group(1) != key:  # the sample before is whole
                yield SampleRef(path, key, tuple(members))
                key = broken.group(1)
            reason = e.reason if isinstance(e, TarBroken) else "bad_tar"
            yield SampleRef(path, key or "", (), reason, f"{path}: {e}")
            return
    if key is not None:
        yield _ref_of(path, key, members, done)


def _ref_of(path: str, key: str, members: list, done: set[str]) -> SampleRef:
    if key in done:                         # `tar cf x.tar dir` orders by directory, not by name
        return SampleRef(path, key, (), "split_sample", split_sample_message(path, key))
    twice = duplicate_member_message(path, key, [m[0] for m in members])
    if twice is not None:
        return SampleRef(path, key, (), "duplicate_member", twice)
    return SampleRef(path, key, tuple(members))


class FileCache:
    """Open shard files, the most recently used few kept open (a shuffle buffer spans several shards)."""

    def __init__(self, max_open: int = 16):
        self.max_open = max_open
        self._files: dict[str, Any] = {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        f = self._files.pop(path, None)
        if f is None:
            if len(self._files) >= self.max_open:
                oldest = next(iter(self._files))
                self._files.pop(oldest).close()
            f = open(path, "rb", buffering=0)
        self._files[path] = f  # most recent last
        data = os.pread(f.fileno(), size, offset)
        if len(data) != size:
            raise OSError(f"{path} changed while reading (short read at byte {offset})")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def read_fields(ref: SampleRef, files: FileCache | None = None) -> dict[str, bytes]:
    """The sample's bytes per extension (`jpg`, `0.jpg`, `json` ...)."""
    if ref.data is not None:
        return {ext: data for (ext, _, _), data in zip(ref.members, ref.data)}
    own = files is None
    files = files or FileCache()
    try:
        return {ext: files.read(ref.shard, off, n) for ext, off, n in ref.members}
    finally:
        if own:
            files.close()


# ---------------------------------------------------------------------------------------------
# the per-slot reference stream
# ---------------------------------------------------------------------------------------------
def _rng(*parts: int) -> random.Random:
    """A generator seeded by a tuple of ints, the same in every process (str seeds hash with sha512)."""
    return random.Random("-".join(map(str, parts)))


SPLITS = ("sample", "shard")


def source_refs(source: Source, index: int, seed: int, slot: int, num_slots: int,
                start_epoch: int = 0, epochs: int | None = None, split: str = "sample",
                remote: RemoteContext | None = None) -> Iterator[SampleRef]:
    """One source's refs for one slot; per epoch a seeded shard order, then
    split="sample": the i-th sample -> slot i % num_slots (balanced; every slot scans all tar headers);
    split="shard": the j-th shard -> slot j % num_slots (each slot reads only its shards; needs
    >= num_slots shards, and slots get as many samples as their shards hold). A remote source is always
    split by shard and streamed (`remote`: its context; `vlm.data.remote`)."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    if source.remote:
        split, remote = "shard", remote or RemoteContext()
    if split == "shard" and len(source.shards) < num_slots:
        raise UserError(f"data source '{source.name}': {len(source.shards)} shards cannot be split by shard over "
                        f"{num_slots} ranks x workers; " + ("remote shards are dealt whole: give at least that many"
                                                             if source.remote else "use split='sample'"))
    epoch = start_epoch
    while epochs is None or epoch < start_epoch + epochs:
        order = list(range(len(source.shards)))
        _rng(seed, index, epoch).shuffle(order)
        if split == "shard":
            order = order[slot::num_slots]
        i = mine = 0
        for s in order:
            refs = shard_refs(source.shards[s], remote, epoch) if source.remote else scan_shard(source.shards[s])
            for ref in refs:
                if split == "shard" or i % num_slots == slot:
                    mine += 1
                    yield dataclasses.replace(ref, epoch=epoch) if epoch else ref
                i += 1
        if mine == 0 and epochs is None:        # an endless stream of epochs that never yield: a silent hang
            if i == 0:
                raise UserError(f"data source '{source.name}' has no samples")
            raise UserError(f"data source '{source.name}': its {i} sample(s) do not reach all {num_slots} ranks x data "
                            f"workers (slot {slot} gets none); give it more samples, or fewer workers "
                            f"(runtime.num_workers) or ranks")
        epoch += 1


def shuffled(refs: Iterable[SampleRef], bufsize: int, rng: random.Random,
             per_epoch: bool = True) -> Iterator[SampleRef]:
    """A shuffle buffer (webdataset's `shuffle`): fill `bufsize`, then emit a random one per new item.

    A source smaller than the buffer is shuffled one epoch at a time: a buffer filling across epochs held
    many copies of each sample, so the draws were as if with replacement (a review: 5 distinct samples in
    the first 12 of 12). Once the buffer is full (a source larger than it), items flow as in webdataset.
    `per_epoch=False`: the buffer as it was before (a resumed data state saved then continues its stream)."""
    if bufsize <= 1:
        yield from refs
        return
    buf: list[SampleRef] = []
    for ref in refs:
        if len(buf) < bufsize:
            if per_epoch and buf and ref.epoch != buf[0].epoch:    # the buffer holds a whole epoch: emit it first
                rng.shuffle(buf)
                yield from buf
                buf = []
            buf.append(ref)
            continue
        j = rng.randrange(bufsize)
        buf[j], ref = ref, buf[j]
        yield ref
    rng.shuffle(buf)
    yield from buf


def slot_refs(sources: Sequence[Source], seed: int, slot: int, num_slots: int, shuffle_buffer: int = 1000,
              start_epoch: int = 0, epochs: int | None = None, split: str = "sample",
              remote: RemoteContext | None = None, epoch_shuffle: bool = True) -> Iterator[tuple[int, SampleRef]]:
    """(source index, ref) for one slot: each source's (shuffled) refs, mixed by weight.

    Each draw picks a source with probability proportional to its weight among the sources not yet
    exhausted (only finite `epochs` exhaust); every random choice is seeded by (seed, slot).
    """
    streams = [iter(shuffled(source_refs(s, i, seed, slot, num_slots, start_epoch, epochs, split, remote),
                             shuffle_buffer, _rng(seed, i, slot, start_epoch, 1), epoch_shuffle))
               for i, s in enumerate(sources)]
    live = list(range(len(sources)))
    mix = _rng(seed, slot, start_epoch, 2)
    while live:
        if len(live) == 1:
            i = live[0]
        else:
            i = mix.choices(live, weights=[sources[j].weight for j in live])[0]
        ref = next(streams[i], None)
        if ref is None:
            live.remove(i)
            continue
        yield i, ref


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
@dataclass
class DataStats:
    """Samples read, skipped per reason and per shard, and media converted on the way (not errors)."""

    NOT_ERRORS: ClassVar[frozenset[str]] = NOT_ERRORS   # reasons left out of the error rate

    samples: int = 0
    skipped: Counter = field(default_factory=Counter)              # reason -> count
    by_shard: dict[str, Counter] = field(default_factory=dict)     # shard -> reason -> count
    converted: Counter = field(default_factory=Counter)            # e.g. audio_resampled -> count
    first: dict[str, str] = field(default_factory=dict)            # reason -> first message seen

    def skip(self, reason: str, shard: str, message: str = "") -> None:
        self.skipped[reason] += 1
        self.by_shard.setdefault(shard, Counter())[reason] += 1
        self.first.setdefault(reason, message)

    @property
    def errors(self) -> int:
        return sum(n for r, n in self.skipped.items() if r not in self.NOT_ERRORS)

    @property
    def error_rate(self) -> float:
        return self.errors / max(self.samples, 1)

    def worst_shard(self) -> tuple[str, Counter]:
        """The shard with the most errors, and its errors by reason (the same reasons `errors` counts)."""
        counts = {s: Counter({r: n for r, n in c.items() if r not in self.NOT_ERRORS})
                  for s, c in self.by_shard.items()}
        shard = max(counts, key=lambda s: (counts[s].total(), s), default="")
        return shard, counts.get(shard, Counter())

    def check(self, max_error_rate: float, min_samples: int) -> None:
        """Raise UserError once the error rate passes the threshold (after `min_samples` samples)."""
        if self.samples < min_samples or self.error_rate <= max_error_rate:
            return
        shard, errors = self.worst_shard()
        reasons = ", ".join(f"{r}={c}" for r, c in errors.most_common())
        first = self.first.get(errors.most_common(1)[0][0], "") if errors else ""
        raise UserError(f"{self.errors} of {self.samples} samples failed ({self.error_rate:.1%} > max_error_rate "
                        f"{max_error_rate:.1%}); most errors in shard {shard} ({errors.total()}: {reasons})"
                        + (f"; first: {first}" if first else ""))

    def to_dict(self) -> dict:
        return {"samples": self.samples, "skipped": dict(self.skipped), "converted": dict(self.converted),
                "by_shard": {s: dict(c) for s, c in self.by_shard.items()}, "first": dict(self.first)}

    @classmethod
    def from_dict(cls, d: dict) -> DataStats:
        return cls(d.get("samples", 0), Counter(d.get("skipped", {})),
                   {s: Counter(c) for s, c in d.get("by_shard", {}).items()}, Counter(d.get("converted", {})),
                   dict(d.get("first", {})))

    def report(self) -> str:
        lines = [(f"{self.samples} samples read, {sum(self.skipped.values())} skipped "
                  f"({self.errors} errors, {self.error_rate:.2%})")]
        lines += [f"  {r}: {n}  e.g. {self.first.get(r, '')}" for r, n in self.skipped.most_common()]
        lines += [f"  converted {r}: {n}" for r, n in self.converted.most_common()]
        return "\n".join(lines)
