"""A throw-away SLURM cluster on this machine, for tests of the launch scripts: one node on
localhost, or several nodes, each in a network namespace of a ``NamespaceNetwork``
(tests/netns.py) with its own address and hostname.

Debian's ``slurm-wlm`` and ``munge`` packages provide the binaries (``.ci/run`` installs them).
Everything else lives in one temporary directory: a munge key and socket, ``slurm.conf``,
state, per-node spool dirs, pid files and logs.  ``munged``, ``slurmctld`` and one ``slurmd``
per node run in the foreground as this test's own processes, each in its own process group,
and are stopped by pid; nothing on the machine (a system munged, another cluster) is touched.
With several nodes, slurmctld runs on the first node and the nodes share the one munged
through its socket file (as real nodes share a key).  Free ports are picked at start, so two
clusters can't collide.

Client commands need ``SLURM_CONF``: use ``cluster.env()`` (it also goes into every job,
because sbatch exports the submitting environment).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
INSTALL_HINT = "apt-get install -y slurm-wlm munge (Debian), as .ci/run does"


def unavailable_reason() -> str | None:
    """Why a local cluster cannot run here, or None if it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}); {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts job steps as the submitting user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _processes():
    """(pid, command line) of every process on this machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name), _cmdline(int(entry.name))


class LocalSlurm:
    """``with LocalSlurm(tmp_dir, cpus=2) as cluster: cluster.sbatch([...])``."""

    def __init__(self, root: str | os.PathLike, cpus: int = 2, partition: str = "debug", network=None):
        self.root = Path(root)
        self.cpus = cpus
        self.partition = partition
        self.network = network  # a created NamespaceNetwork: one node per namespace
        # node name -> the address SLURM (and the launch scripts) use for it
        if network is None:
            self.nodes = {socket.gethostname(): "127.0.0.1"}
        else:
            self.nodes = {name: network.addr(name) for name in network.nodes}
        self.node = next(iter(self.nodes))  # the first node runs slurmctld
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._procs: dict[str, subprocess.Popen] = {}

    # -- life cycle ---------------------------------------------------------------------------
    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra or {})
        return env

    def start(self, timeout: float = 60) -> LocalSlurm:
        for sub in ("munge", "state", "log", *(f"spool/{node}" for node in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))  # a private key: this cluster trusts no other munged
        os.chmod(key, 0o600)
        self._write_conf()
        self._spawn(
            "munged",
            [
                _binary("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], node=self.node)
        self._wait(
            lambda: self._run(["scontrol", "ping"], check=False).returncode == 0,
            timeout,
            "slurmctld does not answer `scontrol ping`",
        )
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", [_binary("slurmd"), "-D", "-N", node, "-f", str(self.conf)], node=node)
        self._wait(self._nodes_ready, timeout, "the nodes did not become idle")
        return self

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (newest first) by their own process groups."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", f"--partition={self.partition}"], check=False)
        for name in (*(f"slurmd-{node}" for node in self.nodes), "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # job steps that outlived slurmd (slurmstepd is its own process) are this cluster's too
        for pid in self._step_daemons():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> LocalSlurm:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- commands -----------------------------------------------------------------------------
    def sbatch(self, args: list[str], env: dict | None = None, cwd: str | os.PathLike | None = None) -> int:
        res = subprocess.run(
            [_binary("sbatch"), "--parsable", *args],
            env=self.env(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {res.stderr.strip()}\n{self.logs()}")
        return int(res.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); {} once forgotten."""
        res = self._run(["scontrol", "show", "job", "--oneliner", str(job_id)], check=False)
        if res.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", res.stdout))

    def scancel(self, *args: str) -> None:
        self._run(["scancel", *args])

    def signal_batch_shell(self, job_id: int | str, sig: signal.Signals = signal.SIGUSR1) -> None:
        """Send ``sig`` once to a running job's batch script, as ``--signal=B:SIG@secs`` does.

        ``scancel --batch --signal`` is not used for array tasks: while other tasks of the array
        are pending, SLURM answers "Job is in transitional state" although it delivered the
        signal, and scancel retries until the job ends, so a requeued task gets it again."""
        task_id = self.job(job_id).get("JobId")
        if not task_id:
            raise RuntimeError(f"no job {job_id}\n{self.logs()}")
        script = f"/job{int(task_id):05d}/slurm_script"
        spool = str(self.root / "spool")
        # the shell itself, not a subshell it forked (same command line): slurmstepd's child
        shells = [
            pid
            for pid, cmdline in _processes()
            if spool in cmdline and script in cmdline and _cmdline(_parent(pid)).startswith("slurmstepd")
        ]
        if len(shells) != 1:
            raise RuntimeError(f"job {job_id}: expected one batch script process, found {shells}\n{self.logs()}")
        os.kill(shells[0], sig)

    def scontrol(self, *args: str) -> str:
        return self._run(["scontrol", *args]).stdout

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for name in ("slurmctld.log", *(f"slurmd-{node}.log" for node in self.nodes)):
            path = self.root / "log" / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    # -- internals ----------------------------------------------------------------------------
    def _run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([_binary(cmd[0]), *cmd[1:]], env=self.env(), capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def _spawn(self, name: str, cmd: list[str], node: str | None = None) -> None:
        if self.network is not None and node is not None:
            cmd = self.network.wrap(node, cmd)
        log = open(self.root / "log" / f"{name}.stdout", "w")
        self._procs[name] = subprocess.Popen(
            cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    out = (self.root / "log" / f"{name}.stdout").read_text(errors="replace")
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{out[-3000:]}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout:.0f} s\n{self.logs()}")

    def _nodes_ready(self) -> bool:
        res = self._run(["sinfo", "--noheader", "--format=%n %t", "--Node"], check=False)
        states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
        return res.returncode == 0 and all(states.get(n) in ("idle", "mix", "alloc") for n in self.nodes)

    def _step_daemons(self) -> list[int]:
        """slurmstepd processes whose command line names this cluster's spool directory."""
        spool = str(self.root / "spool")
        found = []
        for pid, cmdline in _processes():
            if cmdline.startswith("slurmstepd"):
                try:
                    environ = Path("/proc", str(pid), "environ").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if spool in cmdline or str(self.conf) in environ:
                    found.append(pid)
        return found

    def _write_conf(self) -> None:
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=localtest",
                    f"SlurmctldHost={self.node}({self.nodes[self.node]})",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # cred_expire also sets how long a requeued job waits before it may start again
                    # (default 120 s); short here so requeue tests take seconds
                    f"AuthInfo=socket={self.munge_socket},cred_expire=5",
                    f"StateSaveLocation={r / 'state'}",
                    # one slurmd per node on one machine: %n (the node name) keeps their files apart
                    f"SlurmdSpoolDir={r / 'spool' / '%n'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    # no cgroups in containers and on CI: track processes by parentage, bind nothing
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SchedulerType=sched/backfill",
                    # schedule every second, not every 30-60 s: tests wait for jobs to start
                    "SchedulerParameters=sched_interval=1,bf_interval=1",
                    # the node is what this file says, whatever the machine has (CI has 2 cores)
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    "JobRequeue=1",
                    "MinJobAge=600",  # finished jobs stay visible to `scontrol show job` (no slurmdbd here)
                    "KillWait=30",
                    "InactiveLimit=0",
                    "SlurmdTimeout=300",
                    *(
                        f"NodeName={node} NodeAddr={addr} CPUs={self.cpus} RealMemory=2048 State=UNKNOWN"
                        for node, addr in self.nodes.items()
                    ),
                    f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
