"""Process-group set-up from the torchrun environment, and the few collectives the loop uses.

Works the same under ``torchrun`` (RANK / LOCAL_RANK / WORLD_SIZE set) and as a plain
``python train_ddp.py`` (no process group at all; every collective becomes a no-op).
Also: the check that all nodes of a SLURM job formed one world, each rank's record of where
it ran, and DDP's gradient compression hooks.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when running as a single process without a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from exc


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Initialise from RANK/LOCAL_RANK/WORLD_SIZE; NCCL on GPUs, gloo on CPU.

    ``device``: "auto" (cuda:LOCAL_RANK if CUDA is available, else cpu), "cpu" or "cuda".
    ``timeout_s`` bounds every collective, so a dead peer ends the job instead of hanging it.
    """
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available on this machine")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"rank {rank}: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible; use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")

    backend = None
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {
            "backend": backend,
            "timeout": datetime.timedelta(seconds=timeout_s),
        }
        if use_cuda:
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        refuse_split_world(dist.get_world_size(), rank)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (identity on a single process); returns the tensor."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_rows(
    indices, rows: dict[str, np.ndarray], num_items: int, info: DistInfo
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every rank's rows put at their dataset index, on every rank (an exactly-once gather).

    ``indices``: this rank's dataset indices; ``rows``: arrays whose first axis follows them.
    Returns ``(count, arrays)``: ``count[i]`` = how many rows arrived for item i (1 for every item a
    rank sent when the sampler gave each item to one rank), and full-length arrays with NaN (float)
    or 0 (other dtypes) where no row arrived.  Callers check ``count`` for what they promise.
    """
    shares = all_gather_objects((np.asarray(indices, dtype=np.int64), rows), info)
    count = np.zeros(num_items, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for idx, share in shares:
        np.add.at(count, idx, 1)
        for name, values in share.items():
            values = np.asarray(values)
            if name not in out:
                fill = np.nan if values.dtype.kind == "f" else 0
                out[name] = np.full((num_items, *values.shape[1:]), fill, dtype=values.dtype)
            out[name][idx] = values
    return count, out


def broadcast_buffers(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Overwrite every rank's buffers (BatchNorm running statistics) with rank ``src``'s.

    DDP does the same at the start of each synced forward; doing it before validation and
    before a checkpoint makes every rank hold the model that rank 0 saves.  One broadcast per
    dtype (the buffers are flattened into one tensor), so it costs one small collective.
    """
    if not info.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buf in module.buffers():
        by_dtype.setdefault(buf.dtype, []).append(buf)
    for bufs in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in bufs])
        dist.broadcast(flat, src=src)
        offset = 0
        for b in bufs:
            b.data.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def slurm_world_size(env=os.environ) -> tuple[int, str] | None:
    """The world SLURM launched, when this process is a torchrun worker inside an srun step:
    one torchrun per task, LOCAL_WORLD_SIZE workers each.  None elsewhere (a plain torchrun, a
    torchrun in the batch script itself, which is not an srun step)."""
    tasks, local = env.get("SLURM_STEP_NUM_TASKS"), env.get("LOCAL_WORLD_SIZE")
    if not tasks or not local or not env.get("TORCHELASTIC_RUN_ID"):
        return None
    try:
        return int(tasks) * int(local), f"SLURM_STEP_NUM_TASKS={tasks} torchruns x LOCAL_WORLD_SIZE={local}"
    except ValueError:
        return None


def refuse_split_world(world_size: int, rank: int, env=os.environ) -> None:
    """Stop at once if the process group is not the job SLURM started.  Smaller: the nodes met at
    different rendezvous (the one-node command run on every node, an endpoint each node resolves
    to itself) and formed separate worlds, which would train separate models into one output
    dir.  Larger: processes from outside this job step joined its rendezvous."""
    expected = slurm_world_size(env)
    if expected is None or expected[0] == world_size:
        return
    dist.destroy_process_group()
    if world_size < expected[0]:
        why = (
            "the nodes formed separate worlds instead of meeting at one rendezvous. Launch one torchrun "
            "per node with the same --rdzv-endpoint on the first node (launch/slurm_multi_node.sbatch "
            "does), not a one-node command (--standalone, --nnodes=1) on every node"
        )
    else:
        why = "processes from outside this job step joined its rendezvous (another job with the same endpoint and id?)"
    raise SystemExit(
        f"rank {rank} on {socket.gethostname()}: the process group has {world_size} ranks but SLURM "
        f"started {expected[0]} ({expected[1]}); {why}. Refusing to train."
    )


def record_rank(info: DistInfo, directory: Path) -> None:
    """Append where this rank runs and which rendezvous it joined to DIR/rank-<rank>.jsonl (one
    line per start, so requeued incarnations are kept): the first thing to read when nodes hang
    or fail to meet."""
    if not info.distributed:
        return
    master = (os.environ.get("MASTER_ADDR", ""), _env_int("MASTER_PORT", 0))
    record = {
        "time": time.time(),
        "rank": info.rank,
        "local_rank": info.local_rank,
        "world_size": info.world_size,
        "node_rank": _env_int("GROUP_RANK", -1),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "master_addr": master[0],
        "master_port": master[1],
        "local_addr": _route_source(*master),
        **{
            name.lower(): os.environ.get(name)
            for name in (
                "SLURMD_NODENAME",
                "SLURM_JOB_ID",
                "SLURM_RESTART_COUNT",
                "GLOO_SOCKET_IFNAME",
                "NCCL_SOCKET_IFNAME",
            )
        },
    }
    path = directory / f"rank-{info.rank}.jsonl"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:  # a diagnostic record must never stop training
        print(f"warning: rank {info.rank}: could not write {path}: {exc}", flush=True)


def _route_source(host: str, port: int) -> str | None:
    """This machine's address on the route to host (a UDP connect sends nothing)."""
    if not host:
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port or 9))
            return s.getsockname()[0]
    except OSError:
        return None


def register_grad_compression(ddp_model, compression: str) -> None:
    """--grad-compression: PyTorch's built-in hooks cast each bucket to bf16/fp16, divide it by the
    world size in that precision, all-reduce it and cast back; "none" keeps DDP's fp32 all-reduce."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    hooks = {"none": None, "bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}
    if compression not in hooks:
        raise ValueError(f"--grad-compression {compression!r}: expected one of {', '.join(hooks)}")
    if hooks[compression] is not None:
        ddp_model.register_comm_hook(state=None, hook=hooks[compression])
