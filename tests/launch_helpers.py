"""Run train_ddp.py (and other entry points) as real processes from tests.

Each run gets its own process group, so a timeout kills torchrun and every worker it started
(never anything else), and a free rendezvous port, so runs can't collide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--depth",
    "18",
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(REPO / "train_ddp.py"), *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        str(REPO / "train_ddp.py"),
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


def run_train(args: list[str], nproc: int = 1, timeout: float = 600, env: dict | None = None):
    return run(train_command(args, nproc), timeout=timeout, env=env)
