"""Count the times Python reads a tensor's value, on CPU tensors too.

On a GPU each such read (``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``.cpu()``,
``.numpy()``) makes the host wait for every queued kernel.  On a CPU nothing waits, so the reads
are counted instead: a ``TorchDispatchMode`` sees the ``aten._local_scalar_dense`` behind
``.item()``/``bool()``/``float()``/``int()``, and the methods that read without dispatching it
(``tolist``, ``cpu``, ``numpy``, ``__array__``) are wrapped for the duration.

``worker`` runs real optimizer steps of train_ddp.py under DDP (gloo) and counts them; the tests
spawn it on two processes.
"""

from __future__ import annotations

import functools
import os
import traceback
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

WARMUP = 12
READ_METHODS = ("tolist", "cpu", "numpy", "__array__")  # the reads the dispatch mode does not see


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...`` then ``reads.count`` and ``reads.where`` (a short stack
    line per read, to say which line read)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.where: list[str] = []
        self._inside = 0  # a wrapped read that calls another read counts once
        self._saved: dict[str, object] = {}

    def _record(self, what: str) -> None:
        self.count += 1
        frames = [f for f in traceback.extract_stack()[:-2] if "host_reads.py" not in f.filename]
        ours = [f for f in frames if "site-packages" not in f.filename and "/lib/python" not in f.filename]
        here = [f for f in (ours[-1:] + frames[-1:]) if f]
        self.where.append(f"{what} at " + " in ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in here))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self._inside:
            self._record("item")
        return func(*args, **(kwargs or {}))

    def _wrap(self, name: str):
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def read(tensor, *args, **kwargs):
            if not self._inside:
                self._record(name)
            self._inside += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._inside -= 1

        self._saved[name] = original
        setattr(torch.Tensor, name, read)

    def __enter__(self):
        for name in READ_METHODS:
            self._wrap(name)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, original)
            self._saved.clear()


# ---- real steps under DDP (gloo), counted -----------------------------------------------------------
def _batch(seed: int, frames: int, size: int) -> dict:
    from benchmarks.train_step import synthetic_targets

    g = torch.Generator().manual_seed(seed)
    targets = synthetic_targets(2, "all", seed)
    return {
        "video": torch.randint(0, 255, (2, 3, frames, size, size), dtype=torch.uint8, generator=g),
        "targets": {k: torch.from_numpy(v) for k, v in targets.items()},
        "indices": torch.arange(2),
        "video_ids": [f"v{seed}a", f"v{seed}b"],
        "bad": [],
    }


def worker(rank: int, world_size: int, port: int, amp: str, steps: int, out_dir: str, result_file: str) -> None:
    """WARMUP steps, then ``steps`` counted ones through train_ddp.train_one_epoch (the loop's
    own body: plan, step, log window), with no log or checkpoint step among them.  The warm-up
    outlasts fp16's first steps, whose gradients overflow until GradScaler has backed its
    scale off (each such step is a rare event that reads, and it is not what is counted)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import train_ddp
    from utils.config import TrainConfig
    from utils.distributed import destroy_distributed, init_distributed
    from utils.tasks import parse_tasks
    from utils.train_state import LogWindow, TrainState

    info = init_distributed("cpu", 120)
    try:
        cfg = TrainConfig(output_dir=out_dir, depth=18, width=8, frames=4, size=32, batch_size=2, dropout=0.0, amp=amp)
        amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        tasks = parse_tasks(cfg.tasks)
        torch.manual_seed(0)
        total = steps + WARMUP
        t = train_ddp.build_training(cfg, tasks, total, total, info, amp_dtype, channels_last=False)
        state = TrainState()
        train_ddp.start_epoch(t, state, cfg, info)
        batches = [_batch(1000 * rank + i, cfg.frames, cfg.size) for i in range(total + 1)]
        data = SimpleNamespace(
            train_loader=batches,
            train_sampler=SimpleNamespace(set_position=lambda epoch, start: None),
            steps_per_epoch=total + 1,  # --max-steps, not the epoch's end, ends each call
        )
        window = LogWindow(tasks, t.loss_fn.task_weights, info.device, log_every=10**6, total_steps=10**6)
        checkpointer = SimpleNamespace(due=lambda step: False)
        preempt = SimpleNamespace(requested=False, received=None)

        cfg.max_steps = WARMUP
        assert train_ddp.train_one_epoch(t, data, state, window, checkpointer, preempt, cfg, info) == "max_steps"
        data.train_loader = batches[state.batch_in_epoch :]  # the sampler would resume here
        cfg.max_steps = total
        with HostReads() as reads:
            stop = train_ddp.train_one_epoch(t, data, state, window, checkpointer, preempt, cfg, info)
        assert stop == "max_steps" and state.step == total, (stop, state.step)
        if rank == 0:
            with open(result_file, "w") as fh:
                fh.write(f"{reads.count}\n" + "\n".join(reads.where) + "\n")
    finally:
        destroy_distributed()
