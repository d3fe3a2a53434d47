"""A disk that fills up during training: the loop reports each failed checkpoint, keeps the
previous one, trains on, and does not end as a success when its final checkpoint is missing."""

import textwrap

import pytest
from launch_helpers import REPO, train

pytestmark = pytest.mark.slow

# Runs train_ddp.py unchanged, with two things of the OS replaced in this process only: from the
# FAIL_FROM-th checkpoint file on, torch.save writes a few bytes and then fails with ENOSPC (a disk that
# fills up mid-write), and the disk reports 1 MiB free.
WRAPPER = """
import errno, runpy, shutil, sys
from collections import namedtuple
sys.path.insert(0, {repo!r})
import torch

real_save, calls = torch.save, [0]

def full_disk_save(obj, f, *args, **kwargs):
    # only utils.atomic's temporary file (torch.save also pickles in the collectives)
    if ".tmp" not in str(getattr(f, "name", "")):
        return real_save(obj, f, *args, **kwargs)
    calls[0] += 1
    if calls[0] >= {fail_from}:
        f.write(b"PK half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(obj, f, *args, **kwargs)

torch.save = full_disk_save
Usage = namedtuple("Usage", "total used free")
shutil.disk_usage = lambda path: Usage(2**40, 2**40 - 2**20, 2**20)
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""


def test_final_checkpoint_write_failure_fails_the_run(tiny_demo, tmp_path):
    wrapper = tmp_path / "full_disk.py"
    wrapper.write_text(textwrap.dedent(WRAPPER.format(repo=str(REPO), train=str(REPO / "train_ddp.py"), fail_from=2)))
    out = tmp_path / "run"
    res = train(out, tiny_demo, script=wrapper, nproc=2, ok=False, batch_size=4, max_steps=3, checkpoint_every=1)
    log = res.stdout
    assert "exitcode: 4" in log, log[-4000:]  # torchrun reports the workers' own exit code
    # the preflight saw the (reported) 1 MiB free and said what a checkpoint needs
    assert "GiB free; a checkpoint takes about" in log
    # steps 2 and 3 failed: each reported with the OS error, training went on to step 3
    assert log.count("No space left on device") >= 2
    assert "training ended at step 3 but its final checkpoint could not be written" in log
    ckdir = out / "checkpoints"
    assert sorted(p.name for p in ckdir.glob("step-*.pt")) == ["step-00000001.pt"]
    assert sorted(p.name for p in ckdir.iterdir()) == ["last.pt", "step-00000001.pt"]  # no half-written leftovers
    assert res.checkpoint()["step"] == 1  # the previous good checkpoint is intact and still the newest
    run_info = res.mlflow_run()
    assert run_info.info.status == "FAILED"
    assert run_info.data.tags["stop_reason"] == "checkpoint_write_failed"
    assert "No space left on device" in run_info.data.tags["last_checkpoint_error"]
    assert run_info.data.metrics["train/loss"] > 0 and run_info.data.tags.get("final_step") == "3"
