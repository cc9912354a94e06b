"""Training checkpoints: written to a temporary folder, then renamed (atomic); the newest K kept.

    <run>/checkpoints/step-00000120/
        model/              config.json + model.safetensors + tokenizer (`vlm.load` reads it)
        optimizer.pt        full optimizer state keyed by parameter name (any strategy / world size)
        rank-00000.pt       per rank: RNG states (python, numpy, torch, cuda) and the data position (the
                            pipeline's seed, epoch and per-worker positions: its workers' streams are
                            pure functions of those, so they hold no other random state)
        trainer.json        stage, step, schedule and NaN counters, world size; written last

[Contract] a folder named `step-*` is complete: it is only ever renamed from `.tmp-step-*` after
every rank has written its part and `trainer.json` exists. A crash mid-write leaves a `.tmp-*`
folder, which `latest` ignores and the next save or resume deletes.
Everything is loaded with safetensors or `torch.load(weights_only=True)`: no pickled code.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from vlm.atomic import fsync_files, recover_replaced, replace_dir, write_text
from vlm.errors import UserError

STEP_RE = re.compile(r"^step-(\d{8})$")
TRAINER_FILE, OPTIM_FILE, MODEL_DIR = "trainer.json", "optimizer.pt", "model"


@dataclass
class TrainerState:
    """Where the run is: `stage` is the stage in progress (or just finished, when stage_done)."""
    stage: int = 0
    stage_name: str = ""
    stage_done: bool = False
    step: int = 0                                    # optimizer steps over all stages
    schedule: dict = field(default_factory=dict)     # StageSchedule.state_dict(): steps, tokens of the stage
    nan_steps: int = 0                               # non-finite steps skipped, whole run
    nan_streak: int = 0                              # ... in a row, now
    world_size: int = 1
    recipe_name: str = ""
    best_score: float | None = None                  # runtime.eval: the best score so far (<run>/best) ...
    best_step: int = -1                              # ... the step it was reached at
    evals_since_best: int = 0                        # ... evaluations since then (runtime.eval.patience)
    early_stopped: bool = False                      # the run stopped on runtime.eval.patience: nothing follows


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every generator a step may draw from, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------
# finding
# ---------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (partial `.tmp-*` and marker-less folders ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete what an interrupted save left behind; returns the removed folders."""
    root = checkpoint_dir(run_dir)
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or (STEP_RE.match(p.name) and not (p / TRAINER_FILE).is_file()):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    if Path(run_dir).is_dir():                  # final/ and best/ are written as .final.tmp-XXXX, then renamed
        for p in Path(run_dir).iterdir():
            if p.is_dir() and re.match(r"\.(final|best)\.tmp-", p.name):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    # a kill between replace_dir's two renames: the old folder back where it was, or gone if the new one is there
    return gone + recover_replaced(Path(run_dir)) + recover_replaced(root)


# ---------------------------------------------------------------------------------------------
# writing (every rank calls `save`; rank 0 writes the shared parts)
# ---------------------------------------------------------------------------------------------
def save(run_dir: Path, state: TrainerState, d, plain_model, optim_state: dict | None, rank_state: dict,
         keep_last: int) -> Path | None:
    """Write one checkpoint atomically. `optim_state` is the full optimizer state (rank 0's matters)."""
    root = checkpoint_dir(run_dir)
    name = f"step-{state.step:08d}"
    tmp, final = root / f".tmp-{name}", root / name
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    d.barrier()
    with _unless_removed(tmp):              # (the folder removed under the save: one line)
        try:
            torch.save(rank_state, tmp / rank_file(d.rank))
            if d.is_main:
                plain_model.save_pretrained(tmp / MODEL_DIR)
                torch.save(optim_state, tmp / OPTIM_FILE)
            # each rank's own files on disk before trainer.json marks the folder complete and it is renamed
            fsync_files(tmp, [rank_file(d.rank), *([OPTIM_FILE] if d.is_main else [])])
            if d.is_main:
                fsync_files(tmp / MODEL_DIR)
        except RuntimeError as e:   # torch's writer, disk full: "[enforce fail at inline_container.cc] unexpected pos"
            if "inline_container" not in str(e) and "file write failed" not in str(e):
                raise
            raise UserError(f"{tmp}: the checkpoint could not be written ({str(e).splitlines()[0][:160]}): is the disk "
                            f"full? The checkpoints before it are whole; free space and rerun with --resume") from None
    d.barrier()                                       # every rank's file is on disk
    if d.is_main:
        with _unless_removed(tmp):
            _write_json(tmp / TRAINER_FILE, asdict(state))
            replace_dir(tmp, final)                   # the old folder or the new, never a mix
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    d.barrier()
    return final


@contextlib.contextmanager
def _unless_removed(tmp: Path):
    """A FileNotFoundError because the folder being written was removed under the save (`rm -rf checkpoints`
    while training) is one line; any other is raised as it is."""
    try:
        yield
    except FileNotFoundError as e:
        if tmp.is_dir():
            raise
        raise UserError(f"{tmp}: the checkpoint being written was removed ({e.strerror}: {e.filename}; was the run's "
                        f"checkpoints/ folder deleted while it trained?); the run stopped here: rerun with --resume") \
            from None


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1), fsync=True)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
_STATE_TYPES = {"int": (int,), "bool": (bool,), "str": (str,), "dict": (dict,), "float | None": (int, float, type(None))}


def read_state(ckpt: Path) -> TrainerState:
    path = ckpt / TRAINER_FILE
    try:
        state = TrainerState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: not a trainer state ({e})") from None
    for f in fields(TrainerState):                      # a hand-edited field: one line, not a traceback later
        value, kinds = getattr(state, f.name), _STATE_TYPES[f.type]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise UserError(f"{path}: '{f.name}' is {value!r}, not a {f.type} (not a trainer state); delete this "
                            f"checkpoint folder to resume from an earlier one")
    sched = state.schedule                              # read back mid-stage: the stage's steps and tokens so far
    if sched or not (state.stage_done or state.early_stopped):
        for key in ("steps", "tokens"):
            value = sched.get(key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise UserError(f"{path}: 'schedule.{key}' is {value!r}, not a count >= 0 (not a trainer state); "
                                f"delete this checkpoint folder to resume from an earlier one")
    return state


def load_model_weights(model, ckpt: Path) -> None:
    """The checkpoint's model weights into `model` (strict: same architecture and LLM mode), through the
    model's own `load_weights(folder)` (the inverse of its `save_pretrained`)."""
    model.load_weights(ckpt / MODEL_DIR)


def _load_tensors(path: Path) -> dict:
    """`torch.load(weights_only=True)` of a checkpoint file; a missing, truncated or foreign file is a UserError
    naming it (a checkpoint is written atomically, so a damaged one was damaged afterwards)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: unreadable checkpoint file ({msg}); delete this checkpoint folder to resume "
                        f"from an earlier one") from None


def load_optimizer(ckpt: Path, trainable: dict[str, torch.Size], steps_taken: int) -> dict:
    """The full optimizer state, checked against the stage's trainable parameters (name -> shape, the task
    module's names): torch would take a state without groups or entries and reset Adam's moments in silence,
    or fail deep inside with a shape error. `steps_taken`: the stage's optimizer steps before the checkpoint."""
    path = ckpt / OPTIM_FILE
    sd = _load_tensors(path)

    def bad(why: str) -> UserError:
        return UserError(f"{path}: not this stage's optimizer state ({why}); delete this checkpoint folder to "
                         f"resume from an earlier one")
    groups = sd.get("param_groups") if isinstance(sd, dict) else None
    state = sd.get("state") if isinstance(sd, dict) else None
    if not (isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            and isinstance(state, dict)):
        raise bad("no 'state' mapping and 'param_groups' list")
    named = [n for g in groups for n in g["params"]]
    if sorted(named) != sorted(trainable):
        missing, extra = sorted(set(trainable) - set(named)), sorted(set(named) - set(trainable))
        raise bad(f"{len(named)} parameters in its groups for the stage's {len(trainable)}"
                  + (f"; lacks {missing[0]}" if missing else "") + (f"; names {extra[0]}" if extra else ""))
    for name, entry in state.items():
        shape = trainable.get(name)
        moments = [entry.get(k) for k in ("exp_avg", "exp_avg_sq")] if isinstance(entry, dict) else [None]
        if shape is None or not all(isinstance(m, torch.Tensor) and m.shape == shape for m in moments):
            raise bad(f"entry {name!r} is not AdamW moments of shape {tuple(shape) if shape else '?'}")
    if steps_taken > 0 and not state:
        raise bad(f"no moments after {steps_taken} step(s)")
    return sd


def load_rank(ckpt: Path, rank: int) -> dict:
    path = ckpt / rank_file(rank)
    if not path.is_file():          # (the number of ranks was checked against trainer.json before)
        raise UserError(f"{path}: missing (rank {rank}'s data position and RNG state); delete this checkpoint "
                        f"folder to resume from an earlier one")
    state = _load_tensors(path)
    if not (isinstance(state, dict) and {"data", "rng"} <= set(state)):
        raise UserError(f"{path}: not a rank state (needs 'data' and 'rng'); delete this checkpoint folder to resume "
                        f"from an earlier one")
    return state
