"""The masked, confidence-aware multi-task loss (see ``losses.multitask`` for the definition)."""

from losses.multitask import DEFAULT_TASK_WEIGHTS, LossOutput, MultiTaskLoss

__all__ = ["DEFAULT_TASK_WEIGHTS", "LossOutput", "MultiTaskLoss"]
