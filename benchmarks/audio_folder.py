"""`--bench audio-folder:DIR`: MARBLE-style probes of a music encoder on a user's folder of labelled audio.

    vlm eval --model runs/mert-tiny/final --bench audio-folder:/data/my-instruments --out runs/eval

DIR/labels.csv has a header and one row per clip: `path,label` or `path,label,split` (split: train | val |
test). Paths are relative to DIR (or absolute); any format soundfile reads (flac, wav, ogg ...), any
sample rate and channel count (the encoder's preprocess resamples and downmixes). Without a split
column a fixed stratified split is used: per label, a quarter of its files (at least one when it has
two or more) go to test, chosen by a hash of the path, the rest to train. The probe fits on train and
is scored on test; clips that cannot be used (missing file, undecodable, non-finite, shorter than
0.1 s) are skipped and counted by reason in the result's metrics (`skipped_<reason>`), and `vlm eval`
prints the counts.

A malformed labels.csv (no such file, a bad header, an empty path or label, an unknown split, fewer
than two labels in train, no test clip) is a one-line UserError naming the file and row.
"""
from __future__ import annotations

import csv
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

from vlm.errors import UserError

LABELS_FILE = "labels.csv"
SPLITS = ("train", "val", "test")
PREFIX = "audio-folder:"


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    label: str
    split: str
    row: int                                   # line number in labels.csv (for messages)

    @property
    def key(self) -> str:
        return f"row{self.row}:{self.path.name}"


def _fixed_split(paths_by_label: dict[str, list[str]]) -> dict[str, str]:
    """path -> split: per label, a quarter of the files (by a hash of the path) to test."""
    out = {}
    for _, paths in sorted(paths_by_label.items()):
        ordered = sorted(paths, key=lambda p: (zlib.crc32(p.encode()), p))
        n_test = max(1, round(len(ordered) / 4)) if len(ordered) >= 2 else 0
        out.update({p: "test" if i < n_test else "train" for i, p in enumerate(ordered)})
    return out


def read_labels(folder: str | Path, need: tuple[str, ...] = ("train",)) -> list[LabelledClip]:
    """The rows of DIR/labels.csv with their splits (a one-line UserError for a malformed file, a file
    listed twice, or no row of a split in `need`; train needs two labels)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"{PREFIX}{folder}: not a folder")
    csv_path = root / LABELS_FILE
    if not csv_path.is_file():
        raise UserError(f"{root}: no {LABELS_FILE} (a header `path,label[,split]` and one row per audio file)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:       # -sig: Excel's "CSV UTF-8" BOM
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{csv_path}: cannot read ({e})") from None
    if not rows:
        raise UserError(f"{csv_path}: empty (expected a header `path,label[,split]`)")
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["path", "label"] or header[2:] not in ([], ["split"]):
        raise UserError(f"{csv_path}: header must be `path,label` or `path,label,split`, got {','.join(rows[0])!r}")
    has_split = len(header) == 3
    parsed: list[tuple[int, str, str, str | None]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{csv_path}: row {line} has {len(row)} fields, the header {len(header)}")
        # one text, one label: "café" typed (NFC) and from a macOS file name or some exports (NFD) were two
        path, label = row[0].strip(), unicodedata.normalize("NFC", row[1].strip())
        if not path or not label:
            raise UserError(f"{csv_path}: row {line}: empty {'path' if not path else 'label'}")
        if "\0" in path:
            raise UserError(f"{csv_path}: row {line}: the path holds a NUL character")
        split = row[2].strip().lower() if has_split else None
        if has_split and split not in SPLITS:
            raise UserError(f"{csv_path}: row {line}: split {row[2]!r} is not one of {list(SPLITS)}")
        parsed.append((line, path, label, split))
    if not parsed:
        raise UserError(f"{csv_path}: no rows after the header")
    spellings: dict[str, dict[str, list[int]]] = {}
    for line, _, label, _ in parsed:      # `Piano` and `piano`: two classes, half the clips always "wrong"
        spellings.setdefault(label.casefold(), {}).setdefault(label, []).append(line)
    for forms in spellings.values():
        if len(forms) > 1:
            named = " and ".join(f"{k!r} (rows {', '.join(map(str, v[:3]))}{' ...' if len(v) > 3 else ''})"
                                 for k, v in list(forms.items())[:2])
            raise UserError(f"{csv_path}: labels {named} differ only in case; write each label one way")
    if not has_split:
        by_label: dict[str, list[str]] = {}
        for _, path, label, _ in parsed:
            by_label.setdefault(label, []).append(path)
        fixed = _fixed_split(by_label)
        parsed = [(line, path, label, fixed[path]) for line, path, label, _ in parsed]
    clips = [LabelledClip(Path(p) if Path(p).is_absolute() else root / p, label, split, line)
             for line, p, label, split in parsed]
    seen: dict[Path, int] = {}
    for c in clips:                 # one file twice: a test clip also in train, or a file under two labels
        try:
            where = c.path.resolve()    # a link to a file listed too is that file
        except (OSError, RuntimeError):  # a link loop (3.11 raises RuntimeError), a name too long: read as missing
            where = c.path.absolute()
        if where in seen:
            raise UserError(f"{csv_path}: rows {seen[where]} and {c.row} name the same file ({c.path.name}); "
                            f"list each file once")
        seen[where] = c.row
    if "train" in need:
        train_labels = {c.label for c in clips if c.split == "train"}
        if len(train_labels) < 2:
            raise UserError(f"{csv_path}: the train split has {len(train_labels)} label(s); a probe needs at least 2")
    for split in need:
        if split != "train" and not any(c.split == split for c in clips):
            raise UserError(f"{csv_path}: no {split} clips (give a split column with {split} rows"
                            f"{' or at least two files per label' if split == 'test' else ''})")
    return clips
