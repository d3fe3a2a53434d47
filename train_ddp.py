"""Multi-task ResNet3D training: plain PyTorch, DistributedDataParallel, explicit AMP.

    torchrun --nproc_per_node=8 train_ddp.py --videos DIR --annotations CSV --pretrained MIT.pth.tar
    torchrun --nproc_per_node=2 train_ddp.py        # no arguments: the demo (configs/demo.yaml), on CPU too
    python train_ddp.py                              # a single process, no process group

main() reads as its stages; everything that happens is in this file or one call away:
  1. config (dataclass <- YAML/JSON <- flags; OUTPUT_DIR/config.yaml), process group, seeds, precision
  2. data: annotation table -> split -> clip datasets -> resumable distributed sampler -> loaders
  3. model (MiT / earlier / own weights), freezing, optimizer, LR schedule, GradScaler
  4. resume from the newest valid checkpoint (model, optimizer, scheduler, scaler, loop state, RNG)
  5. rank-0 MLflow run (id broadcast to every rank)
  6. the loop: each epoch train_one_epoch() -> one all-reduce per step (plan_step) ->
     train_step(); at the epoch end validation, early stopping and a checkpoint
  7. the end: final checkpoint, artifacts, model, run status (FINISHED / FAILED / KILLED)

train_step() is the one place where autocast, the forward, the loss, backward (gradients synced
only on the last micro-step), unscale, clipping, the finite check, optimizer.step and the LR
schedule are lines.  The loop's state and its small policies (TrainState, EarlyStopping,
NonFiniteGuard, LogWindow) are in utils/train_state.py; what a checkpoint holds is Checkpointer.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import (
    AnnotationError,
    Augmentation,
    CachedClipDataset,
    CacheLoader,
    DecodePolicy,
    ExactShardSampler,
    FrameCache,
    HorizontalFlip,
    PtClipsError,
    RandomResizedCrop,
    ResumableShardSampler,
    VideoClipDataset,
    assign_splits,
    build_targets,
    collate_cached,
    collate_clips,
    demo_frame_cache_dir,
    demo_validation_names,
    ensure_demo_dataset,
    ensure_demo_frame_cache,
    load_annotation_table,
    make_loader,
    model_input,
    scan_video_root,
    split_indices,
)
from losses import MultiTaskLoss
from resnet3d import UnfreezeSchedule, build_model, freeze, load_pretrained, no_weight_decay, recorded_width
from utils.atomic import atomic_write
from utils.checkpoint import CheckpointManager, CheckpointSaveError, load_checkpoint_file
from utils.cli import progress_bar, run_entry_point
from utils.config import (
    TrainConfig,
    changed_options,
    comm_options_mismatch,
    default_output_dir,
    flatten_for_logging,
    learning_options_mismatch,
    parse_config,
    parse_key_values,
    write_config_file,
)
from utils.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    broadcast_object,
    destroy_distributed,
    gather_rows,
    init_distributed,
    record_rank,
    register_grad_compression,
)
from utils.metrics import task_metrics
from utils.plots import plot_evaluation, read_metrics_jsonl
from utils.precision import amp_name, resolve_amp
from utils.predictions import ServingModel, logits_to_probabilities, prediction_columns
from utils.rng import capture_rng_state, restore_rng_state
from utils.schedules import build_lr_scheduler
from utils.signals import PREEMPTED_EXIT_CODE, PREEMPTED_MARKER, PreemptionFlag, ignore_preemption_in_data_worker
from utils.tasks import parse_tasks
from utils.tracking import RunTracker, ui_command
from utils.train_state import EarlyStopping, LogWindow, NonFiniteGuard, TrainState

NONFINITE_EXIT_CODE = 3
BEST_PREDICTIONS = "best_validation.npz"  # the best validation's logits and targets, for the plots
CHECKPOINT_FAILED_EXIT_CODE = 4  # training ended but its final checkpoint could not be written
MLFLOW_RUN = "runs:/"  # --pretrained runs:/RUN_ID: MLflow's own way to name a run's artifacts

# With no --videos, --cache or --config the demo runs, with the settings of this file (a user can
# open and copy it; flags override it as they override any --config file).
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"

# The training augmentation, one definition for decoded videos and the frame cache alike
# (datasets/augment.py): per sample, after the jittered frame segments, these steps in order.
# A new step is a Step subclass in datasets/augment.py and one entry here.  Evaluation uses none.
TRAIN_AUGMENTATION = Augmentation(
    [
        RandomResizedCrop(scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)),  # mild: a small crop can cut people out
        HorizontalFlip(p=0.5),  # every label survives a mirror
    ]
)


def log0(info: DistInfo, *msg) -> None:
    """Print on rank 0 only (through tqdm, so a progress bar stays intact)."""
    if info.is_main:
        tqdm.write(" ".join(str(m) for m in msg), file=sys.stdout)


# ------------------------------------------------------------------------------------------------
# main: the stages
# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    # ---- 1. config, process group, seeds, precision, signals --------------------------------------
    started = time.perf_counter()
    cfg, sources = parse_config(argv, demo_config=shown_path(DEMO_CONFIG))
    demo = cfg.videos is None and cfg.cache is None
    tasks = parse_tasks(cfg.tasks)
    info = init_distributed(cfg.device, cfg.dist_timeout)
    preempt = PreemptionFlag()
    if cfg.output_dir is None:  # a real-data run that names no directory gets a new one
        cfg.output_dir = broadcast_object(default_output_dir(cfg.run_name), info)
    out_dir = Path(cfg.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(config_line(cfg, demo), flush=True)
        print(
            "options that differ from the defaults, and where each was set (the whole config is logged "
            "to MLflow and stored in every checkpoint):\n"
            + "\n".join(f"  {line}" for line in changed_options(cfg, sources) or ["(none)"]),
            flush=True,
        )
        write_config_file(cfg, out_dir / "config.yaml")  # before the demo points cfg at its clips
        print(
            f"world size {info.world_size}, backend {info.backend or 'none (single process)'}, device {info.device}",
            flush=True,
        )
    record_rank(info, out_dir / "ranks")  # where each rank runs and whom it met (multi-node diagnostics)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    amp_dtype, channels_last = configure_device(cfg, info)

    tracker = RunTracker(
        info.is_main, out_dir, cfg.tracking_uri, cfg.experiment, cfg.run_name, system_metrics=cfg.system_metrics
    )
    status = "FAILED"
    try:
        # ---- 2. data ------------------------------------------------------------------------------
        if demo:
            use_demo_dataset(cfg, info)
        data = build_data(cfg, tasks, info, demo_validation_names(cfg.demo_videos, cfg.demo_val_videos) if demo else [])

        # ---- 3. model, freezing, optimizer, schedule, scaler ------------------------------------------
        t = build_training(cfg, tasks, data.total_steps, data.steps_per_epoch, info, amp_dtype, channels_last)
        early = EarlyStopping(cfg.early_stop_metric, cfg.early_stop_mode, cfg.patience)
        state = TrainState()

        # ---- 4. resume ------------------------------------------------------------------------------
        checkpointer = Checkpointer(t, state, early, cfg, info, tracker)
        if info.is_main:
            warn_if_disk_short(t, checkpointer.files, cfg.keep_last)
        if not checkpointer.resume(cfg.resume):
            torch.manual_seed(cfg.seed + 7919 * info.rank)  # different dropout masks per rank
        elif done := finished_already(state, early, cfg):
            log0(
                info,
                f"{out_dir} already finished at step {state.step} ({done}); nothing to do -- use a new "
                "--output-dir, --resume none, or a larger --epochs/--max-steps",
            )
            return 0
        first_step = state.step

        # ---- 5. MLflow (rank 0), run id broadcast ----------------------------------------------------
        state.mlflow_run_id = start_tracking(tracker, cfg, state, data.table, demo, amp_dtype, info)
        state.mlflow_tracking_uri = tracker.tracking_uri  # in every checkpoint: evaluate.py logs to the same store

        # ---- 6. the loop ----------------------------------------------------------------------------
        progress = progress_bar(total=data.total_steps, initial=state.step, disable=not (info.is_main and cfg.progress))
        window = LogWindow(
            tasks,
            t.loss_fn.task_weights,
            info.device,
            cfg.log_every,
            data.total_steps,
            tracker=tracker,
            progress=progress,
        )
        stop_reason = None
        last_validation: dict[str, float] = {}  # this launch's latest validation, for the summary
        while state.epoch < cfg.epochs and stop_reason is None:
            start_epoch(t, state, cfg, info)
            stop_reason = train_one_epoch(t, data, state, window, checkpointer, preempt, cfg, info)
            if stop_reason is not None:
                break
            state.end_epoch()
            is_best = False
            if data.val_loader is not None and state.epoch % cfg.val_every == 0:
                is_best, last_validation = validate_and_record(t, data, state, early, tracker, cfg, info)
                if early.should_stop:
                    log0(
                        info,
                        f"early stopping: {cfg.early_stop_metric} did not improve for "
                        f"{cfg.patience} validations (best {early.best})",
                    )
                    stop_reason = "early_stopping"
            checkpointer.save(is_best=is_best)
        progress.close()
        if stop_reason in (None, "max_steps") and data.val_loader is not None and early.last_step != state.step:
            # training ended on weights no validation has seen: validate them, so best.pt exists
            is_best, last_validation = validate_and_record(t, data, state, early, tracker, cfg, info)
            checkpointer.save(is_best=is_best)

        # ---- 7. the end -----------------------------------------------------------------------------
        exit_code, status = finish(stop_reason, t, state, early, checkpointer, tracker, cfg, info)
        if info.is_main:
            print_summary(
                stop_reason,
                exit_code,
                state,
                early,
                checkpointer,
                tracker,
                cfg,
                info,
                seconds=time.perf_counter() - started,
                steps_run=state.step - first_step,
                last_validation=last_validation,
            )
        return exit_code
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if info.is_main:
            tracker.end(status)
        preempt.restore()
        destroy_distributed()


# ------------------------------------------------------------------------------------------------
# 6. one epoch, one step
# ------------------------------------------------------------------------------------------------
@dataclass
class Training:
    """What an optimizer step works with, built once by build_training() (the DDP wrapper is
    rebuilt by start_epoch() when --unfreeze changes the trainable set)."""  # no methods: a record

    model: nn.Module  # unwrapped: what is saved, validated and logged
    loss_fn: MultiTaskLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    unfreeze: UnfreezeSchedule
    guard: NonFiniteGuard
    device: torch.device
    amp_dtype: torch.dtype | None  # None = fp32
    channels_last: bool
    clip_grad: float  # 0 = no clipping
    distributed: bool
    snapshot: BufferSnapshot  # the buffers before the step, restored when the step is skipped
    min_clips: int = 1  # clips a micro-batch needs (training-mode BatchNorm, see build_training)
    ddp_model: nn.Module | None = None  # DDP(model) (maybe compiled) under torchrun, else model
    trainable: list = field(default_factory=list)
    trainable_names: tuple = ()


def train_one_epoch(
    t: Training,
    data: Data,
    state: TrainState,
    window: LogWindow,
    checkpointer: Checkpointer,
    preempt: PreemptionFlag,
    cfg: TrainConfig,
    info: DistInfo,
) -> str | None:
    """Optimizer steps until the epoch ends (returns None) or the run must stop (returns why)."""
    data.train_sampler.set_position(state.epoch, state.batch_in_epoch * cfg.batch_size)  # mid-epoch on resume
    batches = iter(data.train_loader)
    while state.batch_in_epoch < data.steps_per_epoch * cfg.accum_steps:
        if cfg.max_steps and state.step >= cfg.max_steps:
            return "nonfinite" if settle(t, state) else "max_steps"
        micro = window.fetch(batches, cfg.accum_steps)  # the time this blocks is the data wait
        plan = plan_step(micro, t, preempt.requested, info)  # the step's one all-reduce (and host read)
        if settle(t, state, plan.last_step_nonfinite):  # the previous step's finite check came with it
            return "nonfinite"
        if plan.bad_videos:
            report_bad_videos(micro, state, info, Path(cfg.output_dir))
        if plan.preempted:  # this step's batches are not consumed: the resumed run trains on them
            return f"preempted ({preempt.received or 'signal on another rank'})"
        state.batch_in_epoch += cfg.accum_steps
        window.lrs = set_learning_rates(t, state.epoch)
        if plan.empty or plan.too_small:
            count_skipped_step(plan, state, info)
            continue
        result = train_step(t, micro, plan.denominators, state)
        state.step += 1
        window.add_step(
            result.loss_sums,
            result.loss_counts,
            result.grad_norm,
            result.applied,
            clips=sum(len(b["indices"]) for b in micro),
        )
        if (window.due(state.step) or checkpointer.due(state.step)) and settle(t, state):
            return "nonfinite"  # a log line and a checkpoint see the step settled
        if window.due(state.step):
            window.log(state, info)
        if checkpointer.due(state.step):
            checkpointer.save()
    return "nonfinite" if settle(t, state) else None


@dataclass
class StepPlan:
    """What the step's all-reduce decided, the same on every rank."""

    denominators: dict[str, float]  # per task: global valid targets / world size
    empty: int  # micro-batches without a readable clip, over all ranks
    too_small: int  # micro-batches left with fewer than min_clips clips
    bad_videos: int
    preempted: bool
    last_step_nonfinite: bool  # the previous optimizer step's gradients were not finite (it was skipped)


def plan_step(micro_batches: list[dict], t: Training, preempt_requested: bool, info: DistInfo) -> StepPlan:
    """One all-reduce of a small vector: valid targets per task, empty and too-small micro-batches,
    bad videos, the preemption flag, and the previous step's finite flag, then one host read of
    it: every decision of the step comes from that read.  DDP averages gradients over ranks, so
    dividing each task's loss sum by (global valid count / world size) makes the update equal to
    one process's on the union batch."""
    tasks = t.loss_fn.tasks
    valid = torch.zeros(len(tasks), dtype=torch.float64)
    flags = torch.zeros(4, dtype=torch.float64)  # built from Python numbers: no tensor is read
    for b in micro_batches:
        counts = t.loss_fn.valid_counts(b["targets"])
        valid += torch.stack([counts[k] for k in tasks]).to(torch.float64)
        clips = len(b["indices"])
        flags += torch.tensor([clips == 0, 0 < clips < t.min_clips, len(b["bad"]), 0], dtype=torch.float64)
    flags[-1] = float(preempt_requested)
    local = torch.cat([valid.to(info.device), flags.to(info.device), t.guard.nonfinite_flag(info.device)])
    if info.distributed:
        local = all_reduce_sum(local, info)
    values = local.tolist()  # the step's one host read: the decisions below need the sums
    n = len(tasks)
    empty, too_small, bad, preempted, nonfinite = values[n:]
    denominators = {k: values[i] / info.world_size for i, k in enumerate(tasks)}
    return StepPlan(denominators, int(empty), int(too_small), int(bad), bool(preempted), nonfinite > 0)


@dataclass
class StepResult:
    loss: torch.Tensor  # the objective this rank backpropagated, summed over micro-batches
    loss_sums: torch.Tensor  # per task, this rank (float64): for the logged cross-rank means
    loss_counts: torch.Tensor
    grad_norm: torch.Tensor
    applied: torch.Tensor  # bool, on the device; False: the gradients were not finite, no update
    outputs: dict[str, torch.Tensor]  # the last micro-batch's logits (detached)


class BufferSnapshot:
    """The model's buffers as they were before the step, copied into storage allocated once.

    A skipped step must leave no trace: one NaN clip would otherwise poison BatchNorm's running
    statistics for good.  One foreach copy per dtype saves them all, where a clone per buffer
    (three per BatchNorm layer) would allocate and launch a kernel for each, every step."""

    def __init__(self, model: nn.Module):
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for buf in model.buffers():
            groups.setdefault((buf.device, buf.dtype), []).append(buf)
        self.live = list(groups.values())
        self.saved = [[torch.empty_like(b) for b in bufs] for bufs in self.live]

    def save(self) -> None:
        for saved, live in zip(self.saved, self.live):
            torch._foreach_copy_(saved, live)

    def restore(self) -> None:
        for saved, live in zip(self.saved, self.live):
            torch._foreach_copy_(live, saved)


def train_step(t: Training, micro_batches: list[dict], denominators: dict[str, float], state: TrainState) -> StepResult:
    """One optimizer step over ``micro_batches`` (--accum-steps of them).  Nothing here reads a
    tensor's value: whether the gradients were finite is decided on the device (the update is
    skipped there) and read by the next step's plan (``t.guard.defer``, ``settle``)."""
    tasks = t.loss_fn.tasks
    loss = torch.zeros((), device=t.device)
    sums = torch.zeros(len(tasks), dtype=torch.float64, device=t.device)
    counts = torch.zeros_like(sums)
    t.snapshot.save()  # a skipped step must leave no trace (BatchNorm statistics included)
    for i, batch in enumerate(micro_batches):
        x = model_input(batch, t.device, t.channels_last)  # uint8 -> normalized float, on the device
        y = {k: v.to(t.device, non_blocking=True) for k, v in batch["targets"].items()}
        last = i == len(micro_batches) - 1
        # DDP all-reduces gradients during backward; only the last micro-step needs that.
        sync = contextlib.nullcontext() if last or not t.distributed else t.ddp_model.no_sync()
        with sync:
            with torch.autocast(t.device.type, dtype=t.amp_dtype or torch.float32, enabled=t.amp_dtype is not None):
                outputs = t.ddp_model(x)
            out = t.loss_fn(outputs, y, denominators=denominators)  # fp32 inside
            t.scaler.scale(out.total).backward()
        loss += out.total.detach()
        sums += torch.stack([out.sums[k] for k in tasks]).double()
        counts += torch.stack([out.counts[k] for k in tasks]).double()
    t.scaler.unscale_(t.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(t.trainable, t.clip_grad if t.clip_grad > 0 else math.inf)
    applied = torch.isfinite(grad_norm)  # all-reduced gradients: every rank decides alike
    step_unless_nonfinite(t.optimizer, applied)
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.update()  # fp16: backs the scale off after an overflow (no host read either)
    t.scheduler.step()  # a skipped step moves the schedule on, as the step counter does
    t.guard.defer(state.step, applied, loss, micro_batches)
    return StepResult(
        loss, sums, counts, grad_norm.detach(), applied, outputs={k: v.detach() for k, v in outputs.items()}
    )


def step_unless_nonfinite(optimizer: torch.optim.Optimizer, applied: torch.Tensor) -> None:
    """optimizer.step(), with the update skipped on the device when ``applied`` is False.

    The fused optimizers (build_optimizer) take a ``found_inf`` flag, the way GradScaler hands
    them its overflow check, and leave parameters, moments and step counts untouched where it
    is set; so no host read decides whether to step.  Under fp16 the scaler has unscaled the
    gradients already (``unscale_``), so the flag is all the optimizer needs from it."""
    optimizer.found_inf = (~applied).to(torch.float32)
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def settle(t: Training, state: TrainState, nonfinite: bool | None = None) -> bool:
    """The previous step's finite check, on the host at last (``nonfinite`` as the plan read it,
    or read here: one read, at a log, a checkpoint or the loop's end).  A skipped step gets its
    BatchNorm statistics back (its parameter update never happened); the guard counts and
    reports it.  True: the non-finite policy ends the run."""
    if nonfinite is None:
        nonfinite = t.guard.read_pending()
    if nonfinite:
        t.snapshot.restore()
    return t.guard.resolve(nonfinite, state, t.scaler)


def start_epoch(t: Training, state: TrainState, cfg: TrainConfig, info: DistInfo) -> None:
    """Unfreeze what the schedule says, rebuild the DDP wrapper if the trainable set changed
    (DDP registers only the parameters that require grad when it is built), training mode."""
    newly = t.unfreeze.apply(t.model, state.epoch)
    if newly:
        log0(info, f"epoch {state.epoch}: unfroze {', '.join(newly)}")
    names = tuple(n for n, p in t.model.named_parameters() if p.requires_grad)
    if t.ddp_model is None or names != t.trainable_names:
        t.trainable_names = names
        t.ddp_model = wrap_ddp(t.model, info, cfg)
        if cfg.compile:
            t.ddp_model = torch.compile(t.ddp_model)
    t.trainable = [p for p in t.model.parameters() if p.requires_grad]
    set_train_mode(t.model, cfg.bn)


def set_learning_rates(t: Training, epoch: int) -> dict[str, float]:
    """LR = schedule(step) x unfreeze scale(epoch), set from the scheduler's closed-form value each
    step, so the factor never compounds.  Returns the LR of each group (what this step uses)."""
    for group, lr in zip(t.optimizer.param_groups, t.scheduler.get_last_lr()):
        group["lr"] = lr * t.unfreeze.lr_scale(group["scale_param"], epoch)
    return {g["name"]: g["lr"] for g in t.optimizer.param_groups}


def count_skipped_step(plan: StepPlan, state: TrainState, info: DistInfo) -> None:
    """A step every rank skips because of its data (its bad videos were reported already)."""
    if plan.empty:
        state.counters.empty_steps += 1  # every clip of a micro-batch failed on some rank
        return
    # Bad videos left one clip in a micro-batch: training-mode BatchNorm would raise on layer4's
    # single value per channel.
    state.counters.too_small_steps += 1
    log0(
        info,
        f"step {state.step}: skipped, {plan.too_small} micro-batch(es) shrank to one clip by bad "
        f"videos (layer4's BatchNorm needs more than one value per channel)",
    )


def report_bad_videos(micro_batches: list[dict], state: TrainState, info: DistInfo, out_dir: Path) -> None:
    """Collective (some rank had a bad video): rank 0 appends every rank's to bad_videos.tsv."""
    mine = [(state.epoch, *b) for mb in micro_batches for b in mb["bad"]]
    bad = [row for part in all_gather_objects(mine, info) for row in part]
    state.counters.bad_videos += len(bad)
    if info.is_main:
        with open(out_dir / "bad_videos.tsv", "a") as fh:
            for epoch, video, error in bad:
                fh.write(f"{epoch}\t{video}\t{error}\n")


@torch.no_grad()
def validate(t: Training, loader: DataLoader, info: DistInfo) -> tuple[dict[str, float], dict, dict]:
    """Exactly-once evaluation: every rank predicts its shard, all predictions are gathered, and
    every rank computes the same metrics (so early-stopping decisions agree without a broadcast).
    Returns (metrics, logits, targets), the arrays in dataset order of the clips that loaded."""
    broadcast_buffers(t.model, info)  # every rank validates the model rank 0 saves (BatchNorm stats)
    t.model.eval()
    tasks = t.loss_fn.tasks
    local = {"indices": [], "logits": {}, "targets": {}}
    sums = torch.zeros(len(tasks), dtype=torch.float64, device=t.device)
    counts = torch.zeros_like(sums)
    for batch in loader:
        if len(batch["indices"]) == 0:
            continue
        x = model_input(batch, t.device, t.channels_last)
        targets = {k: v.to(t.device, non_blocking=True) for k, v in batch["targets"].items()}
        with torch.autocast(t.device.type, dtype=t.amp_dtype or torch.float32, enabled=t.amp_dtype is not None):
            outputs = t.model(x)
        out = t.loss_fn(outputs, targets)
        sums += torch.stack([out.sums[k] for k in tasks]).double()
        counts += torch.stack([out.counts[k] for k in tasks]).double()
        local["indices"].append(batch["indices"].numpy())
        for k, v in outputs.items():
            local["logits"].setdefault(k, []).append(v.float().cpu().numpy())
        for k, v in batch["targets"].items():
            local["targets"].setdefault(k, []).append(v.numpy())
    all_reduce_sum(sums, info)
    all_reduce_sum(counts, info)
    indices = np.concatenate(local["indices"]) if local["indices"] else np.zeros(0, np.int64)
    joined = {part: {k: np.concatenate(v) for k, v in local[part].items()} for part in ("logits", "targets")}
    predicted, logits = gather_rows(indices, joined["logits"], len(loader.dataset), info)
    _, targets = gather_rows(indices, joined["targets"], len(loader.dataset), info)
    if np.any(predicted > 1):
        raise RuntimeError(f"validation saw clips {np.flatnonzero(predicted > 1)[:10].tolist()} on more than one rank")
    if not predicted.any() or not logits:
        return {}, {}, {}
    done = predicted == 1  # clips whose video failed to load are left out (reported as bad videos)
    logits = {k: v[done] for k, v in logits.items()}
    targets = {k: v[done] for k, v in targets.items()}
    metrics = {f"val/{k}": v for k, v in task_metrics(logits, targets, tasks).items()}
    for i, task in enumerate(tasks):
        metrics[f"val/{task}/loss"] = (sums[i] / counts[i]).item() if counts[i] > 0 else math.nan
    metrics["val/clips"] = float(done.sum())
    return metrics, logits, targets


def validate_and_record(
    t: Training,
    data: Data,
    state: TrainState,
    early: EarlyStopping,
    tracker: RunTracker,
    cfg: TrainConfig,
    info: DistInfo,
) -> tuple[bool, dict[str, float]]:
    """Validate the weights of this step, log it, update early stopping; rank 0 keeps the best
    validation's predictions for the plots at the end.  Returns whether it is the best so far, and
    its metrics."""
    metrics, logits, targets = validate(t, data.val_loader, info)
    is_best = early.update(metrics, state.step, state.epoch)
    log_validation(metrics, state, tracker, info)
    if is_best and info.is_main:
        arrays = {f"logits/{k}": v for k, v in logits.items()} | {f"targets/{k}": v for k, v in targets.items()}
        atomic_write(Path(cfg.output_dir) / BEST_PREDICTIONS, lambda tmp: np.savez(tmp, **arrays))
    return is_best, metrics


def log_validation(metrics: dict[str, float], state: TrainState, tracker: RunTracker, info: DistInfo) -> None:
    tracker.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, state.step)
    tracker.log_metrics({"epoch": state.epoch}, state.step)
    log0(
        info,
        f"epoch {state.epoch} step {state.step}: "
        + "  ".join(f"{k[4:]}={metrics[k]:.3f}" for k in metrics if k.endswith(("spearman", "accuracy"))),
    )


# ------------------------------------------------------------------------------------------------
# 4. checkpoints: what one holds, saved and restored in one place
# ------------------------------------------------------------------------------------------------
class Checkpointer:
    """Every stateful piece's ``state_dict()`` under its key, the loop state (step, epoch,
    position in the epoch, counters, MLflow run id) at the top level, every rank's RNG states, and
    what evaluation needs (config, tasks, depth).  ``save`` and ``resume`` walk the same
    ``parts``, so the two are symmetric by construction.  Rank 0 writes; every rank takes part."""

    def __init__(
        self,
        t: Training,
        state: TrainState,
        early: EarlyStopping,
        cfg: TrainConfig,
        info: DistInfo,
        tracker: RunTracker,
    ):
        self.files = CheckpointManager(Path(cfg.output_dir) / "checkpoints", keep_last=cfg.keep_last)
        self.parts = {
            "model": t.model,
            "optimizer": t.optimizer,
            "scheduler": t.scheduler,
            "scaler": t.scaler,
            "early_stopping": early,
        }
        self.t, self.state, self.cfg, self.info, self.tracker = t, state, cfg, info, tracker
        self.ok, self.error = True, ""  # the last save
        self.saved_step: int | None = None

    def state_dict(self) -> dict:
        """Collective: every rank holds rank 0's BatchNorm statistics afterwards (DDP would copy
        them at the next forward anyway) and contributes its RNG states."""
        broadcast_buffers(self.t.model, self.info)
        rng = all_gather_objects(capture_rng_state(self.info.device), self.info)
        return {
            **{key: part.state_dict() for key, part in self.parts.items()},
            **self.state.state_dict(),
            "rng": rng,
            "unfreeze": self.t.unfreeze.state_dict(),
            "config": asdict(self.cfg),
            "tasks": list(self.t.loss_fn.tasks),
            "depth": self.cfg.depth,
            "width": self.cfg.width,
            "world_size": self.info.world_size,
        }

    def due(self, step: int) -> bool:
        return bool(self.cfg.checkpoint_every) and step % self.cfg.checkpoint_every == 0

    def save(self, is_best: bool = False) -> bool:
        """Rank 0 writes while the others wait.  A failed write is reported and training goes on
        (space may come back; the previous checkpoint is intact) -- but a run whose final
        checkpoint failed does not end as a success (see finish)."""
        state = self.state_dict()
        error = ""
        if self.info.is_main:
            try:
                self.files.save(state, self.state.step, is_best=is_best)
            except CheckpointSaveError as exc:
                error = str(exc)
                log0(self.info, f"warning: {error}")
                self.tracker.set_tags({"last_checkpoint_error": error})
        self.error = broadcast_object(error, self.info)
        self.ok = not self.error
        self.saved_step = self.state.step if self.ok else self.saved_step
        return self.ok

    def resume(self, resume: str) -> bool:
        """--resume auto (newest valid checkpoint of the output dir), none, or a PATH."""
        if resume == "none":
            return False
        if resume == "auto":
            found = self.files.load_latest_valid(map_location="cpu")
        else:
            found = (load_checkpoint_file(resume, map_location="cpu"), Path(resume))
        if found is None:
            return False
        self.load_state_dict(*found)
        return True

    def load_state_dict(self, ckpt: dict, path: Path) -> None:
        cfg, info = self.cfg, self.info
        if ckpt["unfreeze"] != self.t.unfreeze.state_dict():
            # The optimizer's groups and every epoch's trainable set follow the schedule.
            raise SystemExit(
                f"{path} was trained with the unfreeze schedule {ckpt['unfreeze']}, this run asks "
                f"for {self.t.unfreeze.state_dict()}; resume with the same --unfreeze* options or "
                "start a new --output-dir"
            )
        for mismatch in (comm_options_mismatch(ckpt["config"], cfg), learning_options_mismatch(ckpt["config"], cfg)):
            if mismatch:
                raise SystemExit(f"{path} {mismatch}")
        saved = (int(ckpt["depth"]), recorded_width(ckpt))
        if saved != (cfg.depth, cfg.width):
            raise SystemExit(
                f"{path} holds a ResNet3D-{saved[0]} of width {saved[1]}, this run builds ResNet3D-{cfg.depth} "
                f"of width {cfg.width}; resume with the same --depth/--width or start a new --output-dir"
            )
        for key, part in self.parts.items():
            part.load_state_dict(ckpt[key])
        self.state.load_state_dict(ckpt)
        if ckpt["world_size"] == info.world_size:
            restore_rng_state(ckpt["rng"][info.rank], info.device)  # CUDA's too (dropout on GPU)
        elif cfg.allow_world_size_change:
            log0(
                info,
                f"world size changed {ckpt['world_size']} -> {info.world_size}: epoch {self.state.epoch} "
                "restarts from its first batch; RNG states are re-seeded",
            )
            self.state.batch_in_epoch = 0
            torch.manual_seed(cfg.seed + 7919 * info.rank + self.state.step)
        else:
            raise SystemExit(
                f"{path} was written by {ckpt['world_size']} ranks, this job has {info.world_size}; "
                "the data order would change. Pass --allow-world-size-change to resume anyway "
                "(the current epoch then restarts from its beginning)."
            )
        log0(
            info,
            f"resumed from {path}: step {self.state.step}, epoch {self.state.epoch}, "
            f"batch {self.state.batch_in_epoch} of the epoch",
        )


# ------------------------------------------------------------------------------------------------
# 1-3, 5, 7: set-up and the end
# ------------------------------------------------------------------------------------------------
def configure_device(cfg: TrainConfig, info: DistInfo) -> tuple[torch.dtype | None, bool]:
    """Determinism, cuDNN/TF32 flags, the autocast dtype and channels_last_3d for this device."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    on_gpu = info.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = resolve_amp(cfg.amp, info.device, quiet=not info.is_main)  # bf16 on a CPU: oneDNN off
    if cfg.bn == "sync" and not on_gpu:
        raise SystemExit("--bn sync needs GPUs (SyncBatchNorm has no CPU kernel); use --bn train or eval")
    return amp_dtype, cfg.channels_last == "on" or (cfg.channels_last == "auto" and on_gpu)


def shown_path(path: Path) -> str:
    """``path`` as a user would type it here: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def config_line(cfg: TrainConfig, demo: bool) -> str:
    """The first line a run prints: where its settings come from (the demo's file, when a run
    names no data and no --config)."""
    where = f"settings from {cfg.config}" if cfg.config else "settings: the defaults"
    if demo:
        where = f"the demo (no --videos or --cache): {where}"
    return f"{where}, then the command line; this run's whole config: {Path(cfg.output_dir) / 'config.yaml'}"


def use_demo_dataset(cfg: TrainConfig, info: DistInfo) -> None:
    """Render the built-in demo clips once per node (the other ranks wait) and train on them from
    a raw frame cache of them, which spares decoding the same small clips every epoch
    (--videos DEMO_DIR/videos decodes them instead)."""
    if info.local_rank == 0:
        ensure_demo_dataset(
            cfg.demo_dir,
            num_videos=cfg.demo_videos + cfg.demo_val_videos,
            seed=cfg.seed,
            static=cfg.demo_static,
            progress=info.is_main and cfg.progress,
        )
        ensure_demo_frame_cache(cfg.demo_dir, cfg.frames, cfg.size)
    barrier(info)
    cfg.annotations = str(Path(cfg.demo_dir) / "annotations.csv")
    cfg.cache = str(demo_frame_cache_dir(cfg.demo_dir, cfg.frames, cfg.size))


@dataclass
class Data:
    table: pd.DataFrame
    train_loader: DataLoader | CacheLoader
    train_sampler: ResumableShardSampler
    val_loader: DataLoader | CacheLoader | None
    steps_per_epoch: int
    total_steps: int


def build_data(cfg: TrainConfig, tasks, info: DistInfo, validation_only: Sequence[str] = ()) -> Data:
    """Annotation table -> split -> clip datasets (decoded videos or the frame cache) -> loaders.
    ``validation_only``: videos put in the validation split whatever the split method says (the
    demo's extra validation clips)."""
    if cfg.annotations is None:
        raise SystemExit("--annotations CSV is required with --videos/--cache")
    try:
        table, table_report = load_annotation_table(cfg.annotations, tasks=tasks)
    except (OSError, AnnotationError) as exc:  # a missing file, a table without the asked-for columns
        raise SystemExit(f"--annotations: {exc}") from exc
    split = assign_splits(table, method=cfg.split, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    split[table["video_name"].isin(validation_only).to_numpy()] = "val"
    targets = build_targets(table, tasks)
    rows = split_indices(split.to_numpy())
    train_rows, val_rows = rows["train"], rows["val"]
    log0(
        info,
        f"annotations {cfg.annotations}: {len(table)} videos -> train {len(train_rows)}, "
        f"val {len(val_rows)}{f' ({len(validation_only)} of them for validation only)' if validation_only else ''}, "
        f"test {len(rows['test'])}",
    )
    if table_report is not None and getattr(table_report, "total_unmapped", 0):
        log0(info, f"annotation values that could not be mapped (set to unknown): {table_report}")

    source = open_clip_source(cfg, info)
    names = table["video_name"].tolist()

    def subset(rows, train: bool):
        return make_clip_dataset(
            source,
            [names[i] for i in rows],
            {k: v[rows] for k, v in targets.items()},
            cfg,
            train,
        )

    train_set = subset(train_rows, train=True)
    val_set = subset(val_rows, train=False) if len(val_rows) and cfg.val_every > 0 else None
    report_missing_videos(train_set, val_set, cfg, info)
    train_sampler = ResumableShardSampler(
        len(train_set), info.rank, info.world_size, cfg.seed, multiple_of=cfg.batch_size * cfg.accum_steps
    )
    steps_per_epoch = len(train_sampler) // (cfg.batch_size * cfg.accum_steps)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    # The frame cache is read by threads into reused batch buffers (datasets/cache_loader.py);
    # decoded videos by a DataLoader.
    loader_kwargs = dict(
        workers=cfg.num_workers,
        prefetch=cfg.prefetch_factor,
        pin_memory=info.device.type == "cuda",
        collate_fn=collate_cached if cfg.cache else collate_clips,
        persistent_workers=cfg.num_workers > 0,
        # A private generator: creating loader iterators must not consume the global RNG, or a
        # run resumed mid-epoch would draw different dropout masks than the uninterrupted one.
        generator=torch.Generator().manual_seed(cfg.seed),
        # SLURM's SIGTERM reaches the data workers too; they must outlive it until we have saved.
        worker_init_fn=ignore_preemption_in_data_worker,
    )
    train_loader = make_loader(train_set, train_sampler, cfg.batch_size, drop_last=True, **loader_kwargs)
    val_loader = None
    if val_set is not None:
        val_loader = make_loader(
            val_set, ExactShardSampler(len(val_set), info.rank, info.world_size), cfg.batch_size, **loader_kwargs
        )
    return Data(table, train_loader, train_sampler, val_loader, steps_per_epoch, total_steps)


def open_clip_source(cfg: TrainConfig, info: DistInfo):
    """The frame cache (refused before any work if it was built for other frames/size), or one
    recursive scan of the video root shared by both splits."""
    if not cfg.cache:
        if not Path(cfg.videos).is_dir():
            raise SystemExit(f"--videos {cfg.videos}: no such directory")
        return scan_video_root(cfg.videos)
    try:
        cache = FrameCache(cfg.cache)
        cache.check_serves(cfg.frames, cfg.size)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--cache: {exc}") from exc
    log0(
        info,
        f"frame cache {cfg.cache}: {cache.params.describe()}; {len(cache)} clips"
        + (f" (--videos {cfg.videos} is not read: training uses the cache)" if cfg.videos else ""),
    )
    return cache


def make_clip_dataset(source, names: list[str], targets: dict, cfg: TrainConfig, train: bool):
    if isinstance(source, FrameCache):
        return CachedClipDataset(
            source,
            video_names=names,
            targets=targets,
            num_frames=cfg.frames,
            size=cfg.size,
            train=train,
            seed=cfg.seed,
            bad_video=cfg.bad_video,
            augment=TRAIN_AUGMENTATION,
        )
    try:
        return VideoClipDataset(
            video_root=cfg.videos,
            video_names=names,
            targets=targets,
            num_frames=cfg.frames,
            size=cfg.size,
            train=train,
            seed=cfg.seed,
            bad_video=cfg.bad_video,
            augment=TRAIN_AUGMENTATION,
            index=source,
            decode_policy=DecodePolicy(cfg.partial_videos, cfg.max_video_seconds, cfg.max_video_pixels),
        )
    except PtClipsError as exc:
        raise SystemExit(f"--videos {cfg.videos}: {exc}") from exc


def report_missing_videos(train_set, val_set, cfg: TrainConfig, info: DistInfo) -> None:
    """Count, before training, the table's videos that have no file / no cached clip: one log
    line and OUTPUT_DIR/missing_videos.txt.  They load as bad videos; none at all is an error."""
    where = f"the cache {cfg.cache}" if cfg.cache else f"--videos {cfg.videos}"
    if len(train_set.missing) == len(train_set):
        hint = "was it prepared from this table? (see its manifest.csv)" if cfg.cache else "is it the right root?"
        raise SystemExit(f"none of the {len(train_set)} training videos of {cfg.annotations} is in {where}; {hint}")
    missing = [("train", n) for n in train_set.missing]
    missing += [("val", n) for n in (val_set.missing if val_set is not None else [])]
    if missing and info.is_main:
        listing = Path(cfg.output_dir) / "missing_videos.txt"
        listing.write_text("".join(f"{split}\t{name}\n" for split, name in missing))
        detail = f" (see {cfg.cache}/failures.csv)" if cfg.cache else ""
        print(
            f"{len(missing)} table videos are not in {where}{detail}; they load as bad videos (listed in {listing})",
            flush=True,
        )


def build_training(
    cfg: TrainConfig, tasks, total_steps: int, steps_per_epoch: int, info: DistInfo, amp_dtype, channels_last: bool
) -> Training:
    """The model (initial weights, freezing, BatchNorm mode, memory format), loss, optimizer, LR
    schedule, GradScaler (enabled only for fp16, so bf16 and fp32 share its no-op path)."""
    model = build_model(depth=cfg.depth, tasks=tasks, dropout=cfg.dropout, width=cfg.width)
    init_path = cfg.pretrained
    if init_path and init_path.startswith(MLFLOW_RUN):
        init_path = download_run_checkpoint(init_path[len(MLFLOW_RUN) :].strip("/"), cfg, info)
    if init_path:
        log0(info, f"initial weights from {init_path}: {load_pretrained(model, init_path)}")
    if cfg.freeze:
        freeze(model, [p.strip() for p in cfg.freeze.split(",") if p.strip()])
    unfreeze = UnfreezeSchedule(
        parse_key_values(cfg.unfreeze, "--unfreeze", int, sep=":"),
        low_lr_factor=cfg.unfreeze_low_lr_factor,
        low_lr_epochs=cfg.unfreeze_low_lr_epochs,
    )
    # Training-mode BatchNorm needs more than one value per channel; layer4 sees the fewest.
    bn_values_per_clip = math.prod(model.feature_grid(cfg.frames, cfg.size, cfg.size))
    if cfg.bn == "train" and cfg.batch_size * bn_values_per_clip <= 1:
        raise SystemExit(
            f"--batch-size {cfg.batch_size} at --frames {cfg.frames} --size {cfg.size}: layer4's "
            f"BatchNorm would see {cfg.batch_size * bn_values_per_clip} value per channel, and "
            "training-mode BatchNorm needs more than one; use a larger --batch-size, "
            "--frames or --size, or --bn eval"
        )
    if cfg.bn == "sync" and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    loss_fn = MultiTaskLoss(
        tasks,
        include_confidence=cfg.include_confidence,
        alpha=cfg.alpha,
        beta=cfg.beta,
        task_weights=parse_key_values(cfg.task_weights, "--task-weights") or None,
    )
    optimizer = build_optimizer(model, cfg, unfreeze)
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(1, int(0.05 * total_steps))
    scheduler = build_lr_scheduler(
        optimizer,
        cfg.schedule,
        total_steps=total_steps,
        warmup_steps=warmup,
        min_lr_ratio=cfg.min_lr_ratio,
        restart_steps=cfg.restart_epochs * steps_per_epoch,
        restart_mult=cfg.restart_mult,
    )
    return Training(
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16),
        unfreeze=unfreeze,
        guard=NonFiniteGuard(cfg.nonfinite, cfg.max_nonfinite_skips, amp_dtype == torch.float16, info, cfg.output_dir),
        device=info.device,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        clip_grad=cfg.clip_grad,
        distributed=info.distributed,
        snapshot=BufferSnapshot(model),
        min_clips=2 if cfg.bn == "train" and bn_values_per_clip == 1 else 1,
    )


def build_optimizer(model: nn.Module, cfg: TrainConfig, schedule: UnfreezeSchedule) -> torch.optim.Optimizer:
    """Every parameter, frozen or not, is in the optimizer from the start (frozen ones simply get
    no gradient and are skipped), so unfreezing never changes the optimizer's groups and a
    checkpoint always loads into it.  Groups: (unfreeze prefix, decay / no decay)."""
    groups: dict[tuple[str, bool], list] = {}
    first_name: dict[tuple[str, bool], str] = {}
    for name, param in model.named_parameters():
        key = (schedule.prefix_for(name) or "", no_weight_decay(name, param))
        groups.setdefault(key, []).append(param)
        first_name.setdefault(key, name)
    param_groups = [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            # any parameter of the group tells the schedule's LR scale for the whole group
            "scale_param": first_name[(prefix, no_decay)],
            "name": f"{prefix or 'base'}/{'no_decay' if no_decay else 'decay'}",
        }
        for (prefix, no_decay), params in sorted(groups.items())
    ]
    # fused=True: one kernel per step, and the only kind that can skip an update on the device
    # (step_unless_nonfinite)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=True)
        # Fused SGD fills the momentum buffers on its first step even when that step is skipped;
        # zeros from the start make every step a regular one (buffer = gradient on the first).
        for p in model.parameters() if cfg.momentum else ():
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return optimizer
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, fused=True)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, fused=True)


def wrap_ddp(model: nn.Module, info: DistInfo, cfg: TrainConfig) -> nn.Module:
    """DDP only registers parameters that require grad when it is built, so the loop rebuilds it
    whenever the unfreeze schedule changes the trainable set.  With alpha or beta = 0 some head
    outputs get no gradient and DDP must look for unused parameters."""
    if not info.distributed:
        return model
    ddp = DDP(
        model,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=cfg.alpha == 0 or cfg.beta == 0,
        bucket_cap_mb=cfg.ddp_bucket_mb,
        gradient_as_bucket_view=cfg.gradient_as_bucket_view,
    )
    register_grad_compression(ddp, cfg.grad_compression)  # --grad-compression: PyTorch's DDP comm hooks
    return ddp


def set_train_mode(model: nn.Module, bn: str) -> None:
    """model.train(), and under --bn eval BatchNorm keeps using (and never updates) its running
    statistics (its affine weights still train).  The one place the loop enters training mode."""
    model.train()
    if bn == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def warn_if_disk_short(t: Training, files: CheckpointManager, keep_last: int) -> None:
    """A checkpoint holds the weights, buffers and the optimizer's per-parameter state (Adam: two
    moments), about 3x the weights.  While a new one is written, keep_last + 1 exist."""
    weights = sum(p.numel() * p.element_size() for p in t.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in t.model.buffers())
    moments = 1 if isinstance(t.optimizer, torch.optim.SGD) else 2
    per_checkpoint = (1 + moments) * weights + buffers
    needed = (keep_last + 1) * per_checkpoint
    files.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(files.dir).free
    if free < needed:
        print(
            f"warning: {files.dir} has {free / 2**30:.1f} GiB free; a checkpoint takes about "
            f"{per_checkpoint / 2**30:.2f} GiB and --keep-last {keep_last} needs about {needed / 2**30:.1f} GiB "
            f"(a failed write is reported and training goes on; the final one failing exits with "
            f"{CHECKPOINT_FAILED_EXIT_CODE})",
            flush=True,
        )


def download_run_checkpoint(run_id: str, cfg: TrainConfig, info: DistInfo) -> str:
    """The best (else last) checkpoint artifact of an earlier MLflow run, downloaded by rank 0."""
    path = None
    if info.is_main:
        import mlflow

        from utils.tracking import default_tracking_uri

        mlflow.set_tracking_uri(cfg.tracking_uri or default_tracking_uri(cfg.output_dir))
        dest = Path(cfg.output_dir) / "init_from_run" / run_id
        dest.mkdir(parents=True, exist_ok=True)
        errors = []
        for name in ("checkpoints/best.pt", "checkpoints/last.pt"):
            try:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dest))
                break
            except Exception as exc:  # not logged under this name: try the next
                errors.append(f"{name}: {exc}")
        if path is None:
            raise SystemExit(f"--pretrained {MLFLOW_RUN}{run_id}: no checkpoint artifact found ({'; '.join(errors)})")
    return broadcast_object(path, info)


def start_tracking(
    tracker: RunTracker, cfg: TrainConfig, state: TrainState, table: pd.DataFrame, demo: bool, amp_dtype, info: DistInfo
) -> str | None:
    """Rank 0 starts a new MLflow run (or continues the checkpoint's); every rank gets its id."""
    run_id = state.mlflow_run_id
    if info.is_main:
        new_run = run_id is None
        run_id = tracker.start(
            resume_run_id=run_id,
            tags={"entry_point": "train_ddp.py", "demo": str(demo)},
            experiment_tags={  # the MLflow UI then opens it as model training
                "mlflow.experimentKind": "custom_model_development",
                "mlflow.experiment.primaryMetric.name": cfg.early_stop_metric,
                "mlflow.experiment.primaryMetric.greaterIsBetter": str(cfg.early_stop_mode == "max").lower(),
            },
        )
        if new_run:
            tracker.log_params(flatten_for_logging(cfg))
            tracker.log_dict(asdict(cfg), "config.json")
            tracker.log_artifact(Path(cfg.output_dir) / "config.yaml")  # the file that repeats the run
            tracker.log_input_table(
                table, source=str(cfg.annotations), name=Path(cfg.annotations).name, context="training"
            )
        tracker.set_tags(
            {
                "world_size": info.world_size,
                "device": str(info.device),
                "amp": amp_name(amp_dtype),
                "torch": torch.__version__,
            }
        )
        if run_id is None:
            print(
                f"MLflow at {tracker.tracking_uri} is unavailable: training goes on, metrics are kept in "
                f"{Path(cfg.output_dir) / 'metrics.jsonl'} and MLflow is retried",
                flush=True,
            )
        else:
            print(f"MLflow run {run_id} at {tracker.tracking_uri}", flush=True)
    return broadcast_object(run_id, info)


def finished_already(state: TrainState, early: EarlyStopping, cfg: TrainConfig) -> str | None:
    """Why a resumed run has nothing left to do (its stop criterion was met), or None."""
    if state.epoch >= cfg.epochs:
        return f"{state.epoch} of --epochs {cfg.epochs} done"
    if cfg.max_steps and state.step >= cfg.max_steps:
        return f"--max-steps {cfg.max_steps} reached"
    if early.should_stop:
        return f"early stopping: {cfg.early_stop_metric} did not improve for {early.bad_validations} validations"
    return None


def finish(
    stop_reason: str | None,
    t: Training,
    state: TrainState,
    early: EarlyStopping,
    checkpointer: Checkpointer,
    tracker: RunTracker,
    cfg: TrainConfig,
    info: DistInfo,
) -> tuple[int, str]:
    """The final checkpoint, artifacts, plots and model; returns (exit code, MLflow run status)."""
    out_dir = Path(cfg.output_dir)
    if stop_reason and stop_reason.startswith("preempted"):
        saved = checkpointer.save()
        log0(
            info,
            f"{stop_reason}: checkpoint at step {state.step} {'written' if saved else 'FAILED'}; "
            f"exiting with {PREEMPTED_EXIT_CODE} so the job can be requeued",
        )
        if info.is_main:
            (out_dir / PREEMPTED_MARKER).write_text(f"step {state.step}\n{stop_reason}\n")
            tracker.set_tags({"stop_reason": stop_reason})
        return PREEMPTED_EXIT_CODE, "KILLED"
    if stop_reason == "nonfinite":
        checkpointer.save()
        log0(
            info,
            f"stopping: non-finite loss/gradients at step {t.guard.last_bad_step} "
            f"({state.counters.consecutive_nonfinite} consecutive; --nonfinite {cfg.nonfinite}); "
            f"checkpoint {'written' if checkpointer.ok else 'FAILED'}, details in {out_dir / 'nonfinite.tsv'}",
        )
        tracker.set_tags({"stop_reason": "nonfinite"})
        return NONFINITE_EXIT_CODE, "FAILED"
    if stop_reason == "max_steps" and checkpointer.saved_step != state.step:
        checkpointer.save()
    if info.is_main:
        (out_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
        tracker.set_tags({"stop_reason": stop_reason or "epochs_done", "final_step": state.step})
        if cfg.plots:
            log_training_plots(t.loss_fn.tasks, early, tracker, out_dir)
        finish_tracking(tracker, t.model, t.loss_fn.tasks, cfg, checkpointer.files)
    if not checkpointer.ok:
        # The trained weights exist only in memory (and in MLflow if --log-model): say so loudly.
        log0(
            info,
            f"error: training ended at step {state.step} but its final checkpoint could not be written "
            f"({checkpointer.error}); exiting with {CHECKPOINT_FAILED_EXIT_CODE}",
        )
        tracker.set_tags({"stop_reason": "checkpoint_write_failed"})
        return CHECKPOINT_FAILED_EXIT_CODE, "FAILED"
    return 0, "FINISHED"


def log_training_plots(tasks, early: EarlyStopping, tracker: RunTracker, out_dir: Path) -> None:
    """The best validation's predicted-vs-target plots and metric bars, and the training curves,
    drawn by evaluate.py's code (utils/plots.py) into OUTPUT_DIR/plots and logged to MLflow."""
    history = read_metrics_jsonl(out_dir / "metrics.jsonl") if (out_dir / "metrics.jsonl").exists() else None
    probs = targets = None
    if (out_dir / BEST_PREDICTIONS).exists():
        with np.load(out_dir / BEST_PREDICTIONS) as saved:
            logits = {k[len("logits/") :]: torch.from_numpy(saved[k]) for k in saved.files if k.startswith("logits/")}
            targets = {k[len("targets/") :]: saved[k] for k in saved.files if k.startswith("targets/")}
        probs = {k: v.numpy() for k, v in logits_to_probabilities(logits).items()}
    title = f"best validation (epoch {early.best_epoch}, step {early.best_step})"
    for path in plot_evaluation(probs, targets, tasks, out_dir / "plots", title=title, history=history):
        tracker.log_artifact(path, "plots")


def print_summary(
    stop_reason: str | None,
    exit_code: int,
    state: TrainState,
    early: EarlyStopping,
    checkpointer: Checkpointer,
    tracker: RunTracker,
    cfg: TrainConfig,
    info: DistInfo,
    seconds: float,
    steps_run: int,
    last_validation: dict[str, float],
) -> None:
    """The last thing a run prints (rank 0): what happened, the last validation per task (each
    Spearman with its bootstrap standard error and the clips it counts, so signal and noise can be
    told apart) and where everything is."""
    files = checkpointer.files
    clips = steps_run * cfg.batch_size * cfg.accum_steps * info.world_size
    best = (
        f"{early.metric} = {early.best:.4f} at epoch {early.best_epoch} (step {early.best_step})"
        if early.best is not None
        else "no validation"
    )
    lines = [
        f"run ended: {stop_reason or 'all epochs done'} (exit code {exit_code}) after {state.step} steps, "
        f"{state.epoch} of {cfg.epochs} epochs",
        f"best: {best}",
        *validation_lines(last_validation),
        *(
            f"{name}: {path}"
            for name, path in (("best.pt", files.best_path), ("last.pt", files.last_path))
            if path.exists()
        ),
        f"MLflow run {tracker.run_id or '(not logged: MLflow unavailable, see metrics.jsonl)'}; "
        f"to look at it: {ui_command(tracker.tracking_uri)}",
        f"wall time {seconds / 60:.1f} min; {clips / seconds:.1f} clips/s over the {steps_run} steps of this "
        f"launch ({cfg.batch_size} x {cfg.accum_steps} x {info.world_size} clips per step)",
    ]
    print("\n".join(["-" * 72, *lines, "-" * 72]), flush=True)


def validation_lines(metrics: dict[str, float]) -> list[str]:
    """The summary's lines for one validation: "facingness  0.54 ± 0.04 (n=600)" per score task,
    accuracy and n per class task."""
    if not metrics:
        return []
    lines = [
        f"last validation ({metrics['val/clips']:.0f} clips): Spearman ± bootstrap standard error (n scored clips)"
    ]
    for key in metrics:
        if key.endswith("/spearman") and key != "val/mean_spearman":
            task = key[len("val/") : -len("/spearman")]
            se, n = metrics.get(f"val/{task}/spearman_se", math.nan), metrics[f"val/{task}/n"]
            lines.append(f"  {task:14s} {metrics[key]:6.3f} ± {se:.3f} (n={n:.0f})")
        elif key.endswith("/accuracy"):
            task = key[len("val/") : -len("/accuracy")]
            lines.append(f"  {task:14s} accuracy {metrics[key]:.3f} (n={metrics[f'val/{task}/n']:.0f})")
    if "val/mean_spearman" in metrics:
        lines.append(f"  {'mean Spearman':14s} {metrics['val/mean_spearman']:6.3f}")
    return lines


def finish_tracking(tracker: RunTracker, model: nn.Module, tasks, cfg: TrainConfig, files: CheckpointManager) -> None:
    """best.pt / last.pt as artifacts, and the model in MLflow's format (uint8 video in,
    probabilities out, columns named like the annotation table)."""
    if not tracker.available:
        return
    if cfg.log_checkpoints:
        for path in (files.best_path, files.last_path):
            if path.exists():
                tracker.log_artifact(path, "checkpoints")
    if cfg.log_model:
        import mlflow.pytorch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        serving = ServingModel(model, tasks).cpu().float().eval()
        serving = serving.to(memory_format=torch.contiguous_format)
        example = np.zeros((2, 3, cfg.frames, cfg.size, cfg.size), dtype=np.uint8)
        cols = prediction_columns(tasks)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, cfg.frames, cfg.size, cfg.size))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(cols)))]),
        )
        tracker.call(
            "log_model",
            lambda: mlflow.pytorch.log_model(
                serving,
                name="model",
                input_example=example,
                signature=signature,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                metadata={"output_columns": cols, "input": "uint8 video (N, 3, T, H, W), RGB"},
            ),
        )


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
