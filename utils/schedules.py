"""LR schedules from ``torch.optim.lr_scheduler``, stepped once per optimizer step.

* ``cosine``   linear warmup to the peak, then cosine decay to ``min_lr_ratio`` x peak, as a pure
               function of the step (``LambdaLR``), so resuming restores it exactly.
* ``restarts`` the earlier Lightning version's ``CosineAnnealingWarmRestarts`` (its period is given in
               steps here: ``--restart-epochs`` x steps per epoch).
* ``constant`` the peak LR throughout (after the warmup).

Both schedules compute the LR in closed form from the group's base LR, so the loop can multiply
a group's LR afterwards (low LR after an unfreeze) without the factors compounding.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LambdaLR, LRScheduler


class WarmupCosine:
    """Multiplier of the peak LR at ``step`` (a callable object so LambdaLR can save it)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float, decay: bool = True):
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.min_ratio = float(min_ratio)
        self.decay = decay

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.decay:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.01,
    restart_steps: int = 1,
    restart_mult: int = 2,
) -> LRScheduler:
    if kind == "cosine":
        return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))
    if kind == "constant":
        return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, 1.0, decay=False))
    if kind == "restarts":
        eta_min = min_lr_ratio * optimizer.param_groups[0]["lr"]
        return CosineAnnealingWarmRestarts(optimizer, T_0=max(1, restart_steps), T_mult=restart_mult, eta_min=eta_min)
    raise ValueError(f"unknown LR schedule {kind!r} (cosine, restarts, constant)")
