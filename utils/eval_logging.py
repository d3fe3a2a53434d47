"""MLflow logging for one evaluation: a new run, or additions to an existing (training) run.

Why not ``utils.tracking.RunTracker``: it activates a run with ``mlflow.start_run`` and ends it
with a status, which would mark a training run that is still RUNNING (or that FAILED) as
FINISHED.  Logging into an existing run here uses the client API only (``log_batch``,
``log_artifact``, ``set_tag``), which never touches the run's status.  A new run is created
in the experiment and terminated with the evaluation's status.

Same policy as RunTracker: MLflow trouble never fails an evaluation.  The first failing call
prints one warning and disables MLflow for the rest of this evaluation; the outputs on disk
are complete either way.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.tracking import shorten_mlflow_retries

shorten_mlflow_retries()  # a dead server must cost seconds (users' own values win)


class EvalLogger:
    def __init__(
        self,
        enabled: bool,
        tracking_uri: str,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        artifact_location: str | None = None,
    ):
        self.enabled = enabled
        self.artifact_location = artifact_location  # for a new experiment only
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id = run_id
        self.run_name = run_name
        self.new_run = run_id is None
        self.client = None
        self.error: str | None = None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            return fn()
        except Exception as exc:  # any backend failure: keep the evaluation, keep the files
            self.error = f"MLflow {what} failed ({type(exc).__name__}: {exc})"
            warnings.warn(f"{self.error}; evaluation continues without MLflow (all outputs are on disk)", stacklevel=3)
            self.enabled = False
            return None

    def start(self, tags: dict[str, str]) -> str | None:
        def _start():
            import mlflow

            self.client = mlflow.MlflowClient(self.tracking_uri)
            if self.run_id is not None:
                self.client.get_run(self.run_id)  # fails clearly if the run is not in this store
            else:
                exp = self.client.get_experiment_by_name(self.experiment)
                exp_id = (
                    exp.experiment_id
                    if exp is not None
                    else self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
                )
                self.run_id = self.client.create_run(exp_id, run_name=self.run_name, tags=tags).info.run_id
                return self.run_id
            self.set_tags(tags)
            return self.run_id

        return self._call("start", _start)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        def _log():
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
            for i in range(0, len(items), 1000):  # log_batch accepts at most 1000 metrics
                self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

        self._call("log_metrics", _log)

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.new_run:
            return  # a training run's params are its config; they cannot be changed

        def _log():
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

        self._call("log_params", _log)

    def set_tags(self, tags: dict[str, Any]) -> None:
        def _set():
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

        self._call("set_tags", _set)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str) -> None:
        if self.new_run and self.run_id is not None:
            self._call("end", lambda: self.client.set_terminated(self.run_id, status=status))
