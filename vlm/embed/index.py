"""`vlm index` / `vlm search`: FAISS indexes over an export (`vlm embed`) and queries against them.

    vlm index runs/emb [--memory 4G] [--kind auto|flat|hnsw|ivfpq]        # one index per *_emb folder
    vlm search runs/emb --text "a red circle" [-k 10] [--instruction "Find me an everyday image ..."]
    vlm search runs/emb --image query.jpg [--target text]
    vlm search runs/emb --recall --instruction "..."    # caption -> image Recall@1/5/10 over the export

    index = open_index("runs/emb")                        # Python: the same
    hits = index.search_text("a red circle", k=10)        # [{rank, key, score, caption, source, row}]

Which index (inner product on L2-normalised vectors = cosine), from the count n, the dimension d and a
memory budget M (autofaiss's rule of thumb, `get_optimal_index_keys_v2`, made simpler):
  - n <= `exact_max` (50,000): Flat, exact search;
  - else HNSW with M links per node (min(32, (M / n - 4d) / 8), at least 8) when n (4d + 8M) bytes fit;
  - else IVF-PQ: 4 sqrt(n) lists (a power of 2), the largest number of 8-bit sub-quantisers dividing d
    whose codes (plus ids) fit, trained on up to 256 vectors per list.
The search depth (HNSW efSearch, IVF nprobe) is then raised until recall@10 against exact search on 200
of the vectors reaches `target_recall` (0.97), the choice and the measured recall are printed and saved
with the index (`index/<modality>.json`). Exact search gives the same top-k as numpy brute force.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm.atomic import write_file, write_text
from vlm.embed.export import PREFIX, emb_dir, npy_shape, part_name
from vlm.errors import UserError
from vlm.modalities import MediaError, short_error

KINDS = ("auto", "flat", "hnsw", "ivfpq")
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str | int) -> int:
    """'4G' -> 4 * 2**30 (autofaiss's convention), '512M', '1e9', 1000."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise UserError(f"memory budget {text!r} must be >= 1 byte")
        return text
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in UNITS else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise UserError(f"memory budget {text!r}: expected a size like 4G, 512M or 1000000") from None
    if not math.isfinite(value):
        raise UserError(f"memory budget {text!r}: expected a finite size like 4G, 512M or 1000000")
    if value <= 0 or value * UNITS[unit] < 1:
        raise UserError(f"memory budget {text!r} must be >= 1 byte")
    if value * UNITS[unit] > 2**60:                 # 1 EiB: a typo, not a machine
        raise UserError(f"memory budget {text!r}: more than 1 EiB; give a size like 4G")
    return int(value * UNITS[unit])


# ------------------------------------------------------------------------------------------------ reading an export
def export_parts(folder: Path, modality: str) -> list[Path]:
    d = Path(folder) / emb_dir(modality)
    return sorted(d.glob(f"{emb_dir(modality)}_*.npy"))


def modalities_of(folder: Path) -> list[str]:
    return [m for m in PREFIX if export_parts(folder, m)]


def size_text(n: int) -> str:
    """Bytes in the largest binary unit they reach, to one decimal: 1 KiB, 3.5 MiB, 4 GiB."""
    for unit in ("T", "G", "M", "K"):
        if n >= UNITS[unit]:
            return f"{n / UNITS[unit]:.1f} {unit}iB".replace(".0 ", " ")
    return f"{n} bytes"


def check_finished(folder: Path, run: dict) -> None:
    """A `vlm embed` export still under way or killed part-way is not indexed (a search would miss its later
    parts without a word): every planned part written and the summary of the finished export there. An
    export whose run.json plans no parts (another tool's layout) is taken as it is."""
    planned = run.get("parts")
    if not isinstance(planned, int):
        return
    names = {part_name(i, planned) for i in range(planned)}
    modalities = run.get("modalities") if isinstance(run.get("modalities"), list) else []
    for d, ext in [*((emb_dir(m), "npy") for m in modalities if m in PREFIX), ("metadata", "parquet")]:
        extra = sorted(p.name for p in (folder / d).glob(f"{d}_*.{ext}")
                       if p.name[len(d) + 1:-len(ext) - 1] not in names)
        if extra:                       # a copy (`_1 (copy)`) or another export's part: indexed, it adds rows twice
            raise UserError(f"{folder / d}: {extra[0]} is not a part of this export (run.json plans {planned} "
                            f"part(s), {d}_{part_name(0, planned)}.{ext} ...); move it out, then index")
    done = len(list((folder / "metadata").glob("metadata_*.parquet")))
    if done < planned or not (folder / "stats" / "summary.json").is_file():
        raise UserError(f"{folder}: the export is not finished ({done} of {planned} parts written); rerun the same "
                        f"`vlm embed` command to finish it (finished parts are kept), then index")
    for m in modalities:                # a part copied or deleted away: an index of the rest would miss it silently
        if m in PREFIX and len(export_parts(folder, m)) != done:
            raise UserError(f"{folder / emb_dir(m)}: {len(export_parts(folder, m))} embeddings parts for {done} "
                            f"metadata parts; rerun the same `vlm embed` command to redo the missing ones, then index")


def run_digest(folder: Path) -> str:
    """The identity of the export an index is built from: a digest of its run.json (model, instruction, input,
    plan), which a new export into the folder writes anew."""
    import hashlib
    return hashlib.sha256((Path(folder) / "run.json").read_bytes()).hexdigest()[:16]


def read_run(folder: Path) -> dict:
    path = Path(folder) / "run.json"
    if not Path(folder).is_dir():
        raise UserError(f"embedding folder not found: {folder}")
    if not path.is_file():
        raise UserError(f"{folder}: no run.json (not a `vlm embed` output folder)")
    try:
        run = json.loads(path.read_text())
    except ValueError:                              # invalid JSON, or not text at all
        raise UserError(f"{path}: invalid JSON") from None
    if not isinstance(run, dict):
        raise UserError(f"{path}: not a JSON object")
    return run


def part_rows(part: Path, dim: int | None = None) -> int:
    """The rows of an embeddings part, read from its header and checked against its size and, given
    run.json's `dim`, its width: a one-line UserError naming the part when it is damaged."""
    try:
        shape, _ = npy_shape(part)
    except (OSError, ValueError) as e:
        raise UserError(f"{part}: unreadable ({short_error(e)}); rerun `vlm embed` to redo the part") from None
    if len(shape) != 2:
        raise UserError(f"{part}: shape {list(shape)}, expected [rows, dim]")
    if dim is not None and shape[1] != dim:
        raise UserError(f"{part}: {shape[1]} values per row, but run.json says dim {dim}")
    return shape[0]


def part_metadata(folder: Path, part: Path, modality: str) -> Path:
    """The metadata parquet of an embeddings part (img_emb/img_emb_N.npy -> metadata/metadata_N.parquet)."""
    return Path(folder) / "metadata" / f"metadata_{part.stem.removeprefix(emb_dir(modality) + '_')}.parquet"


def check_metadata(meta: Path, rows: int) -> None:
    """A part's metadata parquet exists, reads and holds `rows` rows: a one-line UserError naming it if not."""
    import pyarrow.parquet as pq
    if not meta.is_file():
        raise UserError(f"{meta}: missing; rerun `vlm embed` to redo the part")
    try:
        have = pq.read_metadata(meta).num_rows
    except (OSError, ValueError) as e:              # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{meta}: unreadable ({short_error(e)}); rerun `vlm embed` to redo the part") from None
    if have != rows:
        raise UserError(f"{meta}: {have} rows, but its embeddings part has {rows}; rerun `vlm embed` to redo the part")


def load_vectors(parts: list[Path], dim: int | None = None) -> tuple[np.ndarray, list[int]]:
    """All parts as one float32 [n, d] array, and the rows of each part; each part is checked first
    (`part_rows`: damaged, or not `dim` wide)."""
    for p in parts:
        part_rows(p, dim)
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    dims = {a.shape[1] for a in arrays if a.ndim == 2}
    if len(dims) != 1 or any(a.ndim != 2 for a in arrays):
        raise UserError(f"{parts[0].parent}: parts of different shapes {sorted({a.shape for a in arrays})}")
    return np.ascontiguousarray(np.concatenate(arrays).astype(np.float32)), [a.shape[0] for a in arrays]


# ------------------------------------------------------------------------------------------------ choosing
@dataclass
class Choice:
    kind: str                      # flat | hnsw | ivfpq
    factory: str                   # the faiss index factory string
    params: dict[str, int]
    bytes: int                     # estimated index size

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.factory}{f' ({extra})' if extra else ''}, ~{self.bytes / 2**20:.1f} MiB"


def choose(n: int, d: int, budget: int, kind: str = "auto", exact_max: int = 50_000) -> Choice:
    """The index for n vectors of dimension d within `budget` bytes (see the module docstring)."""
    if kind not in KINDS:
        raise UserError(f"index kind {kind!r}: choose from {', '.join(KINDS)}")
    flat = n * 4 * d
    if kind == "flat" or (kind == "auto" and n <= exact_max):
        if flat > budget and kind == "flat":
            raise UserError(f"an exact index of {n:,} x {d} needs {size_text(flat)} > the budget {size_text(budget)}")
        if flat <= budget:
            return Choice("flat", "Flat", {}, flat)
    links = int((budget / n - 4 * d) / 8)
    if kind == "hnsw" or (kind == "auto" and links >= 8):
        m = max(8, min(32, links))
        if n * (4 * d + 8 * m) > budget:    # asked for by name: built as asked, and the overrun said
            print(f"warning: an HNSW index of {n:,} x {d} needs {size_text(n * (4 * d + 8 * m))}, over the budget "
                  f"{size_text(budget)}; built as asked (--kind ivfpq compresses)", file=sys.stderr)
        return Choice("hnsw", f"HNSW{m}", {"M": m, "efConstruction": 80}, n * (4 * d + 8 * m))
    nlist = 2 ** max(4, min(16, round(math.log2(4 * math.sqrt(n)))))
    if n < max(256, nlist):             # PQ's 8-bit codebooks train 256 centroids; IVF one per list
        small = n * (4 * d + 64)
        raise UserError(f"an IVF-PQ index needs at least {max(256, nlist):,} vectors to train, this one has {n:,}: "
                        + ("use --kind flat (exact) or hnsw" if small <= budget else
                           f"an exact index of so few needs {size_text(flat)}; give --memory of at least that"))
    fits = [m for m in range(1, d + 1) if d % m == 0 and n * (m + 8) + nlist * d * 4 <= budget]
    if not fits:
        raise UserError(f"{n:,} vectors of dimension {d} do not fit in {size_text(budget)} even as "
                        f"IVF-PQ with one byte per vector; give more --memory")
    m = max(x for x in fits if x <= max(1, d // 2)) if any(x <= max(1, d // 2) for x in fits) else min(fits)
    return Choice("ivfpq", f"IVF{nlist},PQ{m}x8", {"nlist": nlist, "m": m}, n * (m + 8) + nlist * d * 4)


def faiss_ivf(index):
    import faiss
    return faiss.extract_index_ivf(index)


def _exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    import faiss
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    return flat.search(q, k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found top-k & true top-k| / k (faiss's -1 padding, a missing hit, never counts)."""
    k = truth.shape[1]
    return float(np.mean([len((set(a) - {-1}) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist())]))


def tune(index, choice: Choice, x: np.ndarray, target: float, k: int = 10, queries: int = 200, seed: int = 0
         ) -> tuple[dict[str, int], float]:
    """Raise the search depth (efSearch / nprobe) until recall@k against exact search on sampled vectors
    reaches `target` (or the depth runs out); returns the search parameters and the recall reached."""
    import faiss
    if choice.kind == "flat":
        return {}, 1.0
    rng = np.random.default_rng(seed)
    k = min(k, len(x))                  # fewer vectors than k: every one is a true neighbour
    q = x[rng.choice(len(x), size=min(queries, len(x)), replace=False)]
    truth = _exact_topk(x, q, k)
    if choice.kind == "hnsw":
        options, name = [16, 32, 64, 128, 256, 512, 1024], "efSearch"
    else:
        options, name = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], "nprobe"
        options = [o for o in options if o <= choice.params["nlist"]] or [choice.params["nlist"]]
    recall = 0.0
    for value in options:
        if choice.kind == "hnsw":
            index.hnsw.efSearch = max(value, k)
        else:
            faiss.extract_index_ivf(index).nprobe = value
        recall = recall_at(index.search(q, k)[1], truth)
        if recall >= target:
            break
    return {name: max(value, k) if choice.kind == "hnsw" else value}, recall


# ------------------------------------------------------------------------------------------------ building
def build_index(folder: str | os.PathLike, memory: str | int = "4G", kind: str = "auto", exact_max: int = 50_000,
                target_recall: float = 0.97, quiet: bool = False) -> dict[str, dict]:
    """An index per `*_emb` folder of an export, at <folder>/index/<modality>.index + .json; returns the infos."""
    import faiss
    folder = Path(folder)
    run = read_run(folder)
    check_finished(folder, run)
    budget = parse_bytes(memory)
    have = modalities_of(folder)
    if not have:
        raise UserError(f"{folder}: no embeddings (*_emb/*.npy); run `vlm embed` first")
    dim = run.get("dim") if isinstance(run.get("dim"), int) else None
    (folder / "index").mkdir(exist_ok=True)
    infos = {}
    for m in have:
        parts = export_parts(folder, m)
        x, rows = load_vectors(parts, dim)                  # each part's header, size and width checked first
        metadata = [part_metadata(folder, p, m) for p in parts]
        for meta, n_rows in zip(metadata, rows):
            check_metadata(meta, n_rows)
        n, d = x.shape
        if n == 0:
            raise UserError(f"{folder / emb_dir(m)}: no vectors (every sample was skipped)")
        choice = choose(n, d, budget, kind, exact_max)
        if choice.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, choice.params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = choice.params["efConstruction"]
            index.add(x)
        else:
            index = faiss.index_factory(d, choice.factory, faiss.METRIC_INNER_PRODUCT)
            inner = faiss.downcast_index(index)
            if hasattr(inner, "do_polysemous_training"):          # slow, and only for Hamming pre-filtering
                inner.do_polysemous_training = False
            if not index.is_trained:
                rng = np.random.default_rng(0)
                train = x[rng.choice(n, size=min(n, 256 * choice.params["nlist"]), replace=False)]
                index.train(train)
            index.add(x)
        search, recall = tune(index, choice, x, target_recall)
        info = {"modality": m, "kind": choice.kind, "factory": choice.factory, "build": choice.params,
                "search": search, "recall@10": round(recall, 4), "recall_queries": min(200, n), "n": n, "dim": d,
                "bytes": choice.bytes,
                "budget": budget, "part_rows": rows, "metadata": [str(p.relative_to(folder)) for p in metadata],
                "model": run.get("model"), "fingerprint": run.get("fingerprint"), "run": run_digest(folder)}
        write_file(folder / "index" / f"{m}.index", lambda tmp, index=index: faiss.write_index(index, str(tmp)))
        write_text(folder / "index" / f"{m}.json", json.dumps(info, indent=1))
        infos[m] = info
        if not quiet:
            print(f"{m}: {n:,} vectors x {d}, budget {size_text(budget)} -> {choice.describe()}"
                  + (f"; {next(iter(search))}={next(iter(search.values()))} gives recall@{min(10, n)} {recall:.3f} "
                     f"vs exact on {min(200, n)} sampled queries" if search else "; exact search"))
    return infos


# ------------------------------------------------------------------------------------------------ searching
class Index:
    """One export's indexes and metadata; `search(vectors, k)` per target modality."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.run = read_run(self.folder)
        self.infos = {m: self._read_info(m) for m in PREFIX if (self.folder / "index" / f"{m}.json").is_file()}
        if not self.infos:
            raise UserError(f"{self.folder}: no index; build one with `vlm index {self.folder}`")
        self._indexes: dict[str, Any] = {}
        self._meta: dict[Path, Any] = {}
        self._embedder = None

    def _read_info(self, modality: str) -> dict:
        """index/<modality>.json as `build_index` saved it; a one-line UserError naming it when it is not."""
        path = self.folder / "index" / f"{modality}.json"
        try:
            info = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path}: invalid JSON; rebuild with `vlm index {self.folder}`") from None
        need = ("n", "dim", "search", "part_rows")
        if not isinstance(info, dict) or any(k not in info for k in need):
            raise UserError(f"{path}: not an index description (needs {', '.join(need)}); "
                            f"rebuild with `vlm index {self.folder}`")
        # an index of another model's vectors (the export redone into this folder): its neighbours are of
        # another space, and the query would be embedded with the new model
        made, now = info.get("fingerprint"), self.run.get("fingerprint")
        if made and now and made != now:
            raise UserError(f"{path}: built from another export's vectors (model fingerprint {made}, the export's "
                            f"{now}); rebuild with `vlm index {self.folder}`")
        # the export redone into this folder with other settings (an instruction ...): its run.json is another
        if info.get("run") and info["run"] != run_digest(self.folder):
            raise UserError(f"{path}: built from an earlier export in this folder (its run.json changed since); "
                            f"rebuild with `vlm index {self.folder}`")
        # an export finished (or redone) after it was indexed: the index no longer holds its rows
        rows = [part_rows(p) for p in export_parts(self.folder, modality)]
        if rows != info["part_rows"]:
            raise UserError(f"{path}: indexed {sum(info['part_rows'])} rows in {len(info['part_rows'])} parts, the "
                            f"export now has {sum(rows)} in {len(rows)}; rebuild with `vlm index {self.folder}`")
        return info

    @property
    def targets(self) -> list[str]:
        return list(self.infos)

    def _target(self, target: str | None) -> str:
        """The index to search: `target`, by default the first; a one-line UserError when there is no such one."""
        if target is None:
            return self.targets[0]
        if target not in self.infos:
            raise UserError(f"no {target} index in {self.folder} (has: {', '.join(self.infos)})")
        return target

    def index(self, target: str):
        import faiss
        target = self._target(target)
        if target not in self._indexes:
            path, info = self.folder / "index" / f"{target}.index", self.infos[target]
            if not path.is_file():
                raise UserError(f"{path}: missing; rebuild with `vlm index {self.folder}`")
            try:
                idx = faiss.read_index(str(path))
            except RuntimeError as e:                   # faiss: "Error in ... at file.cpp:N: <reason>"
                reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", short_error(e))
                raise UserError(f"{path}: not a readable FAISS index ({reason}); "
                                f"rebuild with `vlm index {self.folder}`") from None
            if (idx.ntotal, idx.d) != (info["n"], info["dim"]):
                raise UserError(f"{path}: {idx.ntotal} x {idx.d} vectors, but {target}.json says "
                                f"{info['n']} x {info['dim']}; rebuild with `vlm index {self.folder}`")
            for name, value in info["search"].items():
                if name == "efSearch":
                    idx.hnsw.efSearch = value
                else:
                    faiss_ivf(idx).nprobe = value
            self._indexes[target] = idx
        return self._indexes[target]

    def search(self, vectors: np.ndarray, k: int = 10, target: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], row ids [q, k]) of the nearest vectors by inner product."""
        target = self._target(target)
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim not in (1, 2) or v.size == 0:
            raise UserError(f"query vectors: need [dim] or [n, dim] numbers, got shape {v.shape}")
        v = np.ascontiguousarray(v.reshape(-1, v.shape[-1]))
        d = self.infos[target]["dim"]
        if v.shape[1] != d:
            raise UserError(f"query dimension {v.shape[1]} does not match the {target} index of {self.folder} "
                            f"(dimension {d}); embed with the export's model ({self.run.get('model')})")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"-k must be an integer >= 1, got {k!r}")
        k = min(int(k), self.infos[target]["n"])
        idx = self.index(target)
        depth = dict(self.infos[target]["search"])
        if "efSearch" in depth:             # HNSW returns at most efSearch hits: as deep as k at least
            idx.hnsw.efSearch = max(depth["efSearch"], k)
            return idx.search(v, k)
        scores, ids = idx.search(v, k)
        if "nprobe" in depth:               # IVF: the probed lists may hold fewer than k vectors; probe more
            ivf = faiss_ivf(idx)
            while (ids < 0).any() and ivf.nprobe < ivf.nlist:
                ivf.nprobe = min(ivf.nlist, ivf.nprobe * 2)
                scores, ids = idx.search(v, k)
            ivf.nprobe = depth["nprobe"]
        return scores, ids

    def rows(self, ids: list[int], target: str | None = None) -> list[dict]:
        """Metadata rows (key, caption, source) of global row ids (rows counted over the parts in order)."""
        target = self._target(target)
        bounds = np.cumsum([0, *self.infos[target]["part_rows"]])
        out = []
        for i in ids:
            p = int(np.searchsorted(bounds, i, side="right") - 1)
            out.append({"row": int(i), **self.part_metadata(target, p).iloc[int(i - bounds[p])].to_dict()})
        return out

    def metadata_files(self, target: str) -> list[Path]:
        """The metadata parquet of each part of the `target` index, in order (an index built before they
        were saved with it: the export's metadata files, sorted)."""
        info = self.infos[target]
        if isinstance(info.get("metadata"), list):
            files = [self.folder / f for f in info["metadata"]]
        else:
            files = sorted((self.folder / "metadata").glob("metadata_*.parquet"))
        if len(files) != len(info["part_rows"]):
            raise UserError(f"{self.folder / 'metadata'}: {len(files)} metadata parts for the {target} index's "
                            f"{len(info['part_rows'])}; rerun `vlm embed` and `vlm index {self.folder}`")
        return files

    def part_metadata(self, target: str, p: int):
        """Part p's metadata (a DataFrame), checked to exist and hold the part's rows."""
        import pandas as pd
        path, rows = self.metadata_files(target)[p], self.infos[target]["part_rows"][p]
        if path not in self._meta:
            check_metadata(path, rows)
            try:
                self._meta[path] = pd.read_parquet(path)
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: unreadable ({short_error(e)}); rerun `vlm embed` to redo the part") from None
        return self._meta[path]

    def metadata(self, target: str | None = None):
        """The metadata of every row of the `target` index (a DataFrame, rows in the index's order)."""
        import pandas as pd
        target = self._target(target)
        return pd.concat([self.part_metadata(target, p) for p in range(len(self.infos[target]["part_rows"]))],
                         ignore_index=True)

    def embedder(self, device: str = "auto"):
        """The export's model (run.json's `model`), checked to be the weights the export was made with: a
        model retrained in place, or another folder at the same relative path, would search with vectors of
        another space and still print plausible rows."""
        if self._embedder is None:
            from vlm.embed.api import Embedder
            spec = self.run.get("model")
            if not isinstance(spec, str) or not spec:
                raise UserError(f"{self.folder / 'run.json'}: no model recorded; pass the model that made the export")
            emb = Embedder.load(spec, device=device)
            want = self.run.get("fingerprint")
            if want and not emb.matches(want, self.run.get("content")):
                raise UserError(f"{spec}: not the weights / tokenizer {self.folder} was exported with (changed or replaced since: "
                                f"fingerprint {emb.fingerprint}, the export's {want}); re-export, or pass the model "
                                f"explicitly if it is the same weights moved")
            self._embedder = emb
        return self._embedder

    def query(self, text: str | None = None, image: Any = None, audio: Any = None, music: Any = None,
              video: Any = None, k: int = 10, instruction: str | None = None, target: str | None = None,
              embedder=None) -> list[dict]:
        """Embed one query with the export's model (or `embedder`) and return its k nearest rows."""
        given = {m: v for m, v in (("image", image), ("audio", audio), ("music", music), ("video", video)) if v is not None}
        if text is None and not given:
            raise UserError("nothing to search for: give a text, an image, audio, music or video")
        if target is not None:
            target = self._target(target)                   # before the model loads
        from vlm.embed.api import MEDIA_ARG
        emb = embedder or self.embedder()
        try:
            vec = emb.embed(texts=[text] if text is not None else None, instruction=instruction,
                            **{MEDIA_ARG[m]: [v] for m, v in given.items()})
        except (UserError, MediaError) as e:     # a file that decodes but its preprocessing refuses: name the file
            files = [(m, v) for m, v in given.items() if isinstance(v, (str, os.PathLike)) and str(v) not in str(e)]
            if len(files) != 1 or not self._fails_alone(emb, *files[0], instruction):
                raise
            raise UserError(f"{files[0][0]} {files[0][1]}: {str(e).splitlines()[0]}") from None
        if target is None:
            query_kinds = set(given) | ({"text"} if text is not None else set())
            target = next((t for t in self.targets if t not in query_kinds), self.targets[0])
        scores, ids = self.search(vec, k, target)
        rows = self.rows([i for i in ids[0].tolist() if i >= 0], target)
        return [{"rank": r + 1, "score": float(s), **row} for r, (s, row) in enumerate(zip(scores[0].tolist(), rows))]

    @staticmethod
    def _fails_alone(emb, modality: str, value: Any, instruction: str | None) -> bool:
        """Whether a query file fails to embed on its own (then an error of the query is the file's)."""
        from vlm.embed.api import MEDIA_ARG
        try:
            emb.embed(instruction=instruction, **{MEDIA_ARG[modality]: [value]})
        except (UserError, MediaError):
            return True
        return False

    def search_text(self, text: str, k: int = 10, instruction: str | None = None, target: str | None = None):
        return self.query(text=text, k=k, instruction=instruction, target=target)


def open_index(folder: str | os.PathLike) -> Index:
    return Index(folder)


def search(folder: str | os.PathLike, text: str | None = None, image: Any = None, audio: Any = None, k: int = 10,
           instruction: str | None = None, target: str | None = None) -> list[dict]:
    """The k nearest rows of an indexed export for one query (text, an image or audio: raw or a file)."""
    return open_index(folder).query(text=text, image=image, audio=audio, k=k, instruction=instruction, target=target)


def caption_recall(folder: str | os.PathLike, instruction: str | None = None, target: str = "image",
                   ks: tuple[int, ...] = (1, 5, 10), embedder=None, batch_size: int = 64) -> dict[str, float]:
    """Caption -> `target` retrieval over an export: every distinct caption of the metadata is a query
    (embedded with `instruction`), a hit at k when one of its k nearest rows carries that caption."""
    index = open_index(folder)
    meta = index.metadata(target)
    captions = sorted({c for c in meta["caption"].tolist() if c})
    if not captions:
        raise UserError(f"{folder}: no captions in the metadata to query with")
    emb = embedder or index.embedder()
    vec = emb.embed(texts=captions, instruction=instruction, batch_size=batch_size)
    _, ids = index.search(vec, max(ks), target)
    row_caption = meta["caption"].to_numpy()
    found = row_caption[np.clip(ids, 0, None)] == np.asarray(captions)[:, None]      # [q, K]
    found &= ids >= 0
    out = {f"recall@{k}": float(found[:, :k].any(1).mean()) for k in ks}
    out["queries"] = float(len(captions))
    out["rows"] = float(len(meta))
    return out
