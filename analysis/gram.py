"""Video x video Gram matrices of one layer, accumulated from column chunks in one pass.

With N videos and D feature columns (D up to millions), everything the encoding and RSA
analyses need fits in N x N matrices:

* ``fold_kernels[f] = Z_f Z_f^T``, where ``Z_f`` is the layer standardised column by column
  with the mean and standard deviation of the videos *outside* fold f only (its training
  videos).  Test videos are transformed with those training statistics, never fitted on.
  Columns constant over the training videos get weight 0.
* ``raw = X X^T`` and ``row_sums = X 1``: the per-video correlation matrix of the raw features
  (for RDMs) follows from these.

The chunks are float32 blocks (N, c) of all N videos; they are turned into float64 on
``device`` (a CUDA device makes large layers fast), so no N x D float64 copy ever exists.
Memory: (folds + 1) N^2 float64 on the device plus two chunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

# A column whose training standard deviation is below this fraction of its mean magnitude is
# constant up to rounding (float16 storage): standardising it would only amplify round-off.
RELATIVE_SD_FLOOR = 1e-6


@dataclass
class LayerGrams:
    fold_kernels: np.ndarray  # (folds, N, N) float64
    raw: np.ndarray  # (N, N) float64
    row_sums: np.ndarray  # (N,) float64
    num_columns: int  # D
    kept_columns: np.ndarray  # (folds,) columns with a usable training standard deviation


def standardisation(x: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column: the mean and 1 / standard deviation of the ``train`` rows (0 for a column
    that is constant there), to standardise every row with."""
    fitted = x[train]
    mean = fitted.mean(dim=0)
    sd = fitted.std(dim=0, correction=0)
    usable = (sd > 0) & (sd > RELATIVE_SD_FLOOR * mean.abs())
    return mean, torch.where(usable, 1.0 / torch.where(usable, sd, 1.0), 0.0)


def accumulate_grams(chunks: Iterable[np.ndarray], folds: np.ndarray, device: str | torch.device = "cpu") -> LayerGrams:
    """One pass over ``chunks`` (each (N, c), rows in the order of ``folds``)."""
    folds = np.asarray(folds)
    n, k = len(folds), int(folds.max()) + 1
    dev = torch.device(device)
    train = [torch.as_tensor(folds != f, device=dev) for f in range(k)]
    kernels = torch.zeros((k, n, n), dtype=torch.float64, device=dev)
    raw = torch.zeros((n, n), dtype=torch.float64, device=dev)
    row_sums = torch.zeros(n, dtype=torch.float64, device=dev)
    kept = torch.zeros(k, dtype=torch.int64, device=dev)
    columns = 0
    for chunk in chunks:
        if chunk.shape[0] != n:
            raise ValueError(f"chunk has {chunk.shape[0]} rows, expected {n}")
        x = torch.as_tensor(chunk, device=dev).to(torch.float64)
        columns += x.shape[1]
        raw.addmm_(x, x.T)
        row_sums += x.sum(dim=1)
        for f in range(k):
            mean, scale = standardisation(x, train[f])
            z = (x - mean).mul_(scale)
            kernels[f].addmm_(z, z.T)
            del z  # before the next fold's copy: at most two chunk-sized float64 copies at a time
            kept[f] += (scale > 0).sum()
    return LayerGrams(kernels.cpu().numpy(), raw.cpu().numpy(), row_sums.cpu().numpy(), columns, kept.cpu().numpy())
