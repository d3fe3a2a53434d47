"""Hyper-parameter sweeps: one MLflow parent run, one child run per trial, each trial one train_ddp.py run.

    python -m launch.sweep run configs/sweeps/demo_lr.yaml --local   # trials one after another here
    python -m launch.sweep run SWEEP.yaml -- --partition=gpu         # a SLURM job array (launch/sweep_slurm.py)
    python -m launch.sweep cancel runs/sweeps/NAME                   # cancel that array
    python -m launch.sweep status runs/sweeps/demo_lr                # each trial: values, state, best so far
    python -m launch.sweep summary runs/sweeps/demo_lr               # the table, the best trial, a plot

``run`` checks the whole sweep file first (launch/sweep_file.py), then writes the sweep directory:

    DIR/sweep.yaml        the sweep file as it was run     DIR/sweep.json   the trials and their run ids
    DIR/trials/003.yaml   trial 3's whole config           DIR/trials/003/  its output dir (checkpoints...)
    DIR/trials/003.log    its output                       DIR/mlflow.db    the store (unless you give one)

The sweep creates the parent run and every child run (SCHEDULED, tagged with the parent's id,
which is what nests them in the MLflow UI) before any trial starts, and starts each trial with
its child's id in MLFLOW_RUN_ID: train_ddp.py continues that run instead of creating one, and a
resumed trial continues it from its checkpoint.  So a trial has one run id from the first
start on, and running the same command again skips the FINISHED trials and resumes the others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from launch.sweep_file import Sweep, SweepFileError, Trial, load_sweep
from utils.atomic import atomic_write_text
from utils.cli import CommandLineParser, run_entry_point
from utils.tracking import absolute_tracking_uri, local_artifact_location, store_unreachable, ui_command

REPO = Path(__file__).resolve().parents[1]
STATE_FILE = "sweep.json"
PREEMPTED_EXIT_CODE = 75  # train_ddp.py and launch/local.sh: stopped after a checkpoint, resumable
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# Variables launch/local.sh would add to every trial's command line: a trial's config file is
# its whole configuration, so they are not passed on.
LAUNCH_VARIABLES = ("TRAIN_ARGS", "RUN_NAME", "DEVICE", "OUTPUT_DIR", "NPROC_PER_NODE")


# ------------------------------------------------------------------------------------------------
# the sweep directory
# ------------------------------------------------------------------------------------------------
def trial_paths(sweep_dir: Path, trial: Trial) -> tuple[Path, Path, Path]:
    """(config file, output dir, log) of a trial."""
    trials = sweep_dir / "trials"
    return trials / f"{trial.name}.yaml", trials / trial.name, trials / f"{trial.name}.log"


def load_state(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / STATE_FILE
    if not path.exists():
        raise SystemExit(f"{sweep_dir} is not a sweep directory (no {STATE_FILE}); `run` makes one")
    return json.loads(path.read_text())


def save_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(sweep_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")


def trial_config_text(sweep: Sweep, trial: Trial, options: dict[str, Any]) -> str:
    header = (
        f"# trial {trial.name} of sweep {sweep.name} ({sweep.path}): {trial.describe()}\n"
        "# written by `python -m launch.sweep run`; the whole config of this trial\n"
    )
    return header + yaml.safe_dump(options, sort_keys=False)


def prepare_directory(sweep: Sweep, sweep_dir: Path, tracking_uri: str | None) -> dict[str, Any]:
    """Write (or, on a re-run, check) the sweep directory; returns its state without run ids yet.
    A re-run must describe the same trials: a changed file would mix two sweeps in one parent."""
    old = load_state(sweep_dir) if (sweep_dir / STATE_FILE).exists() else None
    if old is not None:
        if tracking_uri and absolute_tracking_uri(tracking_uri) != old["tracking_uri"]:
            raise SystemExit(
                f"{sweep_dir} logs to {old['tracking_uri']}, not {tracking_uri}; use another --dir for another store"
            )
        uri = old["tracking_uri"]
    else:
        uri = absolute_tracking_uri(
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{sweep_dir / 'mlflow.db'}"
        )
    trials = []
    for trial in sweep.trials:
        config, out_dir, log = trial_paths(sweep_dir, trial)
        options = sweep.trial_options(trial, out_dir, uri)
        if old is not None:
            written = yaml.safe_load(config.read_text()) if config.exists() else None
            if written != options:
                raise SystemExit(
                    f"{sweep.path} no longer describes the sweep in {sweep_dir} (trial {trial.name}: "
                    f"{_difference(written, options)}); run it with another --dir, or restore the file "
                    f"({sweep_dir / 'sweep.yaml'} is the one it was run with)"
                )
        trials.append(
            {
                "trial": trial.name,
                "overrides": trial.overrides,
                "config": str(config),
                "output_dir": str(out_dir),
                "log": str(log),
                "run_id": None,
            }
        )
    if old is not None and len(old["trials"]) != len(trials):
        raise SystemExit(
            f"{sweep.path} now has {len(trials)} trials, the sweep in {sweep_dir} {len(old['trials'])}; "
            "run it with another --dir"
        )
    (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    for trial, entry in zip(sweep.trials, trials):
        if old is None:
            text = trial_config_text(sweep, trial, sweep.trial_options(trial, Path(entry["output_dir"]), uri))
            atomic_write_text(entry["config"], text)
    if old is None:
        shutil.copyfile(sweep.path, sweep_dir / "sweep.yaml")
    return {
        "name": sweep.name,
        "sweep_file": str(sweep.path),
        "base": str(sweep.base) if sweep.base else None,
        "tracking_uri": uri,
        "experiment": sweep.experiment,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "swept": sweep.swept,
        "resources": {
            "nproc_per_node": sweep.nproc_per_node,
            "nodes": sweep.nodes,
            "max_concurrent": sweep.max_concurrent,
        },
        "parent_run_id": old["parent_run_id"] if old else None,
        "trials": [{**entry, "run_id": old["trials"][i]["run_id"] if old else None} for i, entry in enumerate(trials)],
    }


def _difference(written: dict | None, options: dict) -> str:
    if written is None:
        return "its config file is missing"
    changed = sorted(k for k in set(written) | set(options) if written.get(k) != options.get(k))
    return ", ".join(f"{k}: {written.get(k)!r} -> {options.get(k)!r}" for k in changed)


# ------------------------------------------------------------------------------------------------
# the MLflow record: one parent, a child per trial
# ------------------------------------------------------------------------------------------------
def mlflow_client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def live_uri(state: dict[str, Any]) -> str:
    """Where to talk to the sweep's store now: its tracking server while one serves it (the
    server must stay its only writer), else the store itself."""
    server = state.get("server")
    if server and store_unreachable(server["url"]) is None:
        return server["url"]
    return state["tracking_uri"]


def store_client(state: dict[str, Any]):
    """A client of the sweep's existing store (status and summary read it; they never create one)."""
    uri = live_uri(state)
    if why := store_unreachable(uri):
        raise SystemExit(f"the MLflow store of sweep {state['name']} cannot be read: {why}")
    return mlflow_client(uri)


def experiment_id(client, name: str, uri: str) -> str:
    """The experiment's id, created (with artifacts beside a sqlite store) if it does not exist."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=local_artifact_location(uri))


def _find_run(client, exp_id: str, tags: dict[str, str]) -> str | None:
    """The run carrying all these tags (a run created before an interruption lost its id)."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def create_runs(state: dict[str, Any], sweep: Sweep, sweep_dir: Path, client_uri: str | None = None) -> None:
    """The parent run (holding the sweep file) and one SCHEDULED child per trial, each created
    once: ids already in the state, or found by their tags, are reused.  ``client_uri``: the
    tracking server that serves the store, if one does (the experiment's artifacts still go
    beside a sqlite store, where every trial writes them itself)."""
    client = mlflow_client(client_uri or state["tracking_uri"])
    exp_id = experiment_id(client, state["experiment"], state["tracking_uri"])
    parent_tags = {"sweep.dir": str(sweep_dir), "sweep.role": "parent"}
    parent = state["parent_run_id"] or _find_run(client, exp_id, parent_tags)
    if parent is None:
        parent = client.create_run(
            exp_id,
            run_name=sweep.name,
            tags={**parent_tags, "sweep.name": sweep.name, "sweep.trials": str(len(sweep.trials))},
        ).info.run_id
        for key, value in {
            "sweep_file": sweep.path,
            "base": sweep.base or "",
            "metric": sweep.metric,
            "mode": sweep.mode,
            "swept": ",".join(sweep.swept),
            "trials": len(sweep.trials),
            "nproc_per_node": sweep.nproc_per_node,
            "nodes": sweep.nodes,
            "max_concurrent": sweep.max_concurrent or "",
        }.items():
            client.log_param(parent, key, str(value))
        client.log_artifact(parent, str(sweep_dir / "sweep.yaml"), "sweep")
        if sweep.base:
            client.log_artifact(parent, str(sweep.base), "sweep")
    state["parent_run_id"] = parent
    save_state(sweep_dir, state)
    for trial, entry in zip(sweep.trials, state["trials"]):
        if entry["run_id"]:
            continue
        child_tags = {"mlflow.parentRunId": parent, "sweep.trial": trial.name}
        run_id = _find_run(client, exp_id, child_tags)
        if run_id is None:
            tags = {**child_tags, "sweep.name": sweep.name, "sweep.overrides": trial.describe()}
            run_id = client.create_run(exp_id, run_name=f"{sweep.name}-{trial.name}", tags=tags).info.run_id
            client.update_run(run_id, status="SCHEDULED")
        entry["run_id"] = run_id
        save_state(sweep_dir, state)


def run_status(client, run_id: str) -> str:
    return client.get_run(run_id).info.status


# ------------------------------------------------------------------------------------------------
# the local runner
# ------------------------------------------------------------------------------------------------
class StopRequest:
    """SIGINT/SIGTERM: the running trial is asked to checkpoint and stop (SIGTERM to
    launch/local.sh, which passes it on as SIGUSR1), and no further trial starts.  A second
    signal kills the trial's processes at once."""

    def __init__(self):
        self.signals = 0
        self.launcher: subprocess.Popen | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        running = self.launcher is not None and self.launcher.poll() is None
        if self.signals == 1:
            print(f"sweep: {signal.Signals(signum).name}: stopping after the current trial's checkpoint", flush=True)
            if running:
                os.kill(self.launcher.pid, signal.SIGTERM)
        elif running:
            print("sweep: second signal: killing the current trial's processes", flush=True)
            os.killpg(self.launcher.pid, signal.SIGKILL)

    @property
    def requested(self) -> bool:
        return self.signals > 0

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def launch_trial(entry: dict[str, Any], state: dict[str, Any], stop: StopRequest) -> int:
    """Train one trial with launch/local.sh (torchrun on this machine), continuing its child run;
    its output goes to the terminal and its log.  Returns the launcher's exit code."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(
        {
            "MLFLOW_RUN_ID": entry["run_id"],
            "MLFLOW_TRACKING_URI": state["tracking_uri"],
            "OUTPUT_DIR": entry["output_dir"],
            "NPROC_PER_NODE": str(state["resources"]["nproc_per_node"]),
            "PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
        }
    )
    cmd = ["bash", str(REPO / "launch" / "local.sh"), "--config", entry["config"]]
    with open(entry["log"], "a") as log:
        # its own session: a Ctrl-C in the terminal reaches the sweep, which stops the trial cleanly
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        stop.launcher = proc
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(f"[trial {entry['trial']}] {line}")
            sys.stdout.flush()
        code = proc.wait()
        stop.launcher = None
    return code


def run_local(state: dict[str, Any], sweep_dir: Path) -> int:
    client = mlflow_client(state["tracking_uri"])
    parent = state["parent_run_id"]
    client.update_run(parent, status="RUNNING")
    stop = StopRequest()
    stopped = False
    try:
        for entry in state["trials"]:
            label = f"trial {entry['trial']} ({_describe(entry['overrides'])})"
            if run_status(client, entry["run_id"]) == "FINISHED":
                print(f"sweep: {label}: FINISHED, skipped", flush=True)
                continue
            if stop.requested:
                stopped = True
                break
            print(f"sweep: {label}: starting (log {entry['log']})", flush=True)
            code = launch_trial(entry, state, stop)
            stopped = stop.requested or code == PREEMPTED_EXIT_CODE
            close_trial_run(client, entry, code, stopped)
            print(f"sweep: {label}: {run_status(client, entry['run_id'])} (exit code {code})", flush=True)
            if stopped:
                break
    finally:
        stop.restore()
    statuses = [run_status(client, e["run_id"]) for e in state["trials"]]
    if stopped:
        client.set_terminated(parent, status="KILLED")
        print(
            f"sweep: stopped; {statuses.count('FINISHED')} of {len(statuses)} trials FINISHED. "
            "Run the same command again to resume.",
            flush=True,
        )
        return PREEMPTED_EXIT_CODE
    finished = statuses.count("FINISHED") == len(statuses)
    client.set_terminated(parent, status="FINISHED" if finished else "FAILED")
    from launch.sweep_report import print_summary

    print_summary(sweep_dir)
    return 0 if finished else 1


def close_trial_run(client, entry: dict[str, Any], code: int, stopped: bool) -> None:
    """Leave no child RUNNING or SCHEDULED once its launcher has exited.  train_ddp.py closes its
    run itself on every exit it lives through (and launch/close_run.py after a crash); this covers
    a trial stopped before it started its run, and a trial that found its training already done
    (its final checkpoint written, its run closed by nothing)."""
    run_id = entry["run_id"]
    client.set_tag(run_id, "sweep.exit_code", str(code))
    status = run_status(client, run_id)
    if status not in TERMINAL or (code == 0 and status != "FINISHED"):
        if code == 0:
            client.set_tag(run_id, "sweep.note", "train_ddp.py found this trial's training already done")
            client.set_terminated(run_id, status="FINISHED")
        else:
            client.set_terminated(run_id, status="KILLED" if stopped else "FAILED")
    if run_status(client, run_id) == "FAILED":
        tag_error(client, entry)


def tag_error(client, entry: dict[str, Any]) -> None:
    """Tag a FAILED child ``sweep.error`` with the error in its log, so the MLflow UI says why."""
    log = Path(entry["log"])
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    client.set_tag(entry["run_id"], "sweep.error", (error_line(lines) or f"no error in {log}")[:5000])


def error_line(lines: list[str]) -> str | None:
    """The newest error of a trial's log: an entry point's ``error: ...`` line, else the last
    exception line of a traceback other than torchrun's report that a worker failed (which
    names no cause), else the last line."""
    own = [line for line in lines if line.startswith("error: ")]
    raised = [
        line
        for line in lines
        if re.match(r"[\w.]+(Error|Exception|Interrupt)\b", line) and "ChildFailedError" not in line
    ]
    text = [line for line in lines if line.strip()]
    found = own or raised or text
    return found[-1].strip() if found else None


def _describe(overrides: dict[str, Any]) -> str:
    return Trial(0, overrides).describe()


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="python -m launch.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run (or resume) the sweep a sweep file describes",
        usage="python -m launch.sweep run SWEEP_FILE [options] [-- SBATCH_OPTION ...]",
        epilog="Without --local the trials are one SLURM job array; options after -- go to sbatch.",
    )
    run.add_argument("sweep_file", help="the sweep file (YAML; see configs/sweeps/)")
    run.add_argument("--local", action="store_true", help="run the trials one after another on this machine")
    run.add_argument("--dir", default=None, help="the sweep directory (default: runs/sweeps/NAME)")
    run.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store for the parent and the trials (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///DIR/mlflow.db); on SLURM an http(s) server is used as it is, "
        "any other store through a server the sweep starts",
    )
    run.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="SLURM: trials running at once (default: resources.max_concurrent of the sweep file, else no limit)",
    )
    run.add_argument(
        "--server-host",
        default="127.0.0.1",
        help="SLURM: the address the sweep's tracking server listens on; it must be an address of this host "
        "that the compute nodes reach (default: 127.0.0.1, enough when the trials run on this host)",
    )
    for name, text in (
        ("status", "each trial's values, state and best metric so far"),
        ("summary", "the trials ranked by the sweep's metric, a plot logged to the parent run"),
        ("cancel", "cancel the sweep's SLURM job array (its running trials checkpoint and stop)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("dir", help="the sweep directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)  # the rest is sbatch's
    args = build_parser().parse_args(argv[:split])
    args.sbatch_args = argv[split + 1 :]
    if args.command in ("status", "summary"):
        from launch.sweep_report import print_status, print_summary

        (print_status if args.command == "status" else print_summary)(Path(args.dir).resolve())
        return 0
    if args.command == "cancel":
        from launch.sweep_slurm import cancel

        return cancel(Path(args.dir).resolve())
    try:
        sweep = load_sweep(args.sweep_file)
    except SweepFileError as exc:
        raise SystemExit(str(exc)) from None
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            raise SystemExit(f"--max-concurrent: a whole number >= 1, got {args.max_concurrent}")
        sweep.max_concurrent = args.max_concurrent
    if args.local and args.sbatch_args:
        raise SystemExit(f"sbatch options ({' '.join(args.sbatch_args)}) with --local: the trials run here")
    if args.local and sweep.nodes != 1:
        raise SystemExit(f"{sweep.path}: resources.nodes is {sweep.nodes}; --local runs on this one machine")
    sweep_dir = Path(args.dir or Path("runs") / "sweeps" / sweep.name).resolve()
    if not args.local:
        from launch.sweep_slurm import run_cluster

        return run_cluster(sweep, sweep_dir, args.tracking_uri, args.server_host, args.sbatch_args)
    state = prepare_directory(sweep, sweep_dir, args.tracking_uri)
    create_runs(state, sweep, sweep_dir)
    print(
        f"sweep {sweep.name}: {len(sweep.trials)} trials of {', '.join(sweep.swept)} in {sweep_dir}; "
        f"parent run {state['parent_run_id']}; to look at it: {ui_command(state['tracking_uri'])}",
        flush=True,
    )
    return run_local(state, sweep_dir)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
