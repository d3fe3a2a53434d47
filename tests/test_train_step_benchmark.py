"""benchmarks/train_step.py: the --tiny run CI does, a row in a process of its own, the time
budget, the float64 convolution check that marks a wrong kernel WRONG, peaks and MFU.

No timing assertions: the figures only have to be there, numeric and positive."""

import json
import math
import os
import subprocess
import sys
import types
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import benchmarks.train_step as bench
from resnet3d import build_model
from utils.tasks import output_sizes

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_step.py"


def read_rows(path: Path) -> tuple[dict, dict[str, dict]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["kind"] == "environment" and all(r["kind"] == "variant" for r in lines[1:])
    return lines[0], {r["name"]: r for r in lines[1:]}


def test_tiny_run_prints_every_variant_with_numbers_and_writes_json_rows(tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--json", str(out), "--work-dir", str(tmp_path / "work")],
        cwd=tmp_path,  # not the repo root: the script must find its packages by itself
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert list(printed)[1:] == bench.TINY_VARIANTS  # after the header line
    header, rows = read_rows(out)
    assert header["device"] == "cpu" and header["depth"] == 18 and header["training_gflops_per_clip"] > 0
    assert list(rows) == bench.TINY_VARIANTS
    for row in rows.values():
        assert row["status"] == "OK", row
        assert row["clips_per_s"] > 0 and row["step_ms"] > 0 and 0.0 <= row["data_wait"] <= 1.0, row
        assert row["mfu"] is None  # no peak for a CPU
        assert row["conv_check"]["max_rel_error"] <= row["conv_check"]["tolerance"]
        assert row["nonfinite_steps"] == 0
    assert rows["fp32"]["speedup"] == 1.0
    assert rows["bf16"]["conv_check"]["precision"] == "bf16"
    assert rows["fp32+pad8"]["stem_channels"] == 8
    assert "frame cache" in rows["fp32+cache"]["input"]
    assert "fastest correct:" in proc.stdout


def test_a_row_runs_in_a_process_of_its_own_and_a_failing_one_reports_its_error(tmp_path):
    settings = bench.Settings(device="cpu", **{**bench.TINY, "steps": 1}, conv_check=False, work_dir=str(tmp_path))
    spec, out = tmp_path / "spec.json", tmp_path / "out.json"
    cmd = [sys.executable, str(SCRIPT), "--child", str(spec), str(out)]
    spec.write_text(json.dumps({"variant": asdict(bench.Variant(channels_last=True)), "settings": asdict(settings)}))
    result, error = bench.run_isolated(cmd, timeout=240)
    assert error is None, result
    assert result["batch"] == 2 and result["clips_per_s"] > 0

    bad = {**asdict(bench.Variant()), "stem_channels": 2}
    spec.write_text(json.dumps({"variant": bad, "settings": asdict(settings)}))
    result, error = bench.run_isolated(cmd, timeout=240)
    assert "cannot pad 3 input channels down to 2" in error and "Traceback" in result["traceback"]


def test_isolated_crash_and_timeout_cost_one_row(tmp_path):
    out = str(tmp_path / "out.json")
    result, error = bench.run_isolated([sys.executable, "-c", "import os; os.abort()", out], timeout=60)
    assert result is None and error == "CRASHED (SIGABRT)"
    result, error = bench.run_isolated([sys.executable, "-c", "import time; time.sleep(60)", out], timeout=1)
    assert error.startswith("TIMEOUT")
    ok = "import json, sys; json.dump({'clips_per_s': 1.0}, open(sys.argv[-1], 'w'))"
    assert bench.run_isolated([sys.executable, "-c", ok, out], timeout=60) == ({"clips_per_s": 1.0}, None)


def test_the_parent_turns_each_isolated_process_into_a_row(tmp_path):
    """The GPU path on a CPU: a process per row, its figures in the row; a hang is a TIMEOUT row."""
    out = tmp_path / "rows.jsonl"
    common = ["--tiny", "--isolate", "on", "--steps", "1", "--no-conv-check", "--json", str(out)]
    assert bench.main([*common, "--variants", "fp32+cl"]) == 0
    _, rows = read_rows(out)
    assert rows["fp32+cl"]["status"] == "OK" and rows["fp32+cl"]["clips_per_s"] > 0
    assert bench.main([*common, "--variants", "fp32", "--variant-timeout", "1"]) == 0
    _, rows = read_rows(out)
    assert rows["fp32"]["status"] == "TIMEOUT" and rows["fp32"]["error"] == "TIMEOUT after 1 s"


def test_rows_past_the_time_budget_are_skipped_and_still_written(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--tiny", "--variants", "fp32,bf16+cl", "--time-budget", "1", "--json", str(out)]) == 0
    _, rows = read_rows(out)
    assert [(r["name"], r["status"]) for r in rows.values()] == [("fp32", "SKIPPED"), ("bf16+cl", "SKIPPED")]
    assert "time budget" in rows["fp32"]["error"]
    assert "| bf16+cl |" in capsys.readouterr().out


# ---- variants --------------------------------------------------------------------------------
def test_variant_names_parse_and_print_canonically():
    v = bench.parse_variant("bf16+compile+bench+cache+cl+pad8@32")
    assert v == bench.Variant(
        dtype="bf16", channels_last=True, cudnn_benchmark=True, compile=True, stem_channels=8, cache=True, batch_size=32
    )
    assert v.name == "bf16+cl+bench+compile+pad8+cache@32"
    assert bench.parse_variant(v.name) == v
    assert bench.parse_variant("fp32") == bench.Variant()
    for spec in bench.default_gpu_variants(16) + bench.TINY_VARIANTS:
        assert bench.parse_variant(spec).name == spec


@pytest.mark.parametrize(
    "spec, message", [("fp8", "must start with"), ("bf16+fast", "unknown flag"), ("bf16@x", "batch size")]
)
def test_bad_variant_names_are_refused_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        bench.parse_variant(spec)


def test_the_benchmark_has_no_step_of_its_own():
    import benchmarks.data_throughput as data_throughput
    import train_ddp

    for module in (bench, data_throughput):
        for name in ("train_step", "plan_step", "TrainState", "build_optimizer", "model_input"):
            assert getattr(getattr(module, name, None), "__module__", None) != module.__name__, name
    assert bench.train_ddp.train_step is train_ddp.train_step


def test_the_fastest_rows_flags_are_train_ddp_options_that_run_it():
    from utils.config import parse_config

    for spec, expected in (
        ("fp32", dict(amp="off", channels_last="off", cudnn_benchmark=False, compile=False)),
        ("bf16+cl+bench+compile", dict(amp="bf16", channels_last="on", cudnn_benchmark=True, compile=True)),
    ):
        cfg, _ = parse_config(bench.train_ddp_flags(asdict(bench.parse_variant(spec))).split())
        assert {k: getattr(cfg, k) for k in expected} == expected, spec


def test_synthetic_targets_cover_every_output_with_missing_values():
    targets = bench.synthetic_targets(200, "all", seed=0)
    assert set(targets) == set(output_sizes("all"))
    assert targets["peoplecount"].dtype.kind == "i" and (targets["peoplecount"] == -1).any()
    assert any(math.isnan(v) for v in targets["distance_score"])
    assert not any(math.isnan(v) for v in targets["distance_confidence"])


# ---- the convolution check ---------------------------------------------------------------------
SMALL_CALLS = [
    bench.ConvCall((2, 3, 4, 16, 16), (8, 3, 7, 7, 7), (1, 2, 2), (3, 3, 3), input_grad=False),
    bench.ConvCall((2, 8, 2, 8, 8), (8, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1), input_grad=True),
]


def test_collect_conv_calls_sees_every_distinct_conv_and_the_stem_first():
    calls = bench.collect_conv_calls(build_model(depth=18), (2, 3, 4, 32, 32))
    assert calls[0].weight_shape == (64, 3, 7, 7, 7) and not calls[0].input_grad
    assert all(c.input_grad for c in calls[1:])
    assert len(calls) == len(set(calls)) >= 8
    padded = bench.collect_conv_calls(build_model(depth=18, stem_channels=8), (2, 3, 4, 32, 32))
    assert padded[0].weight_shape == (64, 8, 7, 7, 7)  # the kernel the padded stem really runs


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_check_passes_correct_kernels(channels_last):
    result = bench.check_conv_calls(SMALL_CALLS, torch.device("cpu"), None, channels_last)
    assert result["calls"] == 2 and result["max_rel_error"] < bench.TOLERANCES["fp32"]


def test_a_kernel_that_is_off_marks_the_row_wrong(monkeypatch):
    real = F.conv3d

    def off_by_a_bit(x, w, *args):  # a "kernel" 5 % off, only on the path under test (float32)
        out = real(x, w, *args)
        return out * 1.05 if x.dtype == torch.float32 else out

    monkeypatch.setattr(bench, "F", types.SimpleNamespace(conv3d=off_by_a_bit))
    check = bench.check_conv_calls(SMALL_CALLS, torch.device("cpu"), None, False)
    assert check["max_rel_error"] == pytest.approx(0.05, rel=1e-3) and check["worst"].startswith("conv ")
    row = {"clips_per_s": 10.0, "step_ms": 200.0, "conv_check": {**check, "tolerance": bench.TOLERANCES["tf32"]}}
    assert bench.finish_row(row, bench.Variant(), 1.0, None, True, None)["status"] == "WRONG"
    row["conv_check"]["max_rel_error"] = math.nan  # a NaN is no pass either
    assert bench.finish_row(row, bench.Variant(), 1.0, None, True, None)["status"] == "WRONG"
    row["conv_check"]["max_rel_error"] = 1e-4
    assert bench.finish_row(row, bench.Variant(), 1.0, None, True, None)["status"] == "OK"


# ---- peaks and MFU --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, label",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA GH200 480GB", "GH200"),
    ],
)
def test_gpu_peak_lookup(name, label):
    found_label, peaks = bench.lookup_peaks(name)
    assert found_label == label and peaks["bf16"] == peaks["fp16"] > peaks["tf32"] > peaks["fp32"]


def test_mfu_uses_the_peak_of_the_precision_the_math_runs_in():
    assert bench.lookup_peaks("NVIDIA GeForce RTX 4090") is None
    peaks = bench.lookup_peaks("NVIDIA H100 80GB HBM3")[1]
    row = {"clips_per_s": 2000.0, "step_ms": 8.0, "conv_check": {"max_rel_error": 0.0, "tolerance": 0.04}}
    bf16 = bench.finish_row(dict(row), bench.parse_variant("bf16+cl"), 212.64, peaks, True, None)
    assert bf16["mfu"] == pytest.approx(2000 * 212.64e9 / 989.4e12)
    fp32 = bench.finish_row(dict(row), bench.Variant(), 212.64, peaks, True, None)
    assert fp32["mfu_precision"] == "tf32" and fp32["mfu"] == pytest.approx(2000 * 212.64e9 / 494.7e12)
    assert bench.finish_row(dict(row), bench.Variant(), 212.64, peaks, False, None)["mfu_precision"] == "fp32"
