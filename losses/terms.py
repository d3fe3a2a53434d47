"""Per-sample loss terms of one task, with the mask of samples that count.

Each function returns ``(per_sample, valid)``: ``per_sample`` is a float32 tensor of shape
(N,) that is exactly 0 where ``valid`` is False, ``valid`` a bool tensor of shape (N,).
Invalid targets are replaced by a harmless 0 *before* the loss is computed, so a NaN
target never enters the graph (a NaN multiplied by a zero mask would still be NaN, and its
gradient too).

Callers pass float32 logits; see ``losses.multitask`` for the reductions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _confidence_target(confidence: torch.Tensor) -> torch.Tensor:
    # Cleaned tables never hold an empty confidence (missing ones are set to 0 when the
    # table is cleaned); treat a stray NaN the same way instead of poisoning the batch.
    return torch.nan_to_num(confidence.float(), nan=0.0)


def confidence_squared_error(confidence_logit: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """(sigmoid(logit) - annotated confidence)^2 per sample; NaN confidence counts as 0."""
    return (torch.sigmoid(confidence_logit) - _confidence_target(confidence)) ** 2


def score_terms(
    score_logit: torch.Tensor,
    confidence_logit: torch.Tensor,
    score: torch.Tensor,
    confidence: torch.Tensor,
    include_confidence: bool,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score task: ``w * (sigmoid(s) - y)^2 + alpha * (sigmoid(c) - conf)^2`` where y is valid.

    ``w`` is the annotated confidence when ``include_confidence`` else 1.
    """
    valid = ~torch.isnan(score)
    target = torch.where(valid, score.float(), torch.zeros_like(score, dtype=torch.float32))
    squared_error = (torch.sigmoid(score_logit) - target) ** 2
    if include_confidence:
        squared_error = squared_error * _confidence_target(confidence)
    per_sample = squared_error + alpha * confidence_squared_error(confidence_logit, confidence)
    return torch.where(valid, per_sample, torch.zeros_like(per_sample)), valid


def location_terms(
    location_logit: torch.Tensor,
    confidence_logit: torch.Tensor,
    location: torch.Tensor,
    confidence: torch.Tensor,
    include_confidence: bool,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Location: ``w * BCEWithLogits(l, y) + alpha * (sigmoid(c) - conf)^2`` where y is valid.

    y = 1 for Outdoor, 0 for Indoor; ``w`` as in :func:`score_terms` (the earlier Lightning version
    also weighted the location term by the annotated confidence).
    """
    valid = ~torch.isnan(location)
    target = torch.where(valid, location.float(), torch.zeros_like(location, dtype=torch.float32))
    bce = F.binary_cross_entropy_with_logits(location_logit, target, reduction="none")
    if include_confidence:
        bce = bce * _confidence_target(confidence)
    per_sample = bce + alpha * confidence_squared_error(confidence_logit, confidence)
    return torch.where(valid, per_sample, torch.zeros_like(per_sample)), valid


def peoplecount_terms(
    class_logits: torch.Tensor,
    certain_logit: torch.Tensor,
    count_class: torch.Tensor,
    certain: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """People count: ``CE(logits, class) + beta * BCEWithLogits(k, certain)`` where class != -1.

    The certainty term is added only where ``certain`` is not NaN as well.
    """
    valid = count_class >= 0
    safe_class = torch.where(valid, count_class, torch.zeros_like(count_class)).long()
    cross_entropy = F.cross_entropy(class_logits, safe_class, reduction="none")
    certain_valid = valid & ~torch.isnan(certain)
    certain_target = torch.where(certain_valid, certain.float(), torch.zeros_like(certain, dtype=torch.float32))
    bce = F.binary_cross_entropy_with_logits(certain_logit, certain_target, reduction="none")
    zeros = torch.zeros_like(cross_entropy)
    per_sample = torch.where(valid, cross_entropy, zeros) + beta * torch.where(certain_valid, bce, zeros)
    return per_sample, valid
