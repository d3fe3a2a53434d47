"""Representational dissimilarity matrices (RDMs) and their comparison (RSA).

* Layer RDM: 1 - Pearson correlation between two videos' raw feature vectors (over the D
  columns), computed from the Gram matrix X X^T and the row sums, so a layer of any width is
  one N x N matrix.  A video whose features are constant has no correlation: its row is NaN.
* Rating RDM of one scalar feature: |y_i - y_j| (a single number per video has no pattern to
  correlate; the absolute difference is the usual dissimilarity for it), with differences equal
  up to round-off merged (``utils.metrics.merge_ties``): ratings are discrete, so many pairs
  are exactly as far apart and must share one rank in the RSA.
* RSA: Spearman correlation of two RDMs over the pairs above the diagonal.
"""

from __future__ import annotations

import numpy as np

from utils.metrics import TIE_TOLERANCE, merge_ties, spearman


def correlation_rdm(raw_gram: np.ndarray, row_sums: np.ndarray, num_columns: int) -> np.ndarray:
    """(N, N) float64: 1 - corr(x_i, x_j); symmetric, zero diagonal."""
    mean = row_sums / num_columns
    cov = raw_gram / num_columns - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(sd, sd)
    corr[(sd == 0)[:, None] | (sd == 0)[None, :]] = np.nan
    rdm = 1.0 - np.clip(corr, -1.0, 1.0)
    rdm = (rdm + rdm.T) / 2  # exact symmetry despite round-off in the Gram matrix
    np.fill_diagonal(rdm, 0.0)
    return rdm


def rating_rdm(values: np.ndarray, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """(N, N): |y_i - y_j|, differences within ``tolerance`` of each other made equal.

    Float arithmetic alone cannot give the ties: on a grid of 0.1 the ten distinct non-zero
    differences come out as about twice as many distinct float32 or float64 values."""
    values = np.asarray(values, dtype=np.float64)
    return merge_ties(np.abs(values[:, None] - values[None, :]), tolerance)


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(matrix.shape[0], k=1)]


def rsa_spearman(rdm_a: np.ndarray, rdm_b: np.ndarray) -> float:
    """Spearman correlation of the two RDMs' upper triangles (pairs with a NaN are left out)."""
    if rdm_a.shape != rdm_b.shape:
        raise ValueError(f"RDM shapes differ: {rdm_a.shape} vs {rdm_b.shape}")
    return spearman(upper_triangle(rdm_a), upper_triangle(rdm_b))
