"""How often one optimizer step makes the host read a tensor's value (on a GPU: wait for it).

The count is taken on CPU with tests/host_reads.py over real steps of train_ddp.train_one_epoch
under DDP (gloo, two processes), per AMP mode, so a read that creeps back into the step fails
here.  docs/training.md ("What one step does / host synchronisation") lists the reads that remain.
"""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from host_reads import HostReads, worker

COUNTED_STEPS = 3


def test_the_counter_sees_item_tolist_bool_float_and_cpu():
    x = torch.tensor([1.0, 2.0])
    with HostReads() as reads:
        x.sum().item()
        x.tolist()
        bool(x[0] > 0)
        float(x[1])
        x.cpu()
        y = x * 2  # arithmetic stays on the device: no read
        torch.isfinite(y).all()
    assert reads.count == 5, reads.where
    assert torch.Tensor.tolist is not None and reads._saved == {}  # the methods are restored
    with HostReads() as reads:
        x.cpu().numpy()
    assert reads.count == 2, reads.where


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["fp32", "bf16", "fp16"])
def test_host_reads_per_step(amp, tmp_path):
    result = tmp_path / "reads.txt"
    mp.spawn(worker, args=(2, _free_port(), amp, COUNTED_STEPS, str(tmp_path), str(result)), nprocs=2, join=True)
    count, *where = result.read_text().splitlines()
    summary = "\n".join(f"{where.count(w)} x {w}" for w in sorted(set(where)))
    print(f"{amp}: {count} reads over {COUNTED_STEPS} steps\n{summary}")
    # One read per step: the plan's all-reduced vector (which brings the previous step's finite
    # flag too); and one as the loop returns, settling its last step before anything saves it.
    assert int(count) == COUNTED_STEPS + 1, summary
