"""train_ddp.train_step and the loop state, in-process on CPU (no subprocess): a non-finite step
is skipped and leaves no trace, --nonfinite stop steps nothing, and a checkpoint written with the
keys the loop has always written loads through resume, --pretrained, evaluate.py and predict.py."""

from dataclasses import asdict

import pandas as pd
import torch

import evaluate
import predict
import train_ddp
from benchmarks.throughput_inputs import synthetic_targets
from resnet3d import UnfreezeSchedule, build_model, load_pretrained
from utils.checkpoint import CheckpointManager
from utils.config import TrainConfig
from utils.distributed import DistInfo
from utils.rng import capture_rng_state
from utils.schedules import build_lr_scheduler
from utils.tasks import parse_tasks
from utils.train_state import TrainState

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
SIZE = dict(depth=18, frames=4, size=32, batch_size=2)


def tiny_training(tmp_path, **options):
    cfg = TrainConfig(output_dir=str(tmp_path), dropout=0.0, **SIZE, **options)
    torch.manual_seed(0)
    t = train_ddp.build_training(
        cfg, parse_tasks(cfg.tasks), total_steps=10, steps_per_epoch=10, info=CPU, amp_dtype=None, channels_last=False
    )
    state = TrainState()
    train_ddp.start_epoch(t, state, cfg, CPU)
    return t, state, cfg


def float_batch(seed, nan=False):
    """Two pre-normalized float clips (the earlier .pt format), one of them with a NaN pixel."""
    video = torch.randn(2, 3, SIZE["frames"], SIZE["size"], SIZE["size"], generator=torch.Generator().manual_seed(seed))
    if nan:
        video[1, 0, 0, 0, 0] = float("nan")
    targets = synthetic_targets(2, "all", seed)
    return {
        "video": video,
        "targets": {k: torch.from_numpy(v) for k, v in targets.items()},
        "indices": torch.arange(2),
        "video_ids": [f"clip{seed}_a", f"clip{seed}_b"],
        "bad": [],
    }


def step(t, state, micro):
    plan = train_ddp.plan_step(micro, t, False, CPU)
    return train_ddp.train_step(t, micro, plan.denominators, state)


def test_a_nan_in_one_micro_batch_skips_the_step_and_leaves_no_trace(tmp_path):
    t, state, _ = tiny_training(tmp_path, accum_steps=2)
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}  # parameters and BatchNorm buffers
    result = step(t, state, [float_batch(1), float_batch(2, nan=True)])
    assert not result.applied and not result.stop
    after = t.model.state_dict()
    assert all(torch.equal(after[k], weights[k]) for k in weights), "a skipped step changed the model"
    assert not t.optimizer.state  # no Adam moments: nothing was stepped
    assert all(p.grad is None for p in t.model.parameters())
    assert state.counters.nonfinite_skips == 1 and state.counters.consecutive_nonfinite == 1
    assert (tmp_path / "nonfinite.tsv").read_text() == "0\t0\tclip1_a,clip1_b,clip2_a,clip2_b\n"
    assert t.scheduler.last_epoch == 1  # --nonfinite skip: the schedule moves on, as the step counter does

    result = step(t, state, [float_batch(3), float_batch(4)])
    assert result.applied and torch.isfinite(result.loss)
    assert state.counters.consecutive_nonfinite == 0 and state.counters.nonfinite_skips == 1
    changed = [k for k, v in t.model.state_dict().items() if not torch.equal(v, weights[k])]
    assert len(changed) > 100


def test_nonfinite_stop_steps_nothing(tmp_path):
    t, state, _ = tiny_training(tmp_path, nonfinite="stop")
    result = step(t, state, [float_batch(5, nan=True)])
    assert result.stop and not result.applied
    assert t.scheduler.last_epoch == 0 and state.counters.nonfinite_skips == 1


# ---- checkpoints written with the keys the loop has always written ----------------------------------
def checkpoint_with_todays_keys(out_dir, cfg):
    """The dict train_ddp.py wrote before the loop state became objects (key by key)."""
    tasks = parse_tasks(cfg.tasks)
    torch.manual_seed(1)
    model = build_model(depth=cfg.depth, tasks=tasks, dropout=cfg.dropout)
    optimizer = train_ddp.build_optimizer(model, cfg, UnfreezeSchedule({}))
    scheduler = build_lr_scheduler(optimizer, cfg.schedule, total_steps=10, warmup_steps=2)
    sum(o.float().mean() for o in model(torch.randn(2, 3, cfg.frames, cfg.size, cfg.size)).values()).backward()
    optimizer.step()
    scheduler.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "epoch": 1,
        "batch_in_epoch": 4,
        "config": asdict(cfg),
        "tasks": list(tasks),
        "depth": cfg.depth,
        "world_size": 1,
        "rng": [capture_rng_state(torch.device("cpu"))],
        "early_stopping": {"best": 0.25, "bad_validations": 1},
        "counters": {
            "nonfinite_skips": 2,
            "consecutive_nonfinite": 0,
            "fp16_overflows": 0,
            "empty_steps": 1,
            "bad_videos": 3,
        },
        "unfreeze": UnfreezeSchedule({}).state_dict(),
        "mlflow_run_id": "0123abcd",
    }
    return CheckpointManager(out_dir / "checkpoints").save(state, step=5), state


def test_a_checkpoint_with_todays_keys_loads_for_resume_pretrained_evaluate_and_predict(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), dropout=0.0, **SIZE)
    path, saved = checkpoint_with_todays_keys(tmp_path / "run", cfg)

    # resume: train_ddp's Checkpointer restores every piece and the loop state
    t, state, _ = tiny_training(tmp_path / "run")
    early = train_ddp.EarlyStopping(cfg.early_stop_metric, cfg.early_stop_mode, cfg.patience)
    checkpointer = train_ddp.Checkpointer(t, state, early, cfg, CPU, tracker=None)
    assert checkpointer.resume("auto")
    assert (state.step, state.epoch, state.batch_in_epoch, state.mlflow_run_id) == (5, 1, 4, "0123abcd")
    assert state.counters.bad_videos == 3 and state.counters.nonfinite_skips == 2
    assert state.counters.too_small_steps == 0  # a newer counter starts at 0
    assert (early.best, early.bad_validations) == (0.25, 1)
    assert all(torch.equal(v, saved["model"][k]) for k, v in t.model.state_dict().items())
    assert t.optimizer.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()
    assert t.scheduler.last_epoch == 1
    assert checkpointer.state_dict().keys() >= saved.keys()  # what it writes has every key it read

    # --pretrained (a file, or runs:/RUN_ID): the weights
    model = build_model(depth=18, dropout=0.0)
    load_pretrained(model, path)
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())

    # evaluate.py and predict.py
    assert (
        evaluate.main(
            [
                "--checkpoint",
                str(path),
                "--videos",
                str(videos),
                "--annotations",
                str(annotations),
                "--split",
                "val",
                "--output-dir",
                str(tmp_path / "eval"),
                "--num-workers",
                "0",
                "--no-progress",
                "--no-plots",
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'eval.db'}",
            ]
        )
        == 0
    )
    some = sorted(videos.rglob("*.mp4"))[:3]
    assert (
        predict.main(
            [
                *map(str, some),
                "--checkpoint",
                str(path),
                "--output",
                str(tmp_path / "p.csv"),
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert len(pd.read_csv(tmp_path / "p.csv")) == 3
