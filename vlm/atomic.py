"""Crash-safe writes: a file or folder is the old one or the new one, never a torn mix.

    write_text(path, text)                     # a file: written as `.NAME.tmp-PID`, then renamed over NAME
    write_file(path, lambda tmp: df.to_parquet(tmp))
    write_folder(path, lambda tmp: model_parts_into(tmp))   # a folder: filled beside it, then swapped in

A write that fails (a full disk, a read-only file system) leaves no temporary file behind. A process killed
inside a write leaves `.NAME.tmp-PID` (a file) or `.NAME.old-PID` (the previous folder, moved aside for the
swap): `remove_torn` / `recover_replaced` clean them up once that process is gone, putting a folder back
where a kill between the swap's two renames left none.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm.errors import UserError, is_utf8, text_of

TMP_MARK, OLD_MARK = ".tmp-", ".old-"


def this_host() -> str:
    import socket
    return socket.gethostname()


def owner_tag() -> str:
    """`PID@HOST` of this process: what a temporary folder's name carries after its prefix (+ `-XXXX`)."""
    return f"{os.getpid()}@{this_host()}"


def left_by_dead_process(tag: str) -> bool:
    """Whether `PID@HOST-XXXX` (a temporary folder's name after its prefix) names a process of this host that
    no longer runs (its folder is a leftover; one of another host of a shared file system cannot be judged)."""
    pid, _, rest = tag.partition("@")
    return pid.isdigit() and rest.rpartition("-")[0] == this_host() and not running(int(pid))


def held_by_live_process(tag: str) -> bool:
    """Whether `PID@HOST-XXXX` names a process of this host that still runs (its folder is in use, however old)."""
    pid, _, rest = tag.partition("@")
    return pid.isdigit() and rest.rpartition("-")[0] == this_host() and running(int(pid))


def running(pid: int) -> bool:
    """Whether process `pid` runs on this machine (this process counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                          # another user's process: running
        return True
    return True


# ------------------------------------------------------------------------------------------------ files
def write_file(path: str | os.PathLike, write: Callable[[Path], Any], fsync: bool = False,
               keep_mode: bool = False) -> Path:
    """`write(tmp)` to a temporary sibling, then renamed over `path`; the temporary is removed if it fails.
    fsync: on disk before the rename (a log a resume truncates); keep_mode: the replaced file's mode."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if keep_mode and path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str, **kw: Any) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), **kw)


def remove_torn(files: Any) -> list[Path]:
    """Of these paths, the `.NAME.tmp-PID` files of processes no longer running (killed inside write_file)."""
    gone = []
    for p in files:
        pid = Path(p).name.rpartition(TMP_MARK)[2]
        if pid.isdigit() and not running(int(pid)) and Path(p).is_file():
            Path(p).unlink(missing_ok=True)
            gone.append(Path(p))
    return gone


def fsync_files(folder: Path, names: Any = None) -> None:
    """The files under `folder` (or only these `names` in it), and the folders holding them, on disk: a
    checkpoint is renamed into place after this, so a power loss cannot leave a complete-looking one whose
    weights are empty."""
    paths = [folder / n for n in names] if names is not None else [p for p in folder.rglob("*") if p.is_file()]
    for p in paths:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    for d in {p.parent for p in paths} | {folder}:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ folders
def replace_dir(src: Path, dst: Path) -> None:
    """Put folder src at dst atomically enough: dst is either the old or the new folder, never a mix (a kill
    between the two renames leaves the old one as `.NAME.old-PID`: `recover_replaced` puts it back)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}{OLD_MARK}{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)         # left by a killed process that had this process id
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def recover_replaced(parent: Path, name: str | None = None) -> list[Path]:
    """What a process killed inside `replace_dir` left in `parent` (for folder `name` only, or for every one):
    its `.NAME.old-PID` goes back to NAME when NAME is missing (killed between the two renames: the folder
    would be gone), else it is removed. Folders of a process still running are left alone. Returns the
    folders put back or removed."""
    done = []
    if not parent.is_dir():
        return done
    for p in parent.iterdir():
        head, mark, pid = p.name.rpartition(OLD_MARK)
        if not (mark and head.startswith(".") and pid.isdigit() and p.is_dir()) or running(int(pid)):
            continue
        dst = parent / head[1:]
        if name is not None and dst.name != name:
            continue
        if dst.exists():
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.replace(p, dst)
        done.append(p)
    return done


def default_permissions(folder: Path) -> None:
    """The modes a plain mkdir / open would give under the umask: mkdtemp makes the folder 0700 and
    safetensors writes 0600, so a model saved on a shared file system was unreadable by other users."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _remove_torn_folders(parent: Path, name: str) -> None:
    """`.NAME.tmp-PID@HOST-XXXX` folders of write_folder calls killed on this host (a model's worth of disk)."""
    prefix = f".{name}{TMP_MARK}"
    for p in parent.glob(f"{prefix}*@*"):
        if left_by_dead_process(p.name[len(prefix):]) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _carry_over(old: Path, new: Path) -> None:
    """The entries of folder `old` that `new` lacks (a user's README, an older transformers' tokenizer file, a
    `.gitattributes`), copied into `new` before it replaces `old`: a save writes its own files over, as
    transformers' save_pretrained does, and keeps the rest. Copied, not moved: a kill before the swap leaves
    `old` whole."""
    if not old.is_dir():
        return
    for name in sorted(set(os.listdir(old)) - set(os.listdir(new))):
        src = old / name
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, new / name, symlinks=True)
        else:
            shutil.copy2(src, new / name, follow_symlinks=False)


def write_folder(path: str | os.PathLike, write) -> Path:
    """Fill a temporary sibling folder (`.NAME.tmp-PID@HOST-XXXX`) with `write(tmp)`, then put it at `path`
    (atomic enough); what a killed call left is removed by the next one. An existing folder keeps the files the
    new one lacks (`_carry_over`); a symbolic link is written through (its target replaced, the link kept); a
    file at `path` is refused."""
    given, path = Path(path), Path(os.path.abspath(path))     # "." has no name to put a sibling beside
    if path.is_symlink():          # written where it points (swapped, the link itself became a folder)
        path = Path(os.path.realpath(path))
    if Path.cwd() == path or path in Path.cwd().parents:
        raise UserError(f"cannot replace {path}: it is the current folder (or holds it); write to a new folder")
    if not is_utf8(str(path)):     # safetensors and tokenizers write UTF-8 paths only: a traceback half-way
        raise UserError(f"{text_of(str(path))}: the path is not UTF-8 text; give one that is")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: a file, not a folder; give a new path (the file is not written over)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_replaced(path.parent, path.name)
        _remove_torn_folders(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}{owner_tag()}-", dir=path.parent))
    except OSError as e:                       # a file where a folder of the path should be, no permission ...
        raise UserError(f"cannot create {path}: {e.strerror or e} ({e.filename or path.parent})") from None
    try:
        write(tmp)
        default_permissions(tmp)
        _carry_over(path, tmp)
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return given
