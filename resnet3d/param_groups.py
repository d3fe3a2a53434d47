"""Which parameters the optimizer should not weight-decay."""

from __future__ import annotations

from torch import nn


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for biases and normalisation scales/shifts (tensors with ndim <= 1).

    Decaying BatchNorm gammas/betas or biases toward 0 only fights the normalisation;
    conv and linear weights (ndim >= 2) are decayed.  ``name`` is accepted so the loop can
    pass ``named_parameters()`` items straight through (and for future name-based rules).
    """
    return param.ndim <= 1
