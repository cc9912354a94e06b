"""Remote shards: tar files read as a stream from `pipe:CMD`, `http(s)://` or an fsspec URL (`s3://`,
`gs://`, `hf://` ... where its backend is installed), in whole-shard split mode, with retries and exact
resume.

    ShardPipeline({"shards": "https://data.example.org/sft-{000000..000511}.tar"}, proc, ...)
    ShardPipeline({"shards": "pipe:aws s3 cp s3://bucket/sft-{000000..000511}.tar -"}, proc, ...)
    ShardPipeline({"shards": "s3://bucket/sft-{000000..000511}.tar"}, proc, ..., remote_timeout=60)

How it reads: a remote source's shards are dealt whole to the (rank, worker) slots, as webdataset's
`split_by_node` + `split_by_worker` deal them (the j-th shard of the epoch's seeded order to slot j %
slots: `vlm.data.reader.source_refs`, split "shard"); each slot streams its shards one after the
other, front to back, parsing the tar headers as they pass and grouping members into samples by
webdataset's key rule. Samples then go through the same shuffle buffer, mixture and processing as
local ones: for the same shards, the samples are exactly those of the local whole-shard read.

Broken connections: a read that fails or stalls for `timeout` seconds is retried from the first
byte of the sample it broke in (an HTTP Range request; other sources are reopened and skip ahead),
after 1 x `backoff`, 2 x, 4 x ... seconds; progress resets the count. After `retries` failures in a
row the rest of the shard is skipped as one `remote_error` (named, counted with the data errors)
and the next shard starts: a dead server costs at most (retries + 1) x timeout + the back-off, never
a hang.

Exact resume: the position of a slot is, as for local shards, the number of samples it has taken
from its stream; a restart replays the stream up to it. For remote shards the replay needs no
reading: the pipeline state holds the number of samples of every remote shard read so far (shard
order comes from the seed and epoch, shard index and sample offset from those counts), so the replay
stands placeholders in for the samples, and only the samples still in the shuffle buffer at the
restart point are read again (their shards streamed up to the last of them).
"""
from __future__ import annotations

import http.client
import io
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from vlm.data.tar import (
    _KEY_EXT,
    SampleRef,
    TarBroken,
    _octal,
    _pax_records,
    check_header,
    duplicate_member_message,
    split_sample_message,
)
from vlm.errors import UserError

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
REMOTE_ERROR = "remote_error"


def is_remote(spec: str) -> bool:
    """`pipe:...` or a URL (`file://` is local)."""
    return spec.startswith("pipe:") or (bool(SCHEME.match(spec)) and not spec.startswith("file://"))


@dataclass(frozen=True)
class RemoteSettings:
    timeout: float = 30.0          # seconds a connect or read may stall before the attempt fails
    retries: int = 3               # failed attempts in a row before the rest of a shard is skipped
    backoff: float = 1.0           # seconds before the first retry; doubles each time


class Cut(Exception):
    """The connection broke, stalled or could not be made (retried). A stream that simply ends inside
    the tar is a truncated shard (`truncated_tar`), as for local files."""


# ---------------------------------------------------------------------------------------------
# byte streams
# ---------------------------------------------------------------------------------------------
class _Pipe:
    """stdout of a shell command (webdataset's `pipe:`), with a read timeout (select)."""

    def __init__(self, cmd: str, timeout: float):
        self.err = tempfile.TemporaryFile()
        # its own process group: a compound command (`a; b`, `aws s3 cp ... - | ...`) is killed whole on close
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True)
        self.fd, self.timeout, self.cmd = self.proc.stdout.fileno(), timeout, cmd

    def read(self, n: int) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            raise Cut(f"no data for {self.timeout:g} s from `{self.cmd}`")
        data = os.read(self.fd, n)
        if not data:
            rc = self.proc.wait()
            if rc != 0:
                self.err.seek(0)
                err = self.err.read().decode("utf-8", "replace").strip().splitlines()
                raise Cut(f"`{self.cmd}` exited with {rc}" + (f": {err[-1]}" if err else ""))
        return data

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)      # the shell and what it started (a finished group: gone)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


class _Http:
    def __init__(self, url: str, offset: int, timeout: float):
        req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            self.resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code in (404, 403, 401, 410):
                raise FileNotFoundError(f"HTTP {e.code} {e.reason}") from None
            raise Cut(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise Cut(f"cannot connect: {getattr(e, 'reason', e)}") from None
        self.skip = offset if offset and self.resp.status != 206 else 0   # a server that ignores Range
        length = self.resp.getheader("Content-Length")
        self.remaining = int(length) if length is not None else None     # bytes the server promised

    def read(self, n: int) -> bytes:
        try:
            while self.skip:
                got = self._read(min(self.skip, 1 << 20))
                if not got:
                    return b""
                self.skip -= len(got)
            return self._read(n)
        except (OSError, http.client.HTTPException, ValueError) as e:   # reset, timeout, IncompleteRead ...
            raise Cut(f"connection broke: {e.__class__.__name__}: {e}") from None

    def _read(self, n: int) -> bytes:
        got = self.resp.read1(n)
        if self.remaining is not None:
            if not got and self.remaining > 0:
                raise Cut(f"connection closed {self.remaining} bytes before the end")
            self.remaining -= len(got)
        return got

    def close(self) -> None:
        self.resp.close()


class _Fsspec:
    def __init__(self, url: str, offset: int):
        try:
            import fsspec
            self.f = fsspec.open(url, "rb").open()
        except ImportError as e:
            raise UserError(f"{url}: no fsspec backend for this URL ({e}); install it (e.g. pip install s3fs)") from None
        except FileNotFoundError:
            raise
        except ValueError as e:                          # fsspec: "Protocol not known: htps"
            raise UserError(f"{url}: {e} (a misspelt URL scheme? http, https, s3, gs, hf, pipe: ...)") from None
        except OSError as e:
            raise Cut(f"cannot open: {e}") from None
        if offset:
            self.f.seek(offset)

    def read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except OSError as e:
            raise Cut(f"read failed: {e}") from None

    def close(self) -> None:
        self.f.close()


def open_stream(url: str, offset: int, timeout: float):
    """A byte stream of `url` from byte `offset` on (`read(n)` -> up to n bytes, b"" at the end)."""
    if url.startswith("pipe:"):
        s = _Pipe(url[5:], timeout)
        s_skip = offset
        while s_skip:
            got = s.read(min(s_skip, 1 << 20))
            if not got:
                break
            s_skip -= len(got)
        return s
    if url.startswith(("http://", "https://")):
        return _Http(url, offset, timeout)
    return _Fsspec(url, offset)


# ---------------------------------------------------------------------------------------------
# a tar stream -> samples, with retries
# ---------------------------------------------------------------------------------------------
@dataclass
class StreamSample:
    index: int                                       # the sample's position in its shard
    key: str
    members: tuple[tuple[str, int, int], ...]        # (extension, data offset, size), as local refs
    data: tuple[bytes, ...]


@dataclass
class StreamError:
    index: int
    key: str
    reason: str                                      # remote_error | bad_tar | truncated_tar
    message: str


class _Reader:
    """Exact reads from a (re)openable stream; `pos` is the byte offset of the next byte."""

    def __init__(self, url: str, settings: RemoteSettings, offset: int):
        self.url, self.settings, self.pos = url, settings, offset
        self.stream = open_stream(url, offset, settings.timeout)

    def read(self, n: int) -> bytes:
        buf = io.BytesIO()
        while buf.tell() < n:
            got = self.stream.read(n - buf.tell())
            if not got:
                break
            buf.write(got)
        self.pos += buf.tell()
        return buf.getvalue()

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass


def _header(h: bytes) -> tuple[str, int, bytes]:
    name = h[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    prefix = h[345:500].split(b"\0", 1)[0] if h[257:262] == b"ustar" else b""
    if prefix:
        name = prefix.decode("utf-8", "surrogateescape") + "/" + name
    return name, _octal(h[124:136]), h[156:157]


def _members(reader: _Reader) -> Iterator[tuple[int, str, int, int, bytes]]:
    """(first header byte, name, data offset, size, data) of each regular file, from the stream."""
    long_name, pax, start = None, {}, None
    while True:
        at = reader.pos
        h = reader.read(512)
        if h == bytes(512):
            return
        if not h and at == 0:
            raise TarBroken("bad_tar", "empty file")
        check_header(h, at)
        if len(h) < 512:    # a tar always ends with zero blocks: without them the last sample may be cut
            raise TarBroken("truncated_tar", f"tar cut short at byte {reader.pos} (no end-of-archive blocks)")
        name, size, kind = _header(h)
        start = at if start is None else start
        if kind in (b"x", b"L"):
            body = reader.read((size + 511) // 512 * 512)
            if len(body) < size:
                raise TarBroken("truncated_tar", f"tar cut short at byte {reader.pos}")
            if kind == b"L":
                long_name = body[:size].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                pax = dict(_pax_records(body[:size]))
            continue
        size = int(pax["size"]) if "size" in pax else size
        data_at = reader.pos
        body = reader.read((size + 511) // 512 * 512)
        if len(body) < size:
            raise TarBroken("truncated_tar", f"tar member {long_name or pax.get('path') or name} runs past "
                                             f"the end of the file", long_name or pax.get("path") or name)
        if kind in (b"0", b"\0", b"7"):
            yield start, long_name or pax.get("path") or name, data_at, size, body[:size]
        elif kind not in (b"5", b"1", b"2", b"3", b"4", b"6", b"g"):
            raise TarBroken("bad_tar", f"unknown tar member type {kind!r} at byte {at}")
        long_name, pax, start = None, {}, None


def stream_shard(url: str, settings: RemoteSettings, first: int = 0, stop: int | None = None,
                 sleep=time.sleep) -> Iterator[StreamSample | StreamError]:
    """The samples of one remote tar, in order, from sample index `first` (earlier ones are streamed
    past) to `stop` (exclusive; None: the end). A failure is retried from the first byte of the sample
    it broke in; after `settings.retries` failures in a row, one StreamError ends the shard."""
    index, offset, failures = 0, 0, 0                 # next sample, its first byte, failures in a row
    done: set[str] = set()                            # keys already passed: seen again, a split sample

    def sample(index: int, key: str, members: list, data: list) -> StreamSample | StreamError:
        if key in done:
            return StreamError(index, key, "split_sample", split_sample_message(url, key))
        twice = duplicate_member_message(url, key, [m[0] for m in members])
        if twice is not None:
            return StreamError(index, key, "duplicate_member", twice)
        return StreamSample(index, key, tuple(members), tuple(data))

    while stop is None or index < stop:
        reader = None
        key, members, data = None, [], []
        try:
            reader = _Reader(url, settings, offset)
            for start, name, at, size, body in _members(reader):
                m = _KEY_EXT.match(name)
                if m is None:
                    continue
                base, ext = m.groups()
                if base != key and key is not None:
                    if index >= first:
                        yield sample(index, key, members, data)
                    done.add(key)
                    index, offset, failures = index + 1, start, 0
                    members, data = [], []
                    if stop is not None and index >= stop:
                        return
                key = base
                members.append((ext.lower(), at, size))
                data.append(body)
            if key is not None:
                if index >= first:
                    yield sample(index, key, members, data)
                index += 1
            return
        except TarBroken as e:                       # as `reader.scan_shard`: the sample before is whole
            broken = e.name and _KEY_EXT.match(e.name)
            if broken and key is not None and broken.group(1) != key:
                if index >= first:
                    yield StreamSample(index, key, tuple(members), tuple(data))
                index, key = index + 1, broken.group(1)
            yield StreamError(index, key or "", e.reason, f"{url}: {e}")
            return
        except FileNotFoundError as e:
            yield StreamError(index, key or "", REMOTE_ERROR, f"{url}: not found ({e})")
            return
        except ValueError as e:                      # a header that does not parse (a flipped byte, an HTML page
            yield StreamError(index, key or "", "bad_tar", f"{url}: not a tar from byte {offset} on ({e})")
            return                                   # served as 200): a bad shard, as locally, not a crash
        except Cut as e:
            failures += 1
            if failures > settings.retries:
                yield StreamError(index, key or "", REMOTE_ERROR,
                                  f"{url}: skipped the rest of the shard from sample {index} after "
                                  f"{failures} failed attempts ({e})")
                return
            sleep(settings.backoff * 2 ** (failures - 1))
        finally:
            if reader is not None:
                reader.close()


# ---------------------------------------------------------------------------------------------
# the per-slot stream of a remote source (replay, placeholders, fetching)
# ---------------------------------------------------------------------------------------------
@dataclass
class RemoteContext:
    """What a slot's stream knows about remote shards. `known`: url -> [refs, error index, reason,
    message] for every remote shard read to its end (from the pipeline state); `learned`: the ones
    this stream completed since the last report; `replaying`: the consumer is still skipping to its
    start position, so shards with known counts yield placeholders instead of being read."""

    settings: RemoteSettings = field(default_factory=RemoteSettings)
    known: dict[str, list] = field(default_factory=dict)
    learned: dict[str, list] = field(default_factory=dict)
    replaying: bool = False
    pending: dict[tuple[str, int], int] = field(default_factory=dict)   # placeholders not yet consumed
    # shards this stream could not open at all (a dead server, a failing pipe), with the error: later passes
    # count them again at once instead of paying the retries and back-off each time (a dead server was a
    # silent stall of minutes to hours before the run's error checks could see it)
    dead: dict[str, tuple[str, str]] = field(default_factory=dict)

    def drain(self) -> dict[str, list]:
        out, self.learned = self.learned, {}
        return out

    def consumed(self, ref) -> None:
        """The consumer took `ref` while replaying."""
        if is_placeholder(ref):
            k = (ref.shard, ref.index)
            self.pending[k] -= 1
            if not self.pending[k]:
                del self.pending[k]

    def go_live(self) -> dict[tuple[str, int], object]:
        """End of the replay: read the samples that placeholders still stand for (in shuffle buffers),
        each shard streamed up to the last of them. Returns (url, index) -> ref with data."""
        self.replaying = False
        wanted: dict[str, set[int]] = {}
        for url, i in self.pending:
            wanted.setdefault(url, set()).add(i)
        fetched: dict[tuple[str, int], object] = {}
        for url, idx in wanted.items():
            for s in stream_shard(url, self.settings, min(idx), max(idx) + 1):
                if isinstance(s, StreamError):
                    for i in idx:
                        if i >= s.index:
                            fetched[(url, i)] = SampleRef(url, s.key, (), s.reason, s.message, index=i)
                    break
                if s.index in idx:
                    fetched[(url, s.index)] = SampleRef(url, s.key, s.members, data=s.data, index=s.index)
        self.pending.clear()
        return fetched


def is_placeholder(ref) -> bool:
    return ref.index >= 0 and ref.data is None and not ref.error


def shard_refs(url: str, ctx: RemoteContext, epoch: int) -> Iterator:
    """The refs of one remote shard: placeholders while replaying a shard of known size, real refs
    (with their bytes) otherwise; the shard's size is learned when it is read to its end."""
    known = ctx.known.get(url)
    i = 0
    if known is not None:
        n, err_at, reason, message = known
        while ctx.replaying and i < n:
            if i == err_at:
                yield SampleRef(url, "", (), reason, message, epoch=epoch, index=i)
            else:
                ctx.pending[(url, i)] = ctx.pending.get((url, i), 0) + 1
                yield SampleRef(url, "", (), epoch=epoch, index=i)
            i += 1
        if i >= n:
            return
    if i == 0 and url in ctx.dead:
        reason, message = ctx.dead[url]
        yield SampleRef(url, "", (), reason, message, epoch=epoch, index=0)
        return
    err_at, reason, message = None, None, None
    for s in stream_shard(url, ctx.settings, first=i):
        if isinstance(s, StreamError):
            err_at, reason, message = s.index, s.reason, s.message
            if s.index == 0 and s.reason == REMOTE_ERROR:
                ctx.dead[url] = (reason, message)
                print(f"warning: {message}; counted as {REMOTE_ERROR} (this reader does not try it again)",
                      file=sys.stderr, flush=True)
            yield SampleRef(url, s.key, (), s.reason, s.message, epoch=epoch, index=s.index)
            i = s.index + 1
            break
        yield SampleRef(url, s.key, s.members, epoch=epoch, data=s.data, index=s.index)
        i = s.index + 1
    if known is None:
        ctx.learned[url] = ctx.known[url] = [i, err_at, reason, message]


def resolve(ref, fetched: dict) -> object:
    """A placeholder's real ref (read by `RemoteContext.go_live`), in the placeholder's epoch."""
    real = fetched.get((ref.shard, ref.index))
    if real is None:
        return replace(ref, error=REMOTE_ERROR, message=f"{ref.shard}: sample {ref.index} is no longer in the shard")
    return replace(real, epoch=ref.epoch)
