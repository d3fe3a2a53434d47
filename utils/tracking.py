"""Rank-0 MLflow run with a local JSONL mirror that never stops training.

Only the main process talks to MLflow; on other ranks every method is a no-op.  Every metric
record is also appended to ``OUTPUT_DIR/metrics.jsonl`` first, so nothing is lost when the
tracking backend is down: a failing MLflow call produces one warning, MLflow is then paused,
retried every ``retry_s`` seconds, and the records that could not be sent are replayed when it
answers again.  HTTP retries are shortened (unless you set the MLflow variables yourself) so a
dead server costs seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def shorten_mlflow_retries() -> None:
    """A dead tracking server must cost seconds, not minutes (MLflow's defaults retry 7 times
    with exponential backoff).  Users who set these variables themselves keep their values.
    Called on import of this module, so every MLflow user of the project gets the same."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


shorten_mlflow_retries()

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
_FAILED = object()  # what _call returns when the MLflow call raised


def local_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store live in ``mlartifacts/`` next to the database file.

    Without this MLflow puts them in ``./mlruns`` of whatever directory the command runs in.
    Remote servers decide for themselves (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts").resolve().as_uri()


def absolute_tracking_uri(uri: str) -> str:
    """A relative sqlite path made absolute (so the URI stored in checkpoints works from any
    directory); other URIs unchanged."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    return uri


def ui_command(uri: str) -> str:
    """How to look at the runs of this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def store_unreachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the tracking store at ``uri`` cannot be used now (None if it can): a sqlite file that is
    gone, a server that does not answer."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return None if path.exists() else f"{path} does not exist"
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except OSError as exc:
            return f"{uri} does not answer ({exc})"
    return None


def default_tracking_uri(output_dir: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else an embedded sqlite store under the output dir."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


class RunTracker:
    def __init__(
        self,
        enabled: bool,
        output_dir: str | Path,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        system_metrics: bool = False,
        retry_s: float = 300.0,
    ):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.tracking_uri = absolute_tracking_uri(tracking_uri or default_tracking_uri(output_dir))
        self.experiment = experiment
        self.run_name = run_name
        self.system_metrics = system_metrics
        self.retry_s = retry_s
        self.run_id: str | None = None
        self._down_since: float | None = None
        self._warned = False
        self._backlog: list[tuple[dict[str, float], int]] = []
        self._jsonl = None  # OUTPUT_DIR/metrics.jsonl, opened by the first record: an unused tracker writes nothing

    # -- failure handling ----------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """MLflow is usable now (or it is time to try it again)."""
        if not self.enabled or self.run_id is None:
            return False
        return self._down_since is None or time.monotonic() - self._down_since >= self.retry_s

    def _activate(self) -> None:
        """Make our run the active fluent run, so no MLflow call can create a stray new run."""
        import mlflow

        if self.run_id is None:
            return
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.start_run(run_id=self.run_id, log_system_metrics=self.system_metrics)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from mlflow.exceptions import RestException

        try:
            try:
                self._activate()
                result = fn()
            except RestException:
                # The server answered, with an error.  Runs that start at once against one server
                # (a sweep's trials) insert the same experiment tag or dataset row, and the second
                # insert fails on a unique constraint; the row exists then, so one more try works.
                # A request that is wrong fails again and is handled below.
                self._activate()
                result = fn()
        except Exception as exc:  # any backend error: keep training, keep the local record
            if not self._warned:
                warnings.warn(
                    f"MLflow {what} failed ({type(exc).__name__}: {exc}); training continues, "
                    f"metrics are kept in {self.output_dir / 'metrics.jsonl'} and MLflow is retried "
                    f"every {self.retry_s:.0f} s",
                    stacklevel=3,
                )
                self._warned = True
            self._down_since = time.monotonic()
            return _FAILED
        self._down_since = None
        return result

    # -- run lifecycle -------------------------------------------------------------------------
    def start(
        self,
        resume_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        experiment_tags: dict[str, str] | None = None,
    ) -> str | None:
        """Start a new run, or continue ``resume_run_id``; returns the run id (None if MLflow is down).
        ``experiment_tags`` are set on the experiment when a new run starts."""
        if not self.enabled:
            return None
        import mlflow

        def _start():
            mlflow.set_tracking_uri(self.tracking_uri)
            if resume_run_id:
                run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=self.system_metrics)
            else:
                if mlflow.get_experiment_by_name(self.experiment) is None:
                    mlflow.create_experiment(
                        self.experiment, artifact_location=local_artifact_location(self.tracking_uri)
                    )
                experiment = mlflow.set_experiment(self.experiment)
                for key, value in (experiment_tags or {}).items():
                    if experiment.tags.get(key) != value:
                        mlflow.set_experiment_tag(key, value)
                run = mlflow.start_run(run_name=self.run_name, tags=tags, log_system_metrics=self.system_metrics)
            return run.info.run_id

        run_id = self._call("start_run", _start)
        self.run_id = resume_run_id if run_id is _FAILED else run_id
        self._record({"event": "start", "run_id": self.run_id, "tracking_uri": self.tracking_uri})
        return self.run_id

    def end(self, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}")
        if not self.enabled or self._jsonl is None:  # never used: nothing to record or close
            return
        self._record({"event": "end", "status": status})
        if self.run_id is not None:
            self._flush_backlog()
            import mlflow

            def _end():
                if mlflow.active_run() is not None:
                    mlflow.end_run(status=status)
                else:  # the run could not be (re)activated earlier: set its status directly
                    mlflow.MlflowClient(self.tracking_uri).set_terminated(self.run_id, status=status)

            self._call("end_run", _end)
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    # -- logging -------------------------------------------------------------------------------
    def _record(self, obj: dict[str, Any]) -> None:
        if self._jsonl is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.output_dir / "metrics.jsonl", "a", buffering=1)
        self._jsonl.write(json.dumps({"time": time.time(), **obj}) + "\n")

    def _flush_backlog(self) -> None:
        import mlflow

        while self._backlog and self.available:
            metrics, step = self._backlog[0]
            if self._call("log_metrics", lambda: mlflow.log_metrics(metrics, step=step)) is _FAILED:  # noqa: B023
                return
            self._backlog.pop(0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._record({"step": step, "metrics": clean})
        if self.run_id is None:
            return
        self._backlog.append((clean, step))
        self._flush_backlog()

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.available:
            return
        import mlflow

        self._call("log_params", lambda: mlflow.log_params({k: str(v)[:6000] for k, v in params.items()}))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.available:
            return
        import mlflow

        self._call("set_tags", lambda: mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_dict(self, obj: dict[str, Any], artifact_file: str) -> None:
        if not self.available:
            return
        import mlflow

        self._call("log_dict", lambda: mlflow.log_dict(obj, artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.available:
            return
        import mlflow

        self._call("log_artifact", lambda: mlflow.log_artifact(str(path), artifact_path))

    def log_input_table(self, df, source: str, name: str, context: str) -> None:
        """Record the annotation table the run used (MLflow dataset tracking)."""
        if not self.available:
            return
        import mlflow
        import mlflow.data

        def _log():
            from mlflow.data.sources import LocalArtifactDatasetSource

            # a local path given as a DatasetSource: as a string MLflow warns that it "can be
            # interpreted in multiple ways" (two registered readers of local paths)
            where = LocalArtifactDatasetSource(str(Path(source).resolve())) if "://" not in source else source
            ds = mlflow.data.from_pandas(df, source=where, name=name)
            mlflow.log_input(ds, context=context)

        self._call("log_input", _log)

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run any other MLflow call under the same never-fail policy."""
        if not self.available:
            return None
        result = self._call(what, fn)
        return None if result is _FAILED else result
