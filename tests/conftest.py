"""Test-wide settings: thread count (2-core CI machines) and the repo root on sys.path."""

import os

import pytest
import torch

# Tests run on small CI machines; several engineers may also share the cores.
torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
