"""Freezing parts of the network by module-name prefix, and what that means for BatchNorm.

A prefix names a module or parameter on dot boundaries: ``conv1``, ``bn1``, ``layer4``,
``layer4.2``, ``layer4.2.bn3.weight``, ``last_linear``, ``last_linear.peoplecount``.
Names may be given with or without ``module.``/``_orig_mod.`` (DDP / torch.compile), and
the model passed in may be wrapped.

BatchNorm rule: a BatchNorm layer whose parameters are all frozen runs in eval mode (uses
and keeps its running statistics) even while the model trains; otherwise a "frozen" layer
would still drift through its running mean/var.  ``MultiTaskResNet3D.train()`` applies the
rule after every mode change, and ``freeze``/``unfreeze`` apply it immediately.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .names import strip_wrapper_prefixes, under_prefix


def _as_list(prefixes: str | Iterable[str]) -> list[str]:
    if isinstance(prefixes, str):
        return [prefixes]
    return list(prefixes)


def parameters_by_prefix(model: nn.Module, prefixes: str | Iterable[str]) -> dict[str, list[str]]:
    """Map each prefix to the (unwrapped) names of the parameters it covers.

    A prefix that covers nothing is an error naming it and the valid top-level names.
    """
    names = [strip_wrapper_prefixes(n) for n, _ in model.named_parameters()]
    matches: dict[str, list[str]] = {}
    unknown = []
    for raw in _as_list(prefixes):
        prefix = strip_wrapper_prefixes(raw)
        covered = [n for n in names if under_prefix(n, prefix)]
        if not covered:
            unknown.append(raw)
        matches[prefix] = covered
    if unknown:
        top_level = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
        raise ValueError(
            f"freeze/unfreeze prefix(es) {unknown} match no parameter of the model; valid top-level "
            f"names: {', '.join(top_level)} (go deeper with dots, e.g. 'layer4.2' or "
            f"'last_linear.<output>')"
        )
    return matches


def set_requires_grad(model: nn.Module, prefixes: str | Iterable[str], trainable: bool) -> list[str]:
    """Set ``requires_grad`` for every parameter under the prefixes; returns their names."""
    covered = {n for names in parameters_by_prefix(model, prefixes).values() for n in names}
    changed = []
    for name, param in model.named_parameters():
        clean = strip_wrapper_prefixes(name)
        if clean in covered:
            param.requires_grad_(trainable)
            changed.append(clean)
    apply_frozen_batchnorm_rule(model)
    return changed


def freeze(model: nn.Module, prefixes: str | Iterable[str]) -> list[str]:
    """Stop gradients for the parameters under ``prefixes``; returns the frozen names."""
    return set_requires_grad(model, prefixes, trainable=False)


def unfreeze(model: nn.Module, prefixes: str | Iterable[str]) -> list[str]:
    """Let gradients reach the parameters under ``prefixes``; returns their names."""
    return set_requires_grad(model, prefixes, trainable=True)


def batchnorm_is_frozen(module: _BatchNorm) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def apply_frozen_batchnorm_rule(model: nn.Module) -> None:
    """Frozen BatchNorm -> eval; every other BatchNorm follows ``model.training``."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.train(model.training and not batchnorm_is_frozen(module))
