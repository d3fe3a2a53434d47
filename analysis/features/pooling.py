"""What is kept of a layer's output per clip (pooling), and averaging a video's views.

``(C, T, H, W)`` maps:

============  =====================  =================================================
``--pool``    kept per video          for
============  =====================  =================================================
``mean``      (C,)                    encoding models / RSA on one vector per video
``max``       (C,)                    the same with max over time and space
``time``      (C, T')                 time-resolved (MEG/EEG) analyses: mean over space
``none``      (C, T', H', W')         the whole map (see ``--project-dim`` for its size)
============  =====================  =================================================

Outputs that are vectors already (``last_linear``; ``avgpool`` is (C, 1, 1, 1)) are kept as they
are under every mode.  Pooling is done in float32 whatever the compute type.
"""

from __future__ import annotations

from torch import Tensor

POOLS = ("mean", "max", "time", "none")
SPACE_TIME = (2, 3, 4)
SPACE = (3, 4)


def pool(x: Tensor, mode: str) -> Tensor:
    """(N, C, T, H, W) or (N, D) layer output -> (N, ...) float32 as ``mode`` says."""
    if mode not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {mode!r}")
    if x.dim() == 2:
        return x.float()
    if x.dim() != 5:
        raise ValueError(f"expected an (N, C, T, H, W) or (N, D) layer output, got shape {tuple(x.shape)}")
    if mode == "mean":
        return x.float().mean(dim=SPACE_TIME)
    if mode == "max":
        return x.amax(dim=SPACE_TIME).float()
    if mode == "time":
        return x.float().mean(dim=SPACE)
    return x.float()


def pooled_shape(shape: tuple[int, ...], mode: str) -> tuple[int, ...]:
    """One clip's layer output shape (no batch axis) -> what :func:`pool` keeps of it."""
    if mode not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {mode!r}")
    if len(shape) == 1 or mode == "none":
        return tuple(shape)
    if mode == "time":
        return tuple(shape[:2])
    return tuple(shape[:1])


def axes(shape: tuple[int, ...], mode: str) -> list[str]:
    """Names of a stored array's axes (after the video axis), for the manifest."""
    kept = pooled_shape(shape, mode)
    if len(kept) == 1:
        return ["video", "channel" if len(shape) > 1 else "feature"]
    return ["video", "channel", "time", "height", "width"][: len(kept) + 1]


def average_views(x: Tensor, num_views: int) -> Tensor:
    """(N * V, ...) per-view values, the views of a video adjacent -> (N, ...) view means."""
    if x.shape[0] % num_views:
        raise ValueError(f"{x.shape[0]} rows is not a multiple of {num_views} views")
    return x.reshape(x.shape[0] // num_views, num_views, *x.shape[1:]).mean(dim=1)
