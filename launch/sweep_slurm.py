"""The SLURM runner of launch/sweep.py: the trials as one job array, logging to one tracking server.

    python -m launch.sweep run SWEEP.yaml -- --partition=gpu --time=12:00:00
    python -m launch.sweep cancel runs/sweeps/NAME

``run`` submits one job array of launch/slurm_single_node.sbatch (slurm_multi_node.sbatch when
resources.nodes is above 1), ``--array=I,J,...%K``: a task per trial that is not FINISHED, at
most K (resources.max_concurrent) at once.  Task i trains trial i (sv_sweep_trial in
launch/common.sh: its config file, output dir and child run id), so a preempted task
checkpoints, requeues itself and continues its own run as a single job does.

The store has one writer.  Trials that write one SQLite file at once lose runs to "database is
locked", so unless --tracking-uri names an http(s) server, ``run`` starts ``mlflow server``
(one worker) over the sweep's store and every trial logs to it.  The server runs on the
submitting host as ``run``'s child, not as a job: its address is known before the array is
submitted, it holds no allocation, and it lives exactly as long as ``run``, which waits for the
array's last task, closes what the tasks left open, prints the summary and then stops the
server by its process group.  Artifacts do not go through the server (--no-serve-artifacts):
each trial writes its checkpoints, plots and models to DIR/mlartifacts itself, as a local
sweep does (every node sees the sweep directory, which holds the trials' output dirs anyway),
so ``mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db`` and ``summary`` find them after
the server has stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch.sweep import (
    LAUNCH_VARIABLES,
    PREEMPTED_EXIT_CODE,
    REPO,
    STATE_FILE,
    create_runs,
    load_state,
    mlflow_client,
    prepare_directory,
    run_status,
    save_state,
    store_client,
    tag_error,
)
from launch.sweep_file import Sweep
from utils.tracking import local_artifact_location, store_unreachable, ui_command

CANCEL_MARKER = "CANCELLED"  # written by `cancel`: the runs the array leaves open end KILLED, not FAILED
POLL_S = 5.0
SERVER_START_TIMEOUT_S = 300.0  # the server imports MLflow's whole web stack before it answers
# squeue lists a task until it has ended; a requeued task stays listed (REQUEUED, then PENDING)
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


# ------------------------------------------------------------------------------------------------
# SLURM
# ------------------------------------------------------------------------------------------------
def slurm(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SystemExit(f"{cmd[0]} not found: `run` without --local submits a SLURM job array") from None
    if check and res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit code {res.returncode}): {res.stderr.strip()}")
    return res


def active_tasks(job_id: str) -> dict[str, str] | None:
    """Task id -> state of the array's tasks that have not ended; None when squeue did not answer."""
    res = slurm(["squeue", "--noheader", "--array", f"--jobs={job_id}", "--format=%i %T"], check=False)
    if res.returncode != 0:
        return {} if "Invalid job id" in res.stderr else None
    tasks = dict(line.split()[:2] for line in res.stdout.splitlines() if len(line.split()) >= 2)
    return {task: state for task, state in tasks.items() if state not in ENDED}


def submit(state: dict[str, Any], sweep_dir: Path, todo: list[dict], url: str, sbatch_args: list[str]) -> str:
    """sbatch the array of the trials in ``todo``; returns its job id."""
    resources = state["resources"]
    script = "slurm_single_node.sbatch" if resources["nodes"] == 1 else "slurm_multi_node.sbatch"
    array = ",".join(str(int(e["trial"])) for e in todo)
    if resources["max_concurrent"]:
        array += f"%{resources['max_concurrent']}"
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCH_VARIABLES, "MLFLOW_RUN_ID", "SWEEP_CONFIG")}
    env.update(
        {
            "SWEEP_DIR": str(sweep_dir),
            "MLFLOW_TRACKING_URI": url,
            "NPROC_PER_NODE": str(resources["nproc_per_node"]),
            "PYTHON": os.environ.get("PYTHON", sys.executable),
            "REPO": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # the user's options first: the array, the node count and the log files are the sweep's
    cmd = [
        "sbatch",
        "--parsable",
        *sbatch_args,
        f"--array={array}",
        f"--nodes={resources['nodes']}",
        f"--job-name={state['name']}",
        f"--output={sweep_dir / 'trials'}/%3a.log",
        "--open-mode=append",
        str(REPO / "launch" / script),
    ]
    try:
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SystemExit("sbatch not found: `run` without --local submits a SLURM job array") from None
    if res.returncode != 0:
        raise SystemExit(f"sbatch failed (exit code {res.returncode}): {res.stderr.strip()}\n  {' '.join(cmd)}")
    return res.stdout.strip().split(";")[0]


# ------------------------------------------------------------------------------------------------
# the tracking server
# ------------------------------------------------------------------------------------------------
class TrackingServer:
    """``mlflow server`` over the sweep's store, in its own process group (stopped by it)."""

    def __init__(self, store: str, sweep_dir: Path, host: str):
        self.store, self.sweep_dir, self.host = store, sweep_dir, host
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> TrackingServer:
        with socket.socket() as s:
            try:
                s.bind((self.host, 0))
            except OSError as exc:
                raise SystemExit(f"--server-host {self.host}: not an address of this host ({exc})") from None
            port = s.getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", self.host, "--port", str(port)]
        cmd += ["--workers", "1", "--backend-store-uri", self.store, "--no-serve-artifacts"]
        if root := local_artifact_location(self.store):
            cmd += ["--default-artifact-root", root]
        log_path = self.sweep_dir / "server.log"
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while store_unreachable(self.url, timeout_s=2.0) is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"the sweep's MLflow server did not start ({' '.join(cmd)}):\n{tail}")
            time.sleep(0.5)
        print(f"sweep: MLflow server {self.url} (pid {self.proc.pid}) over {self.store}", flush=True)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process_group(self.proc.pid)
        self.proc.wait()
        print(f"sweep: MLflow server {self.url} stopped", flush=True)

    def record(self) -> dict[str, Any]:
        return {"url": self.url, "pid": self.proc.pid, "host": socket.gethostname(), "store": self.store}


def stop_process_group(pid: int, wait_s: float = 30.0) -> None:
    """SIGTERM to the group led by ``pid``, SIGKILL if it has not ended after ``wait_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_recorded_server(state: dict[str, Any]) -> None:
    """Stop a server an earlier ``run`` started and could not stop (it was killed): only on the
    host that started it, and only if that pid is still that server."""
    server = state.get("server")
    if not server or server.get("host") != socket.gethostname():
        return
    try:
        cmdline = Path(f"/proc/{server['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return
    if "mlflow" in cmdline and "server" in cmdline and server["store"] in cmdline:
        print(f"sweep: stopping the MLflow server an earlier run left (pid {server['pid']})", flush=True)
        stop_process_group(server["pid"])


# ------------------------------------------------------------------------------------------------
# run and cancel
# ------------------------------------------------------------------------------------------------
class CancelOnSignal:
    """SIGINT/SIGTERM while ``run`` waits: cancel the array (its running trials checkpoint and
    stop) and go on waiting, so the runs are closed and the server stopped before ``run`` exits."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self.job_id: str | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        print(f"sweep: {signal.Signals(signum).name}: cancelling job array {self.job_id}", flush=True)
        (self.sweep_dir / CANCEL_MARKER).write_text(f"{signal.Signals(signum).name} to `run`\n")
        if self.job_id:
            slurm(["scancel", self.job_id], check=False)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_cluster(
    sweep: Sweep, sweep_dir: Path, tracking_uri: str | None, server_host: str, sbatch_args: list[str]
) -> int:
    old = load_state(sweep_dir) if (sweep_dir / STATE_FILE).exists() else {}
    if (job := (old.get("slurm") or {}).get("array_job_id")) and active_tasks(job) != {}:
        raise SystemExit(
            f"job array {job} of the sweep in {sweep_dir} still has tasks queued or running; "
            f"wait for them, or `python -m launch.sweep cancel {sweep_dir}` first"
        )
    stop_recorded_server(old)
    state = prepare_directory(sweep, sweep_dir, tracking_uri)
    state["slurm"] = old.get("slurm")
    store = state["tracking_uri"]
    server = None
    if store.startswith(("http://", "https://")):
        if why := store_unreachable(store):
            raise SystemExit(f"--tracking-uri: {why}")
        url = store
    else:
        server = TrackingServer(store, sweep_dir, server_host).start()
        url = server.url
        state["server"] = server.record()
    stop = None
    try:
        create_runs(state, sweep, sweep_dir, url)
        client = mlflow_client(url)
        todo = [e for e in state["trials"] if run_status(client, e["run_id"]) != "FINISHED"]
        print(
            f"sweep {sweep.name}: {len(sweep.trials)} trials of {', '.join(sweep.swept)} in {sweep_dir}, "
            f"{len(todo)} to run; parent run {state['parent_run_id']}",
            flush=True,
        )
        cancelled = False
        if todo:
            (sweep_dir / CANCEL_MARKER).unlink(missing_ok=True)
            stop = CancelOnSignal(sweep_dir)
            job = submit(state, sweep_dir, todo, url, sbatch_args)
            stop.job_id = job
            state["slurm"] = {"array_job_id": job, "runner_pid": os.getpid(), "host": socket.gethostname()}
            save_state(sweep_dir, state)
            client.update_run(state["parent_run_id"], status="RUNNING")
            limit = state["resources"]["max_concurrent"] or "all"
            print(
                f"sweep: job array {job}: trials {', '.join(e['trial'] for e in todo)}, {limit} at a time; "
                f"logs in {sweep_dir / 'trials'}; `python -m launch.sweep cancel {sweep_dir}` cancels it",
                flush=True,
            )
            wait_for_array(job, client, todo)
            cancelled = (sweep_dir / CANCEL_MARKER).exists()
            close_runs(client, todo, cancelled)
        return finish(client, state, sweep_dir, cancelled)
    finally:
        if stop is not None:
            stop.restore()
        if server is not None:
            server.stop()
            state.pop("server", None)
            save_state(sweep_dir, state)
            print(f"sweep: to look at it: {ui_command(store)}", flush=True)


def wait_for_array(job: str, client, todo: list[dict]) -> None:
    """Until no task of the array is left in the queue, printing each trial's MLflow status as it changes."""
    shown: dict[str, str] = {}
    silent = 0
    while True:
        tasks = active_tasks(job)
        silent = silent + 1 if tasks is None else 0
        if silent * POLL_S > 600:
            raise SystemExit(f"squeue has not answered for {silent * POLL_S:.0f} s; the array is {job}")
        for entry in todo:
            status = run_status(client, entry["run_id"])
            if shown.get(entry["trial"]) != status:
                shown[entry["trial"]] = status
                print(f"sweep: trial {entry['trial']}: {status}", flush=True)
        if tasks == {}:
            return
        time.sleep(POLL_S)


def close_runs(client, todo: list[dict], cancelled: bool) -> None:
    """No child stays RUNNING or SCHEDULED once the array has ended: a task that never started
    (cancelled) or whose processes died before closing the run; a FAILED child gets its error."""
    for entry in todo:
        status = run_status(client, entry["run_id"])
        if status in ("RUNNING", "SCHEDULED"):
            why = "cancelled" if cancelled else "its array task ended without closing the run"
            client.set_tag(entry["run_id"], "sweep.note", f"{why} (see {entry['log']})")
            client.set_terminated(entry["run_id"], status="KILLED" if cancelled else "FAILED")
        if run_status(client, entry["run_id"]) == "FAILED":
            tag_error(client, entry)


def finish(client, state: dict[str, Any], sweep_dir: Path, cancelled: bool) -> int:
    statuses = [run_status(client, e["run_id"]) for e in state["trials"]]
    finished = statuses.count("FINISHED") == len(statuses)
    parent_status = "FINISHED" if finished else "KILLED" if cancelled else "FAILED"
    client.set_terminated(state["parent_run_id"], status=parent_status)
    from launch.sweep_report import print_summary

    print_summary(sweep_dir)
    print(f"sweep: {statuses.count('FINISHED')} of {len(statuses)} trials FINISHED; parent {parent_status}", flush=True)
    if cancelled:
        return PREEMPTED_EXIT_CODE
    return 0 if finished else 1


def cancel(sweep_dir: Path) -> int:
    """scancel the sweep's array.  The ``run`` that waits for it closes the runs and stops the
    server; when that ``run`` is gone, this does it."""
    state = load_state(sweep_dir)
    slurm_state = state.get("slurm")
    if not slurm_state:
        raise SystemExit(f"the sweep in {sweep_dir} was never submitted to SLURM; nothing to cancel")
    job = slurm_state["array_job_id"]
    if active_tasks(job) == {}:
        print(f"sweep: job array {job} has no task left; nothing to cancel", flush=True)
        return 0
    (sweep_dir / CANCEL_MARKER).write_text("python -m launch.sweep cancel\n")
    slurm(["scancel", job])
    print(f"sweep: cancelled job array {job}: running trials checkpoint and stop, the others never start", flush=True)
    if runner_alive(slurm_state):
        print(f"sweep: its `run` (pid {slurm_state['runner_pid']}) closes the runs and stops the server", flush=True)
        return 0
    while active_tasks(job) != {}:
        time.sleep(POLL_S)
    stop_recorded_server(state)
    state.pop("server", None)
    save_state(sweep_dir, state)
    client = store_client(state)
    close_runs(client, state["trials"], cancelled=True)
    client.set_terminated(state["parent_run_id"], status="KILLED")
    return 0


def runner_alive(slurm_state: dict[str, Any]) -> bool:
    if slurm_state.get("host") != socket.gethostname():
        return False
    try:
        cmdline = Path(f"/proc/{slurm_state['runner_pid']}/cmdline").read_bytes()
    except OSError:
        return False
    return b"launch.sweep" in cmdline
