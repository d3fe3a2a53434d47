"""Untrusted checkpoints: refused unless tensors-only; the explicit one-off conversion."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet3d import UnreadableCheckpointError, UnsafeCheckpointError, build_model, load_pretrained, read_checkpoint
from resnet3d.convert_checkpoint import convert_checkpoint
from resnet3d.convert_checkpoint import main as convert_main

REPO = Path(__file__).resolve().parents[1]


class TrainingArgs:
    """A custom class, as old training scripts pickled into their checkpoints."""

    def __init__(self, lr):
        self.lr = lr


class WritesAFile:
    """Unpickling this runs ``open(path, "w")``: the kind of side effect weights_only must prevent."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_a_custom_object_is_refused_with_the_conversion_command(tmp_path):
    path = tmp_path / "old run.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "args": TrainingArgs(0.1)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_pretrained(build_model(depth=18), path)
    message = str(info.value)
    assert str(path) in message and "refused to load" in message
    assert "weights_only=True" in message
    assert "TrainingArgs" in message  # the underlying reason: which class it would have to import
    expected_command = (
        f"python -m resnet3d.convert_checkpoint '{path}' '{tmp_path / 'old run.tensors.pt'}' --trust-this-file"
    )
    assert expected_command in message


def test_reading_never_executes_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": WritesAFile(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="open was not an allowed global"):
        read_checkpoint(path)
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_is_named(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="notes.pt: not a readable torch checkpoint"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pt")


def test_conversion_round_trip_keeps_the_weights_and_loads_safely(tmp_path):
    torch.manual_seed(5)
    source = build_model(depth=50).eval()
    unsafe = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{n}": t for n, t in source.state_dict().items()},
            "hyper_parameters": TrainingArgs(0.01),
            "epoch": 3,
        },
        unsafe,
    )
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(unsafe)
    with pytest.raises(PermissionError, match="trust_this_file"):
        convert_checkpoint(unsafe, tmp_path / "x.pt")

    safe = tmp_path / "lightning.tensors.pt"
    notes = convert_checkpoint(unsafe, safe, trust_this_file=True)
    assert notes == [f"checkpoint['hyper_parameters']: dropped ({__name__}.TrainingArgs)"]
    assert read_checkpoint(safe)["epoch"] == 3
    model = build_model(depth=50)
    report = load_pretrained(model, safe)
    assert report.kind == "lightning" and report.heads_initialized == []
    x = torch.randn(2, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x))
    with pytest.raises(FileExistsError):
        convert_checkpoint(unsafe, safe, trust_this_file=True)


def test_conversion_turns_namespaces_modules_and_numpy_into_plain_values(tmp_path):
    import numpy as np

    linear = torch.nn.Linear(2, 3)
    unsafe = tmp_path / "mixed.pt"
    torch.save(
        {
            "args": argparse.Namespace(lr=0.1, tasks=["a"]),
            "net": linear,
            "hist": np.arange(3),
            "step": np.int64(7),
            "fn": len,
        },
        unsafe,
    )
    notes = convert_checkpoint(unsafe, tmp_path / "out.pt", trust_this_file=True)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["args"] == {"lr": 0.1, "tasks": ["a"]}
    assert torch.equal(out["net"]["weight"], linear.weight.detach())
    assert torch.equal(out["hist"], torch.arange(3)) and out["step"] == 7
    assert "fn" not in out and "checkpoint['fn']: dropped (builtins.builtin_function_or_method)" in notes


def test_command_line_requires_the_trust_flag_and_converts(tmp_path, capsys):
    unsafe = tmp_path / "args.pth.tar"
    torch.save({"state_dict": {"w": torch.arange(4.0)}, "args": argparse.Namespace(arch="resnet3d50")}, unsafe)
    out = tmp_path / "args.tensors.pt"
    with pytest.raises(SystemExit) as info:
        convert_main([str(unsafe), str(out)])
    assert info.value.code == 2 and "--trust-this-file" in capsys.readouterr().err
    assert not out.exists()

    done = subprocess.run(
        [sys.executable, "-m", "resnet3d.convert_checkpoint", str(unsafe), str(out), "--trust-this-file"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
    )
    assert done.returncode == 0, done.stderr
    assert "argparse.Namespace -> dict" in done.stdout and "weights_only=True" in done.stdout
    converted = read_checkpoint(out)
    assert converted["args"] == {"arch": "resnet3d50"}
    assert torch.equal(converted["state_dict"]["w"], torch.arange(4.0))
