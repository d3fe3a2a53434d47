"""benchmarks/data_throughput.py runs end to end at a tiny size and prints its tables (no timing asserts)."""

import json

import numpy as np
import torch

from benchmarks import data_throughput as bench
from datasets.video import decode_clip, write_video


def test_tiny_run_prints_every_table(tmp_path, capsys):
    out = tmp_path / "figures.json"
    rc = bench.main(
        [
            "--clips",
            "3",
            "--seconds",
            "1",
            "--fps",
            "8",
            "--frames",
            "4",
            "--size",
            "32",
            "--stored-size",
            "40",
            "--batch-size",
            "2",
            "--max-workers",
            "1",
            "--min-time",
            "0.01",
            "--loader-time",
            "0.01",
            "--loader-formats",
            "pt,raw",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    for heading in (
        "Machine:",
        "Reading, per worker core",
        "Preparation, per core",
        "Loaders -> the same consumer",
        "Loaders -> augmentation on",
    ):
        assert heading in printed
    for row in (
        "| mp4 on the fly",
        "| earlier float32 .pt",
        "| cache raw uint8 (40x40)",
        "| `prepare` (4 frames, one pass, 40x40 uint8)",
        "| earlier: seek to each of 4 frames",
        "| raw-read | cache raw uint8 (40x40) | 1 |",
        "| raw-read-mmap | cache raw uint8 (40x40) | 1 |",
        "| cache-loader | cache raw uint8 (40x40) | 1 |",
        "| dataloader | earlier float32 .pt",
        "| cache-loader | 1 |",
    ):
        assert row in printed, row
    assert "seek and one-pass frames identical: yes" in printed
    assert "cache-loader at 1 reader(s):" in printed and "the DataLoader (target >= 4x)" in printed
    assert "no GPU here" in printed or "ResNet3D-50 trains" in printed
    figures = json.loads(out.read_text())
    assert set(figures["read_per_core"]) == {"mp4", "pt", "raw"}
    assert figures["read_per_core"]["pt"]["bytes_per_clip"] > figures["read_per_core"]["raw"]["bytes_per_clip"]
    rows = {(r["name"], r["input"], r["readers"]) for r in figures["loader"]}
    assert rows == {
        ("raw-read", "raw", 1),
        ("raw-read-mmap", "raw", 1),
        ("cache-loader", "raw", 1),
        ("dataloader", "raw", 1),
        ("dataloader", "pt", 1),
    }
    for r in figures["loader"] + figures["loader_augment"]:
        assert r["clips_per_cpu_s"] > 0 and r["clips_per_s"] > 0, r
    assert [r["name"] for r in figures["loader_augment"]] == ["cache-loader", "dataloader"]


def test_seek_per_frame_returns_the_one_pass_frames(tmp_path):
    """The earlier approach's stand-in decodes the same frames, only slower."""
    frames = np.random.default_rng(0).integers(0, 256, (45, 32, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "v.mp4", frames, 15)
    assert np.array_equal(bench.seek_decode(str(tmp_path / "v.mp4"), 6), decode_clip(tmp_path / "v.mp4", 6)[0])


def test_step_rate_function_measures_the_loops_gpu_step_and_fp32_on_cpu(monkeypatch):
    """The GPU comparison's step rate is train_ddp.py's GPU step (bf16 autocast, channels_last_3d,
    cudnn.benchmark) at the asked size; elsewhere plain fp32.  The timed step itself is
    benchmarks/train_step.py's (tests/test_train_step_benchmark_loop.py ties it to the loop)."""
    from benchmarks import train_step

    asked = []
    monkeypatch.setattr(train_step, "step_rate", lambda variant, s, steps: asked.append((variant, s, steps)) or 7.5)
    for device in ("cuda", "cpu"):
        assert bench.loop_step_rate(torch.device(device), batch_size=2, frames=4, size=32, steps=3, depth=18) == 7.5
    (gpu, gpu_settings, steps), (cpu, cpu_settings, _) = asked
    assert (gpu.dtype, gpu.channels_last, gpu.cudnn_benchmark, steps) == ("bf16", True, True, 3)
    assert cpu == train_step.Variant() and cpu.dtype == "fp32"
    size = (gpu_settings.depth, gpu_settings.frames, gpu_settings.size, gpu_settings.batch_size)
    assert size == (18, 4, 32, 2) and (gpu_settings.device, cpu_settings.device) == ("cuda", "cpu")


def test_hd_rows_run_at_a_tiny_size(tmp_path, capsys):
    """--hd-only: prepare vs seek and every decoding option, with the same-frames check (tiny clips)."""
    from benchmarks.hd_decoding import OPTIONS

    out = tmp_path / "hd.json"
    assert (
        bench.main(
            [
                "--hd-only",
                "--hd-sizes",
                "96x64",
                "--hd-clips",
                "1",
                "--seconds",
                "1",
                "--fps",
                "8",
                "--frames",
                "4",
                "--size",
                "32",
                "--stored-size",
                "24",
                "--min-time",
                "0.01",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "HD footage (1 generated 1 s 8 fps H.264 clip(s) per size" in printed
    assert "| 96x64 | `prepare` (4 frames, one pass, 24x24 uint8) |" in printed
    figures = json.loads(out.read_text())["hd"]["96x64"]
    assert set(figures["options"]) == {name for name, _ in OPTIONS}
    assert all(option["same_frames"] for option in figures["options"].values())
    assert figures["prepare_videos_per_core_s"]["prepare"] > 0 and figures["prepare_videos_per_core_s"]["seek"] > 0
