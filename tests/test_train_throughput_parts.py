"""The pieces of benchmarks/train_throughput.py: variant names, the step's helpers against
train_ddp.py's, the exact stem re-formulations, the convolution check, peaks, MFU, the
recommendation and the crash/timeout isolation."""

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from benchmarks import conv_check
from benchmarks.conv_check import ConvCall, check_conv_calls, collect_conv_calls
from benchmarks.gpu_peaks import lookup_peaks, math_precision
from benchmarks.stem_variants import apply_stem_variant
from benchmarks.throughput_env import flop_counts
from benchmarks.throughput_inputs import synthetic_targets
from benchmarks.throughput_report import format_table, markdown_table, recommend
from benchmarks.train_throughput import (
    Settings,
    Variant,
    all_variants,
    default_gpu_variants,
    finish_row,
    parse_variant,
    run_isolated,
)
from resnet3d import build_model
from utils.tasks import output_sizes


# ---- variant names ---------------------------------------------------------------------------
def test_variant_names_parse_and_print_canonically():
    v = parse_variant("bf16+bench+cl+s2d+compile@32")
    assert v == Variant(dtype="bf16", channels_last=True, cudnn_benchmark=True, stem="s2d", compile=True, batch_size=32)
    assert v.name == "bf16+cl+bench+s2d+compile@32"
    assert parse_variant(v.name) == v
    assert parse_variant("fp32") == Variant()
    assert parse_variant("fp32+strict").name == "fp32+strict"


def test_best_takes_the_given_variant_and_adds_flags():
    best = Variant(dtype="bf16", channels_last=True)
    assert parse_variant("best+compile", best=best) == Variant(dtype="bf16", channels_last=True, compile=True)
    assert parse_variant("best@32", best=best).batch_size == 32
    assert parse_variant("best+loader", best=None) is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fp8", "must start with"),
        ("bf16+fast", "unknown flag"),
        ("bf16@x", "batch size"),
        ("bf16+loader+cache", "exclude"),
    ],
)
def test_bad_variant_names_are_refused_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_variant(spec)


def test_variant_sets():
    grid = all_variants()
    assert len(grid) == len(set(grid)) == 24
    defaults = default_gpu_variants(16)
    assert defaults[0] == "fp32" and "best+compile" in defaults and "best@32" in defaults
    for spec in defaults + grid:
        parse_variant(spec, best=Variant())


# ---- the step is train_ddp.py's ------------------------------------------------------------------
def test_the_benchmark_has_no_step_of_its_own():
    import benchmarks.data_throughput as data_throughput
    import benchmarks.train_throughput as train_throughput
    import train_ddp

    for module in (train_throughput, data_throughput):
        for copy in ("train_step", "TrainState", "make_optimizer", "move_targets", "backward", "gpu_step_rate"):
            defined_here = getattr(getattr(module, copy, None), "__module__", None) == module.__name__
            assert not defined_here, f"{module.__name__}.{copy}: a copy of the loop's step"
    assert train_throughput.train_ddp.train_step is train_ddp.train_step


def test_synthetic_targets_cover_every_output_with_missing_values():
    targets = synthetic_targets(200, "all", seed=0)
    assert set(targets) == set(output_sizes("all"))
    assert targets["peoplecount"].dtype.kind == "i" and (targets["peoplecount"] == -1).any()
    assert set(targets["peoplecount"][targets["peoplecount"] >= 0]) <= {0, 1, 2, 3, 4}
    assert any(math.isnan(v) for v in targets["distance_score"])
    assert not any(math.isnan(v) for v in targets["distance_confidence"])


def test_flop_count_matches_the_layer_by_layer_count():
    flops = flop_counts(Settings(device="cpu", depth=18, frames=4, size=32))
    assert flops["training_gflops_per_clip"] == pytest.approx(flops["analytic_training_gflops_per_clip"], rel=1e-9)
    assert 0.3 < flops["stem_share_of_forward"] < 0.4


# ---- stems ------------------------------------------------------------------------------------
# (the zero-padded stem, pad4/pad8, is resnet3d's: tests/test_resnet3d_stem.py)
@pytest.mark.parametrize("stem", ["s2d"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 32, 32), (1, 3, 3, 33, 30), (1, 3, 2, 7, 9)])  # odd sizes too
def test_stem_variants_compute_the_same_conv_and_weight_gradient(stem, channels_last, shape):
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.conv1 = torch.nn.Conv3d(3, 16, 7, stride=(1, 2, 2), padding=3, bias=False).double()
    conv = holder.conv1
    x = torch.randn(shape, dtype=torch.double)
    expected = conv(x)
    (grad_expected,) = torch.autograd.grad((expected * expected).sum(), [conv.weight])
    wrapped = apply_stem_variant(holder, stem).conv1
    assert wrapped.weight is conv.weight  # same Parameter: optimizer and state dict unchanged
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    got = wrapped(x)
    (grad_got,) = torch.autograd.grad((got * got).sum(), [conv.weight])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-10, atol=1e-10)


def test_model_with_a_stem_variant_keeps_its_state_dict_and_outputs():
    torch.manual_seed(0)
    reference = build_model(depth=18, dropout=0.0).eval()
    variant = build_model(depth=18, dropout=0.0).eval()
    variant.load_state_dict(reference.state_dict())
    apply_stem_variant(variant, "s2d")
    assert variant.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 3, 2, 32, 32)
    with torch.no_grad():
        expected, got = reference(x), variant(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_unknown_stem_is_refused():
    with pytest.raises(ValueError, match="unknown stem"):
        apply_stem_variant(build_model(depth=18), "pad3")


# ---- convolution check ------------------------------------------------------------------------
SMALL_CALLS = [
    ConvCall((2, 3, 4, 16, 16), (8, 3, 7, 7, 7), (1, 2, 2), (3, 3, 3), (1, 1, 1), 1, input_grad=False),
    ConvCall((2, 8, 2, 8, 8), (8, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, input_grad=True),
]


def test_collect_conv_calls_sees_every_distinct_conv_and_the_stem_first():
    calls = collect_conv_calls(build_model(depth=18), (2, 3, 4, 32, 32))
    assert calls[0].weight_shape == (64, 3, 7, 7, 7) and not calls[0].input_grad
    assert all(c.input_grad for c in calls[1:])
    assert len(calls) == len(set(calls)) >= 8
    s2d = collect_conv_calls(apply_stem_variant(build_model(depth=18), "s2d"), (2, 3, 4, 32, 32))
    assert s2d[0].weight_shape == (64, 16, 7, 4, 4)  # the wrapper's conv, not the original


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_check_passes_correct_kernels(channels_last):
    result = check_conv_calls(SMALL_CALLS, torch.device("cpu"), None, channels_last)
    assert result["calls"] == 2
    assert result["max_rel_error"] < conv_check.TOLERANCES["fp32"]


def test_conv_check_catches_a_kernel_that_is_off(monkeypatch):
    real = F.conv3d

    def off_by_a_bit(x, w, *args):  # a "kernel" 5 % off, only on the path under test (float32)
        out = real(x, w, *args)
        return out * 1.05 if x.dtype == torch.float32 else out

    monkeypatch.setattr(conv_check, "F", types.SimpleNamespace(conv3d=off_by_a_bit))
    result = check_conv_calls(SMALL_CALLS, torch.device("cpu"), None, False)
    assert result["max_rel_error"] == pytest.approx(0.05, rel=1e-3)
    assert result["worst"].startswith("conv ")


# ---- peaks, MFU, report ---------------------------------------------------------------------------
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
    found_label, peaks = lookup_peaks(name)
    assert found_label == label
    assert peaks["bf16"] == peaks["fp16"] > peaks["tf32"] > peaks["fp32"]


def test_unknown_gpu_has_no_peak_and_precisions_follow_tf32():
    assert lookup_peaks("NVIDIA GeForce RTX 4090") is None
    assert math_precision("fp32", tf32=True) == "tf32" and math_precision("fp32", tf32=False) == "fp32"
    assert math_precision("bf16", tf32=True) == "bf16"


def _row(name, clips, status="OK", **fields):
    variant = parse_variant(name)
    row = {
        "clips_per_s": clips,
        "step_ms": 1000.0,
        "first_step_s": 2.0,
        "status": status,
        "conv_check": {"max_rel_error": 1e-3, "tolerance": 4e-2},
    }
    row.update(fields)
    env = {"peaks": {"label": "H100 SXM", "tflops": lookup_peaks("NVIDIA H100 80GB HBM3")[1]}}
    return finish_row(row, variant, None, {"training_gflops_per_clip": 212.64}, env, True, None, 16)


def test_mfu_uses_the_precisions_peak():
    bf16 = _row("bf16+cl", 2000.0)
    assert bf16["mfu"] == pytest.approx(2000 * 212.64e9 / 989.4e12)
    fp32 = _row("fp32", 500.0)
    assert fp32["mfu_precision"] == "tf32" and fp32["mfu"] == pytest.approx(500 * 212.64e9 / 494.7e12)
    assert _row("fp32+strict", 100.0)["mfu_precision"] == "fp32"


def test_a_conv_check_failure_marks_the_row_wrong_and_recommend_skips_it():
    wrong = _row("bf16+cl+bench", 3000.0, conv_check={"max_rel_error": 0.7, "tolerance": 4e-2})
    assert wrong["status"] == "WRONG"
    rows = [
        _row("fp32", 500.0),
        wrong,
        _row("bf16+cl", 2000.0),
        _row("bf16+cl+s2d", 2500.0),
        _row("bf16+cl+loader", 2600.0),
        _row("bf16+cl+compile", 2200.0),
        _row("bf16+cl+cache", 1900.0, data_wait_fraction=0.03, input="frame cache X"),
    ]
    rec = recommend(rows)
    assert rec["fastest"] == "bf16+cl+s2d"  # WRONG and loader rows never win
    assert any("bf16+cl+s2d is 13.6% faster" in n and "worth" in n for n in rec["notes"])
    assert any("bf16+cl+cache: data wait 3.0%" in n and "95% of bf16+cl's" in n for n in rec["notes"])
    assert rec["fastest_train_ddp"] == "bf16+cl+compile"  # no stem option in train_ddp.py yet
    assert rec["train_ddp_flags"] == "--amp bf16 --channels-last on --no-cudnn-benchmark --compile"
    assert any("bf16+cl+bench" in n and "WRONG" in n for n in rec["notes"])
    assert any("torch.compile adds 10.0%" in n for n in rec["notes"])
    table = format_table(rows)
    assert "WRONG" in table and "bf16+cl+s2d" in table
    assert markdown_table(rows).count("\n") == len(rows) + 1


def test_no_correct_variant_means_no_recommendation():
    assert recommend([_row("fp32", 1.0, status="ERROR", error="boom")])["fastest"] is None


# ---- isolation ---------------------------------------------------------------------------------
def test_isolated_child_crash_and_timeout_are_reported(tmp_path):
    out = str(tmp_path / "out.json")
    result, error = run_isolated([sys.executable, "-c", "import os; os.abort()", out], timeout=60)
    assert result is None and error == "CRASHED (SIGABRT)"
    result, error = run_isolated([sys.executable, "-c", "import time; time.sleep(60)", out], timeout=1)
    assert error.startswith("TIMEOUT")
    ok = "import json, sys; json.dump({'clips_per_s': 1.0}, open(sys.argv[-1], 'w'))"
    assert run_isolated([sys.executable, "-c", ok, out], timeout=60) == ({"clips_per_s": 1.0}, None)
