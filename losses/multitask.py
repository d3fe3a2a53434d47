"""The masked, confidence-aware multi-task loss of the earlier Lightning version, made explicit.

Per task t, a *task loss* is computed for every sample whose target is valid:

* score feature f (distance, ..., arousal), valid where ``f_score`` is not NaN::

      w_i * (sigmoid(f_score_logit_i) - f_score_i)^2
        + alpha * (sigmoid(f_confidence_logit_i) - f_confidence_i)^2

  with ``w_i = f_confidence_i`` (the annotated confidence) if ``include_confidence`` else 1.
* ``location``, valid where ``location_score`` is not NaN (1 = Outdoor, 0 = Indoor)::

      w_i * BCEWithLogits(location_score_logit_i, location_score_i)
        + alpha * (sigmoid(location_confidence_logit_i) - location_confidence_i)^2

  (``w_i`` as above.)
* ``peoplecount``, valid where the class is not -1::

      CrossEntropy(peoplecount_logits_i, class_i)
        + beta * BCEWithLogits(peoplecount_certain_logit_i, certain_i)   # only where certain_i is not NaN

Reductions: ``sums[t]`` = sum of the task losses over valid samples, ``counts[t]`` = number
of valid samples, and::

      total = sum_t  weight_t * sums[t] / denom_t        denom_t = denominators[t] or counts[t]

So with ``include_confidence`` the score term is sum(conf * se) / n_valid (not a
confidence-weighted mean), exactly like the earlier Lightning version. The confidence-prediction
term is averaged over the same valid samples (the earlier Lightning version averaged it over the whole
batch and only added it when ``include_confidence`` was on; here ``alpha=0`` turns it off).
A task with no valid target, or with ``denom_t == 0``, adds exactly 0 (no NaN, zero
gradients).

Why ``denominators``: under DDP each rank sees a different number of valid targets. The loop
all-reduces ``counts`` and passes ``global_count / world_size``; DDP then averages gradients
over ranks, which gives the gradient of one process on the union batch.

Default task weights are the earlier Lightning version's scaling (score features 1.0, location
0.02/0.2 = 0.1, peoplecount 0.02/0.5 = 0.04): see :data:`DEFAULT_TASK_WEIGHTS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from losses.terms import location_terms, peoplecount_terms, score_terms
from utils.tasks import SCORE_FEATURES, TASKS, parse_tasks, task_outputs

DEFAULT_TASK_WEIGHTS: dict[str, float] = {
    **{feature: 1.0 for feature in SCORE_FEATURES},
    "location": 0.1,
    "peoplecount": 0.04,
}


@dataclass
class LossOutput:
    """``total`` carries gradients; everything else is detached, for logging and DDP sums.

    ``per_task[t]`` is ``sums[t] / counts[t]`` (this batch's mean task loss before the task
    weight), NaN when the batch has no valid target for t; to average over many batches or
    ranks, add up ``sums`` and ``counts`` instead.
    """

    total: torch.Tensor
    per_task: dict[str, torch.Tensor]
    sums: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]


def _target_key(task: str) -> str:
    """The target whose validity decides whether a sample counts for ``task``."""
    if task == "peoplecount":
        return "peoplecount"
    return f"{task}_score"  # features and location alike: <task>_score


class MultiTaskLoss(nn.Module):
    """Masked multi-task loss; see the module docstring for the exact definition.

    Args:
        tasks: ``"all"``, ``"distance,location"`` or a list of task names (``utils.tasks``).
        include_confidence: weight each score/location squared error (BCE) by the annotated
            confidence; the sum is still divided by the number of valid samples.
        alpha: weight of the confidence-prediction term (score tasks and location); 1.0 default.
        beta: weight of the ``peoplecount_certain`` BCE term; 1.0 default.
        task_weights: overrides of :data:`DEFAULT_TASK_WEIGHTS` (1.0 per score feature,
            0.1 location, 0.04 peoplecount, the earlier Lightning version's scaling).
    """

    def __init__(
        self,
        tasks: str | Iterable[str] | None = "all",
        include_confidence: bool = False,
        alpha: float = 1.0,
        beta: float = 1.0,
        task_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.tasks = parse_tasks(tasks)
        self.include_confidence = bool(include_confidence)
        self.alpha = float(alpha)
        self.beta = float(beta)
        unknown = sorted(set(task_weights or {}) - set(TASKS))
        if unknown:
            raise ValueError(f"task_weights has unknown task(s) {unknown}; known tasks: {', '.join(TASKS)}")
        weights = {**DEFAULT_TASK_WEIGHTS, **{k: float(v) for k, v in (task_weights or {}).items()}}
        self.task_weights = {task: weights[task] for task in self.tasks}

    def extra_repr(self) -> str:
        return (
            f"tasks={list(self.tasks)}, include_confidence={self.include_confidence}, "
            f"alpha={self.alpha}, beta={self.beta}, task_weights={self.task_weights}"
        )

    def valid_counts(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Number of valid targets per selected task in this batch (int64 scalar tensors)."""
        counts = {}
        for task in self.tasks:
            target = _require(targets, _target_key(task), "targets", task)
            valid = target >= 0 if task == "peoplecount" else ~torch.isnan(target)
            counts[task] = valid.sum(dtype=torch.int64)
        return counts

    def forward(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        denominators: Mapping[str, torch.Tensor | float] | None = None,
    ) -> LossOutput:
        if denominators is not None:
            missing = [task for task in self.tasks if task not in denominators]
            if missing:
                raise KeyError(f"denominators lack task(s) {missing}; pass one per selected task {list(self.tasks)}")
        device = next(iter(outputs.values())).device if outputs else torch.device("cpu")
        # Losses are reduced in float32 even inside a bf16/fp16 autocast region: a sum over a
        # batch of bf16 squared errors loses most of its digits.
        with torch.autocast(device_type=device.type, enabled=False):
            total = torch.zeros((), dtype=torch.float32, device=device)
            per_task, sums, counts = {}, {}, {}
            for task in self.tasks:
                per_sample, valid = self._task_terms(task, outputs, targets)
                task_sum = per_sample.sum()
                count = valid.sum(dtype=torch.int64)
                denom = (
                    count.float()
                    if denominators is None
                    else torch.as_tensor(denominators[task], dtype=torch.float32, device=device)
                )
                has_denominator = denom > 0
                safe_denom = torch.where(has_denominator, denom, torch.ones_like(denom))
                contribution = torch.where(has_denominator, task_sum / safe_denom, torch.zeros_like(task_sum))
                total = total + self.task_weights[task] * contribution
                sums[task] = task_sum.detach()
                counts[task] = count
                per_task[task] = (task_sum / count.float()).detach()  # NaN when count == 0, by design
        return LossOutput(total=total, per_task=per_task, sums=sums, counts=counts)

    def _task_terms(
        self, task: str, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        names = list(task_outputs(task))
        logits = [_as_float32(_require(outputs, name, "outputs", task), name) for name in names]
        labels = [_require(targets, name, "targets", task) for name in names]
        if task in SCORE_FEATURES:
            return score_terms(*logits, *labels, self.include_confidence, self.alpha)
        if task == "location":
            return location_terms(*logits, *labels, self.include_confidence, self.alpha)
        return peoplecount_terms(*logits, *labels, self.beta)


def _require(mapping: Mapping[str, torch.Tensor], key: str, what: str, task: str) -> torch.Tensor:
    if key not in mapping:
        raise KeyError(f"{what} lack {key!r}, needed by task {task!r}; {what} have {sorted(mapping)}")
    return mapping[key]


def _as_float32(logits: torch.Tensor, name: str) -> torch.Tensor:
    # Size-1 heads are (N,) by contract; accept (N, 1) from a plain nn.Linear as well.
    if name != "peoplecount" and logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    return logits.float()
