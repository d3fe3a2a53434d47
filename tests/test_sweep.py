"""Hyper-parameter sweeps (launch/sweep.py): the sweep file is checked before anything runs, a local
sweep makes one MLflow parent with a FINISHED child per trial, and an interrupted sweep resumes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from launch_helpers import REPO, child_env, run

from launch.sweep import error_line, main, prepare_directory
from launch.sweep_file import SweepFileError, load_sweep

EXAMPLES = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_sweeps_load(path):
    sweep = load_sweep(path)
    assert len(sweep.trials) > 1 and sweep.swept


def test_there_is_an_example_sweep():
    assert EXAMPLES


def test_trials_are_grid_times_draws_times_seeds(tmp_path):
    spec = {
        "grid": {"lr": ["1e-3", 1.0e-2], "amp": ["off", "bf16"]},
        "random": {"trials": 3, "seed": 7, "values": {"weight_decay": {"log_uniform": [1.0e-4, 1.0e-1]}}},
        "seeds": [0, 1],
    }
    sweep = load_sweep(write(tmp_path / "s.yaml", spec))
    assert len(sweep.trials) == 2 * 2 * 3 * 2
    assert sweep.swept == ["lr", "amp", "weight_decay", "seed"]
    first = sweep.trials[0].overrides
    assert (first["lr"], first["amp"], first["seed"]) == (0.001, "off", 0)  # "1e-3" is coerced as the config does
    assert sweep.trials[1].overrides["seed"] == 1 and sweep.trials[1].overrides["lr"] == 0.001
    draws = sorted({t.overrides["weight_decay"] for t in sweep.trials})
    assert len(draws) == 3 and all(1.0e-4 <= d <= 1.0e-1 for d in draws)
    again = load_sweep(tmp_path / "s.yaml")  # seeded: the same trials every time the file is read
    assert [t.overrides for t in again.trials] == [t.overrides for t in sweep.trials]
    assert [t.name for t in sweep.trials][:3] == ["000", "001", "002"]


BAD = [
    ({"grid": {"lr": [0.1]}, "gird": {}}, "unknown key gird"),
    ({"grid": {"lrr": [0.1]}}, "'lrr' is not a train_ddp.py option; did you mean lr?"),
    ({"grid": {"lr": []}}, "grid.lr: empty list of values"),
    ({"grid": {"lr": 0.1}}, "grid.lr: give a list of values"),
    ({"grid": {"lr": [0.1, "fast"]}}, "grid.lr: lr must be float, got 'fast'"),
    ({"grid": {"amp": ["bf16", "fp8"]}}, "grid.amp: amp must be one of"),
    ({"grid": {"output_dir": ["a", "b"]}}, "grid.output_dir: the sweep sets it"),
    ({"grid": {"experiment": ["a", "b"]}}, "grid.experiment: one experiment for the whole sweep"),
    ({"grid": {"seed": [0, 1]}, "seeds": [2, 3]}, "seeds: seed is also swept"),
    ({"fixed": {"lr": 0.1}, "grid": {"lr": [0.2]}}, "grid.lr: also in fixed"),
    ({"fixed": {"batch_size": "many"}, "seeds": [0]}, "fixed.batch_size: batch_size must be int"),
    ({"random": {"trials": 2, "values": {"lr": {"loguniform": [1, 2]}}}}, "random.values.lr: give one of"),
    ({"random": {"trials": 2, "values": {"lr": {"log_uniform": [0, 1]}}}}, "random.values.lr.log_uniform: bounds"),
    ({"random": {"trials": 0, "values": {"lr": {"uniform": [0, 1]}}}}, "random.trials"),
    ({"random": {"trials": 1, "values": {"amp": {"choice": ["off", "fp8"]}}}}, "random.values.amp.choice: amp must"),
    ({"grid": {"lr": [0.1, 0.2, 0.1]}}, "grid.lr: a value is given twice"),
    ({"seeds": [0], "resources": {"gpus": 8}}, "unknown key resources.gpus"),
    ({"seeds": [0], "resources": {"max_concurrent": 0}}, "resources.max_concurrent: a whole number >= 1"),
    ({"seeds": [0], "mode": "best"}, "mode: max or min"),
    ({"fixed": {"lr": 0.1}}, "sweeps nothing"),
    ({"base": "missing.yaml", "seeds": [0]}, "base: cannot read config file"),
]


@pytest.mark.parametrize("spec,message", BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_a_bad_sweep_file_is_one_error_naming_the_key_before_anything_runs(tmp_path, spec, message):
    path = write(tmp_path / "bad.yaml", spec)
    with pytest.raises(SweepFileError) as raised:
        load_sweep(path)
    assert message in str(raised.value) and str(path) in str(raised.value)
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stopped:  # the command line: the same message, nothing written
        main(["run", str(path), "--local", "--dir", str(sweep_dir)])
    assert message in str(stopped.value.code)
    assert not sweep_dir.exists()


def test_a_base_config_that_sets_an_unknown_option_is_named(tmp_path):
    write(tmp_path / "base.yaml", {"lr": 0.1, "learning_rate": 0.2})
    path = write(tmp_path / "s.yaml", {"base": "base.yaml", "seeds": [0, 1]})
    with pytest.raises(SweepFileError, match=r"base: .*unknown option\(s\) \['learning_rate'\]"):
        load_sweep(path)


def test_a_changed_sweep_file_does_not_continue_an_old_sweep(tmp_path):
    write(tmp_path / "base.yaml", {"epochs": 2})
    path = write(tmp_path / "s.yaml", {"base": "base.yaml", "grid": {"lr": [0.1, 0.2]}})
    sweep_dir = tmp_path / "sweep"
    state = prepare_directory(load_sweep(path), sweep_dir, "sqlite:///" + str(tmp_path / "m.db"))
    (sweep_dir / "sweep.json").write_text(json.dumps(state))
    config = yaml.safe_load((sweep_dir / "trials" / "001.yaml").read_text())
    assert (config["lr"], config["epochs"], config["output_dir"]) == (0.2, 2, str(sweep_dir / "trials" / "001"))
    assert config["resume"] == "auto" and config["tracking_uri"] == f"sqlite:///{tmp_path / 'm.db'}"
    assert prepare_directory(load_sweep(path), sweep_dir, None)["trials"] == state["trials"]  # same file: resumes
    with pytest.raises(SystemExit, match="was never submitted to SLURM; nothing to cancel"):
        main(["cancel", str(sweep_dir)])
    write(tmp_path / "base.yaml", {"epochs": 3})
    with pytest.raises(SystemExit, match=r"no longer describes the sweep .*trial 000: epochs: 2 -> 3"):
        prepare_directory(load_sweep(path), sweep_dir, None)


def test_local_runs_on_one_node_and_takes_no_sbatch_options(tmp_path):
    path = write(tmp_path / "s.yaml", {"seeds": [0, 1], "resources": {"nodes": 2}})
    with pytest.raises(SystemExit, match="resources.nodes is 2"):
        main(["run", str(path), "--local", "--dir", str(tmp_path / "sweep")])
    path = write(tmp_path / "s.yaml", {"seeds": [0, 1]})
    with pytest.raises(SystemExit, match=r"sbatch options \(--partition=gpu\) with --local"):
        main(["run", str(path), "--local", "--dir", str(tmp_path / "sweep"), "--", "--partition=gpu"])
    with pytest.raises(SystemExit, match="--max-concurrent: a whole number >= 1, got 0"):
        main(["run", str(path), "--max-concurrent", "0", "--dir", str(tmp_path / "sweep")])
    assert not (tmp_path / "sweep").exists()


def test_a_failed_trial_s_error_is_its_own_not_torchrun_s():
    log = [
        "epoch 0 step 3: ...",
        "error: --annotations: a.csv: cannot read as a CSV table",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "  exitcode  : 1 (pid: 7)",
    ]
    assert error_line(log) == "error: --annotations: a.csv: cannot read as a CSV table"
    crash = ["Traceback (most recent call last):", "  File ...", "RuntimeError: CUDA out of memory", *log[3:]]
    assert error_line(crash) == "RuntimeError: CUDA out of memory"
    assert error_line(["", "Killed", ""]) == "Killed" and error_line([]) is None


def test_max_concurrent_comes_from_the_sweep_file(tmp_path):
    assert load_sweep(write(tmp_path / "s.yaml", {"seeds": [0, 1]})).max_concurrent is None
    sweep = load_sweep(write(tmp_path / "s.yaml", {"seeds": [0, 1], "resources": {"max_concurrent": 3}}))
    assert sweep.max_concurrent == 3


# ---- real sweeps: torchrun per trial -------------------------------------------------------------
def tiny_base(tmp_path: Path, demo, **more) -> Path:
    videos, annotations = demo
    options = {
        "videos": str(videos),
        "annotations": str(annotations),
        **{"depth": 18, "width": 16, "frames": 4, "size": 32, "batch_size": 4, "num_workers": 0},
        **{"device": "cpu", "checkpoint_every": 0, "log_every": 1, "progress": False},
        **{"system_metrics": False, "log_model": False, "log_checkpoints": False, "plots": False},
        **more,
    }
    return write(tmp_path / "base.yaml", options)


def sweep_command(path: Path, sweep_dir: Path, command: str = "run") -> list[str]:
    extra = ["--local", "--dir", str(sweep_dir)] if command == "run" else []
    return [sys.executable, "-m", "launch.sweep", command, *extra, str(path if command == "run" else sweep_dir)]


def sweep_runs(sweep_dir: Path) -> tuple[object, list]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("social-vision")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_a_local_sweep_of_three_trials(tmp_path, tiny_demo):
    tiny_base(tmp_path, tiny_demo, epochs=1, max_steps=4)
    grid = [1.0e-4, 1.0e-3, 1.0e-2]
    path = write(tmp_path / "lr.yaml", {"base": "base.yaml", "grid": {"lr": grid}, "metric": "val/mean_spearman"})
    sweep_dir = tmp_path / "sweep"
    started = time.perf_counter()
    result = run(sweep_command(path, sweep_dir), timeout=900)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-4000:]
    print(f"3-trial local sweep: {seconds:.1f} s")

    client, runs = sweep_runs(sweep_dir)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["swept"] == "lr"
    children = sorted((r for r in runs if r is not parent), key=lambda r: r.data.tags["sweep.trial"])
    assert [c.data.tags["mlflow.parentRunId"] for c in children] == [parent.info.run_id] * 3
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert [float(c.data.params["lr"]) for c in children] == grid  # train_ddp.py logged the trial's config
    assert [c.data.params["output_dir"] for c in children] == [str(sweep_dir / "trials" / f"00{i}") for i in range(3)]
    artifacts = {a.path for d in ("sweep", "summary") for a in client.list_artifacts(parent.info.run_id, d)}
    assert artifacts == {"sweep/sweep.yaml", "sweep/base.yaml"} | {
        "summary/summary.csv",
        "summary/summary.png",
    }

    # the summary's best is the best validation any child logged
    best = {
        c.data.tags["sweep.trial"]: max(
            m.value for m in client.get_metric_history(c.info.run_id, "val/mean_spearman") if math.isfinite(m.value)
        )
        for c in children
    }
    winner = max(best, key=best.get)
    assert f"best: trial {winner} (lr=" in result.stdout
    assert client.get_run(parent.info.run_id).data.tags["sweep.best_trial"] == winner
    summary = run(sweep_command(path, sweep_dir, "summary"), timeout=300)
    assert summary.returncode == 0 and f"best: trial {winner}" in summary.stdout
    marked = [line.split()[1] for line in summary.stdout.splitlines() if line.strip().startswith("*")]
    assert marked == [winner]
    status = run(sweep_command(path, sweep_dir, "status"), timeout=300)
    assert status.returncode == 0 and "3 FINISHED" in status.stdout and "lr=0.001" in status.stdout


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_when_run_again(tmp_path, tiny_demo):
    tiny_base(tmp_path, tiny_demo, epochs=5, max_steps=30)
    path = write(tmp_path / "lr.yaml", {"base": "base.yaml", "grid": {"lr": [1.0e-3, 1.0e-2]}})
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen(
        sweep_command(path, sweep_dir),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    record = sweep_dir / "trials" / "001" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 600
        while not (record.exists() and '"step"' in record.read_text()):  # trial 001 is training
            assert proc.poll() is None and time.monotonic() < deadline, "trial 001 never started training"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # what Ctrl-C or `kill` does to the sweep
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, out[-4000:]
    assert "trial 001 (lr=0.01): KILLED" in out
    client, runs = sweep_runs(sweep_dir)
    by_trial = {r.data.tags.get("sweep.trial", "parent"): r for r in runs}
    assert {k: r.info.status for k, r in by_trial.items()} == {"parent": "KILLED", "000": "FINISHED", "001": "KILLED"}
    finished_at = by_trial["000"].info.end_time

    again = run(sweep_command(path, sweep_dir), timeout=900)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "trial 000 (lr=0.001): FINISHED, skipped" in again.stdout
    assert "resumed from" in (sweep_dir / "trials" / "001.log").read_text()
    client, runs = sweep_runs(sweep_dir)
    resumed = {r.data.tags.get("sweep.trial", "parent"): r for r in runs}
    assert {k: r.info.run_id for k, r in resumed.items()} == {k: r.info.run_id for k, r in by_trial.items()}
    assert {k: r.info.status for k, r in resumed.items()} == dict.fromkeys(("parent", "000", "001"), "FINISHED")
    assert resumed["000"].info.end_time == finished_at  # not run again
    steps = [m.step for m in client.get_metric_history(resumed["001"].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 31))  # one run, each step once: resumed from its checkpoint


def test_status_of_a_directory_that_is_no_sweep_says_so(tmp_path):
    with pytest.raises(SystemExit, match="is not a sweep directory"):
        main(["status", str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a sweep directory"):
        main(["cancel", str(tmp_path)])
    state = {"name": "s", "tracking_uri": f"sqlite:///{tmp_path / 'gone.db'}", "metric": "val/loss", "mode": "min"}
    (tmp_path / "sweep.json").write_text(json.dumps({**state, "swept": ["lr"], "trials": [], "parent_run_id": "x"}))
    with pytest.raises(SystemExit, match=r"store of sweep s cannot be read: .*gone.db does not exist"):
        main(["summary", str(tmp_path)])
