"""launch/slurm_multi_node.sbatch on a real two-node SLURM cluster on this machine.

Two "nodes" n1 and n2, each a network namespace with its own address on a private bridge and
its own hostname (tests/netns.py); slurmctld on n1, a slurmd on each (tests/slurm_cluster.py).
The hostnames resolve nowhere, as on clusters where c10d's socket.getfqdn() breaks: the launch
script must take every address from SLURM.  The job runs in CPU mode, one training process per
node (gloo), the tiny run of tests/test_resilience.py, and must:
  - run its ranks on both nodes, gradients crossing the namespace network (veth counters);
  - preempted by USR1, checkpoint, requeue and resume on both nodes, ending with bitwise the
    weights of `torchrun --nproc_per_node=2` of the same run on one node;
  - with one node's training processes killed, end within the collective timeout with the
    MLflow run FAILED, and a resubmission resume from the last checkpoint;
  - and separate worlds (the one-node torchrun command run on each node) are refused right
    after init.

`pytest -k two_node` selects these.  Without root, namespaces, slurm-wlm or munge they skip with
the reason; under CI they fail instead, since .ci/run installs everything they need.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import REPO, TINY_WIDTH, child_env, free_port
from netns import NODE_IFNAME, NamespaceNetwork
from netns import unavailable_reason as netns_unavailable
from slurm_cluster import LocalSlurm
from slurm_cluster import unavailable_reason as slurm_unavailable
from test_resilience import FINAL_STEP, RUN, assert_bitwise_equal, checkpoint, data_args, reference_run, run_status

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

_REASON = slurm_unavailable() or netns_unavailable()
if _REASON and os.environ.get("CI"):
    pytest.fail(f"two-node SLURM tests cannot run under CI: {_REASON}", pytrace=False)
if _REASON:
    print(f"\n*** SKIPPING the two-node SLURM tests: {_REASON} ***", file=sys.stderr)
    pytest.skip(f"two-node SLURM tests skipped: {_REASON}", allow_module_level=True)

from test_slurm import Job, resumed_steps  # noqa: E402  (after the skip: its own skip names only SLURM)

NODES = ("n1", "n2")
KEEP_ONE = ("--keep-last", "1")  # each node keeps one step checkpoint, not three
DIST_TIMEOUT = 60  # seconds; the fault test's bound


@pytest.fixture(scope="module")
def network():
    with NamespaceNetwork(list(NODES)) as net:
        yield net


@pytest.fixture(scope="module")
def cluster(network, tmp_path_factory):
    with LocalSlurm(tmp_path_factory.mktemp("slurm2"), cpus=1, network=network) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_demo, tmp_path_factory) -> Path:
    return reference_run(tiny_demo, tmp_path_factory)


def two_node_job(cluster, tmp: Path, tiny_demo, train_args=(), extra_env=None) -> Job:
    env = {"RDZV_PORT": str(free_port()), **(extra_env or {})}
    return Job(
        cluster,
        "slurm_multi_node.sbatch",
        tmp,
        tiny_demo,
        env,
        nodes=2,
        nproc_per_node=1,
        train_args=(*KEEP_ONE, *train_args),
    )


def gradient_bytes() -> int:
    """What one step all-reduces: every trained parameter in fp32."""
    from resnet3d import build_model

    return sum(p.numel() * 4 for p in build_model(depth=18, width=TINY_WIDTH).parameters())


def rank_records(out: Path) -> dict[int, list[dict]]:
    return {
        int(p.stem.split("-")[1]): [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted((out / "ranks").glob("rank-*.jsonl"))
    }


def wait_ended(job: Job, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job.info()
        if info.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", None):
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {job.id} still {job.info()} after {timeout} s\n{job.log[-5000:]}")


def training_pids(network: NamespaceNetwork, node: str) -> list[int]:
    """The node's training processes (the ranks torchrun started, and their data workers)."""
    pids = []
    for pid in network.pids(node):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(b"RANK=") for e in environ):
            pids.append(pid)
    return pids


def test_two_node_job_crosses_the_network_survives_usr1_and_matches_one_node_torchrun(
    cluster, network, tiny_demo, tmp_path, reference
):
    before = {node: network.traffic(node) for node in NODES}
    job = two_node_job(cluster, tmp_path, tiny_demo)
    job.wait_for_step(3, restarts=0)
    cluster.scancel("--batch", "--signal=USR1", str(job.id))
    info = job.wait_completed()
    log = job.log
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0", (info, log[-5000:])
    assert info["NodeList"] == "n[1-2]", info
    # the rendezvous is the head node's SLURM address; each node found its own interface
    assert f"rendezvous {network.addr('n1')}:" in log, log[-5000:]
    for node in NODES:
        assert f"node {node} (hostname {node}, " in log and f"GLOO_SOCKET_IFNAME={NODE_IFNAME}," in log
    assert "preempted after a checkpoint" in log and len(resumed_steps(log)) == 1 and resumed_steps(log)[0] >= 3

    # each rank, in each incarnation, wrote where it ran and which rendezvous it joined
    records = rank_records(job.out)
    assert sorted(records) == [0, 1], records
    for lines in records.values():
        # SLURM sets SLURM_RESTART_COUNT from the first requeue on: both nodes ran both incarnations
        assert [r["slurm_restart_count"] for r in lines] == [None, "1"], lines
        assert len({r["hostname"] for r in lines}) == 1 and lines[0]["hostname"] in NODES
        assert lines[0]["local_addr"] == network.addr(lines[0]["hostname"]), lines
        assert lines[0]["master_addr"] in (network.addr("n1"), network.addr("n2")), lines
    assert {records[r][-1]["hostname"] for r in records} == set(NODES)  # two different hosts

    # the gradients crossed the namespace network: every step all-reduces them between the nodes
    moved = {node: {k: network.traffic(node)[k] - before[node][k] for k in ("sent", "received")} for node in NODES}
    need = gradient_bytes() * FINAL_STEP
    print(f"bytes over the veths: {moved}; gradient bytes x steps = {need}")
    assert all(v >= need for node in NODES for v in moved[node].values()), (moved, need)

    final = checkpoint(job.out)
    assert_bitwise_equal(final, checkpoint(reference))
    assert run_status(job.out, final["mlflow_run_id"]) == "FINISHED"


def test_two_node_job_with_a_dead_node_fails_within_the_timeout_and_resubmission_resumes(
    cluster, network, tiny_demo, tmp_path, reference
):
    job = two_node_job(cluster, tmp_path, tiny_demo, train_args=("--dist-timeout", str(DIST_TIMEOUT)))
    job.wait_for_step(3, restarts=0)
    victims = training_pids(network, "n2")
    assert victims, f"no training processes found on n2\n{job.log[-3000:]}"
    killed_at = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    info = wait_ended(job, timeout=DIST_TIMEOUT + 120)
    took = time.monotonic() - killed_at
    print(f"the job ended {took:.1f} s after n2's training processes were killed (bound {DIST_TIMEOUT} s)")
    log = job.log
    assert info["JobState"] == "FAILED", (info, log[-5000:])
    assert took < DIST_TIMEOUT, f"the job took {took:.0f} s to end after n2's ranks died\n{log[-5000:]}"
    stopped = checkpoint(job.out)
    assert 2 <= stopped["step"] < FINAL_STEP
    assert run_status(job.out, stopped["mlflow_run_id"]) == "FAILED"

    again = two_node_job(
        cluster,
        tmp_path,
        tiny_demo,
        train_args=("--dist-timeout", str(DIST_TIMEOUT)),
        extra_env={"OUTPUT_DIR": str(job.out)},
    )
    again.wait_completed()
    assert resumed_steps(again.log) == [stopped["step"]], again.log[-5000:]
    final = checkpoint(job.out)
    assert_bitwise_equal(final, checkpoint(reference))
    assert final["mlflow_run_id"] == stopped["mlflow_run_id"]  # the same MLflow run, now finished
    assert run_status(job.out, final["mlflow_run_id"]) == "FINISHED"


SPLIT_WORLD_SCRIPT = """#!/usr/bin/env bash
# The classic mistake: the one-node command run on every node, so each node meets only itself
# (a rendezvous on its own loopback) and forms a world of its own.
set -euo pipefail
cd "$REPO"
srun --nodes=2 --ntasks-per-node=1 "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc-per-node=1 \\
    --master-addr=127.0.0.1 --master-port=29500 train_ddp.py $TRAIN_ARGS --output-dir "$OUT"
"""


def test_two_node_separate_worlds_are_refused_right_after_init(cluster, tiny_demo, tmp_path):
    script = tmp_path / "split.sbatch"
    script.write_text(SPLIT_WORLD_SCRIPT)
    out = tmp_path / "out"
    env = child_env(
        {
            "REPO": str(REPO),
            "PYTHON": sys.executable,
            "OUT": str(out),
            "TRAIN_ARGS": " ".join([*data_args(tiny_demo), *RUN, "--device", "cpu"]),
        }
    )
    job_id = cluster.sbatch(
        [
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--time=5",
            f"--output={tmp_path}/split-%j.out",
            str(script),
        ],
        env=env,
        cwd=REPO,
    )
    deadline = time.monotonic() + 180
    while cluster.job(job_id).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", None):
        assert time.monotonic() < deadline, cluster.job(job_id)
        time.sleep(0.2)
    log = (tmp_path / f"split-{job_id}.out").read_text(errors="replace")
    assert cluster.job(job_id)["JobState"] == "FAILED", log[-3000:]
    for node in NODES:  # both nodes refused, each naming itself
        assert (
            f"rank 0 on {node}: the process group has 1 ranks but SLURM started 2 "
            "(SLURM_STEP_NUM_TASKS=2 torchruns x LOCAL_WORLD_SIZE=1)"
        ) in log, log[-3000:]
    # refused before anything was written: no rank records, checkpoints or MLflow run
    assert not (out / "ranks").exists() and not (out / "checkpoints").exists() and not (out / "mlflow.db").exists()
