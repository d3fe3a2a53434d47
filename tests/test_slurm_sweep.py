"""A sweep on a real one-node SLURM cluster (tests/slurm_cluster.py): `python -m launch.sweep run`
without --local submits one job array, two trials run at once against the sweep's MLflow
server, one is preempted mid-run, and every trial ends as one FINISHED child of one parent.

Without slurm-wlm/munge (or root) this skips with the reason; under CI it fails instead, as
tests/test_slurm.py does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import REPO, child_env
from slurm_cluster import LocalSlurm, unavailable_reason
from test_resilience import logged_step
from test_sweep import tiny_base, write

from launch.sweep_slurm import stop_process_group

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

_REASON = unavailable_reason()
if _REASON and os.environ.get("CI"):
    pytest.fail(f"SLURM tests cannot run under CI: {_REASON}", pytrace=False)
if _REASON:
    pytest.skip(f"SLURM tests skipped: {_REASON}", allow_module_level=True)

MAX_STEPS = 10


def running_tasks(cluster: LocalSlurm, job: str) -> list[str]:
    res = subprocess.run(
        ["squeue", "--noheader", "--array", f"--jobs={job}", "--states=RUNNING", "--format=%i"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res.stdout.split() if res.returncode == 0 else []


def start_sweep(cluster: LocalSlurm, path: Path, sweep_dir: Path, out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "launch.sweep", "run", str(path), "--dir", str(sweep_dir)]
    cmd += ["--", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20"]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=child_env({"SLURM_CONF": str(cluster.conf)}),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_leftovers(proc: subprocess.Popen, out_path: Path) -> None:
    """Whatever failed, leave no `run` and no server behind (each by its own process group)."""
    if proc.poll() is None:
        stop_process_group(proc.pid)
        proc.wait()
    server = re.search(r"MLflow server \S+ \(pid (\d+)\)", out_path.read_text(errors="replace"))
    if server:
        stop_process_group(int(server.group(1)))


def test_a_sweep_on_slurm_two_at_a_time_with_a_preempted_trial(tmp_path, tiny_demo):
    started = time.perf_counter()
    tiny_base(tmp_path, tiny_demo, epochs=2, max_steps=MAX_STEPS)
    grid = [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]
    spec = {"base": "base.yaml", "grid": {"lr": grid}, "resources": {"nproc_per_node": 1, "max_concurrent": 2}}
    path = write(tmp_path / "lr.yaml", spec)
    sweep_dir = tmp_path / "sweep"
    out_path = tmp_path / "run.out"
    # two CPUs: two one-process trials at once
    with LocalSlurm(tmp_path / "slurm", cpus=2) as cluster, open(out_path, "w") as out:
        proc = start_sweep(cluster, path, sweep_dir, out)
        most_at_once = 0
        try:
            deadline = time.monotonic() + 900

            def wait_for(what, ready):
                nonlocal most_at_once
                while not ready():
                    log = out_path.read_text(errors="replace")
                    assert proc.poll() is None or what == "the end", f"{what}: run exited\n{log[-4000:]}"
                    assert time.monotonic() < deadline, f"{what}: timed out\n{log[-4000:]}\n{cluster.logs()}"
                    if job:
                        most_at_once = max(most_at_once, len(running_tasks(cluster, job)))
                    time.sleep(0.5)

            job = None
            state_file = sweep_dir / "sweep.json"
            wait_for("the array", lambda: state_file.exists() and (json.loads(state_file.read_text()).get("slurm")))
            job = json.loads(state_file.read_text())["slurm"]["array_job_id"]
            wait_for("trial 000 training", lambda: logged_step(sweep_dir / "trials" / "000") >= 2)
            # what SLURM does before a time limit or a preemption: USR1, once, to the task's batch shell
            cluster.signal_batch_shell(f"{job}_0")
            wait_for("the end", lambda: proc.poll() is not None)
        finally:
            stop_leftovers(proc, out_path)
        log = out_path.read_text(errors="replace")
        assert proc.returncode == 0, log[-5000:]
        preempted = cluster.job(f"{job}_0")
        assert preempted["Restarts"] == "1", preempted
    seconds = time.perf_counter() - started
    print(f"4-trial SLURM sweep, 2 at a time, one preempted: {seconds:.1f} s (cluster start to stop)")

    # the server was the only writer and is gone; the store is read directly now
    server_pid = int(re.search(r"MLflow server \S+ \(pid (\d+)\)", log).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
    assert "MLflow server" in log and "stopped" in log
    assert most_at_once == 2, f"at most {most_at_once} trials ran at once"

    import mlflow

    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert "server" not in state and state["tracking_uri"] == f"sqlite:///{sweep_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(state["tracking_uri"])
    experiment = client.get_experiment_by_name("social-vision")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 5, [(r.info.run_name, r.info.status) for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == state["parent_run_id"]
    children = sorted((r for r in runs if r is not parent), key=lambda r: r.data.tags["sweep.trial"])
    assert [c.data.tags["sweep.trial"] for c in children] == ["000", "001", "002", "003"]  # no duplicate
    assert [c.data.tags["mlflow.parentRunId"] for c in children] == [parent.info.run_id] * 4
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert [c.info.run_id for c in children] == [t["run_id"] for t in state["trials"]]
    assert [float(c.data.params["lr"]) for c in children] == grid

    # the preempted trial checkpointed, requeued and resumed its own run: each step logged once
    trial_log = (sweep_dir / "trials" / "000.log").read_text(errors="replace")
    assert "preempted after a checkpoint" in trial_log and "resumed from" in trial_log, trial_log[-4000:]
    assert trial_log.count(f"MLflow run {children[0].info.run_id} at ") == 2, trial_log[-4000:]  # two starts, one run
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))
    for child in children[1:]:
        assert "resumed from" not in (sweep_dir / "trials" / f"{child.data.tags['sweep.trial']}.log").read_text()

    # artifacts were written beside the store, where `mlflow ui` and the summary find them
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert artifacts == {"summary/summary.csv", "summary/summary.png"}
    assert Path(parent.info.artifact_uri.removeprefix("file://")).is_relative_to(sweep_dir / "mlartifacts")
    assert "best: trial" in log


def test_a_failing_trial_on_slurm_is_failed_with_its_error(tmp_path, tiny_demo):
    tiny_base(tmp_path, (tiny_demo[0], tmp_path / "missing.csv"), epochs=1, max_steps=2)
    path = write(tmp_path / "lr.yaml", {"base": "base.yaml", "grid": {"lr": [1.0e-3, 1.0e-2]}})
    sweep_dir = tmp_path / "sweep"
    out_path = tmp_path / "run.out"
    with LocalSlurm(tmp_path / "slurm", cpus=2) as cluster, open(out_path, "w") as out:
        proc = start_sweep(cluster, path, sweep_dir, out)
        try:
            proc.wait(timeout=600)
        finally:
            stop_leftovers(proc, out_path)
    log = out_path.read_text(errors="replace")
    assert proc.returncode == 1, log[-4000:]
    assert "MLflow server" in log and "stopped" in log

    import mlflow

    state = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow.MlflowClient(state["tracking_uri"])
    assert client.get_run(state["parent_run_id"]).info.status == "FAILED"
    for entry in state["trials"]:
        child = client.get_run(entry["run_id"])
        assert child.info.status == "FAILED"
        assert "missing.csv: cannot read as a CSV table" in child.data.tags["sweep.error"]


def test_a_cancelled_sweep_resubmits_only_its_unfinished_trials(tmp_path, tiny_demo):
    tiny_base(tmp_path, tiny_demo, epochs=2, max_steps=MAX_STEPS)
    spec = {"base": "base.yaml", "grid": {"lr": [1.0e-3, 1.0e-2]}, "resources": {"max_concurrent": 1}}
    path = write(tmp_path / "lr.yaml", spec)
    sweep_dir = tmp_path / "sweep"
    out_path, again_path = tmp_path / "run.out", tmp_path / "again.out"
    with LocalSlurm(tmp_path / "slurm", cpus=2) as cluster:
        with open(out_path, "w") as out:
            proc = start_sweep(cluster, path, sweep_dir, out)
            try:
                deadline = time.monotonic() + 600
                while logged_step(sweep_dir / "trials" / "001") < 2:  # trial 000 is done, 001 is training
                    assert proc.poll() is None and time.monotonic() < deadline, out_path.read_text()[-4000:]
                    time.sleep(0.5)
                cancel = subprocess.run(
                    [sys.executable, "-m", "launch.sweep", "cancel", str(sweep_dir)],
                    cwd=REPO,
                    env=child_env({"SLURM_CONF": str(cluster.conf)}),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert cancel.returncode == 0 and "closes the runs and stops the server" in cancel.stdout, cancel
                proc.wait(timeout=300)
            finally:
                stop_leftovers(proc, out_path)
        log = out_path.read_text(errors="replace")
        assert proc.returncode == 75, log[-4000:]

        import mlflow

        state = json.loads((sweep_dir / "sweep.json").read_text())
        client = mlflow.MlflowClient(state["tracking_uri"])
        first = {e["trial"]: client.get_run(e["run_id"]).info for e in state["trials"]}
        assert {t: i.status for t, i in first.items()} == {"000": "FINISHED", "001": "KILLED"}
        assert client.get_run(state["parent_run_id"]).info.status == "KILLED"

        with open(again_path, "w") as out:  # the same command again: only trial 001 is submitted
            proc = start_sweep(cluster, path, sweep_dir, out)
            try:
                proc.wait(timeout=600)
            finally:
                stop_leftovers(proc, again_path)
    again = again_path.read_text(errors="replace")
    assert proc.returncode == 0, again[-4000:]
    assert "2 trials of lr" in again and "1 to run" in again and "trials 001, 1 at a time" in again
    state = json.loads((sweep_dir / "sweep.json").read_text())
    runs = client.search_runs([client.get_experiment_by_name("social-vision").experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert client.get_run(state["trials"][0]["run_id"]).info.end_time == first["000"].end_time  # not run again
    assert "resumed from" in (sweep_dir / "trials" / "001.log").read_text()
    steps = [m.step for m in client.get_metric_history(state["trials"][1]["run_id"], "train/loss")]
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))
