"""utils/distributed.py: SLURM's idea of the world size and the refusal of a smaller world, and
the per-rank record."""

import json

import pytest
import torch
from launch_helpers import child_env, train

from utils.distributed import DistInfo, record_rank, slurm_world_size

TORCHRUN_UNDER_SRUN = {"SLURM_STEP_NUM_TASKS": "2", "LOCAL_WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "17"}


def test_slurm_world_size_is_tasks_times_local_workers_under_srun_and_torchrun():
    assert slurm_world_size(TORCHRUN_UNDER_SRUN)[0] == 8


def test_no_expectation_outside_an_srun_step_or_torchrun():
    # a torchrun in the batch script itself (no srun step), or no torchrun at all
    assert slurm_world_size({k: v for k, v in TORCHRUN_UNDER_SRUN.items() if k != "SLURM_STEP_NUM_TASKS"}) is None
    assert slurm_world_size({k: v for k, v in TORCHRUN_UNDER_SRUN.items() if k != "TORCHELASTIC_RUN_ID"}) is None
    assert slurm_world_size({}) is None


def test_record_rank_appends_one_line_per_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    info = DistInfo(rank=1, local_rank=1, world_size=2, device=torch.device("cpu"), backend="gloo")
    record_rank(info, tmp_path / "ranks")
    record_rank(info, tmp_path / "ranks")
    lines = [json.loads(line) for line in (tmp_path / "ranks" / "rank-1.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["master_addr"] == "127.0.0.1" and lines[0]["master_port"] == 29500
    assert lines[0]["local_addr"] == "127.0.0.1" and lines[0]["gloo_socket_ifname"] == "lo"
    assert lines[0]["rank"] == 1 and lines[0]["world_size"] == 2 and lines[0]["hostname"]


def test_single_process_writes_no_record(tmp_path):
    record_rank(DistInfo(0, 0, 1, torch.device("cpu"), None), tmp_path / "ranks")
    assert not (tmp_path / "ranks").exists()


@pytest.mark.slow
def test_a_world_smaller_than_slurms_is_refused_right_after_init(tiny_demo, tmp_path):
    """2 ranks where SLURM (as srun would tell each torchrun) started 2 torchruns x 2 = 4."""
    env = child_env({"SLURM_STEP_NUM_TASKS": "2"})
    res = train(tmp_path, tiny_demo, nproc=2, ok=False, timeout=300, env=env)
    assert (
        "the process group has 2 ranks but SLURM started 4 (SLURM_STEP_NUM_TASKS=2 torchruns x "
        "LOCAL_WORLD_SIZE=2); the nodes formed separate worlds"
    ) in res.stdout, res.stdout[-3000:]
    assert not (tmp_path / "ranks").exists() and not (tmp_path / "checkpoints").exists()


def test_an_unwritable_record_is_a_warning_not_an_error(tmp_path, capsys):
    (tmp_path / "ranks").write_text("a file where the directory should be")
    record_rank(DistInfo(0, 0, 2, torch.device("cpu"), "gloo"), tmp_path / "ranks")
    assert "warning: rank 0: could not write" in capsys.readouterr().out


def test_a_world_of_the_expected_size_passes_and_a_larger_one_is_refused(monkeypatch):
    from utils import distributed

    refuse_split_world = distributed.refuse_split_world
    refuse_split_world(8, rank=0, env=TORCHRUN_UNDER_SRUN)  # returns: the world SLURM started
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: None)  # no group in this test
    with pytest.raises(SystemExit, match="has 9 ranks but SLURM started 8 .*from outside this job step"):
        refuse_split_world(9, rank=3, env=TORCHRUN_UNDER_SRUN)
