"""Reference computations for the feature-extraction tests: a ResNet3D's layers by an explicit
forward through its submodules (no hooks), and the expected layer names."""

from __future__ import annotations

import torch

from analysis.features.pooling import pool


def explicit_layers(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output, computed by calling the submodules one after the other."""
    out = {}
    with torch.no_grad():
        y = model.conv1(x)
        out["conv1"] = y.clone()
        y = model.bn1(y)
        out["bn1"] = y.clone()  # relu below is in place
        y = model.relu(y)
        out["relu"] = y.clone()
        y = model.maxpool(y)
        out["maxpool"] = y.clone()
        for k in range(1, 5):
            for i, block in enumerate(getattr(model, f"layer{k}")):
                y = block(y)
                out[f"layer{k}.{i}"] = y.clone()
            out[f"layer{k}"] = y.clone()
        y = model.avgpool(y)
        out["avgpool"] = y.clone()
        if hasattr(model, "last_linear"):
            features = y.flatten(1)
            out["last_linear"] = torch.cat([head(features) for head in model.last_linear.values()], dim=1)
    return out


def expected_layer_names(model) -> list[str]:
    """The names extract_features offers, in forward order, written out from the architecture."""
    names = ["conv1", "bn1", "relu", "maxpool"]
    for k in range(1, 5):
        names += [f"layer{k}.{i}" for i in range(len(getattr(model, f"layer{k}")))] + [f"layer{k}"]
    names.append("avgpool")
    if hasattr(model, "last_linear"):
        names.append("last_linear")
    return names


def reference_features(model, views: torch.Tensor, layers, mode: str) -> dict[str, torch.Tensor]:
    """(V, 3, T, S, S) normalized views of one video -> each layer pooled per view, views averaged."""
    outputs = explicit_layers(model, views)
    return {name: pool(outputs[name], mode).mean(dim=0) for name in layers}
