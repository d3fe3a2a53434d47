#!/usr/bin/env python3
"""The scaling model of docs/launching.md, on paper: data-parallel ResNet3D-50 (16 x 224^2)
on 8 / 16 / 64 / 256 GPUs, 8 GPUs per node.  Nothing here is measured; every input is an
assumption printed with the tables and settable by flag.

    python -m benchmarks.scaling_model                       # the tables in docs/launching.md
    python -m benchmarks.scaling_model --clips-per-s 400 --nics-per-node 8

The model (alpha-beta, ring all-reduce, as NCCL's ring algorithm does it):
- gradient bytes per step S = parameters x 4 (fp32) or x 2 (--grad-compression bf16/fp16);
- a ring over N GPUs moves 2 (N-1)/N x S through every link of the ring and takes 2 (N-1)
  latency-bound steps per all-reduce; DDP all-reduces one bucket (--ddp-bucket-mb, counted in
  fp32 bytes; compression halves the bytes, not the bucket count) at a time, so
  T(N) = buckets x 2 (N-1) x alpha + 2 (N-1)/N x S / B,
  with B the slowest link of the ring: NVLink inside one node, the node's NIC(s) once the ring
  leaves it (one ring per NIC, so k NICs give k x the bandwidth);
- a step computes for t = per-GPU batch / clips-per-s; backward is 2/3 of it (twice the
  forward's FLOPs).  Without overlap the step takes t + T; with DDP's overlap the buckets are
  reduced while backward still runs and only max(T - t_backward, T_last bucket) is exposed;
- scaling efficiency = t / (t + exposed communication): the fraction of the ideal N x speed-up.
Not modelled: NCCL's tree algorithm (lower latency at 256 GPUs), congestion, stragglers, the
data loader, the optimizer step, BatchNorm sync (off by default).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GPUS_PER_NODE = 8
GPU_COUNTS = (8, 16, 64, 256)
NIC_GBITS = (100, 200, 400)


@dataclass(frozen=True)
class Assumptions:
    params: int = 46_248_152  # ResNet3D-50 with the multi-task head (resnet3d.build_model(depth=50))
    clips_per_s: float = 150.0  # per GPU, bf16 autocast: an assumption (no GPU measured yet)
    nvlink_gbytes: float = 200.0  # achieved ring bandwidth inside a node, GB/s (A100-class NVLink)
    nic_efficiency: float = 0.9  # achieved fraction of a NIC's line rate
    nics_per_node: int = 1
    alpha_us: float = 5.0  # latency per ring step
    bucket_mb: float = 25.0  # DDP's default bucket


def gradient_bytes(a: Assumptions, compressed: bool) -> float:
    return a.params * (2 if compressed else 4)


def link_bytes_per_s(a: Assumptions, gpus: int, nic_gbits: float) -> float:
    """The ring's slowest link: NVLink on one node, else the node's NICs."""
    if gpus <= GPUS_PER_NODE:
        return a.nvlink_gbytes * 1e9
    return nic_gbits / 8 * 1e9 * a.nic_efficiency * a.nics_per_node


def allreduce_s(a: Assumptions, gpus: int, nic_gbits: float, nbytes: float, buckets: int) -> float:
    """Ring all-reduce of nbytes in `buckets` sequential pieces over `gpus` GPUs."""
    if gpus == 1:
        return 0.0
    latency = buckets * 2 * (gpus - 1) * a.alpha_us * 1e-6
    return latency + 2 * (gpus - 1) / gpus * nbytes / link_bytes_per_s(a, gpus, nic_gbits)


def step_comm_s(a: Assumptions, gpus: int, nic_gbits: float, compressed: bool) -> tuple[float, float]:
    """(all-reduce time of the whole gradient, of its last bucket) per optimizer step."""
    full = gradient_bytes(a, compressed)
    buckets = math.ceil(a.params * 4 / (a.bucket_mb * 2**20))
    last = full / buckets
    return allreduce_s(a, gpus, nic_gbits, full, buckets), allreduce_s(a, gpus, nic_gbits, last, 1)


def efficiency(a: Assumptions, gpus: int, nic_gbits: float, batch: int, compressed: bool, overlap: bool) -> float:
    compute = batch / a.clips_per_s
    comm, last = step_comm_s(a, gpus, nic_gbits, compressed)
    exposed = max(comm - 2 / 3 * compute, last) if overlap else comm
    return compute / (compute + exposed)


def smallest_batch(
    a: Assumptions, gpus: int, nic_gbits: float, compressed: bool, target: float, overlap: bool = True, limit: int = 256
) -> int | None:
    """The smallest per-GPU batch whose scaling efficiency reaches target (None up to limit)."""
    for batch in range(1, limit + 1):
        if efficiency(a, gpus, nic_gbits, batch, compressed, overlap) >= target:
            return batch
    return None


def tables(a: Assumptions, batch: int, target: float) -> str:
    out = []
    mb = gradient_bytes(a, False) / 1e6
    out.append(
        f"Gradient per step: {a.params / 1e6:.1f} M parameters = {mb:.1f} MB fp32, "
        f"{mb / 2:.1f} MB bf16/fp16; {math.ceil(a.params * 4 / (a.bucket_mb * 2**20))} DDP buckets "
        f"of {a.bucket_mb:g} MiB."
    )
    out.append(
        f"Assumed: {a.clips_per_s:g} clips/s per GPU, NVLink ring {a.nvlink_gbytes:g} GB/s, "
        f"{a.nics_per_node} NIC(s) per node at {a.nic_efficiency:.0%} of line rate, "
        f"{a.alpha_us:g} us per ring step, {GPUS_PER_NODE} GPUs per node.\n"
    )

    def nic_label(g):
        return f"{g} Gb/s"

    out.append("All-reduce time per step, ms (fp32 / bf16 or fp16):\n")
    out.append("| GPUs (nodes) | " + " | ".join(nic_label(g) for g in NIC_GBITS) + " |")
    out.append("|---|" + "---|" * len(NIC_GBITS))
    for n in GPU_COUNTS:
        cells = []
        for g in NIC_GBITS:
            full, _ = step_comm_s(a, n, g, False)
            half, _ = step_comm_s(a, n, g, True)
            cells.append(f"{full * 1e3:.1f} / {half * 1e3:.1f}")
        where = "NVLink only" if n <= GPUS_PER_NODE else f"{n // GPUS_PER_NODE} nodes"
        out.append(f"| {n} ({where}) | " + " | ".join(cells) + " |")

    compute_ms = batch / a.clips_per_s * 1e3
    out.append(
        f"\nScaling efficiency at per-GPU batch {batch} (compute {compute_ms:.0f} ms per step), "
        "without / with overlap of the all-reduce and backward:\n"
    )
    out.append("| GPUs | gradients | " + " | ".join(nic_label(g) for g in NIC_GBITS) + " |")
    out.append("|---|---|" + "---|" * len(NIC_GBITS))
    for n in GPU_COUNTS:
        for compressed in (False, True):
            cells = [
                f"{efficiency(a, n, g, batch, compressed, False):.0%} / "
                f"{efficiency(a, n, g, batch, compressed, True):.0%}"
                for g in NIC_GBITS
            ]
            out.append(f"| {n} | {'bf16' if compressed else 'fp32'} | " + " | ".join(cells) + " |")

    out.append(f"\nSmallest per-GPU batch for {target:.0%} efficiency with overlap (fp32 / bf16):\n")
    out.append("| GPUs | " + " | ".join(nic_label(g) for g in NIC_GBITS) + " |")
    out.append("|---|" + "---|" * len(NIC_GBITS))
    for n in GPU_COUNTS:
        cells = []
        for g in NIC_GBITS:
            pair = [smallest_batch(a, n, g, c, target) for c in (False, True)]
            cells.append(" / ".join("> 256" if b is None else str(b) for b in pair))
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    d = Assumptions()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips-per-s", type=float, default=d.clips_per_s, help="training clips/s of one GPU")
    p.add_argument("--batch", type=int, default=8, help="per-GPU batch for the efficiency table")
    p.add_argument("--target", type=float, default=0.9, help="efficiency the batch table aims for")
    p.add_argument("--nvlink-gbytes", type=float, default=d.nvlink_gbytes)
    p.add_argument("--nics-per-node", type=int, default=d.nics_per_node)
    p.add_argument("--nic-efficiency", type=float, default=d.nic_efficiency)
    p.add_argument("--alpha-us", type=float, default=d.alpha_us)
    p.add_argument("--bucket-mb", type=float, default=d.bucket_mb)
    args = p.parse_args(argv)
    a = Assumptions(
        clips_per_s=args.clips_per_s,
        nvlink_gbytes=args.nvlink_gbytes,
        nics_per_node=args.nics_per_node,
        nic_efficiency=args.nic_efficiency,
        alpha_us=args.alpha_us,
        bucket_mb=args.bucket_mb,
    )
    print(tables(a, args.batch, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
