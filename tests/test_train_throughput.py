"""benchmarks/train_throughput.py end to end at --tiny size on the CPU (what CI runs).

No timing assertions: the figures only have to be there, numeric and positive."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.train_throughput import TINY_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


def run_benchmark(tmp_path, *extra):
    out_json, out_md = tmp_path / "tp.json", tmp_path / "tp.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
            "--video-dir",
            str(tmp_path / "videos"),
            *extra,
        ],
        cwd=tmp_path,  # not the repo root: the script must find its packages by itself
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out_json.read_text()), out_md.read_text()


def table_rows(stdout):
    """variant name -> cells of the printed table (the lines after the dashed rule)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant") and "clips/s" in line)
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def test_tiny_run_prints_every_variant_with_numbers_and_writes_json_and_markdown(tmp_path):
    stdout, report, markdown = run_benchmark(tmp_path)
    rows = table_rows(stdout)
    assert list(rows) == TINY_VARIANTS
    for name, cells in rows.items():
        assert float(cells[1]) > 0 and float(cells[2]) > 0, (name, cells)  # clips/s, step ms
        assert cells[-1] == "OK", (name, cells)
    assert "fastest correct:" in stdout

    env = report["environment"]
    for key in ("date", "torch", "cuda", "cudnn", "cudnn_enabled", "device", "python"):
        assert key in env
    assert env["device"] == "cpu"
    assert report["flops"]["training_gflops_per_clip"] > 0
    assert report["settings"]["depth"] == 18 and report["settings"]["batch_size"] == 2
    by_name = {r["name"]: r for r in report["variants"]}
    assert list(by_name) == TINY_VARIANTS
    for row in by_name.values():
        assert row["clips_per_s"] > 0 and row["step_ms"] > 0 and row["mfu"] is None  # no peak on a CPU
        assert row["conv_check"]["max_rel_error"] <= row["conv_check"]["tolerance"]
    assert by_name["fp32"]["speedup_vs_baseline"] == 1.0
    assert by_name["fp32"]["logits_rel_diff"] == 0.0  # the reference is the same fp32 CPU step
    for name, kind in (("fp32+loader", "decoded"), ("fp32+cache", "frame cache")):
        row = by_name[name]
        assert 0.0 <= row["data_wait_fraction"] <= 1.0 and kind in row["input"], row
    assert by_name["bf16"]["conv_check"]["precision"] == "bf16"
    assert report["recommendation"]["fastest"] in TINY_VARIANTS

    assert "| variant | clips/s |" in markdown
    for name in TINY_VARIANTS:
        assert f"| {name} |" in markdown


def test_a_variant_runs_in_a_child_process_and_reports_back(tmp_path):
    """The GPU path: the parent writes a spec, the child (this script with --child) writes a row."""
    from dataclasses import asdict

    from benchmarks.train_throughput import TINY, Settings, Variant, run_isolated

    settings = Settings(
        device="cpu",
        **{k: v for k, v in TINY.items() if k != "steps"},
        steps=1,
        conv_check=False,
        video_dir=str(tmp_path),
    )
    spec, out = tmp_path / "spec.json", tmp_path / "out.json"
    spec.write_text(json.dumps({"variant": asdict(Variant(channels_last=True)), "settings": asdict(settings)}))
    result, error = run_isolated([sys.executable, str(SCRIPT), "--child", str(spec), str(out)], timeout=240)
    assert error is None, result
    assert result["batch"] == 2 and result["clips_per_s"] > 0 and len(result["first_step"]["logits"]) > 0

    spec.write_text(json.dumps({"variant": {**asdict(Variant()), "stem": "pad3"}, "settings": asdict(settings)}))
    result, error = run_isolated([sys.executable, str(SCRIPT), "--child", str(spec), str(out)], timeout=240)
    assert "unknown stem variant 'pad3'" in error and "Traceback" in result["traceback"]
