"""Multi-task ResNet3D training: plain PyTorch, DistributedDataParallel, explicit AMP.

    torchrun --nproc_per_node=8 train_ddp.py --videos DIR --annotations CSV --pretrained MIT.pth.tar
    torchrun --nproc_per_node=2 train_ddp.py        # no arguments: the built-in demo, on CPU too
    python train_ddp.py                              # a single process, no process group

Read top to bottom; everything that happens is here:
  1. config (dataclass <- YAML/JSON <- flags), process group, seeds, signal flag
  2. data: annotation table -> split -> clip datasets -> resumable distributed sampler
  3. model (MiT / earlier / own weights), freezing, DDP, optimizer, LR schedule, GradScaler
  4. resume from the newest valid checkpoint (model, optimizer, scheduler, scaler, position, RNG)
  5. rank-0 MLflow run (id broadcast to every rank)
  6. the loop: micro-batches -> one all-reduce of counts/flags -> forward/backward (gradients
     synced only on the last micro-step) -> unscale -> clip -> finite check -> step -> schedule
     -> log -> checkpoint; validation and early stopping at epoch ends
  7. the end: final checkpoint, artifacts, model, run status (FINISHED / FAILED / KILLED)
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import (
    CachedClipDataset,
    ExactShardSampler,
    FrameCache,
    ResumableShardSampler,
    VideoClipDataset,
    assign_splits,
    build_targets,
    collate_cached,
    collate_clips,
    ensure_demo_dataset,
    load_annotation_table,
    model_input,
    scan_video_root,
)
from losses import MultiTaskLoss
from resnet3d import UnfreezeSchedule, build_model, freeze, load_pretrained, no_weight_decay
from utils.checkpoint import CheckpointManager, CheckpointSaveError, load_checkpoint_file
from utils.config import TrainConfig, comm_options_mismatch, flatten_for_logging, parse_config, parse_key_values
from utils.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    destroy_distributed,
    init_distributed,
    record_rank,
    register_grad_compression,
)
from utils.metrics import task_metrics
from utils.predictions import ServingModel, prediction_columns
from utils.rng import capture_rng_state, restore_rng_state
from utils.schedules import build_lr_scheduler
from utils.signals import PREEMPTED_EXIT_CODE, PREEMPTED_MARKER, PreemptionFlag, ignore_preemption_in_data_worker
from utils.tasks import parse_tasks
from utils.tracking import RunTracker

NONFINITE_EXIT_CODE = 3
CHECKPOINT_FAILED_EXIT_CODE = 4  # training ended but its final checkpoint could not be written

# With no --videos/--cache the demo runs: a model and clip size that learn on 2 CPU cores in
# minutes.  Options you set yourself win over these.
DEMO_PRESET = dict(
    depth=18, frames=8, size=64, batch_size=16, epochs=6, lr=2e-3, weight_decay=0.01,
    dropout=0.2, num_workers=2, checkpoint_every=0, val_every=1, patience=0, warmup_steps=20,
    output_dir="runs/demo",
)


def log0(info: DistInfo, *msg) -> None:
    """Print on rank 0 only (through tqdm, so a progress bar stays intact)."""
    if info.is_main:
        tqdm.write(" ".join(str(m) for m in msg), file=sys.stdout)


# ------------------------------------------------------------------------------------------------
# 1. helpers the loop calls (each a few lines; the loop itself is in main())
# ------------------------------------------------------------------------------------------------
def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


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
        {"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay,
         # any parameter of the group tells the schedule's LR scale for the whole group
         "scale_param": first_name[(prefix, no_decay)],
         "name": f"{prefix or 'base'}/{'no_decay' if no_decay else 'decay'}"}
        for (prefix, no_decay), params in sorted(groups.items())
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def warn_if_disk_short(model: nn.Module, optimizer: torch.optim.Optimizer, ckpts: CheckpointManager,
                       keep_last: int) -> None:
    """A checkpoint holds the weights, buffers and the optimizer's per-parameter state (Adam: two
    moments), about 3x the weights.  While a new one is written, keep_last + 1 exist."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    moments = 1 if isinstance(optimizer, torch.optim.SGD) else 2
    per_checkpoint = (1 + moments) * weights + buffers
    needed = (keep_last + 1) * per_checkpoint
    ckpts.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(ckpts.dir).free
    if free < needed:
        print(f"warning: {ckpts.dir} has {free / 2**30:.1f} GiB free; a checkpoint takes about "
              f"{per_checkpoint / 2**30:.2f} GiB and --keep-last {keep_last} needs about {needed / 2**30:.1f} GiB "
              f"(a failed write is reported and training goes on; the final one failing exits with "
              f"{CHECKPOINT_FAILED_EXIT_CODE})", flush=True)


def set_bn_eval(model: nn.Module) -> None:
    """--bn eval: BatchNorm uses and keeps its running statistics (affine weights still train)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


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
    register_grad_compression(ddp, cfg.grad_compression)
    return ddp


def move_targets(targets: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in targets.items()}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, loss_fn: MultiTaskLoss, tasks, info: DistInfo,
             amp_dtype, channels_last: bool) -> dict[str, float]:
    """Exactly-once evaluation: every rank predicts its shard, all predictions are gathered, and
    every rank computes the same metrics (so early-stopping decisions agree without a broadcast)."""
    model.eval()
    local = {"indices": [], "logits": {}, "targets": {}}
    sums = torch.zeros(len(tasks), dtype=torch.float64, device=info.device)
    counts = torch.zeros(len(tasks), dtype=torch.float64, device=info.device)
    for batch in loader:
        if len(batch["indices"]) == 0:
            continue
        x = model_input(batch, info.device, channels_last)
        targets = move_targets(batch["targets"], info.device)
        with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(x)
        out = loss_fn(outputs, targets)
        for i, t in enumerate(tasks):
            sums[i] += out.sums[t].double()
            counts[i] += out.counts[t].double()
        local["indices"].append(batch["indices"].numpy())
        for k, v in outputs.items():
            local["logits"].setdefault(k, []).append(v.float().cpu().numpy())
        for k, v in batch["targets"].items():
            local["targets"].setdefault(k, []).append(v.numpy())
    all_reduce_sum(sums, info)
    all_reduce_sum(counts, info)
    gathered = all_gather_objects(
        {"indices": np.concatenate(local["indices"]) if local["indices"] else np.zeros(0, np.int64),
         "logits": {k: np.concatenate(v) for k, v in local["logits"].items()},
         "targets": {k: np.concatenate(v) for k, v in local["targets"].items()}},
        info,
    )
    parts = [g for g in gathered if len(g["indices"])]
    if not parts:
        return {}
    order = np.argsort(np.concatenate([g["indices"] for g in parts]), kind="stable")
    logits = {k: np.concatenate([g["logits"][k] for g in parts])[order] for k in parts[0]["logits"]}
    targets = {k: np.concatenate([g["targets"][k] for g in parts])[order] for k in parts[0]["targets"]}
    metrics = {f"val/{k}": v for k, v in task_metrics(logits, targets, tasks).items()}
    for i, t in enumerate(tasks):
        metrics[f"val/{t}/loss"] = (sums[i] / counts[i]).item() if counts[i] > 0 else math.nan
    metrics["val/clips"] = float(len(order))
    return metrics


def gather_bad_videos(bad: list, info: DistInfo) -> list:
    return [b for part in all_gather_objects(bad, info) for b in part]


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    # ---- 1. config, process group, seeds, signals ------------------------------------------------
    cfg, explicit = parse_config(argv)
    demo = cfg.videos is None and cfg.cache is None
    if demo:
        for key, value in DEMO_PRESET.items():
            if key not in explicit:
                setattr(cfg, key, value)
    tasks = parse_tasks(cfg.tasks)
    info = init_distributed(cfg.device, cfg.dist_timeout)
    preempt = PreemptionFlag()
    out_dir = Path(cfg.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        print("config:\n" + "\n".join(f"  {k}: {v}" for k, v in asdict(cfg).items()), flush=True)
        print(f"world size {info.world_size}, backend {info.backend or 'none (single process)'}, "
              f"device {info.device}", flush=True)
    record_rank(info, out_dir / "ranks")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    on_gpu = info.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = resolve_amp(cfg.amp, info.device)
    if amp_dtype == torch.bfloat16 and not on_gpu and torch.backends.mkldnn.enabled:
        # Measured with torch 2.14.1: oneDNN's bf16 conv3d backward on CPU returns non-deterministic,
        # sometimes non-finite gradients (and crashes on 4-frame inputs).  The native kernels are
        # slower but correct, and bf16 on a CPU is only ever asked for explicitly.
        torch.backends.mkldnn.enabled = False
        log0(info, "--amp bf16 on CPU: oneDNN disabled (its bf16 conv3d backward is broken in this "
                   "PyTorch build); expect slow steps")
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and on_gpu)
    if cfg.bn == "sync" and not on_gpu:
        raise SystemExit("--bn sync needs GPUs (SyncBatchNorm has no CPU kernel); use --bn train or eval")

    tracker = RunTracker(False, out_dir, None, cfg.experiment)
    status = "FAILED"
    try:
        # ---- 2. data ------------------------------------------------------------------------------
        if demo:
            if info.local_rank == 0:
                ensure_demo_dataset(cfg.demo_dir, num_videos=cfg.demo_videos, seed=cfg.seed)
            barrier_ok = broadcast_object(True, info)  # others wait for the generator
            assert barrier_ok
            cfg.videos = str(Path(cfg.demo_dir) / "videos")
            cfg.annotations = str(Path(cfg.demo_dir) / "annotations.csv")
        if cfg.annotations is None:
            raise SystemExit("--annotations CSV is required with --videos/--cache")
        table, table_report = load_annotation_table(cfg.annotations, tasks=tasks)
        split = assign_splits(table, method=cfg.split, val_fraction=cfg.val_fraction,
                              test_fraction=cfg.test_fraction)
        targets = build_targets(table, tasks)
        names = table["video_name"].tolist()
        train_rows = np.flatnonzero((split == "train").to_numpy())
        val_rows = np.flatnonzero((split == "val").to_numpy())
        log0(info, f"annotations {cfg.annotations}: {len(table)} videos -> train {len(train_rows)}, "
                   f"val {len(val_rows)}, test {int((split == 'test').sum())}")
        if table_report is not None and info.is_main and getattr(table_report, "total_unmapped", 0):
            print(f"annotation values that could not be mapped (set to unknown): {table_report}", flush=True)

        if cfg.cache:  # refuses a cache built for other frames/size before any work starts
            try:
                cache = FrameCache(cfg.cache)
                cache.check_serves(cfg.frames, cfg.size)
            except (OSError, ValueError) as exc:
                raise SystemExit(f"--cache: {exc}") from exc
            log0(info, f"frame cache {cfg.cache}: {cache.params.describe()}; {len(cache)} clips"
                       + (f" (--videos {cfg.videos} is not read: training uses the cache)" if cfg.videos else ""))
        else:
            video_index = scan_video_root(cfg.videos)  # one recursive scan, shared by both splits

        def make_dataset(rows, train: bool):
            if cfg.cache:
                return CachedClipDataset(
                    cache, video_names=[names[i] for i in rows], targets={k: v[rows] for k, v in targets.items()},
                    num_frames=cfg.frames, size=cfg.size, train=train, seed=cfg.seed, bad_video=cfg.bad_video,
                    jpeg_decode="device" if cfg.cache_decode == "device" or (cfg.cache_decode == "auto" and on_gpu)
                    else "worker",
                )
            return VideoClipDataset(
                video_root=cfg.videos, video_names=[names[i] for i in rows],
                targets={k: v[rows] for k, v in targets.items()}, num_frames=cfg.frames,
                size=cfg.size, train=train, seed=cfg.seed, bad_video=cfg.bad_video, index=video_index,
            )

        train_set = make_dataset(train_rows, train=True)
        val_set = make_dataset(val_rows, train=False) if len(val_rows) and cfg.val_every > 0 else None
        if cfg.cache:
            absent = len(train_set.missing) + (len(val_set.missing) if val_set is not None else 0)
            if len(train_set.missing) == len(train_set):
                raise SystemExit(f"none of the {len(train_set)} training videos of {cfg.annotations} is in the "
                                 f"cache {cfg.cache}; was it prepared from this table? (see its manifest.csv)")
            if absent:
                log0(info, f"{absent} table videos have no clip in the cache (see {cfg.cache}/failures.csv); "
                           "they load as bad videos")
        train_sampler = ResumableShardSampler(len(train_set), info.rank, info.world_size, cfg.seed,
                                              multiple_of=cfg.batch_size * cfg.accum_steps)
        steps_per_epoch = len(train_sampler) // (cfg.batch_size * cfg.accum_steps)
        total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps > 0:
            total_steps = min(total_steps, cfg.max_steps)
        loader_kwargs = dict(
            num_workers=cfg.num_workers, pin_memory=on_gpu,
            collate_fn=collate_cached if cfg.cache else collate_clips,
            persistent_workers=cfg.num_workers > 0,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
            # A private generator: creating loader iterators must not consume the global RNG, or a
            # run resumed mid-epoch would draw different dropout masks than the uninterrupted one.
            generator=torch.Generator().manual_seed(cfg.seed),
            # SLURM's SIGTERM reaches the data workers too; they must outlive it until we have saved.
            worker_init_fn=ignore_preemption_in_data_worker,
        )
        train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=train_sampler,
                                  drop_last=True, **loader_kwargs)
        val_loader = None
        if val_set is not None:
            val_loader = DataLoader(val_set, batch_size=cfg.batch_size,
                                    sampler=ExactShardSampler(len(val_set), info.rank, info.world_size),
                                    **loader_kwargs)

        # ---- 3. model, freezing, optimizer, schedule, scaler -----------------------------------------
        model = build_model(depth=cfg.depth, tasks=tasks, dropout=cfg.dropout)
        init_path = cfg.pretrained
        if cfg.init_from_run:
            init_path = download_run_checkpoint(cfg.init_from_run, cfg, info)
        if init_path:
            report = load_pretrained(model, init_path)
            log0(info, f"initial weights from {init_path}: {report}")
        if cfg.freeze:
            freeze(model, [p.strip() for p in cfg.freeze.split(",") if p.strip()])
        unfreeze = UnfreezeSchedule(parse_key_values(cfg.unfreeze, "--unfreeze", int, sep=":"),
                                    low_lr_factor=cfg.unfreeze_low_lr_factor,
                                    low_lr_epochs=cfg.unfreeze_low_lr_epochs)
        if cfg.bn == "sync" and info.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(info.device)
        if channels_last:
            model.to(memory_format=torch.channels_last_3d)
        loss_fn = MultiTaskLoss(tasks, include_confidence=cfg.include_confidence, alpha=cfg.alpha,
                                beta=cfg.beta, task_weights=parse_key_values(cfg.task_weights, "--task-weights") or None)
        optimizer = build_optimizer(model, cfg, unfreeze)
        warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(1, int(0.05 * total_steps))
        scheduler = build_lr_scheduler(optimizer, cfg.schedule, total_steps=total_steps, warmup_steps=warmup,
                                       min_lr_ratio=cfg.min_lr_ratio,
                                       restart_steps=cfg.restart_epochs * steps_per_epoch,
                                       restart_mult=cfg.restart_mult)
        scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)

        # ---- 4. resume ------------------------------------------------------------------------------
        ckpts = CheckpointManager(out_dir / "checkpoints", keep_last=cfg.keep_last)
        if info.is_main:
            warn_if_disk_short(model, optimizer, ckpts, cfg.keep_last)
        step, epoch, batch_in_epoch = 0, 0, 0
        early = {"best": None, "bad_validations": 0}
        counters = {"nonfinite_skips": 0, "consecutive_nonfinite": 0, "fp16_overflows": 0, "empty_steps": 0,
                    "bad_videos": 0}
        run_id = None
        resumed = None
        if cfg.resume != "none":
            if cfg.resume == "auto":
                found = ckpts.load_latest_valid(map_location="cpu")
            else:
                found = (load_checkpoint_file(cfg.resume, map_location="cpu"), Path(cfg.resume))
            if found is not None:
                resumed, resumed_path = found
                if resumed["unfreeze"] != unfreeze.state_dict():
                    # The optimizer's groups and every epoch's trainable set follow the schedule.
                    raise SystemExit(f"{resumed_path} was trained with the unfreeze schedule "
                                     f"{resumed['unfreeze']}, this run asks for {unfreeze.state_dict()}; "
                                     "resume with the same --unfreeze* options or start a new --output-dir")
                if comm_mismatch := comm_options_mismatch(resumed["config"], cfg):
                    raise SystemExit(f"{resumed_path} {comm_mismatch}")
                model.load_state_dict(resumed["model"])
                optimizer.load_state_dict(resumed["optimizer"])
                scheduler.load_state_dict(resumed["scheduler"])
                scaler.load_state_dict(resumed["scaler"])
                step, epoch, batch_in_epoch = resumed["step"], resumed["epoch"], resumed["batch_in_epoch"]
                early = dict(resumed["early_stopping"])
                counters.update(resumed["counters"])
                run_id = resumed.get("mlflow_run_id") or None
                if resumed["world_size"] != info.world_size:
                    if not cfg.allow_world_size_change:
                        raise SystemExit(
                            f"{resumed_path} was written by {resumed['world_size']} ranks, this job has "
                            f"{info.world_size}; the data order would change. Pass --allow-world-size-change "
                            "to resume anyway (the current epoch then restarts from its beginning)."
                        )
                    log0(info, f"world size changed {resumed['world_size']} -> {info.world_size}: "
                               f"epoch {epoch} restarts from its first batch; RNG states are re-seeded")
                    batch_in_epoch = 0
                    torch.manual_seed(cfg.seed + 7919 * info.rank + step)
                else:
                    restore_rng_state(resumed["rng"][info.rank], info.device)  # CUDA's too (dropout on GPU)
                log0(info, f"resumed from {resumed_path}: step {step}, epoch {epoch}, "
                           f"batch {batch_in_epoch} of the epoch")
        if resumed is None:
            # Different dropout masks per rank (same initial weights were drawn above).
            torch.manual_seed(cfg.seed + 7919 * info.rank)

        # ---- 5. MLflow (rank 0), run id broadcast ----------------------------------------------------
        tracker = RunTracker(info.is_main, out_dir, cfg.tracking_uri, cfg.experiment, cfg.run_name,
                             system_metrics=cfg.system_metrics)
        if info.is_main:
            new_run = run_id is None
            run_id = tracker.start(resume_run_id=run_id, tags={"entry_point": "train_ddp.py", "demo": str(demo)})
            if new_run:
                tracker.log_params(flatten_for_logging(cfg))
                tracker.log_dict(asdict(cfg), "config.json")
                tracker.log_input_table(table, source=str(cfg.annotations), name=Path(cfg.annotations).name,
                                        context="training")
            tracker.set_tags({"world_size": info.world_size, "device": str(info.device),
                              "amp": str(amp_dtype), "torch": torch.__version__})
            print(f"MLflow run {run_id} at {tracker.tracking_uri}", flush=True)
        run_id = broadcast_object(run_id, info)

        def checkpoint_state() -> dict:
            # Collective: every rank contributes its RNG state.
            rng = all_gather_objects(capture_rng_state(info.device), info)
            return {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "batch_in_epoch": batch_in_epoch, "config": asdict(cfg),
                "tasks": list(tasks), "depth": cfg.depth, "world_size": info.world_size, "rng": rng,
                "early_stopping": early, "counters": counters, "unfreeze": unfreeze.state_dict(),
                "mlflow_run_id": run_id,
            }

        last_save = {"ok": True, "error": ""}

        def save_checkpoint(is_best: bool = False) -> bool:
            """Rank 0 writes while the others wait.  A failed write is reported and training goes on
            (space may come back; the previous checkpoint is intact) -- but a run whose final
            checkpoint failed does not end as a success (see the end)."""
            state = checkpoint_state()
            error = ""
            if info.is_main:
                try:
                    ckpts.save(state, step, is_best=is_best)
                except CheckpointSaveError as exc:
                    error = str(exc)
                    log0(info, f"warning: {error}")
                    tracker.set_tags({"last_checkpoint_error": error})
            error = broadcast_object(error, info)
            last_save.update(ok=not error, error=error)
            return not error

        # ---- 6. the loop ----------------------------------------------------------------------------
        train_model = None
        trainable_names: tuple = ()
        progress = tqdm(total=total_steps, initial=step, disable=not (info.is_main and cfg.progress),
                        dynamic_ncols=True)
        window = {"sums": torch.zeros(len(tasks), dtype=torch.float64, device=info.device),
                  "counts": torch.zeros(len(tasks), dtype=torch.float64, device=info.device),
                  "clips": 0.0, "data_s": 0.0, "compute_s": 0.0, "t0": time.perf_counter(), "steps": 0}
        stop_reason = None
        while epoch < cfg.epochs and stop_reason is None:
            newly = unfreeze.apply(model, epoch)
            if newly:
                log0(info, f"epoch {epoch}: unfroze {', '.join(newly)}")
            names_now = tuple(n for n, p in model.named_parameters() if p.requires_grad)
            if train_model is None or names_now != trainable_names:
                trainable_names = names_now
                train_model = wrap_ddp(model, info, cfg)
                if cfg.compile:
                    train_model = torch.compile(train_model)
            trainable = [p for p in model.parameters() if p.requires_grad]
            train_sampler.set_position(epoch, batch_in_epoch * cfg.batch_size)
            model.train()
            if cfg.bn == "eval":
                set_bn_eval(model)
            batches = iter(train_loader)
            while batch_in_epoch < steps_per_epoch * cfg.accum_steps:
                if cfg.max_steps and step >= cfg.max_steps:
                    stop_reason = "max_steps"
                    break
                # -- fetch the micro-batches of this step (the time spent here is data wait)
                t_data = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.accum_steps)]
                t_compute = time.perf_counter()
                window["data_s"] += t_compute - t_data
                # -- one all-reduce: valid targets per task (the loss denominators), empty
                #    micro-batches, bad videos, and the preemption flag.
                local_counts = torch.zeros(len(tasks), dtype=torch.float64)
                for b in micro:
                    c = loss_fn.valid_counts(b["targets"])
                    local_counts += torch.tensor([float(c[t]) for t in tasks], dtype=torch.float64)
                flags = torch.tensor([sum(len(b["indices"]) == 0 for b in micro),
                                      sum(len(b["bad"]) for b in micro),
                                      float(preempt.requested)], dtype=torch.float64)
                reduced = torch.cat([local_counts, flags])
                if info.distributed:  # the decisions below need the sums on the host: one sync per step
                    reduced = all_reduce_sum(reduced.to(info.device), info).cpu()
                global_counts, n_empty, n_bad, n_preempt = reduced[:len(tasks)], *reduced[len(tasks):].tolist()
                if n_bad:
                    bad = gather_bad_videos([(epoch, *b) for mb in micro for b in mb["bad"]], info)
                    counters["bad_videos"] += len(bad)
                    if info.is_main:
                        with open(out_dir / "bad_videos.tsv", "a") as fh:
                            for ep, vid, err in bad:
                                fh.write(f"{ep}\t{vid}\t{err}\n")
                if n_preempt:
                    stop_reason = f"preempted ({preempt.received or 'signal on another rank'})"
                    break  # this step's batches are not consumed: the resumed run trains on them
                batch_in_epoch += cfg.accum_steps
                # LR = schedule(step) x unfreeze scale(epoch); set from the scheduler's closed-form
                # value each step, so the factor never compounds.
                for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                    group["lr"] = lr * unfreeze.lr_scale(group["scale_param"], epoch)
                window["lrs"] = {g["name"]: g["lr"] for g in optimizer.param_groups}  # what this step uses
                if n_empty:
                    counters["empty_steps"] += 1  # every clip of a micro-batch failed on some rank
                    continue
                # DDP averages gradients over ranks, so dividing each task's loss sum by
                # global_count / world_size makes the update equal to one process's on the union batch.
                denominators = {t: global_counts[i].item() / info.world_size for i, t in enumerate(tasks)}
                step_sums = torch.zeros(len(tasks), dtype=torch.float64, device=info.device)
                step_counts = torch.zeros(len(tasks), dtype=torch.float64, device=info.device)
                loss_finite = torch.ones((), dtype=torch.bool, device=info.device)
                # A skipped step must leave no trace: one NaN clip would otherwise poison the
                # BatchNorm running statistics for good (and with them validation and the model).
                buffers_before = [buf.detach().clone() for buf in model.buffers()]
                for i, b in enumerate(micro):
                    x = model_input(b, info.device, channels_last)
                    y = move_targets(b["targets"], info.device)
                    last = i == len(micro) - 1
                    sync = contextlib.nullcontext() if (last or not info.distributed) else train_model.no_sync()
                    with sync:
                        with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32,
                                            enabled=amp_dtype is not None):
                            outputs = train_model(x)
                        out = loss_fn(outputs, y, denominators=denominators)  # fp32 inside
                        scaler.scale(out.total).backward()
                    step_sums += torch.stack([out.sums[t] for t in tasks]).double()
                    step_counts += torch.stack([out.counts[t] for t in tasks]).double()
                    loss_finite &= torch.isfinite(out.total.detach())
                # -- unscale, clip, and the finite check.  Gradients were all-reduced by DDP, so the
                #    norm (and the decision) is identical on every rank without another collective.
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    trainable, cfg.clip_grad if cfg.clip_grad > 0 else float("inf"))
                if torch.isfinite(grad_norm):
                    scaler.step(optimizer)
                    counters["consecutive_nonfinite"] = 0
                    window["sums"] += step_sums
                    window["counts"] += step_counts
                    window["clips"] += sum(len(b["indices"]) for b in micro)
                else:
                    for buf, saved in zip(model.buffers(), buffers_before):
                        buf.copy_(saved)
                    # Collective, entered by every rank (they all saw the same norm): whose loss was bad?
                    culprits = gather_nonfinite(micro, bool(loss_finite), info)
                    if amp_dtype == torch.float16 and not culprits and scaler.get_scale() >= 1.0:
                        # Finite losses, overflowing fp16 gradients: GradScaler lowers its scale in
                        # update() below. Expected in the first steps, not a data problem.
                        counters["fp16_overflows"] += 1
                    else:
                        counters["consecutive_nonfinite"] += 1
                        counters["nonfinite_skips"] += 1
                        report_nonfinite(culprits, step, info, out_dir)
                        if cfg.nonfinite == "stop":
                            stop_reason = "nonfinite"
                    if counters["consecutive_nonfinite"] > cfg.max_nonfinite_skips:
                        stop_reason = "nonfinite"
                    if stop_reason == "nonfinite":
                        optimizer.zero_grad(set_to_none=True)
                        break
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                window["steps"] += 1
                window["compute_s"] += time.perf_counter() - t_compute
                progress.update(1)
                # -- logging (losses averaged over ranks by valid-target counts)
                if step % cfg.log_every == 0 or step == total_steps:
                    log_window(window, tasks, loss_fn, grad_norm, counters, step, epoch, info, tracker, progress)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save_checkpoint()
            if stop_reason is not None:
                break
            # ---- epoch end: validation, early stopping, checkpoint
            epoch += 1
            batch_in_epoch = 0
            is_best = False
            if val_loader is not None and epoch % cfg.val_every == 0:
                metrics = validate(model, val_loader, loss_fn, tasks, info, amp_dtype, channels_last)
                model.train()
                if cfg.bn == "eval":
                    set_bn_eval(model)
                value = metrics.get(cfg.early_stop_metric, math.nan)
                if info.is_main:
                    tracker.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step)
                    tracker.log_metrics({"epoch": epoch}, step)
                log0(info, f"epoch {epoch} step {step}: " + "  ".join(
                    f"{k[4:]}={metrics[k]:.3f}" for k in metrics if k.endswith(("spearman", "accuracy"))))
                better = (not math.isnan(value)) and (
                    early["best"] is None
                    or (value > early["best"] if cfg.early_stop_mode == "max" else value < early["best"]))
                if better:
                    early["best"], early["bad_validations"], is_best = value, 0, True
                else:
                    early["bad_validations"] += 1
                if cfg.patience and early["bad_validations"] >= cfg.patience:
                    log0(info, f"early stopping: {cfg.early_stop_metric} did not improve for "
                               f"{cfg.patience} validations (best {early['best']})")
                    stop_reason = "early_stopping"
            save_checkpoint(is_best=is_best)
        progress.close()

        # ---- 7. the end -----------------------------------------------------------------------------
        if stop_reason and stop_reason.startswith("preempted"):
            saved = save_checkpoint()
            log0(info, f"{stop_reason}: checkpoint at step {step} {'written' if saved else 'FAILED'}; "
                       f"exiting with {PREEMPTED_EXIT_CODE} so the job can be requeued")
            status = "KILLED"
            if info.is_main:
                (out_dir / PREEMPTED_MARKER).write_text(f"step {step}\n{stop_reason}\n")
                tracker.set_tags({"stop_reason": stop_reason})
            return PREEMPTED_EXIT_CODE
        if stop_reason == "nonfinite":
            save_checkpoint()
            log0(info, f"stopping: non-finite loss/gradients at step {step} "
                       f"({counters['consecutive_nonfinite']} consecutive; --nonfinite {cfg.nonfinite}); "
                       f"checkpoint {'written' if last_save['ok'] else 'FAILED'}, details in {out_dir / 'nonfinite.tsv'}")
            if info.is_main:
                tracker.set_tags({"stop_reason": "nonfinite"})
            return NONFINITE_EXIT_CODE
        if stop_reason == "max_steps":
            save_checkpoint()
        if info.is_main:
            (out_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
            tracker.set_tags({"stop_reason": stop_reason or "epochs_done", "final_step": step})
            finish_tracking(tracker, model, tasks, cfg, ckpts)
        if not last_save["ok"]:
            # The trained weights exist only in memory (and in MLflow if --log-model): say so loudly.
            log0(info, f"error: training ended at step {step} but its final checkpoint could not be written "
                       f"({last_save['error']}); exiting with {CHECKPOINT_FAILED_EXIT_CODE}")
            if info.is_main:
                tracker.set_tags({"stop_reason": "checkpoint_write_failed"})
            status = "FAILED"
            return CHECKPOINT_FAILED_EXIT_CODE
        status = "FINISHED"
        return 0
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if info.is_main:
            tracker.end(status)
        preempt.restore()
        destroy_distributed()


def log_window(window, tasks, loss_fn, grad_norm, counters, step, epoch, info, tracker, progress):
    """All-reduce the window's per-task loss sums and counts; log exact cross-rank means."""
    elapsed = time.perf_counter() - window["t0"]
    stats = torch.cat([window["sums"], window["counts"],
                       torch.tensor([window["clips"]], dtype=torch.float64, device=window["sums"].device)])
    all_reduce_sum(stats, info)
    n = len(tasks)
    sums, counts, clips = stats[:n].cpu(), stats[n:2 * n].cpu(), stats[2 * n].item()
    metrics = {}
    total = 0.0
    for i, t in enumerate(tasks):
        if counts[i] > 0:
            metrics[f"train/{t}/loss"] = (sums[i] / counts[i]).item()
            total += loss_fn.task_weights[t] * metrics[f"train/{t}/loss"]
    if counts.sum() > 0:  # every step of the window may have been skipped
        metrics["train/loss"] = total
    busy = window["data_s"] + window["compute_s"]
    metrics.update({
        "train/lr": max(window["lrs"].values()),
        **{f"train/lr/{name}": lr for name, lr in window["lrs"].items()},
        "train/grad_norm": float(grad_norm),
        "perf/clips_per_s": clips / elapsed if elapsed > 0 else 0.0,
        "perf/step_s": elapsed / max(window["steps"], 1),
        "perf/data_wait_fraction": window["data_s"] / busy if busy > 0 else 0.0,
        "data/bad_videos": counters["bad_videos"],
        "train/nonfinite_skips": counters["nonfinite_skips"],
        "train/fp16_overflow_skips": counters["fp16_overflows"],
        "train/empty_steps": counters["empty_steps"],
        "epoch": epoch,
    })
    if info.is_main:
        tracker.log_metrics(metrics, step)
        progress.set_postfix(loss=f"{total:.4f}" if counts.sum() > 0 else "skipped", clips_s=f"{metrics['perf/clips_per_s']:.1f}",
                             wait=f"{metrics['perf/data_wait_fraction']:.0%}")
    window["sums"].zero_()
    window["counts"].zero_()
    window.update(clips=0.0, data_s=0.0, compute_s=0.0, t0=time.perf_counter(), steps=0)


def gather_nonfinite(micro, local_loss_finite: bool, info: DistInfo) -> list[tuple[int, list[str]]]:
    """(rank, video ids) of every rank whose loss was non-finite this step, on every rank."""
    ids = [] if local_loss_finite else [vid for b in micro for vid in b["video_ids"]]
    rows = all_gather_objects((info.rank, local_loss_finite, ids), info)
    return [(rank, vids) for rank, finite, vids in rows if not finite]


def report_nonfinite(culprits, step: int, info: DistInfo, out_dir: Path) -> None:
    """One line per culprit rank in nonfinite.tsv (rank 0 writes) and a message."""
    if not info.is_main:
        return
    with open(out_dir / "nonfinite.tsv", "a") as fh:
        for rank, vids in culprits:
            fh.write(f"{step}\t{rank}\t{','.join(vids)}\n")
    where = "; ".join(f"rank {r}: {', '.join(v)}" for r, v in culprits) or "losses finite, gradients not"
    tqdm.write(f"step {step}: non-finite loss/gradients, step skipped ({where})", file=sys.stdout)


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
            raise SystemExit(f"--init-from-run {run_id}: no checkpoint artifact found ({'; '.join(errors)})")
    return broadcast_object(path, info)


def finish_tracking(tracker: RunTracker, model: nn.Module, tasks, cfg: TrainConfig, ckpts: CheckpointManager) -> None:
    """best.pt / last.pt as artifacts, and the model in MLflow's format (uint8 video in,
    probabilities out, columns named like the annotation table)."""
    if not tracker.available:
        return
    if cfg.log_checkpoints:
        for path in (ckpts.best_path, ckpts.last_path):
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
        tracker.call("log_model", lambda: mlflow.pytorch.log_model(
            serving, name="model", input_example=example, signature=signature,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"output_columns": cols, "input": "uint8 video (N, 3, T, H, W), RGB"},
        ))


if __name__ == "__main__":
    sys.exit(main())
