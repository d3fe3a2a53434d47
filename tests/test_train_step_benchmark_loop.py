"""benchmarks/train_step.py times train_ddp.py's own step: one step through the benchmark and
one through the real loop, from the same weights and the same batch, end bitwise equal."""

import pytest
import torch
from launch_helpers import train

import train_ddp
from benchmarks.train_step import Settings, Variant, bench_step, build_state
from utils.config import TrainConfig
from utils.distributed import DistInfo
from utils.tasks import parse_tasks

pytestmark = pytest.mark.slow

SIZE = dict(depth=18, frames=4, size=32, batch_size=2)


def test_one_benchmark_step_equals_one_step_of_the_loop(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    # the loop: a real train_ddp.py process, one optimizer step, the benchmark's settings
    # (dropout 0, constant LR without warmup, the loop's default optimizer, loss and clipping)
    out = tmp_path / "run"
    # width 64: the benchmark builds the MiT network's width
    res = train(
        out, tiny_demo, width=64, batch_size=2, dropout=0, schedule="constant", warmup_steps=0, max_steps=1, val_every=0
    )
    loop = res.checkpoint()
    assert loop["step"] == 1

    # the benchmark: its own state builder and step, fed the batch the loop trained on first
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the training process (OMP_NUM_THREADS=1): same CPU kernels
    try:
        cfg = TrainConfig(
            videos=str(videos), annotations=str(annotations), output_dir=str(tmp_path / "data"), num_workers=0, **SIZE
        )
        info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
        data = train_ddp.build_data(cfg, parse_tasks(cfg.tasks), info)
        data.train_sampler.set_position(0, 0)
        batch = next(iter(data.train_loader))
        bench = build_state(Variant(dtype="fp32"), Settings(device="cpu", **SIZE), torch.device("cpu"))
        before = {k: v.clone() for k, v in bench.t.model.state_dict().items()}
        result = bench_step(bench, batch)
    finally:
        torch.set_num_threads(threads)
    assert result.applied
    weights = bench.t.model.state_dict()
    assert weights.keys() == loop["model"].keys()
    changed = [k for k in weights if not torch.equal(weights[k], before[k])]
    assert len(changed) > 100  # the step did update the network (weights and BatchNorm statistics)
    different = [k for k in weights if not torch.equal(weights[k], loop["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
