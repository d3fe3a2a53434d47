import errno
import os

import pytest
import torch

from utils import checkpoint as ck
from utils.checkpoint import CheckpointLoadError, CheckpointManager, CheckpointSaveError, load_checkpoint_file


def _state(v):
    return {"model": {"w": torch.full((3,), float(v))}, "config": {"lr": 0.1}, "epoch": 0}


def test_save_keeps_last_k_and_links(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        m.save(_state(step), step, is_best=(step == 2))
    assert [p.name for p in m.step_checkpoints()] == ["step-00000003.pt", "step-00000002.pt"]
    assert load_checkpoint_file(m.last_path)["step"] == 3
    assert load_checkpoint_file(m.best_path)["model"]["w"][0] == 2
    # best survives pruning of its step file
    m.save(_state(4), 4)
    assert not m.step_path(2).exists()
    assert load_checkpoint_file(m.best_path)["step"] == 2
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_corrupt_newest_falls_back_with_warning(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=3)
    m.save(_state(1), 1)
    m.save(_state(2), 2)
    newest = m.step_path(2)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    with pytest.warns(UserWarning, match="step-00000002.pt"):
        state, path = m.load_latest_valid()
    assert path == m.step_path(1) and state["step"] == 1


def test_garbage_newest_falls_back(tmp_path):
    m = CheckpointManager(tmp_path)
    m.save(_state(1), 1)
    m.step_path(5).write_bytes(os.urandom(1000))
    with pytest.warns(UserWarning):
        state, _ = m.load_latest_valid()
    assert state["step"] == 1


def test_failed_write_leaves_previous_intact(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path, keep_last=1)
    m.save(_state(1), 1)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(CheckpointSaveError, match="No space left"):
        m.save(_state(2), 2)
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert [p.name for p in m.step_checkpoints()] == ["step-00000001.pt"]
    assert load_checkpoint_file(m.last_path)["step"] == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_not_our_checkpoint_is_refused(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointLoadError, match="missing keys"):
        load_checkpoint_file(p)


class Evil:
    """A class instance: loading it would need arbitrary unpickling."""


def test_pickled_object_is_refused(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"format": ck.CHECKPOINT_FORMAT, "model": {}, "step": 1, "config": Evil()}, p)
    with pytest.raises(CheckpointLoadError, match="cannot load"):
        load_checkpoint_file(p)


def test_no_checkpoint_returns_none(tmp_path):
    assert CheckpointManager(tmp_path / "nothing").load_latest_valid() is None
