"""The training loop's state and its small policies.

Each stateful piece has ``state_dict()`` / ``load_state_dict()``, so a checkpoint is written and
read with one schema (see ``Checkpointer`` in train_ddp.py).  The policies decide; the loop shows
the decision in one line:

* ``TrainState``      where the run is (step, epoch, position in the epoch), its counters, run id
* ``EarlyStopping``   best monitored metric, validations without improvement, stop or not
* ``NonFiniteGuard``  what a step whose gradients are not finite means (skip, count, report, stop)
* ``LogWindow``       per-task losses, clips/s and data wait since the last log line
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .distributed import DistInfo, all_gather_objects, all_reduce_sum


@dataclass
class Counters:
    """Everything the loop counts; stored in checkpoints and logged as train/... and data/..."""

    nonfinite_skips: int = 0  # steps skipped for non-finite loss/gradients from the data
    consecutive_nonfinite: int = 0
    fp16_overflows: int = 0  # GradScaler back-off steps (fp16), not a data problem
    empty_steps: int = 0  # a micro-batch on some rank had no readable clip
    too_small_steps: int = 0  # a micro-batch shrank to one clip (training-mode BatchNorm)
    bad_videos: int = 0


@dataclass
class TrainState:
    """Where the run is.  ``batch_in_epoch`` counts the micro-batches of the epoch consumed so far
    (the sampler resumes from there: no batch repeated or skipped)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    counters: Counters = field(default_factory=Counters)
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None  # absolute: evaluate.py logs into the same store

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """Top-level checkpoint keys (the same names checkpoints have always used)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "counters": asdict(self.counters),
            "mlflow_run_id": self.mlflow_run_id,
            "mlflow_tracking_uri": self.mlflow_tracking_uri,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.epoch, self.batch_in_epoch = (
            int(state["step"]),
            int(state["epoch"]),
            int(state["batch_in_epoch"]),
        )
        known = {f.name for f in fields(Counters)}  # older checkpoints lack newer counters: they start at 0
        self.counters = Counters(**{k: int(v) for k, v in state["counters"].items() if k in known})
        self.mlflow_run_id = state.get("mlflow_run_id") or None
        self.mlflow_tracking_uri = state.get("mlflow_tracking_uri") or None


class EarlyStopping:
    """Tracks ``metric`` over validations: which one is the best (best.pt), and when to stop
    (``patience`` validations without improvement; 0 = never).  NaN never improves."""

    def __init__(self, metric: str, mode: str = "max", patience: int = 0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode, self.patience = metric, mode, patience
        self.best: float | None = None
        self.bad_validations = 0
        self.best_step: int | None = None  # where the best validation was (best.pt)
        self.best_epoch: int | None = None
        self.last_step: int | None = None  # the step of the newest validation

    def update(self, metrics: Mapping[str, float], step: int, epoch: int) -> bool:
        """Record the validation at ``step`` (after ``epoch`` epochs); True if it is the best so far."""
        value = metrics.get(self.metric, math.nan)
        better = not math.isnan(value) and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if better:
            self.best, self.bad_validations, self.best_step, self.best_epoch = value, 0, step, epoch
        else:
            self.bad_validations += 1
        self.last_step = step
        return better

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.bad_validations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad_validations": self.bad_validations,
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_validations = state["best"], int(state["bad_validations"])
        # older checkpoints recorded only the best value and the count
        self.best_step, self.best_epoch = state.get("best_step"), state.get("best_epoch")
        self.last_step = state.get("last_step")


@dataclass
class PendingCheck:
    """An optimizer step whose finite check the host has not read yet."""

    step: int
    applied: torch.Tensor  # bool, on the device: the gradient norm was finite
    loss: torch.Tensor  # this rank's loss, on the device (read only when the step was not finite)
    video_ids: list[str]


class NonFiniteGuard:
    """``--nonfinite skip|stop`` and ``--max-nonfinite-skips``.

    The device skips a non-finite step's update by itself (train_ddp.step_unless_nonfinite), so
    the host learns of it one step later: ``defer()`` keeps the step, and the next step's plan
    all-reduce (or a log, checkpoint or end of the loop, whichever comes first) brings its
    finite flag to ``resolve()``.  The flag comes from the all-reduced gradient norm, so every
    rank resolves alike.  A non-finite step is a collective moment: every rank learns whose
    loss was bad, rank 0 writes step, rank and video ids to ``OUTPUT_DIR/nonfinite.tsv``.  With
    fp16, finite losses but overflowing gradients are GradScaler back-off (it lowers its scale),
    counted apart and never a reason to stop.
    """

    def __init__(self, mode: str, max_consecutive_skips: int, fp16: bool, info: DistInfo, out_dir: str | Path):
        if mode not in ("skip", "stop"):
            raise ValueError(f"mode must be 'skip' or 'stop', got {mode!r}")
        self.mode, self.max_consecutive_skips, self.fp16 = mode, max_consecutive_skips, fp16
        self.info, self.out_dir = info, Path(out_dir)
        self.pending: PendingCheck | None = None
        self.last_bad_step: int | None = None  # the step the newest non-finite report was about

    def defer(self, step: int, applied: torch.Tensor, loss: torch.Tensor, micro_batches: list[dict]) -> None:
        """Keep step ``step`` until its finite flag is read.  The loop resolves each step before
        the next one's plan; a caller that never resolves (the throughput benchmark) drops it."""
        ids = [vid for b in micro_batches for vid in b["video_ids"]]
        self.pending = PendingCheck(step, applied, loss, ids)

    def nonfinite_flag(self, device: torch.device) -> torch.Tensor:
        """1.0 (float64, shape (1,), on ``device``) if the pending step was not finite, else 0.0;
        for the plan's all-reduce, so the flag reaches the host with the plan's one read."""
        if self.pending is None:
            return torch.zeros(1, dtype=torch.float64, device=device)
        return (~self.pending.applied).to(device=device, dtype=torch.float64).reshape(1)

    def read_pending(self) -> bool:
        """The pending step's flag read on its own (one host read; none if nothing is pending):
        for a log, a checkpoint or the loop's end, which must not see an unsettled step."""
        return self.pending is not None and not bool(self.pending.applied)

    def resolve(self, nonfinite: bool, state: TrainState, scaler: torch.amp.GradScaler) -> bool:
        """Count and report the pending step (if any) as ``nonfinite`` says; True = stop the run."""
        pending, self.pending = self.pending, None
        if pending is None:
            return False
        counters = state.counters
        if not nonfinite:
            counters.consecutive_nonfinite = 0
            return False
        culprits = self._culprits(pending.video_ids, bool(torch.isfinite(pending.loss)))
        # GradScaler's update() has since backed the scale off once: divide to get the step's own.
        if self.fp16 and not culprits and scaler.get_scale() / scaler.get_backoff_factor() >= 1.0:
            counters.fp16_overflows += 1
            return False
        counters.consecutive_nonfinite += 1
        counters.nonfinite_skips += 1
        self.last_bad_step = pending.step
        self._report(culprits, pending.step)
        return self.mode == "stop" or counters.consecutive_nonfinite > self.max_consecutive_skips

    def _culprits(self, video_ids: list[str], local_loss_finite: bool) -> list[tuple[int, list[str]]]:
        """(rank, video ids) of every rank whose loss was non-finite that step, on every rank."""
        ids = [] if local_loss_finite else video_ids
        rows = all_gather_objects((self.info.rank, local_loss_finite, ids), self.info)
        return [(rank, vids) for rank, finite, vids in rows if not finite]

    def _report(self, culprits: list[tuple[int, list[str]]], step: int) -> None:
        if not self.info.is_main:
            return
        with open(self.out_dir / "nonfinite.tsv", "a") as fh:
            for rank, vids in culprits:
                fh.write(f"{step}\t{rank}\t{','.join(vids)}\n")
        where = "; ".join(f"rank {r}: {', '.join(v)}" for r, v in culprits) or "losses finite, gradients not"
        tqdm.write(f"step {step}: non-finite loss/gradients, step skipped ({where})", file=sys.stdout)


class LogWindow:
    """Training metrics over the steps since the last log line (every ``log_every`` steps), sent
    to MLflow (rank 0) and the progress bar.

    Losses are logged as exact cross-rank means: the window keeps per-task loss sums and valid
    counts on the device and all-reduces them when it logs.  The time spent waiting for the
    data (in :meth:`fetch`) and computing is measured here, not in the step.
    """

    def __init__(
        self,
        tasks,
        task_weights: Mapping[str, float],
        device: torch.device,
        log_every: int,
        total_steps: int,
        tracker=None,
        progress=None,
    ):
        self.tasks, self.task_weights = tuple(tasks), dict(task_weights)
        self.log_every, self.total_steps = log_every, total_steps
        self.tracker, self.progress = tracker, progress  # a utils.tracking.RunTracker, a tqdm bar
        # on the device until a log step reads them: a step adds without the host waiting
        self.sums = torch.zeros(len(self.tasks), dtype=torch.float64, device=device)
        self.counts = torch.zeros_like(self.sums)
        self.clips = torch.zeros((), dtype=torch.float64, device=device)
        self.lrs: dict[str, float] = {}
        self.grad_norm = math.nan
        self._reset()

    def _reset(self) -> None:
        self.sums.zero_()
        self.counts.zero_()
        self.clips.zero_()
        self.data_s, self.compute_s, self.steps = 0.0, 0.0, 0
        self.t0 = self._t_data_ready = time.perf_counter()

    def fetch(self, batches: Iterator[dict], n: int) -> list[dict]:
        """The next ``n`` micro-batches; the time this blocks is the data wait."""
        start = time.perf_counter()
        micro = [next(batches) for _ in range(n)]
        self._t_data_ready = time.perf_counter()
        self.data_s += self._t_data_ready - start
        return micro

    def add_step(
        self,
        loss_sums: torch.Tensor,
        loss_counts: torch.Tensor,
        grad_norm: torch.Tensor,
        applied: torch.Tensor | bool,
        clips: int,
    ) -> None:
        """One optimizer step (its losses count only if it was applied, not skipped).  ``applied``
        may be a device tensor: the choice is made there (``where``, since NaN x 0 is NaN)."""
        applied = torch.as_tensor(applied, device=self.sums.device)
        self.sums += torch.where(applied, loss_sums, 0.0)
        self.counts += torch.where(applied, loss_counts, 0.0)
        self.clips += torch.where(applied, float(clips), 0.0)
        self.grad_norm = grad_norm
        self.steps += 1
        self.compute_s += time.perf_counter() - self._t_data_ready
        if self.progress is not None:
            self.progress.update(1)

    def due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps

    def flush(self, counters: Counters, epoch: int, info: DistInfo) -> dict[str, float]:
        """The window's metrics (a collective: every rank calls it), then start a new window."""
        elapsed = time.perf_counter() - self.t0
        stats = torch.cat([self.sums, self.counts, self.clips.reshape(1)])
        all_reduce_sum(stats, info)
        n = len(self.tasks)
        sums, counts, clips = stats[:n].cpu(), stats[n : 2 * n].cpu(), stats[2 * n].item()
        metrics: dict[str, float] = {}
        total = 0.0
        for i, task in enumerate(self.tasks):
            if counts[i] > 0:
                metrics[f"train/{task}/loss"] = (sums[i] / counts[i]).item()
                total += self.task_weights[task] * metrics[f"train/{task}/loss"]
        if counts.sum() > 0:  # every step of the window may have been skipped
            metrics["train/loss"] = total
        busy = self.data_s + self.compute_s
        metrics.update(
            {
                "train/lr": max(self.lrs.values()),
                **{f"train/lr/{name}": lr for name, lr in self.lrs.items()},
                "train/grad_norm": float(self.grad_norm),
                "perf/clips_per_s": clips / elapsed if elapsed > 0 else 0.0,
                "perf/step_s": elapsed / max(self.steps, 1),
                "perf/data_wait_fraction": self.data_s / busy if busy > 0 else 0.0,
                "data/bad_videos": counters.bad_videos,
                "train/nonfinite_skips": counters.nonfinite_skips,
                "train/fp16_overflow_skips": counters.fp16_overflows,
                "train/empty_steps": counters.empty_steps,
                "train/too_small_steps": counters.too_small_steps,
                "epoch": epoch,
            }
        )
        self._reset()
        return metrics

    def log(self, state: TrainState, info: DistInfo) -> dict[str, float]:
        """flush() (collective), then MLflow on rank 0 and the progress bar's postfix."""
        metrics = self.flush(state.counters, state.epoch, info)
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, state.step)
        if self.progress is not None:
            loss = metrics.get("train/loss")
            self.progress.set_postfix(
                loss=f"{loss:.4f}" if loss is not None else "skipped",
                clips_s=f"{metrics['perf/clips_per_s']:.1f}",
                wait=f"{metrics['perf/data_wait_fraction']:.0%}",
            )
        return metrics
