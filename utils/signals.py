"""Preemption signals: remember that one arrived; the loop decides when to act on it.

SLURM sends SIGUSR1 ahead of a time limit or preemption (``--signal=USR1@90``) and SIGTERM when
it cancels; torchrun forwards SIGTERM to its workers.  The handler only sets a flag: the loop
all-reduces it at the next step so every rank stops after the same step, writes a checkpoint,
ends the MLflow run as KILLED and exits with ``PREEMPTED_EXIT_CODE``.
"""

from __future__ import annotations

import signal
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
    """DataLoader ``worker_init_fn``: data workers ignore the preemption signals.

    SLURM signals every process of a job when it cancels, preempts or requeues it, DataLoader
    workers included.  PyTorch's workers die on SIGTERM, and the training process then fails on
    the lost worker before it can checkpoint.  The training process decides when to stop; its
    workers exit when it shuts them down, or when it is gone.
    """
    for sig in DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
