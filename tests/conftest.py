"""Test-wide settings: thread count (2-core CI machines) and the repo root on sys.path."""

import inspect
import os
import re

# OpenMP threads that busy-wait make CPU ops many times slower when another process shares the
# cores; must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests run on small CI machines; several engineers may also share the cores.
torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A small demo dataset (real H.264 clips + annotations.csv), generated once per session."""
    from datasets import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    videos, annotations = ensure_demo_dataset(root / "demo", num_videos=48, seed=0)
    return videos, annotations


@pytest.fixture(scope="session")
def web_faults(tmp_path_factory):
    """One generated file per fault of real web footage (see tests/web_video_files.py), made once."""
    from web_video_files import web_faults as make

    return make(tmp_path_factory.mktemp("web_faults"))


# A test that starts torchrun, SLURM or a train_ddp.py process (itself or through a fixture) is not
# a fast test: it must carry the mark that keeps it out of `-m "not slow and not slurm"`.
_LAUNCHES = {
    "slurm": re.compile(r"LocalSlurm\("),
    "slow": re.compile(
        r"(?<![.\w])(train|run_train|train_command)\(|torch\.distributed\.run|nproc_per_node|nproc=[^1]|TrainRun\("
    ),
}


def _sources(item) -> str:
    funcs = [getattr(item, "function", None)]
    for defs in getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).values():
        funcs += [d.func for d in defs if getattr(d, "baseid", "").startswith(item.nodeid.split("::")[0])]
    texts = []
    for func in funcs:
        try:
            texts.append(inspect.getsource(func))
        except (OSError, TypeError):
            pass
    return "\n".join(texts)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    unmarked = []
    for item in items:
        source = _sources(item)
        for mark, pattern in _LAUNCHES.items():
            if pattern.search(source) and item.get_closest_marker(mark) is None:
                unmarked.append(f"{item.nodeid} (needs @pytest.mark.{mark})")
    if unmarked:
        raise pytest.UsageError("tests that launch processes without their mark:\n  " + "\n  ".join(unmarked))
