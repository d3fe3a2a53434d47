"""From head logits to the numbers users read: probabilities named like the annotation columns.

Size-1 outputs go through a sigmoid (scores and confidences in [0, 1]; ``location_score`` is
p(Outdoor); ``peoplecount_certain`` is p(certain)); ``peoplecount`` goes through a softmax over
0, 1, 2, 3, many.  ``ServingModel`` wraps a trained network for ``mlflow.pytorch.log_model``: it
takes raw uint8 video (N, 3, T, H, W), normalizes it itself and returns one float tensor
(N, K) whose columns are ``prediction_columns(tasks)``.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.precision import normalize
from utils.tasks import PEOPLECOUNT_CLASSES, output_sizes


def prediction_columns(tasks="all") -> list[str]:
    cols: list[str] = []
    for name in output_sizes(tasks):
        if name == "peoplecount":
            cols += [f"peoplecount_p{c}" for c in PEOPLECOUNT_CLASSES]
        else:
            cols.append(name)
    return cols


def logits_to_probabilities(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sigmoid for size-1 outputs, softmax for ``peoplecount``; float32."""
    probs = {}
    for name, logit in outputs.items():
        logit = logit.float()
        probs[name] = torch.softmax(logit, dim=-1) if name == "peoplecount" else torch.sigmoid(logit)
    return probs


class ServingModel(nn.Module):
    """uint8 video (N, 3, T, H, W) -> probabilities (N, K), columns = ``prediction_columns``."""

    def __init__(self, model: nn.Module, tasks="all"):
        super().__init__()
        self.model = model
        self.columns = prediction_columns(tasks)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = normalize(video)  # the training loop's normalizer, so serving cannot drift from it
        probs = logits_to_probabilities(self.model(x))
        parts = [p.reshape(p.shape[0], -1) for p in probs.values()]
        return torch.cat(parts, dim=1)
