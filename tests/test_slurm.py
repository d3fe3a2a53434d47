"""The project's sbatch scripts on a real one-node SLURM (slurmctld + slurmd on localhost, CPUs
only, started by the test; see tests/slurm_cluster.py).

Each script is submitted in CPU mode (DEVICE=cpu, NPROC_PER_NODE=2, --gpus-per-node=0) with the
tiny run of tests/test_resilience.py, preempted mid-run, and must requeue itself, resume on its
own and finish with bitwise the weights of the uninterrupted run.

Without slurm-wlm/munge (or root) these tests skip with the reason; under CI they fail instead,
since .ci/run installs SLURM and a silent skip would hide a broken install.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import REPO, child_env
from slurm_cluster import LocalSlurm, unavailable_reason
from test_resilience import RUN, assert_bitwise_equal, checkpoint, data_args, logged_step, reference_run, run_status

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

_REASON = unavailable_reason()
if _REASON and os.environ.get("CI"):
    pytest.fail(f"SLURM tests cannot run under CI: {_REASON}", pytrace=False)
if _REASON:
    print(f"\n*** SKIPPING the SLURM tests: {_REASON} ***", file=sys.stderr)
    pytest.skip(f"SLURM tests skipped: {_REASON}", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_demo, tmp_path_factory) -> Path:
    return reference_run(tiny_demo, tmp_path_factory)


class Job:
    """One sbatch submission of a launch script (the tiny run in CPU mode) and its output dir:
    OUTPUT_ROOT/<job name>-<job id>, kept across requeues, or OUTPUT_DIR where extra_env sets it."""

    def __init__(
        self,
        cluster: LocalSlurm,
        script: str,
        tmp: Path,
        tiny_demo,
        extra_env: dict | None = None,
        nodes: int = 1,
        nproc_per_node: int = 2,
        train_args: tuple = (),
    ):
        self.cluster = cluster
        self.log_dir = tmp
        env = child_env(
            {
                "NPROC_PER_NODE": str(nproc_per_node),
                "DEVICE": "cpu",
                "PYTHON": sys.executable,
                "OUTPUT_ROOT": str(tmp / "runs"),
                "TRAIN_ARGS": " ".join([*data_args(tiny_demo), *RUN, *train_args]),
                **(extra_env or {}),
            }
        )
        self.id = cluster.sbatch(
            [
                "--gpus-per-node=0",
                f"--nodes={nodes}",
                f"--cpus-per-task={nproc_per_node}",
                "--time=20",
                "--job-name=sv",
                f"--output={tmp}/%x-%j.out",
                str(REPO / "launch" / script),
            ],
            env=env,
            cwd=REPO,
        )
        self.out = Path(env["OUTPUT_DIR"]) if "OUTPUT_DIR" in env else tmp / "runs" / f"sv-{self.id}"

    @property
    def log(self) -> str:
        path = self.log_dir / f"sv-{self.id}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def info(self) -> dict:
        return self.cluster.job(self.id)

    def wait_until(self, what: str, ready, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info()
            if ready(info):
                return info
            state = info.get("JobState")
            if (
                state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
                or (state == "COMPLETED" and what != "completed")
                or time.monotonic() > deadline
            ):
                raise AssertionError(
                    f"waiting for {what}: job {self.id} is {info}\n--- job log\n"
                    f"{self.log[-5000:]}\n{self.cluster.logs()}"
                )
            time.sleep(0.2)

    def wait_for_step(self, step: int, restarts: int) -> None:
        self.wait_until(
            f"step {step} after {restarts} restarts",
            lambda i: (
                i.get("JobState") == "RUNNING" and i.get("Restarts") == str(restarts) and logged_step(self.out) >= step
            ),
        )

    def wait_completed(self) -> dict:
        return self.wait_until("completed", lambda i: i.get("JobState") == "COMPLETED", timeout=400)


def resumed_steps(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"resumed from \S+: step (\d+)", log)]


def test_single_node_script_requeues_on_usr1_and_on_requeue_and_resumes_exactly(
    cluster, tiny_demo, tmp_path, reference
):
    job = Job(cluster, "slurm_single_node.sbatch", tmp_path, tiny_demo)
    # What SLURM does 90 s before the time limit (--signal=B:USR1@90): USR1 to the batch shell.
    job.wait_for_step(3, restarts=0)
    cluster.scancel("--batch", "--signal=USR1", str(job.id))
    # Then a preemption in requeue mode: SIGTERM to every process of the job, then requeue.
    job.wait_for_step(6, restarts=1)
    cluster.scontrol("requeue", str(job.id))
    info = job.wait_completed()
    log = job.log
    assert info["Restarts"] == "2" and info["ExitCode"] == "0:0", (info, log[-5000:])
    assert "SIGUSR1: asking the training processes to checkpoint and stop" in log
    assert "failed (exitcode: 75)" in log  # the workers' exit after the USR1 checkpoint
    assert re.search(r"preempted after a checkpoint \(step \d+ preempted \(SIGUSR1\)", log), log[-5000:]
    assert "preempted (SIGTERM): checkpoint at step" in log  # the requeue's SIGTERM also saved
    first, second = resumed_steps(log)
    assert 3 <= first < 6 <= second < 8
    final = checkpoint(job.out)
    assert_bitwise_equal(final, checkpoint(reference))
    assert run_status(job.out, final["mlflow_run_id"]) == "FINISHED"
    assert not (job.out / "PREEMPTED").exists()


def test_multi_node_script_on_one_node_requeues_on_usr1_and_resumes_exactly(cluster, tiny_demo, tmp_path, reference):
    from launch_helpers import free_port

    job = Job(cluster, "slurm_multi_node.sbatch", tmp_path, tiny_demo, {"RDZV_PORT": str(free_port())})
    job.wait_for_step(3, restarts=0)
    # The batch shell forwards USR1 to the srun step (scancel --signal=USR1), i.e. to every node.
    cluster.scancel("--batch", "--signal=USR1", str(job.id))
    info = job.wait_completed()
    log = job.log
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0", (info, log[-5000:])
    assert "rendezvous" in log and "srun --nodes=1 --ntasks-per-node=1" in log
    # torchrun got USR1 too and lived (it ignores it) to report the workers' own exit 75
    assert "failed (exitcode: 75)" in log and "User defined signal" not in log, log[-5000:]
    assert len(resumed_steps(log)) == 1 and resumed_steps(log)[0] >= 3
    final = checkpoint(job.out)
    assert_bitwise_equal(final, checkpoint(reference))
    assert run_status(job.out, final["mlflow_run_id"]) == "FINISHED"
