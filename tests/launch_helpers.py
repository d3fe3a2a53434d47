"""Run train_ddp.py (and other entry points) as real processes from tests: the one harness.

A test states only what differs about its run::

    run = train(tmp_path / "run", tiny_demo, nproc=2, batch_size=4, epochs=2)
    run.checkpoint()["step"], run.metrics(), run.mlflow_run().data.params, run.stdout

Each run gets its own process group, so a timeout kills torchrun and every worker it started
(never anything else), and a free rendezvous port, so runs can't collide.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The smallest run the loop accepts in full: ResNet3D-18 at width 16 (a 1/16 of the parameters of
# width 64, so a checkpoint with Adam state is ~25 MB, not ~400 MB) on 4 frames of 32 px.  A test
# that needs the MiT network's width states --width 64 itself.
TINY = [
    "--depth",
    "18",
    "--width",
    "16",
    "--frames",
    "4",
    "--size",
    "32",
    "--num-workers",
    "0",
    "--no-progress",
    "--no-system-metrics",
    "--no-log-model",
    "--no-log-checkpoints",
    "--no-plots",
    "--log-every",
    "1",
]
TINY_WIDTH = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(args: list[str], nproc: int = 1, script: Path | None = None) -> list[str]:
    """train_ddp.py (or ``script``, e.g. a wrapper that runs it) with ``args``, under torchrun if nproc > 1."""
    script = str(script or REPO / "train_ddp.py")
    if nproc == 1:
        return [sys.executable, script, *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        script,
        *args,
    ]


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": ""}
    )
    env.pop("MLFLOW_TRACKING_URI")
    env.update(extra or {})
    return env


def run(cmd: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run in a new session; on timeout kill the whole process group and fail loudly."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def checkpoint(out: Path, name: str = "last.pt", weights_only: bool = True) -> dict:
    """A checkpoint of the run in output dir ``out``, loaded on the CPU (without unpickling code)."""
    import torch

    return torch.load(Path(out) / "checkpoints" / name, map_location="cpu", weights_only=weights_only)


@dataclass
class TrainResult:
    """What a finished train_ddp.py launch left: its exit code and output, and its output dir's
    checkpoints, metrics.jsonl and MLflow store."""

    returncode: int
    stdout: str
    out: Path | None

    def tail(self, chars: int = 4000) -> str:
        return self.stdout[-chars:]

    def checkpoint(self, name: str = "last.pt", weights_only: bool = True) -> dict:
        return checkpoint(self.out, name, weights_only)

    def metrics(self) -> list[dict]:
        """The metric records of metrics.jsonl, in order, each with its "step"."""
        lines = (self.out / "metrics.jsonl").read_text().splitlines()
        return [{"step": r["step"], **r["metrics"]} for r in map(json.loads, lines) if "metrics" in r]

    def mlflow_runs(self, db: Path | None = None):
        """(client, runs) of the run's MLflow store: its output dir's mlflow.db unless ``db``."""
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{db or self.out / 'mlflow.db'}")
        return client, client.search_runs([e.experiment_id for e in client.search_experiments()])

    def mlflow_run(self, db: Path | None = None):
        """The one MLflow run of the store (fails if there are more)."""
        _, runs = self.mlflow_runs(db)
        assert len(runs) == 1, [r.info.run_id for r in runs]
        return runs[0]


_EMPTY_STORE: list[Path] = []


def empty_mlflow_store() -> Path:
    """An MLflow sqlite store with its tables made, made once per test session: creating the tables
    (the schema migrations) costs seconds, which every training launch into a new output dir paid."""
    if not _EMPTY_STORE:
        import mlflow

        folder = Path(tempfile.mkdtemp(prefix="empty-mlflow-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _EMPTY_STORE.append(folder / "mlflow.db")
    return _EMPTY_STORE[0]


def _output_dir(args: list[str]) -> Path | None:
    flags = [i for i, a in enumerate(args) if a == "--output-dir"]
    return Path(args[flags[-1] + 1]) if flags else None


def run_train(
    args: list[str],
    nproc: int = 1,
    timeout: float = 600,
    env: dict | None = None,
    script: Path | None = None,
    new_store: bool = False,
) -> TrainResult:
    """train_ddp.py with exactly these arguments (no defaults added), nproc ranks under torchrun.

    A new output dir gets a copy of an empty MLflow store (the one train_ddp.py would create there
    by default); new_store=True lets the run create it itself."""
    out = _output_dir(args)
    if out is not None and not new_store and "--tracking-uri" not in args and not (out / "mlflow.db").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_mlflow_store(), out / "mlflow.db")
    res = run(train_command(args, nproc, script), timeout=timeout, env=env)
    return TrainResult(res.returncode, res.stdout, out)


def flags(**options) -> list[str]:
    """Keyword options as train_ddp.py flags: batch_size=4 -> --batch-size 4; True -> --flag;
    False -> --no-flag (the parser's BooleanOptionalAction)."""
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + name.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


def data_flags(data) -> list[str]:
    """--videos/--annotations of a (videos, annotations) pair such as the tiny_demo fixture."""
    videos, annotations = data
    return ["--videos", str(videos), "--annotations", str(annotations)]


def train(
    out: Path | None,
    data=None,
    *extra: str,
    nproc: int = 1,
    tiny: bool = True,
    ok: bool | None = True,
    timeout: float = 600,
    env: dict | None = None,
    script: Path | None = None,
    new_store: bool = False,
    **options,
) -> TrainResult:
    """One train_ddp.py launch: ``data`` (a (videos, annotations) pair), --output-dir ``out``, the
    TINY run, then ``options`` (see flags()) and ``extra`` flags, which override TINY.

    ok=True asserts exit code 0 and ok=False a failure, each showing the output's end;
    ok=None leaves the exit code to the caller.  new_store: see run_train()."""
    args = [*(data_flags(data) if data is not None else [])]
    args += ["--output-dir", str(out)] if out is not None else []
    args += [*(TINY if tiny else []), *flags(**options), *extra]
    res = run_train(args, nproc=nproc, timeout=timeout, env=env, script=script, new_store=new_store)
    if ok is True:
        assert res.returncode == 0, res.tail()
    elif ok is False:
        assert res.returncode != 0, res.tail()
    return res
