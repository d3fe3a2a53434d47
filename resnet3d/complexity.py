"""Parameter and FLOP counts of a model (the library function behind ``python -m resnet3d.flops``).

Convention: FLOPs = 2 x multiply-adds, counted by ``torch.utils.flop_counter.FlopCounterMode``,
which counts convolutions and matrix multiplies only (BatchNorm, ReLU, pooling and the
residual additions are not counted; they are well under 1% of the total here).  The count
runs on a copy of the model on the ``meta`` device: shapes only, no arithmetic, so even
ResNet3D-152 at 16x224x224 takes about a second.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

CONVENTION = (
    "FLOPs = 2 x multiply-adds; convolutions and matrix multiplies only (torch.utils.flop_counter.FlopCounterMode)"
)


def _outputs_sum(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, dict):
        return sum(o.float().sum() for o in outputs.values())
    return outputs.float().sum()


def _by_top_level_module(counts: dict[str, dict[Any, int]], root: str, children: list[str]) -> dict[str, int]:
    """FlopCounterMode's per-module table reduced to the model's direct children."""
    # A module's count already includes its submodules, but containers that are never
    # called themselves (the ModuleDict head) appear only through their children.
    direct: dict[str, int] = {}
    via_children: dict[str, int] = {}
    for module_name, per_op in counts.items():
        parts = module_name.split(".")
        if parts[0] != root or len(parts) < 2:
            continue
        if len(parts) == 2:
            direct[parts[1]] = sum(per_op.values())
        elif len(parts) == 3:
            via_children[parts[1]] = via_children.get(parts[1], 0) + sum(per_op.values())
    found = {**via_children, **direct}
    return {name: found[name] for name in children if name in found}


def count_parameters_and_flops(
    model: nn.Module, input_shape: Sequence[int] = (1, 3, 16, 224, 224), backward: bool = True
) -> dict[str, Any]:
    """Parameters and counted FLOPs of one forward (and, with ``backward``, forward+backward).

    Returns a dict with ``parameters`` (total, and ``parameters_backbone`` /
    ``parameters_head`` split at ``last_linear``), ``forward_flops``/``forward_gflops``,
    ``forward_flops_by_module`` (direct children: conv1, layer1..4, last_linear),
    ``training_flops``/``training_gflops`` (counted forward + backward; the backward of the
    first convolution has no input gradient to compute), ``training_gflops_3x_estimate``
    and ``convention``.
    """
    parameters = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("last_linear"))
    meta_model = copy.deepcopy(model).to(device="meta")
    meta_model.train(backward)
    x = torch.empty(tuple(input_shape), device="meta")

    with FlopCounterMode(display=False) as forward_counter:
        meta_model(x)
    result: dict[str, Any] = {
        "input_shape": tuple(input_shape),
        "parameters": parameters,
        "parameters_backbone": parameters - head,
        "parameters_head": head,
        "forward_flops": forward_counter.get_total_flops(),
        "forward_flops_by_module": _by_top_level_module(
            forward_counter.get_flop_counts(), type(model).__name__, [n for n, _ in model.named_children()]
        ),
        "convention": CONVENTION,
    }
    result["forward_gflops"] = result["forward_flops"] / 1e9
    result["training_gflops_3x_estimate"] = 3 * result["forward_gflops"]
    if backward:
        with FlopCounterMode(display=False) as train_counter:
            _outputs_sum(meta_model(x)).backward()
        result["training_flops"] = train_counter.get_total_flops()
        result["training_gflops"] = result["training_flops"] / 1e9
    return result
