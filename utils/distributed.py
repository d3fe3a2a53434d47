"""Process-group set-up from the torchrun environment, and the few collectives the loop uses.

Works the same under ``torchrun`` (RANK / LOCAL_RANK / WORLD_SIZE set) and as a plain
``python train_ddp.py`` (no process group at all; every collective becomes a no-op).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

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
            b.data.copy_(flat[offset:offset + b.numel()].view_as(b))
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
