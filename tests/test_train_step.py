"""train_ddp.train_step and the loop state, in-process on CPU (no subprocess): a non-finite step
is skipped and leaves no trace (the device skips the update, the next plan's read tells the host),
--nonfinite stop steps nothing, and a checkpoint written with the keys the loop has always
written loads through resume, --pretrained, evaluate.py and predict.py."""

import copy
from dataclasses import asdict

import pandas as pd
import pytest
import torch

import evaluate
import predict
import train_ddp
from benchmarks.train_step import synthetic_targets
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


NAN_CLIPS: set[str] = set()  # clips whose model input gets a NaN pixel (see nan_model_input)


@pytest.fixture(autouse=True)
def nan_model_input(monkeypatch):
    """No clip the project reads can hold a NaN (all are uint8): the model input of the clips in
    NAN_CLIPS gets one after normalization, where a corrupt value would reach the model."""
    real = train_ddp.model_input

    def with_nan(batch, *args, **kwargs):
        x = real(batch, *args, **kwargs)
        for i, video_id in enumerate(batch["video_ids"]):
            if video_id in NAN_CLIPS:
                x[i, 0, 0, 0, 0] = float("nan")
        return x

    monkeypatch.setattr(train_ddp, "model_input", with_nan)
    yield
    NAN_CLIPS.clear()


def clip_batch(seed, nan=False):
    """Two uint8 clips, the second one's model input with a NaN pixel when ``nan``."""
    shape = (2, 3, SIZE["frames"], SIZE["size"], SIZE["size"])
    video = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    if nan:
        NAN_CLIPS.add(f"clip{seed}_b")
    targets = synthetic_targets(2, "all", seed)
    return {
        "video": video,
        "targets": {k: torch.from_numpy(v) for k, v in targets.items()},
        "indices": torch.arange(2),
        "video_ids": [f"clip{seed}_a", f"clip{seed}_b"],
        "bad": [],
    }


def step(t, state, micro):
    """What the loop does: the plan (which settles the step before), the step, then settling it
    as the loop does before a log line, a checkpoint or its end.  Returns (result, stop)."""
    plan = train_ddp.plan_step(micro, t, False, CPU)
    assert not train_ddp.settle(t, state, plan.last_step_nonfinite)
    result = train_ddp.train_step(t, micro, plan.denominators, state)
    return result, train_ddp.settle(t, state)


def untouched_moments(optimizer):
    """Fused AdamW creates its state on the first step, skipped or not: zeros and step 0."""
    return all(
        float(s["step"]) == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any() for s in optimizer.state.values()
    )


def test_a_nan_in_one_micro_batch_skips_the_step_and_leaves_no_trace(tmp_path):
    t, state, _ = tiny_training(tmp_path, accum_steps=2)
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}  # parameters and BatchNorm buffers
    result, stop = step(t, state, [clip_batch(1), clip_batch(2, nan=True)])
    assert not result.applied and not stop
    after = t.model.state_dict()
    assert all(torch.equal(after[k], weights[k]) for k in weights), "a skipped step changed the model"
    assert untouched_moments(t.optimizer)  # nothing was stepped
    assert all(p.grad is None for p in t.model.parameters())
    assert state.counters.nonfinite_skips == 1 and state.counters.consecutive_nonfinite == 1
    assert (tmp_path / "nonfinite.tsv").read_text() == "0\t0\tclip1_a,clip1_b,clip2_a,clip2_b\n"
    assert t.scheduler.last_epoch == 1  # --nonfinite skip: the schedule moves on, as the step counter does

    result, _ = step(t, state, [clip_batch(3), clip_batch(4)])
    assert result.applied and torch.isfinite(result.loss)
    assert state.counters.consecutive_nonfinite == 0 and state.counters.nonfinite_skips == 1
    changed = [k for k, v in t.model.state_dict().items() if not torch.equal(v, weights[k])]
    assert len(changed) > 100


def test_nonfinite_stop_steps_nothing(tmp_path):
    t, state, _ = tiny_training(tmp_path, nonfinite="stop")
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    result, stop = step(t, state, [clip_batch(5, nan=True)])
    assert stop and not result.applied
    assert all(torch.equal(v, weights[k]) for k, v in t.model.state_dict().items())
    assert untouched_moments(t.optimizer) and state.counters.nonfinite_skips == 1
    # decided after the step: the schedule moved on with it, as under --nonfinite skip
    assert t.scheduler.last_epoch == 1 and t.guard.last_bad_step == 0


def test_the_next_plan_brings_a_skipped_steps_flag_and_settling_restores_batchnorm(tmp_path):
    """The device skips the update at once; the host learns of it from the next plan's read."""
    t, state, _ = tiny_training(tmp_path)
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    micro = [clip_batch(6, nan=True)]
    plan = train_ddp.plan_step(micro, t, False, CPU)
    assert not plan.last_step_nonfinite
    train_ddp.train_step(t, micro, plan.denominators, state)
    params = dict(t.model.named_parameters())
    assert all(torch.equal(p, weights[k]) for k, p in params.items()), "the device applied a NaN update"
    assert not torch.isfinite(t.model.bn1.running_mean).all()  # poisoned until the host settles
    assert state.counters.nonfinite_skips == 0  # not read yet

    nxt = [clip_batch(7)]
    plan = train_ddp.plan_step(nxt, t, False, CPU)
    assert plan.last_step_nonfinite
    assert not train_ddp.settle(t, state, plan.last_step_nonfinite)  # --nonfinite skip
    assert all(torch.equal(v, weights[k]) for k, v in t.model.state_dict().items())
    assert state.counters.nonfinite_skips == 1
    assert (tmp_path / "nonfinite.tsv").read_text() == "0\t0\tclip6_a,clip6_b\n"
    assert train_ddp.plan_step(nxt, t, False, CPU).last_step_nonfinite is False  # settled once


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


def test_fused_sgd_after_a_skipped_first_step_updates_as_plain_sgd():
    """Fused SGD would fill its momentum buffers on a skipped first step; the zeros build_optimizer
    starts them with make the first real update the textbook one (buffer = gradient)."""
    cfg = TrainConfig(optimizer="sgd", momentum=0.9, lr=0.1, weight_decay=0.0)
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    plain_model = copy.deepcopy(fused_model)
    fused = train_ddp.build_optimizer(fused_model, cfg, UnfreezeSchedule({}))
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, foreach=False)
    for p in fused_model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    train_ddp.step_unless_nonfinite(fused, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(fused_model.parameters(), plain_model.parameters()))
    for seed in (1, 2):  # two real steps: the first sets the momentum, the second uses it
        g = torch.Generator().manual_seed(seed)
        for a, b in zip(fused_model.parameters(), plain_model.parameters()):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        train_ddp.step_unless_nonfinite(fused, torch.tensor(True))
        plain.step()
        for a, b in zip(fused_model.parameters(), plain_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
