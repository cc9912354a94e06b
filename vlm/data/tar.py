"""The tar format as the reader sees it: 512-byte headers (ustar / GNU / pax), webdataset's key rule,
and the reference to one sample's members (`SampleRef`). Shared by local scanning (`vlm.data.reader`)
and remote streaming (`vlm.data.remote`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie in its shard; `error` marks a shard that breaks at this sample."""

    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]  # (extension, data offset, size)
    error: str | None = None                   # "truncated_tar" | "bad_tar" | "remote_error"
    message: str = ""
    epoch: int = 0                             # the pass over the data it was read in (per-sample seeds)
    data: tuple[bytes, ...] | None = None      # remote shards: the members' bytes (read as the stream passed)
    index: int = -1                            # remote shards: the sample's position in its shard

    def only(self, extensions: set[str]) -> SampleRef:
        """The same sample with only the members of these extensions (bytes kept along)."""
        keep = [i for i, m in enumerate(self.members) if m[0] in extensions]
        return dataclasses.replace(self, members=tuple(self.members[i] for i in keep),
                                   data=None if self.data is None else tuple(self.data[i] for i in keep))


# webdataset's key rule (`tariterators.base_plus_ext`), compiled once: "dir/k.0.jpg" -> ("dir/k", "0.jpg")
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class TarBroken(Exception):
    def __init__(self, reason: str, message: str, name: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.name = name  # the member it broke in, when its header could still be read


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for big numbers
        return int.from_bytes(field[1:], "big")
    field = field.split(b"\0", 1)[0].strip()
    try:
        return int(field, 8) if field else 0
    except ValueError:            # a file that is no tar (a YAML given as a shard was a traceback: a review)
        raise TarBroken("bad_tar", f"not a tar: a header number field reads {field[:12]!r}") from None


GZIP_MESSAGE = "a gzip-compressed tar (.tar.gz); shards are read uncompressed: gunzip it"


def check_header(h: bytes, pos: int) -> None:
    """Raise TarBroken("bad_tar") unless the block at `pos` can be a tar header (a short block is left to the
    caller, which calls it truncated). A gzip magic number at byte 0 is named as such: a .tar.gz is the
    usual cause, not corruption.
    """
    if pos == 0 and h[:2] == b"\x1f\x8b":
        raise TarBroken("bad_tar", GZIP_MESSAGE)
    if len(h) < 512:
        return
    try:
        ok = _octal(h[148:156]) == sum(h) - sum(h[148:156]) + 256          # checksum field = spaces
    except TarBroken:                                                      # not even a number there
        ok = False
    if not ok:
        raise TarBroken("bad_tar", f"corrupt tar header at byte {pos}")


def tar_members(f, file_size: int) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of the regular files of an open tar, reading the 512-byte headers only.

    ustar / GNU / pax ('x' records override path and size; 'L' GNU long names) as `tarfile` reads
    them, ~10x faster. Raises TarBroken("truncated_tar" | "bad_tar") where the archive stops making sense.
    """
    fd = f.fileno()
    pos, long_name, pax = 0, None, {}
    while True:
        h = os.pread(fd, 512, pos)
        if h == bytes(512):
            return  # the end-of-archive blocks
        if not h and pos == 0:
            raise TarBroken("bad_tar", "empty file")
        check_header(h, pos)
        if len(h) < 512:  # a tar always ends with zero blocks: without them the last sample may be cut
            raise TarBroken("truncated_tar", f"tar cut short at byte {pos + len(h)} (no end-of-archive blocks)")
        size, kind = _octal(h[124:136]), h[156:157]
        data = pos + 512
        if data + size > file_size:
            name = long_name or pax.get("path") or h[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            raise TarBroken("truncated_tar", f"tar member {name} runs past the end of the file", name)
        pos = data + (size + 511) // 512 * 512
        if kind in (b"x", b"L"):
            body = os.pread(fd, size, data)
            if kind == b"L":
                long_name = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                try:
                    pax = dict(_pax_records(body))
                except ValueError as e:
                    raise TarBroken("bad_tar", f"bad pax header at byte {data - 512}: "
                                               f"{e}") from None
            continue
        if kind in (b"0", b"\0", b"7"):
            name = long_name or pax.get("path")
            if name is None:
                name = h[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = h[345:500].split(b"\0", 1)[0] if h[257:262] == b"ustar" else b""
                if prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    size = -1
                if size < 0 or data + size > file_size:   # (a negative size stepped back to this header: a loop)
                    raise TarBroken("bad_tar" if size < 0 else "truncated_tar",
                                    f"tar member {name}: pax size {pax['size']!r} does not fit the file", name)
                pos = data + (size + 511) // 512 * 512
            yield name, data, size
        long_name, pax = None, {}


def _pax_records(body: bytes) -> Iterator[tuple[str, str]]:
    """`length key=value\n` records; ValueError where a length does not step forward within the body (a loop)."""
    i = 0
    while i < len(body) and body[i:i + 1] != b"\0":
        sp = body.index(b" ", i)                                  # (ValueError when there is none)
        n = int(body[i:sp])
        if n <= sp - i or i + n > len(body):
            raise ValueError(f"record length {n} at offset {i}")
        key, _, value = body[sp + 1:i + n - 1].partition(b"=")
        yield key.decode("utf-8", "replace"), value.decode("utf-8", "surrogateescape")
        i += n


def duplicate_member_message(where: str, key: str, exts: list[str]) -> str | None:
    """Two members of one extension under one key (two samples of one key back to back: the second would
    overwrite the first when grouped), or None."""
    twice = next((e for i, e in enumerate(exts) if e in exts[:i]), None)
    if twice is None:
        return None
    return f"{where}: key {key!r} has two .{twice} members (two samples of one key?); keys must be unique in a shard"


def split_sample_message(where: str, key: str) -> str:
    """A key seen again after other members (`tar cf x.tar dir` writes directory order, not name order)."""
    return (f"{where}: key {key!r} appears again after other members: a sample's files must be adjacent in the "
            "tar (write it with `tar --sort=name`)")
