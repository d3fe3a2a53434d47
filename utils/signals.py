"""Preemption signals: remember that one arrived; the loop decides when to act on it.

SLURM sends SIGUSR1 ahead of a time limit or preemption (``--signal=USR1@90``) and SIGTERM when
it cancels; torchrun forwards SIGTERM to its workers.  The handler only sets a flag: the loop
all-reduces it at the next step so every rank stops after the same step, writes a checkpoint,
ends the MLflow run as KILLED and exits with ``PREEMPTED_EXIT_CODE``.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

# Exit status of a run that stopped on a preemption signal after checkpointing.  The SLURM
# scripts requeue the job on it (sysexits EX_TEMPFAIL: "try again later").
PREEMPTED_EXIT_CODE = 75
PREEMPTED_MARKER = "PREEMPTED"  # file written in the output dir by rank 0 for scripts to check

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Installs handlers for ``signals``; ``received`` holds the first signal's name or None."""

    def __init__(self, signals=DEFAULT_SIGNALS):
        self.received: str | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.received is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_preemption_in_data_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: only the training process may stop its data workers.

    SLURM signals every process of a job when it cancels, preempts or requeues it, DataLoader
    workers included.  PyTorch's workers die on SIGTERM, and the training process then fails on
    the lost worker before it can checkpoint.  So a worker ignores SIGUSR1, and takes SIGTERM
    only from its parent (the DataLoader's shutdown and the interpreter's exit send it; ignoring
    it altogether would make that exit wait for torchrun's SIGKILL).  It also exits by itself
    when its parent is gone.
    """
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS: keep PyTorch's behaviour
        return
    # Blocked here, SIGTERM stays blocked in every thread started later (decoders, OpenMP); one
    # thread takes it with the sender's pid.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True, name="sigterm-from-parent"
    ).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(128 + signal.SIGTERM)  # as if killed by it
