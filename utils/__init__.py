"""Shared plumbing: tasks, distributed set-up, checkpoint I/O, MLflow, metrics, config, signals."""
