"""A seeded sparse random projection to a fixed number of dimensions (``--project-dim D``).

Unpooled maps are huge (ResNet3D-50 ``layer1`` at 16 x 224 px: 256 x 8 x 56 x 56 = 6.4 M values
per video); like deepjuice and Net2Brain we reduce them by a random projection, which keeps
pairwise distances (so RDMs and linear encoding models) up to the Johnson-Lindenstrauss
tolerance.  The matrix R (d x D) is a sparse JL transform (Kane & Nelson 2014, "block"
construction): the D outputs are cut into s = 4 blocks, and every input dimension feeds one
output in each block, chosen uniformly, with a random sign, scaled by 1/sqrt(s).  Then
E ||x R||^2 = ||x||^2 exactly and the variance equals that of a dense Gaussian projection
(2 ||x||^4 / D, less the fourth-power term), while applying R costs 4 multiply-adds per input
value instead of D.

R is never stored dense: it is generated in chunks of ``CHUNK`` input dimensions, each from its
own seed (``seed``, chunk index), on the CPU (so the same seed gives the same matrix on any
device and for any number of processes), and kept on the device as index/sign vectors
(5 bytes per input dimension per block: 20 bytes x d, 128 MB for that ``layer1``).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor

NONZEROS_PER_INPUT = 4
CHUNK = 1 << 16


def layer_seed(seed: int, layer: str) -> int:
    """A layer's own seed, so two layers' projections are independent."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(layer.encode())]).generate_state(1)[0])


class SparseRandomProjection:
    """``x (N, in_dim) -> x R (N, out_dim)`` for a fixed seeded sparse R (see the module doc)."""

    def __init__(self, in_dim: int, out_dim: int, seed: int, device: torch.device | str = "cpu") -> None:
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"projection dimensions must be >= 1, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, int(seed)
        self.device = torch.device(device)
        self.blocks = min(NONZEROS_PER_INPUT, out_dim)
        self.scale = 1.0 / math.sqrt(self.blocks)
        edges = [round(b * out_dim / self.blocks) for b in range(self.blocks + 1)]
        self._block_starts = edges[:-1]
        self._block_sizes = [b - a for a, b in zip(edges[:-1], edges[1:])]
        self._chunks: list[tuple[Tensor, Tensor]] = []
        for k in range(math.ceil(in_dim / CHUNK)):
            rows, signs = self._generate(k, min(CHUNK, in_dim - k * CHUNK))
            self._chunks.append((rows.to(self.device, torch.int32), signs.to(self.device, torch.int8)))

    def _generate(self, k: int, width: int) -> tuple[Tensor, Tensor]:
        """Chunk ``k``'s (blocks, width) output indices and +-1 signs, from its own seed."""
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
        rows = torch.stack(
            [
                start + torch.randint(0, size, (width,), generator=g)
                for start, size in zip(self._block_starts, self._block_sizes)
            ]
        )
        signs = torch.randint(0, 2, (self.blocks, width), generator=g, dtype=torch.int8) * 2 - 1
        return rows, signs

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (N, {self.in_dim}) input, got {tuple(x.shape)}")
        x = x.float()
        out = x.new_zeros(x.shape[0], self.out_dim)
        for k, (rows, signs) in enumerate(self._chunks):
            part = x[:, k * CHUNK : k * CHUNK + rows.shape[1]]
            for b in range(self.blocks):
                out.index_add_(1, rows[b], part * signs[b])
        return out.mul_(self.scale)

    def dense(self) -> Tensor:
        """R as a dense (in_dim, out_dim) float32 matrix (for checks on small sizes)."""
        return self(torch.eye(self.in_dim, device=self.device))
