"""utils/atomic.py: a target is complete or untouched, the temporary file never stays behind,
the data is fsync'ed before the rename; utils/precision.resolve_amp."""

import os

import pytest
import torch

from utils import atomic
from utils.precision import amp_name, resolve_amp


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    def half_then_fail(tmp):
        tmp.write_text("new, but only ha")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic.atomic_write(target, half_then_fail)
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target, "w") as fh:
            fh.write("also half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic.atomic_write_text(tmp_path / "a.json", "{}\n")
    assert events[:2] == ["fsync", "replace"] and events[-1] == "fsync"  # file, rename, then the directory
    events.clear()
    atomic.atomic_write(tmp_path / "b.mp4", lambda tmp: tmp.write_bytes(b"x"))
    assert events[:2] == ["fsync", "replace"] and events[-1] == "fsync"
    assert (tmp_path / "a.json").read_text() == "{}\n" and (tmp_path / "b.mp4").read_bytes() == b"x"


def test_the_temporary_name_keeps_the_suffix_for_format_guessing_writers(tmp_path):
    tmp = atomic.temporary_path(tmp_path / "clip.mp4")
    assert tmp.parent == tmp_path and tmp.name.startswith(".clip.mp4.") and tmp.suffix == ".mp4"


def test_resolve_amp_is_the_same_everywhere_and_an_explicit_bf16_on_cpu_turns_onednn_off(capsys):
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    assert resolve_amp("fp16", cpu) is torch.float16
    was = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = True
        assert resolve_amp("bf16", cpu) is torch.bfloat16
        assert not torch.backends.mkldnn.enabled and "oneDNN disabled" in capsys.readouterr().out
    finally:
        torch.backends.mkldnn.enabled = was
    assert [amp_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["off", "bf16", "fp16"]
    with pytest.raises(ValueError, match="--amp"):
        resolve_amp("fp8", cpu)
