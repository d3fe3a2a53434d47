#!/usr/bin/env bash
# torchrun that leaves SIGUSR1 to the training processes (used by the other launch scripts).
#
#   PYTHON=.venv/bin/python launch/torchrun.sh [torchrun options] train_ddp.py [options]
#
# SIGUSR1 means "checkpoint and stop" to train_ddp.py.  SLURM may deliver it to every process
# of a job step (`--signal=USR1@90`, `scancel --signal=USR1`), and torchrun's default action for
# it would kill torchrun, which then kills its workers before they can save.  An ignored signal
# stays ignored across exec, so torchrun ignores it; the workers install their own handler.
# SIGTERM stays torchrun's: it forwards it to the workers and gives them SHUTDOWN_TIMEOUT
# seconds (default 120) to finish the step and write the checkpoint before SIGKILL.
set -euo pipefail
trap '' USR1
exec "${PYTHON:-python3}" -m torch.distributed.run --shutdown-timeout "${SHUTDOWN_TIMEOUT:-120}" "$@"
