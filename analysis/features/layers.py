"""Which layers of a network can be read, their output shapes, and reading them during a forward pass.

A *layer* is named by the model's own module names: each top-level module (``conv1``, ``bn1``,
``relu``, ``maxpool``, ``layer1`` ... ``layer4``, ``avgpool``), each block of a Sequential stage
(``layer4.2``), and a ModuleDict head (``last_linear``) whose outputs are concatenated along the
feature axis in the dict's order.  Dropout is left out: in evaluation it returns its input, so it
would only repeat the layer before it.  Only modules that run exactly once per forward pass are
layers (a module called twice would have no single output).

Shapes come from one forward pass on the ``meta`` device (no memory, no arithmetic), so
``--list-layers`` answers at once even for ResNet3D-50 at 16 x 224 px.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call


@dataclass(frozen=True)
class LayerInfo:
    """One readable layer: ``shape`` is one clip's output without the batch axis, e.g.
    (C, T, H, W) for a convolutional stage or (D,) for the head; ``parts`` are the modules whose
    outputs make it up (one, or a head's outputs) with their widths along the feature axis, in
    the order they run; ``order`` is when the layer is complete in the forward pass."""

    name: str
    shape: tuple[int, ...]
    parts: tuple[tuple[str, int], ...]
    order: int


class _StopForward(Exception):
    """Raised by the hook of the last layer asked for: the rest of the network need not run."""


def _candidates(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """Layer name -> the (qualified name, module) pairs whose outputs make it up, in model order."""
    found: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, child in model.named_children():
        if isinstance(child, nn.Dropout):
            continue
        if isinstance(child, nn.ModuleDict):
            found[name] = [(f"{name}.{key}", module) for key, module in child.items()]
            continue
        found[name] = [(name, child)]
        if isinstance(child, nn.Sequential):
            for sub, block in child.named_children():
                found[f"{name}.{sub}"] = [(f"{name}.{sub}", block)]
    return found


def list_layers(model: nn.Module, frames: int, size: int) -> list[LayerInfo]:
    """Every readable layer of ``model`` for (1, 3, frames, size, size) input, in the order the
    forward pass completes them."""
    candidates = _candidates(model)
    calls: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
    counter = iter(range(10**9))

    def recorder(qualified: str):
        def hook(_module, _inputs, output):
            shape = tuple(output.shape) if isinstance(output, Tensor) else None
            calls.setdefault(qualified, []).append((next(counter), shape))

        return hook

    handles = [module.register_forward_hook(recorder(q)) for parts in candidates.values() for q, module in parts]
    meta = {n: torch.empty_like(t, device="meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.no_grad():
            functional_call(model, meta, (torch.empty(1, 3, frames, size, size, device="meta"),))
    finally:
        for handle in handles:
            handle.remove()

    layers: list[LayerInfo] = []
    for name, parts in candidates.items():
        seen = [calls.get(q, []) for q, _ in parts]
        if any(len(c) != 1 or c[0][1] is None for c in seen):
            continue  # not run, run more than once, or not a tensor
        shapes = [c[0][1][1:] for c in seen]
        if len(parts) > 1:
            if any(len(s) != 1 for s in shapes):
                continue  # only (N, width) head outputs are concatenated
            shape: tuple[int, ...] = (sum(s[0] for s in shapes),)
        else:
            shape = shapes[0]
        ran = sorted(zip((c[0][0] for c in seen), (q for q, _ in parts), shapes))
        layers.append(
            LayerInfo(name=name, shape=tuple(shape), parts=tuple((q, s[0]) for _, q, s in ran), order=ran[-1][0])
        )
    return sorted(layers, key=lambda info: info.order)


class LayerTap:
    """Forward hooks that keep the chosen layers' outputs of one forward pass.

    ``reduce`` is applied inside the hook to each module output (e.g. pooling), so what is kept
    is a new tensor: a later in-place op (``relu(inplace=True)`` after ``bn1``) cannot change
    it, and a large unpooled map can be freed at once.  After the last chosen layer the pass
    stops, so reading ``conv1`` costs the stem, not the whole network.

        with LayerTap(model, [info_conv1, info_layer2], reduce=torch.clone) as tap:
            outputs = tap(x)        # {"conv1": ..., "layer2": ...}
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerInfo], reduce: Callable[[Tensor], Tensor]) -> None:
        if not layers:
            raise ValueError("no layers to read")
        self.model, self.layers, self.reduce = model, list(layers), reduce
        self._kept: dict[str, Tensor] = {}
        self._handles: list = []
        self._last_part = max(self.layers, key=lambda info: info.order).parts[-1][0]

    def __enter__(self) -> LayerTap:
        modules = dict(self.model.named_modules())
        for info in self.layers:
            for qualified, _ in info.parts:
                self._handles.append(modules[qualified].register_forward_hook(self._hook(qualified)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, qualified: str):
        def hook(_module, _inputs, output):
            value = self.reduce(output)
            if value.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
                value = value.clone()  # a view of the output would change with it
            self._kept[qualified] = value
            if qualified == self._last_part:
                raise _StopForward

        return hook

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        self._kept = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        kept, self._kept = self._kept, {}
        out = {}
        for info in self.layers:
            parts = [kept[q] for q, _ in info.parts]
            out[info.name] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out
