"""Mark the MLflow run of an output dir FAILED when its training processes died without closing it.

    python launch/close_run.py OUTPUT_DIR

Rank 0 closes its MLflow run itself on every exit it lives through: FINISHED, KILLED after a
preemption checkpoint, FAILED on an error (for example when another rank died and a collective
failed).  When rank 0 itself is killed (SIGKILL, out of memory, a lost node), or hangs in a
collective until torchrun kills it, nothing closes the run and it would show RUNNING forever.
The launch scripts run this after a launch that failed without a preemption checkpoint.

It reads rank 0's local record, OUTPUT_DIR/metrics.jsonl (a "start" event with the run id and
the tracking URI; an "end" event once the run is closed): if the newest start has no end and
MLflow still says RUNNING, the run is set FAILED and an "end" event is appended.  A relaunch
continues the same run (its id is in the checkpoint).  Never fails: problems are printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root's packages
from utils.tracking import shorten_mlflow_retries  # noqa: E402

shorten_mlflow_retries()  # a dead tracking server must cost seconds here too


def open_run(record: Path) -> tuple[str, str] | None:
    """(run id, tracking URI) of the newest start event that has no end event after it."""
    open_start = None
    for line in record.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if event.get("event") == "start":
            open_start = event
        elif event.get("event") == "end":
            open_start = None
    if open_start is None or not open_start.get("run_id"):
        return None
    return open_start["run_id"], open_start["tracking_uri"]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    record = Path(argv[0]) / "metrics.jsonl"
    if not record.exists():
        return 0
    found = open_run(record)
    if found is None:
        return 0
    run_id, uri = found
    try:
        import mlflow

        client = mlflow.MlflowClient(uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return 0
        client.set_terminated(run_id, status="FAILED")
        client.set_tag(run_id, "stop_reason", "training processes died (closed by launch/close_run.py)")
    except Exception as exc:  # the server is down, the store moved: say so, never fail the job script
        print(f"close_run: could not mark MLflow run {run_id} at {uri} FAILED: {type(exc).__name__}: {exc}")
        return 0
    with open(record, "a") as fh:
        fh.write(
            json.dumps({"time": time.time(), "event": "end", "status": "FAILED", "by": "launch/close_run.py"}) + "\n"
        )
    print(f"close_run: MLflow run {run_id} marked FAILED (its processes died without closing it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
