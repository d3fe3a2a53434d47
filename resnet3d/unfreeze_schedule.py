"""Progressive unfreezing: prefixes start frozen and join training at a given epoch.

The training loop keeps every parameter in the optimizer from the start (frozen ones just
get no gradient), calls ``apply(model, epoch)`` at the start of each epoch, rebuilds DDP when
it returns something, and multiplies each parameter group's learning rate by
``lr_scale(name, epoch)``.  Everything is a function of ``epoch``, so resuming needs only the
epoch and ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .freeze import apply_frozen_batchnorm_rule, parameters_by_prefix
from .names import strip_wrapper_prefixes, under_prefix


class UnfreezeSchedule:
    """``UnfreezeSchedule({"layer4": 2, "layer3": 4}, low_lr_factor=0.1, low_lr_epochs=1)``.

    Where prefixes nest (``layer4`` and ``layer4.2``), the longest one that covers a
    parameter decides for it.  Parameters under no prefix are left as they are.
    """

    def __init__(self, milestones: Mapping[str, int], low_lr_factor: float = 1.0, low_lr_epochs: int = 0) -> None:
        self.milestones: dict[str, int] = {}
        self.low_lr_factor = float(low_lr_factor)
        self.low_lr_epochs = int(low_lr_epochs)
        self._set(milestones)

    def _set(self, milestones: Mapping[str, int]) -> None:
        cleaned = {}
        for prefix, epoch in milestones.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"unfreeze epoch for {prefix!r} must be an int >= 0; got {epoch!r}")
            cleaned[strip_wrapper_prefixes(prefix)] = epoch
        if not self.low_lr_factor > 0:
            raise ValueError(f"low_lr_factor must be > 0; got {self.low_lr_factor}")
        if self.low_lr_epochs < 0:
            raise ValueError(f"low_lr_epochs must be >= 0; got {self.low_lr_epochs}")
        self.milestones = cleaned

    def prefix_for(self, param_name: str) -> str | None:
        """The scheduled prefix that governs this parameter (longest match), or None."""
        name = strip_wrapper_prefixes(param_name)
        covering = [p for p in self.milestones if under_prefix(name, p)]
        return max(covering, key=len) if covering else None

    def apply(self, model: nn.Module, epoch: int) -> list[str]:
        """Set ``requires_grad`` to its state for ``epoch``; return prefixes newly unfrozen now.

        Idempotent: a second call for the same epoch changes nothing and returns [].
        """
        parameters_by_prefix(model, list(self.milestones))  # unknown prefixes fail loudly
        newly_unfrozen = set()
        for name, param in model.named_parameters():
            prefix = self.prefix_for(name)
            if prefix is None:
                continue
            trainable = epoch >= self.milestones[prefix]
            if trainable and not param.requires_grad:
                newly_unfrozen.add(prefix)
            param.requires_grad_(trainable)
        apply_frozen_batchnorm_rule(model)
        return [p for p in self.milestones if p in newly_unfrozen]

    def lr_scale(self, param_name: str, epoch: int) -> float:
        """``low_lr_factor`` in the ``low_lr_epochs`` epochs after the parameter unfroze, else 1.

        Returns 0.0 while the parameter is still frozen (it gets no gradient anyway).
        """
        prefix = self.prefix_for(param_name)
        if prefix is None:
            return 1.0
        start = self.milestones[prefix]
        if epoch < start:
            return 0.0
        if epoch < start + self.low_lr_epochs:
            return self.low_lr_factor
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "milestones": dict(self.milestones),
            "low_lr_factor": self.low_lr_factor,
            "low_lr_epochs": self.low_lr_epochs,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.low_lr_factor = float(state["low_lr_factor"])
        self.low_lr_epochs = int(state["low_lr_epochs"])
        self._set(state["milestones"])

    def __repr__(self) -> str:
        return (
            f"UnfreezeSchedule({self.milestones}, low_lr_factor={self.low_lr_factor}, "
            f"low_lr_epochs={self.low_lr_epochs})"
        )
