"""benchmarks/scaling_model.py: the ring all-reduce arithmetic, and the tables of docs/launching.md are its output."""

import pytest
from launch_helpers import REPO

from benchmarks.scaling_model import Assumptions, efficiency, step_comm_s, tables

A = Assumptions()


def test_sixteen_gpus_at_100_gbits_by_hand():
    # 8 buckets x 2 x 15 ring steps x 5 us + 2 x 15/16 x 185.0 MB / (12.5 GB/s x 0.9)
    by_hand = 8 * 2 * 15 * 5e-6 + 2 * 15 / 16 * A.params * 4 / (100 / 8 * 1e9 * 0.9)
    assert step_comm_s(A, 16, 100, compressed=False)[0] == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.0320, abs=1e-4)


def test_compression_halves_the_bandwidth_term_not_the_latency():
    latency = 8 * 2 * 63 * 5e-6
    full, half = (step_comm_s(A, 64, 200, c)[0] for c in (False, True))
    assert half - latency == pytest.approx((full - latency) / 2)


def test_one_node_does_not_depend_on_the_nic_and_overlap_only_helps():
    assert len({step_comm_s(A, 8, g, False) for g in (100, 200, 400)}) == 1
    for gpus in (8, 16, 64, 256):
        for batch in (2, 8, 32):
            assert 0 < efficiency(A, gpus, 100, batch, False, False) <= efficiency(A, gpus, 100, batch, False, True) < 1
    assert efficiency(A, 1, 100, 8, False, False) == 1.0


def test_the_docs_show_the_models_tables_as_the_script_prints_them():
    """Every page that shows the tables (README.md or a page of the manual in docs/, wherever the text lives)
    shows what `python -m benchmarks.scaling_model` prints now."""
    printed = [line for line in tables(A, batch=8, target=0.9).splitlines() if line.strip()]
    marker = "All-reduce time per step, ms"  # a line of the script's output that no other text has
    assert marker in printed[2]
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # docs/log/ is history
    showing = [page for page in pages if page.exists() and marker in page.read_text()]
    assert showing, f"no page of README.md or docs/ shows the scaling model's tables ({marker!r})"
    for page in showing:
        text = page.read_text()
        missing = [line for line in printed if line not in text]
        assert not missing, f"{page.relative_to(REPO)} is out of date with the script's output: {missing[:3]}"


def test_the_parameter_count_is_resnet3d_50s():
    from resnet3d import build_model

    assert A.params == sum(p.numel() for p in build_model(depth=50).parameters())
