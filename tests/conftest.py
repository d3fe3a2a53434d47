"""Test-wide settings: thread count (2-core CI machines) and the repo root on sys.path."""

import os

# OpenMP threads that busy-wait make CPU ops 50-70x slower when another process shares the
# cores (measured on the 2-core CI machine); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests run on small CI machines; several engineers may also share the cores.
torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
