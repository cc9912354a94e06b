"""What a run reports (rank 0 only): progress bar, metrics JSONL, TensorBoard, optional W&B, a plot.

    <run>/metrics.jsonl   one row per logged step {"step", "stage", "loss", "lr", "tok_per_s" ...}
                          and one per event {"event": "stage_start", "trainable": [...], ...}
    <run>/train.log       the events as text lines (also printed)
    <run>/tb/             TensorBoard scalars (train/loss, train/lr, train/grad_norm, train/tok_per_s; eval/* when
                          the recipe evaluates during training: vlm.train.evaluation)
    <run>/loss_lr.png     at the end: loss and LR against the step, one colour per stage

On resume, rows past the checkpoint's step are dropped (JSONL rewritten, TensorBoard purged), so
the files read as if the run had never stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from vlm.atomic import write_text
from vlm.errors import UserError
from vlm.modalities import short_error

METRICS, TEXT_LOG, PLOT = "metrics.jsonl", "train.log", "loss_lr.png"


RANK_ERROR = ".error-rank"             # RUN/.error-rankN: the error that ended rank N (N > 0), for rank 0's log


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, wandb: dict | None = None,
                 rank: int = 0, world_size: int = 1):
        self.run_dir, self.enabled, self.rank, self.world_size = Path(run_dir), enabled, rank, world_size
        self.bar: tqdm | None = None
        self._tb = self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if wandb is not None:          # first: a wandb that cannot start (no API key ...) leaves the logs as they were
            try:
                import wandb as wb
            except ImportError:
                raise UserError("recipe field 'runtime.wandb': true, but the wandb package is not installed") from None
            try:
                self._wandb = wb.init(project=wandb.pop("project"), config=wandb, dir=str(self.run_dir),
                                      name=self.run_dir.name, resume="allow")
            except wb.errors.Error as e:     # UsageError (no API key, not logged in), CommError (no network) ...
                raise UserError(f"recipe field 'runtime.wandb': wandb does not start ({type(e).__name__}: "
                                f"{short_error(e)[:200]}); log in (`wandb login`), set WANDB_MODE=offline, or "
                                f"runtime.wandb=false") from None
        for old in self.run_dir.glob(f"{RANK_ERROR}*"):       # an earlier run's
            old.unlink(missing_ok=True)
        if resume_step is not None:
            self._truncate(resume_step)
        # from a checkpoint: its rows are kept (truncated above); from scratch: an earlier attempt's rows go
        self._jsonl = open(self.run_dir / METRICS, "a" if resume_step is not None else "w")
        self._text = open(self.run_dir / TEXT_LOG, "a")
        from torch.utils.tensorboard import SummaryWriter
        self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def _truncate(self, step: int) -> None:
        path = self.run_dir / METRICS
        if not path.exists():
            return
        _rewrite(path, [line for line, row in _records(path) if _before(row, step)])

    # ------------------------------------------------------------------ records
    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.bar is not None:
            tqdm.write(line)
        else:
            print(line, flush=True)
        self._text.write(line + "\n")
        self._text.flush()

    def event(self, kind: str, message: str, **fields) -> None:
        if not self.enabled:
            return
        self._write({"event": kind, "time": time.time(), **fields})
        self.info(message)

    def failed(self, error: BaseException, wait: float = 5.0) -> None:
        """The error that ended the run, in train.log and metrics.jsonl (the CLI prints it, so not printed here).
        Under torchrun the other ranks leave theirs in the run folder: when rank 0's own error is not the cause
        (a collective whose peer is gone), the cause another rank gave is the last line and the event."""
        message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}".splitlines()[0]
        if not self.enabled:
            if self.rank > 0:
                try:
                    write_text(self.run_dir / f"{RANK_ERROR}{self.rank}",
                               json.dumps({"rank": self.rank, "message": message, "user": isinstance(error, UserError)}))
                except OSError:
                    pass
            return
        causes = [] if isinstance(error, UserError) or self.world_size == 1 else self._other_ranks_errors(wait)
        lines = [message] + [f"rank {c['rank']}: {c['message']}" for c in causes]
        if causes:
            lines[0] = f"(rank 0, after another rank failed) {message}"
        self._write({"event": "error", "time": time.time(), "message": lines[-1]})
        for line in lines:
            self._text.write(f"[{time.strftime('%H:%M:%S')}] error: {line}\n")
        self._text.flush()

    def _other_ranks_errors(self, wait: float) -> list[dict]:
        """Errors other ranks left (those that are bad input first), waiting up to `wait` s for one to appear."""
        deadline = time.time() + wait
        while True:
            found = []
            for p in sorted(self.run_dir.glob(f"{RANK_ERROR}*")):
                try:
                    found.append(json.loads(p.read_text()))
                except (OSError, ValueError):
                    continue
            if found or time.time() >= deadline:
                return sorted(found, key=lambda c: not c.get("user"))[:1]
            time.sleep(0.2)

    def metrics(self, row: dict) -> None:
        if not self.enabled:
            return
        self._write({**row, "time": time.time()})
        for k in ("loss", "lr", "grad_norm", "tok_per_s"):
            if row.get(k) is not None:
                self._tb.add_scalar(f"train/{k}", row[k], row["step"])
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])
        if self.bar is not None:
            loss = "skipped" if row["loss"] is None else f"{row['loss']:.4f}"
            self.bar.set_postfix(loss=loss, tok_s=f"{row['tok_per_s']:.0f}", lr=f"{row['lr']:.2e}", refresh=False)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """TensorBoard (and W&B) scalars `<prefix>/<name>` at `step` (e.g. eval/sw-vqa-color)."""
        if not self.enabled:
            return
        for k, v in values.items():
            self._tb.add_scalar(f"{prefix}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def _write(self, row: dict) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    # ------------------------------------------------------------------ progress
    def open_bar(self, stage: str, total: int, initial: int, unit: str) -> None:
        if self.enabled:
            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=stage, dynamic_ncols=True,
                            mininterval=1.0, unit_scale=unit == "tok")

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        if not self.enabled:
            return
        self._jsonl.close()
        self._text.close()
        self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of a JSONL log; a line torn by a crash (full disk, power loss) is not a record."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append((line, row))
    return out


def _rewrite(path: Path, lines: list[str]) -> None:
    """The log holding these lines, atomically: a kill while it is written leaves the old file or the new one
    (rewritten in place, a kill left it empty: every row before the checkpoint lost)."""
    write_text(path, "".join(r + "\n" for r in lines), fsync=True)


def _before(row: dict, step: int) -> bool:
    """Whether a row belongs to the run up to checkpoint `step` (a stage starting there starts again; a resumed
    run is not done: its "done" is written again when it is; an error that ended an earlier attempt stays in
    train.log only)."""
    if row.get("event") in ("done", "error"):
        return False
    at = row.get("step", 0)
    return at < step if row.get("event") == "stage_start" else at <= step


class SampleLog:
    """Every rank's record of which samples each step trained on: samples-rank<R>.jsonl {"step", "keys"}."""

    def __init__(self, run_dir: Path, rank: int, resume_step: int | None = None):
        self.path = Path(run_dir) / f"samples-rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            _rewrite(self.path, [line for line, row in _records(self.path)
                                 if isinstance(row.get("step"), int) and row["step"] <= resume_step])
        self._f = open(self.path, "a")

    def write(self, step: int, keys: list[str]) -> None:
        self._f.write(json.dumps({"step": step, "keys": keys}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of <run>/metrics.jsonl; a line torn by a crash is not a record (as on resume)."""
    path = Path(run_dir) / METRICS
    return [row for _, row in _records(path)] if path.exists() else []


def plot(run_dir: Path) -> Path | None:
    """loss_lr.png: training loss (top) and learning rate (bottom) against the step, per stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(run_dir) if "loss" in r and "event" not in r]
    if not rows:
        return None
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for i, name in enumerate(stages):
        sel = [r for r in rows if r["stage"] == name]
        steps = [r["step"] for r in sel]
        colour = f"C{i % 10}"
        ax_loss.plot(steps, [r["loss"] for r in sel], color=colour, label=name, lw=1)
        ax_lr.plot(steps, [r["lr"] for r in sel], color=colour, lw=1)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(title="stage")
    ax_loss.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    out = Path(run_dir) / PLOT
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
