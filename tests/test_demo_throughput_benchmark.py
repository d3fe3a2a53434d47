"""benchmarks/demo_throughput.py runs both ways of reading the demo and reports what each launch measured."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.demo_throughput import main  # noqa: E402

pytestmark = pytest.mark.slow


def test_both_ways_are_launched_and_their_ratio_printed(tmp_path, capsys):
    tiny = ["--demo-dir", str(tmp_path / "demo"), "--demo-videos", "12", "--size", "32", "--width", "8"]
    assert main(["--steps", "2", "--repeats", "1", "--nproc", "1", "--", *tiny, "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    rates = {way: float(r) for way, r in re.findall(r"^(frame cache|decoding) +launch 1: ([0-9.]+) clips/s", out, re.M)}
    assert set(rates) == {"frame cache", "decoding"} and all(r > 0 for r in rates.values()), out
    ratio = float(re.search(r"frame cache / decoding: ([0-9.]+)x", out).group(1))
    assert ratio == pytest.approx(rates["frame cache"] / rates["decoding"], abs=0.01), out
    assert (tmp_path / "demo" / "frame_cache_8x64").is_dir()  # the cached launches read the demo's cache
