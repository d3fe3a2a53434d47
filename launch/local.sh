#!/usr/bin/env bash
# Train on this workstation: one torchrun, one process per GPU (or NPROC_PER_NODE CPU processes).
#
#   launch/local.sh --videos /data/mit --annotations ann.csv --pretrained r3d50.pth.tar
#   NPROC_PER_NODE=2 DEVICE=cpu launch/local.sh            # the built-in demo on 2 CPU processes
#
# Variables:
#   OUTPUT_DIR           output dir (default: runs/local); running the same command again
#                        resumes from its newest valid checkpoint
#   NPROC_PER_NODE       training processes (default: the number of GPUs, else 1)
#   DEVICE               auto (default), cpu or cuda
#   MLFLOW_TRACKING_URI  MLflow server (default: sqlite in the output dir)
#   TRAIN_ARGS           more train_ddp.py options (the script's arguments work too)
#   PYTHON               interpreter (default: .venv/bin/python, else python3)
#
# Stop with a checkpoint: `kill -USR1 <pid>` or `kill <pid>` (the pid is printed at the start);
# the run finishes its step, saves and exits with 75.  Ctrl-C stops at once (the next start
# resumes from the last periodic checkpoint).
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"
sv_init

if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
OUTPUT_DIR=${OUTPUT_DIR:-runs/local}
sv_log "pid $$: $NPROC_PER_NODE processes; kill -USR1 $$ stops with a checkpoint"
sv_train_cmd "$@"

trap 'sv_signal_workers USR1 "${LAUNCHER_PID:-}"' USR1 TERM
sv_start "$REPO/launch/torchrun.sh" --standalone --nnodes=1 --nproc-per-node="$NPROC_PER_NODE" "${TRAIN_CMD[@]}"
sv_wait
sv_finish stop
