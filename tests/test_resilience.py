"""Long jobs that survive, with real torchrun processes (gloo on CPU).

A run stopped by SIGTERM, or by the SIGKILL of one rank, and then started again must end with
bitwise the same weights and optimizer state as the uninterrupted run (``--deterministic``, the
same world size, dropout > 0 so the restored RNG states matter, a DataLoader worker per rank).
Also: a corrupt newest checkpoint, a dead MLflow server, and non-finite data (NaN in the model
input of chosen clips, put there by a wrapper around train_ddp.py: no clip this project reads can
hold a NaN, since every input is uint8, but a bad value reaching the model must be survived).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from fixture_files import prepare_demo_cache
from launch_helpers import REPO, TINY, checkpoint, child_env, free_port, run, run_train, train_command

pytestmark = pytest.mark.slow

# 36 training clips -> 2 ranks x 4 steps of 4 clips per epoch; checkpoints every 2 steps.
RUN = [
    *TINY,
    "--num-workers",
    "1",
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--dropout",
    "0.2",
    "--deterministic",
    "--seed",
    "1",
    "--checkpoint-every",
    "2",
]
FINAL_STEP = 8


# ------------------------------------------------------------------------------------------------
# helpers: a training run in the background, its progress, its processes, its results
# ------------------------------------------------------------------------------------------------
def data_args(tiny_demo) -> list[str]:
    videos, annotations = tiny_demo
    return ["--videos", str(videos), "--annotations", str(annotations)]


class TrainRun:
    """train_ddp.py under torchrun in its own process group, output to ``out``.log."""

    def __init__(self, args: list[str], out: Path, nproc: int = 2, env: dict | None = None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out.with_suffix(".log")
        cmd = train_command([*args, "--output-dir", str(self.out)], nproc)
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env or child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_step(self, step: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while logged_step(self.out) < step:
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended (rc {self.proc.returncode}) before step {step}:\n{self.log[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no step {step} after {timeout} s:\n{self.log[-4000:]}")
            time.sleep(0.05)

    def worker_pid(self, rank: int) -> int:
        return worker_pid(self.proc.pid, rank)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"run did not end within {timeout} s:\n{self.log[-4000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def children(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children()]


def worker_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of the process torchrun started with RANK=rank."""
    for child in psutil.Process(torchrun_pid).children():
        if child.environ().get("RANK") == str(rank):
            return child.pid
    raise AssertionError(f"no worker with RANK={rank} under torchrun {torchrun_pid}")


def logged_step(out: Path) -> int:
    """The last step rank 0 logged train metrics for (metrics.jsonl, one record per step)."""
    path = Path(out) / "metrics.jsonl"
    last = -1
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line being written
                continue
            if "train/loss" in rec.get("metrics", {}):
                last = max(last, rec["step"])
    return last


def _tensors(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def assert_bitwise_equal(state: dict, reference: dict) -> None:
    """Weights, BatchNorm buffers and optimizer moments identical to the last bit."""
    assert state["step"] == reference["step"] and state["epoch"] == reference["epoch"]
    a = dict(_tensors({"model": state["model"], "optim": state["optimizer"]["state"]}))
    b = dict(_tensors({"model": reference["model"], "optim": reference["optimizer"]["state"]}))
    assert a.keys() == b.keys()
    differ = [k for k in a if not (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ from the uninterrupted run, e.g. {differ[:4]}"


def run_status(out: Path, run_id: str) -> str:
    client = mlflow.MlflowClient(f"sqlite:///{Path(out) / 'mlflow.db'}")
    return client.get_run(run_id).info.status


def resumed_step(log: str) -> int:
    m = re.findall(r"resumed from \S+step-(\d+)\.pt: step (\d+)", log)
    assert m, "the run did not resume from a checkpoint"
    return int(m[-1][1])


_REFERENCE: dict[str, Path] = {}


def reference_run(tiny_demo, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce; made once per session
    (tests/test_slurm.py compares its jobs with it too)."""
    if "out" not in _REFERENCE:
        out = tmp_path_factory.mktemp("reference") / "run"
        res = run_train([*data_args(tiny_demo), *RUN, "--output-dir", str(out)], nproc=2, timeout=600)
        assert res.returncode == 0, res.stdout[-4000:]
        state = checkpoint(out)
        assert state["step"] == FINAL_STEP and state["epoch"] == 2
        _REFERENCE["out"] = out
    return _REFERENCE["out"]


@pytest.fixture(scope="module")
def reference(tiny_demo, tmp_path_factory) -> Path:
    return reference_run(tiny_demo, tmp_path_factory)


# ------------------------------------------------------------------------------------------------
# (b) SIGTERM: all ranks agree, checkpoint, KILLED, exit 75; resume -> the same weights
# ------------------------------------------------------------------------------------------------
def test_sigterm_to_one_rank_stops_all_with_checkpoint_and_resume_is_exact(tiny_demo, tmp_path, reference):
    out = tmp_path / "run"
    run = TrainRun([*data_args(tiny_demo), *RUN], out)
    try:
        run.wait_for_step(3)
        # Only rank 1 is told; rank 0 learns it through the all-reduced flag.
        os.kill(run.worker_pid(1), signal.SIGTERM)
        assert run.wait(120) != 0  # torchrun reports the workers' 75 as a failure...
    finally:
        run.kill()
    log = run.log
    assert "failed (exitcode: 75)" in log, log[-4000:]  # ...of the workers' own exit code
    # rank 0 (which prints) was not signalled: it stopped through the all-reduced flag
    assert "preempted (signal on another rank): checkpoint at step" in log, log[-4000:]
    marker = (out / "PREEMPTED").read_text()  # ...so scripts look for the marker file
    stopped = checkpoint(out)
    assert marker.startswith(f"step {stopped['step']}\npreempted")
    assert 3 <= stopped["step"] < FINAL_STEP and stopped["epoch"] == stopped["step"] // 4
    assert stopped["batch_in_epoch"] == stopped["step"] % 4
    assert len(stopped["rng"]) == 2  # every rank's RNG states
    run_id = stopped["mlflow_run_id"]
    assert run_status(out, run_id) == "KILLED"

    # Another world size is refused: the data order would change.
    res = run_train([*data_args(tiny_demo), *RUN, "--output-dir", str(out)], nproc=1, timeout=300)
    assert res.returncode != 0 and "was written by 2 ranks, this job has 1" in res.stdout, res.stdout[-3000:]

    res = run_train([*data_args(tiny_demo), *RUN, "--output-dir", str(out)], nproc=2, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    assert resumed_step(res.stdout) == stopped["step"]
    assert_bitwise_equal(checkpoint(out), checkpoint(reference))
    assert run_status(out, run_id) == "FINISHED"  # the same MLflow run, continued
    assert not (out / "PREEMPTED").exists()


def test_sigterm_to_every_process_with_data_workers_still_checkpoints(tiny_demo, tmp_path):
    """SLURM signals every process of a job on cancel/preempt/requeue, DataLoader workers
    included; they must not die before the training process has saved (exit 75, marker)."""
    out = tmp_path / "run"
    run = TrainRun(
        [*data_args(tiny_demo), *TINY, "--num-workers", "1", "--batch-size", "4", "--epochs", "1", "--val-every", "0"],
        out,
        nproc=1,
    )
    try:
        run.wait_for_step(1)
        os.killpg(run.proc.pid, signal.SIGTERM)  # the process and its data worker
        assert run.wait(120) == 75, run.log[-4000:]
    finally:
        run.kill()
    assert "killed by signal" not in run.log
    assert (out / "PREEMPTED").read_text().startswith(f"step {checkpoint(out)['step']}\npreempted (SIGTERM)")
    assert run_status(out, checkpoint(out)["mlflow_run_id"]) == "KILLED"


def test_world_size_change_allowed_restarts_the_epoch(tiny_demo, tmp_path, reference):
    """--allow-world-size-change: resume on 1 process; the epoch restarts and the log says so."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for p in (out / "checkpoints").glob("step-0000000[78].pt"):
        p.unlink()  # newest left: step 6, mid-epoch 2
    res = run_train(
        [*data_args(tiny_demo), *RUN, "--output-dir", str(out), "--allow-world-size-change", "--max-steps", "7"],
        nproc=1,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    assert "world size changed 2 -> 1: epoch 1 restarts from its first batch" in res.stdout
    assert "step 6, epoch 1, batch 0 of the epoch" in res.stdout
    assert checkpoint(out)["step"] == 7 and checkpoint(out)["world_size"] == 1


# ------------------------------------------------------------------------------------------------
# (a) SIGKILL of one rank: the job ends promptly, FAILED; a relaunch resumes exactly
# ------------------------------------------------------------------------------------------------
def test_sigkill_of_a_rank_fails_fast_and_relaunch_resumes_exactly(tiny_demo, tmp_path, reference):
    out = tmp_path / "run"
    run = TrainRun([*data_args(tiny_demo), *RUN, "--dist-timeout", "60"], out)
    try:
        run.wait_for_step(7)  # mid-epoch 2; the newest checkpoint is step 6's
        os.kill(run.worker_pid(1), signal.SIGKILL)
        t0 = time.monotonic()
        assert run.wait(120) != 0
        ended_after = time.monotonic() - t0
    finally:
        run.kill()
    print(f"the job ended {ended_after:.1f} s after rank 1 was killed")
    # torchrun SIGKILLs workers that have not exited 30 s after a failure: well below that
    assert ended_after < 25, f"the job took {ended_after:.0f} s to end after a rank died"
    assert not (out / "PREEMPTED").exists()
    run_id = checkpoint(out)["mlflow_run_id"]
    assert run_status(out, run_id) == "FAILED"  # rank 0 closed the run on the collective's error

    res = run_train([*data_args(tiny_demo), *RUN, "--output-dir", str(out)], nproc=2, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    assert resumed_step(res.stdout) == 6
    assert "step 6, epoch 1, batch 2 of the epoch" in res.stdout
    assert_bitwise_equal(checkpoint(out), checkpoint(reference))
    assert run_status(out, run_id) == "FINISHED"


@pytest.fixture(scope="module")
def demo_cache_args(tiny_demo, tmp_path_factory) -> list[str]:
    """The tiny demo as a raw frame cache (6 stored frames for the run's 4: temporal jitter)."""
    cache = prepare_demo_cache(tiny_demo, tmp_path_factory.mktemp("cache") / "demo", frames=6, stored_size=40)
    return ["--cache", str(cache), "--annotations", str(tiny_demo[1])]


def shared_memory_of(pids: list[int]) -> list[str]:
    """Entries of /dev/shm named after one of ``pids`` (PyTorch names its segments torch_PID_...)."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return [n for n in names if any(f"_{pid}_" in n for pid in pids)]


def test_sigkill_of_a_rank_reading_the_cache_leaves_nothing_and_relaunch_resumes_exactly(demo_cache_args, tmp_path):
    """--cache: the reference, the killed run and its relaunch read the cache with the one cache
    reader (reader threads): the same batches, so bitwise the same weights."""
    reference = tmp_path / "reference"
    res = run_train([*demo_cache_args, *RUN, "--output-dir", str(reference)], nproc=2, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    out = tmp_path / "run"
    run = TrainRun([*demo_cache_args, *RUN, "--dist-timeout", "60"], out)
    try:
        run.wait_for_step(7)
        ranks = [run.worker_pid(0), run.worker_pid(1)]
        assert all(psutil.Process(pid).children() == [] for pid in ranks)  # reader threads, no worker processes
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.monotonic()
        assert run.wait(120) != 0
        ended_after = time.monotonic() - t0
    finally:
        run.kill()
    assert ended_after < 25, f"the job took {ended_after:.0f} s to end after a rank died"
    assert not any(psutil.pid_exists(pid) for pid in ranks)  # rank 0 too: no thread kept it alive
    assert shared_memory_of(ranks) == []
    res = run_train([*demo_cache_args, *RUN, "--output-dir", str(out)], nproc=2, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    assert resumed_step(res.stdout) == 6
    assert_bitwise_equal(checkpoint(out), checkpoint(reference))


def test_local_sh_closes_the_run_when_rank0_is_killed(tiny_demo, tmp_path):
    """Rank 0 holds the MLflow run; when it is the one that dies, launch/local.sh (like the
    SLURM scripts) marks the run FAILED instead of leaving it RUNNING."""
    out = tmp_path / "run"
    env = child_env(
        {
            "NPROC_PER_NODE": "2",
            "DEVICE": "cpu",
            "OUTPUT_DIR": str(out),
            "PYTHON": sys.executable,
            "TRAIN_ARGS": " ".join([*data_args(tiny_demo), *TINY, "--batch-size", "4", "--epochs", "1"]),
        }
    )
    log_path = tmp_path / "local.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["bash", str(REPO / "launch" / "local.sh")],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while logged_step(out) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.05)
        (torchrun,) = children(proc.pid)
        os.kill(worker_pid(torchrun, rank=0), signal.SIGKILL)
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = log_path.read_text()
    assert rc not in (0, 75), log[-4000:]
    assert "marked FAILED" in log, log[-4000:]
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "FAILED"
    run_id = next(e["run_id"] for e in events if e.get("event") == "start")
    assert run_status(out, run_id) == "FAILED"


# ------------------------------------------------------------------------------------------------
# (c) a corrupt newest checkpoint: warning, the previous one is used, the result is unchanged
# ------------------------------------------------------------------------------------------------
def test_corrupt_newest_checkpoint_falls_back_to_previous(tiny_demo, tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest = out / "checkpoints" / f"step-{FINAL_STEP:08d}.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated, as by a failing disk
    res = run_train([*data_args(tiny_demo), *RUN, "--output-dir", str(out)], nproc=2, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "skipping unusable checkpoint" in res.stdout and newest.name in res.stdout
    assert resumed_step(res.stdout) == 6
    assert_bitwise_equal(checkpoint(out, newest.name), checkpoint(reference))  # rewritten, whole


# ------------------------------------------------------------------------------------------------
# (d) the MLflow server is down: training completes, one warning, metrics kept locally
# ------------------------------------------------------------------------------------------------
def test_dead_tracking_server_never_stops_training(tiny_demo, tmp_path):
    out = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    res = run_train(
        [
            *data_args(tiny_demo),
            *TINY,
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--val-every",
            "0",
            "--tracking-uri",
            dead,
            "--output-dir",
            str(out),
        ],
        nproc=1,
        timeout=300,
    )
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-4000:]
    assert res.stdout.count("training continues, metrics are kept in") == 1, res.stdout[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r.get("metrics", {})]
    assert steps == [1, 2, 3]
    assert all(math.isfinite(r["metrics"]["train/loss"]) for r in records if "metrics" in r)
    assert records[-1] == {**records[-1], "event": "end", "status": "FINISHED"}
    assert checkpoint(out)["step"] == 3
    assert took < 120, f"a dead tracking server slowed a 3-step run to {took:.0f} s"


# ------------------------------------------------------------------------------------------------
# (e) non-finite data: skip (counted, step/rank/videos logged) or stop; a limit on consecutive skips
# ------------------------------------------------------------------------------------------------
# Runs train_ddp.py unchanged, with the model input of the named clips (all, for None) given a NaN
# in this process only: the value a corrupt clip would bring, after the device-side normalization.
NAN_WRAPPER = """
import runpy, sys
sys.path.insert(0, {repo!r})
from datasets import augment

real_model_input, nan_videos = augment.model_input, {nan_videos!r}

def model_input_with_nan_clips(batch, *args, **kwargs):
    x = real_model_input(batch, *args, **kwargs)
    for i, video_id in enumerate(batch["video_ids"]):
        if nan_videos is None or video_id in nan_videos:
            x[i, 1, 2, 3, 4] = float("nan")
    return x

augment.model_input = model_input_with_nan_clips
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""


def run_train_with_nan_clips(tiny_demo, tmp_path: Path, nan_videos, args: list[str], nproc: int, timeout=600):
    """train_ddp.py on the demo videos, ``nan_videos`` (a set, or None for every clip) carrying a NaN."""
    wrapper = tmp_path / "nan_clips.py"
    train = str(REPO / "train_ddp.py")
    nan = sorted(nan_videos) if nan_videos is not None else None
    wrapper.write_text(NAN_WRAPPER.format(repo=str(REPO), train=train, nan_videos=nan))
    launcher = (
        [sys.executable]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}",
        ]
    )
    return run([*launcher, str(wrapper), *data_args(tiny_demo), *args], timeout=timeout)


def first_clip_of_rank(tiny_demo, rank: int, world_size: int, seed: int) -> str:
    """The video rank ``rank`` trains on first (epoch 0), as train_ddp.py splits and shuffles."""
    from datasets import ResumableShardSampler, assign_splits, load_annotation_table

    table, _ = load_annotation_table(tiny_demo[1])
    train_names = table["video_name"][
        (assign_splits(table, method="hash", val_fraction=0.1, test_fraction=0.1) == "train").to_numpy()
    ].tolist()
    sampler = ResumableShardSampler(len(train_names), rank, world_size, seed=seed, multiple_of=4)
    return train_names[next(iter(sampler))[1]]


def test_nan_clip_is_skipped_on_all_ranks_and_reported(tiny_demo, tmp_path):
    bad = first_clip_of_rank(tiny_demo, rank=1, world_size=2, seed=1)  # in rank 1's first batch
    out = tmp_path / "run"
    res = run_train_with_nan_clips(tiny_demo, tmp_path, {bad}, [*RUN, "--output-dir", str(out)], nproc=2)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "step 0: non-finite loss/gradients, step skipped (rank 1: " in res.stdout
    rows = [line.split("\t") for line in (out / "nonfinite.tsv").read_text().splitlines()]
    assert rows and rows[0][:2] == ["0", "1"] and bad in rows[0][2].split(",")
    assert all(bad in row[2].split(",") for row in rows)  # only that clip is bad, whichever rank had it
    state = checkpoint(out)
    assert state["step"] == FINAL_STEP and state["counters"]["nonfinite_skips"] == len(rows)
    # the skipped steps left no trace: weights and BatchNorm statistics are finite
    bad_tensors = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad_tensors, f"non-finite after a skipped step: {bad_tensors[:5]}"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["metrics"].get("train/nonfinite_skips", 0) for r in logged if "metrics" in r) == len(rows)
    assert run_status(out, state["mlflow_run_id"]) == "FINISHED"


def test_nan_clip_with_nonfinite_stop_checkpoints_and_exits(tiny_demo, tmp_path):
    bad = first_clip_of_rank(tiny_demo, rank=0, world_size=1, seed=0)
    out = tmp_path / "run"
    res = run_train_with_nan_clips(
        tiny_demo,
        tmp_path,
        {bad},
        [
            *TINY,
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--val-every",
            "0",
            "--nonfinite",
            "stop",
            "--output-dir",
            str(out),
        ],
        nproc=1,
        timeout=300,
    )
    assert res.returncode == 3, res.stdout[-4000:]
    assert "stopping: non-finite loss/gradients at step 0" in res.stdout
    assert bad in (out / "nonfinite.tsv").read_text()
    state = checkpoint(out)
    # Decided at the next step's plan (docs/training.md): the bad step counts as a step without an
    # update, the next batch is not consumed; resuming would go past the bad batch.
    assert state["step"] == 1 and state["batch_in_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert run_status(out, state["mlflow_run_id"]) == "FAILED"


def test_consecutive_nonfinite_skips_are_limited(tiny_demo, tmp_path):
    out = tmp_path / "run"
    res = run_train_with_nan_clips(
        tiny_demo,
        tmp_path,
        None,  # every clip is NaN
        [
            *TINY,
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--val-every",
            "0",
            "--nonfinite",
            "skip",
            "--max-nonfinite-skips",
            "2",
            "--output-dir",
            str(out),
        ],
        nproc=1,
        timeout=300,
    )
    assert res.returncode == 3, res.stdout[-4000:]
    assert "(3 consecutive; --nonfinite skip)" in res.stdout
    assert [row.split("\t")[0] for row in (out / "nonfinite.tsv").read_text().splitlines()] == ["0", "1", "2"]
