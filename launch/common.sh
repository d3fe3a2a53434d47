# shellcheck shell=bash
# Shared by launch/local.sh and launch/slurm_*.sbatch (sourced, not run).
#
# The contract with train_ddp.py (utils/signals.py): on SIGUSR1 or SIGTERM every rank finishes
# its step, rank 0 writes a checkpoint and OUTPUT_DIR/PREEMPTED, the MLflow run ends KILLED and
# the workers exit with 75.  torchrun reports a failed worker with its own exit code, so the
# marker file, not the exit code, tells the scripts that the run stopped to be resumed.

PREEMPTED_MARKER=PREEMPTED

sv_log() { echo "[launch $(date '+%F %T')] $*"; }

# REPO (where train_ddp.py is; sbatch runs a copy of the script, so it can't find itself:
# submit from the repository root or set REPO) and PYTHON (the repo's .venv if there is one).
sv_init() {
    REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
    if [[ ! -f "$REPO/train_ddp.py" ]]; then
        echo "launch: $REPO/train_ddp.py not found; submit from the repository root or set REPO" >&2
        exit 2
    fi
    cd "$REPO"
    if [[ -z "${PYTHON:-}" ]]; then
        if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
    fi
    export PYTHON
}

# TRAIN_CMD: train_ddp.py and its options.  Order matters (the last copy of a flag wins):
# the script's defaults, then TRAIN_ARGS and the script's own arguments, then the output
# directory and --resume auto, which a requeued job needs to find its checkpoint.
sv_train_cmd() {
    local -a user=()
    read -r -a user <<< "${TRAIN_ARGS:-}"
    TRAIN_CMD=(train_ddp.py)
    [[ -n "${SWEEP_CONFIG:-}" ]] && TRAIN_CMD+=(--config "$SWEEP_CONFIG")
    [[ -n "${MLFLOW_TRACKING_URI:-}" ]] && TRAIN_CMD+=(--tracking-uri "$MLFLOW_TRACKING_URI")
    [[ -n "${DEVICE:-}" ]] && TRAIN_CMD+=(--device "$DEVICE")
    [[ -n "${RUN_NAME:-}" ]] && TRAIN_CMD+=(--run-name "$RUN_NAME")
    TRAIN_CMD+=("${user[@]}" "$@" --output-dir "$OUTPUT_DIR" --resume auto)
}

# A task of a sweep's job array (`python -m launch.sweep run` submits the array with SWEEP_DIR
# set): task i trains trial i of the sweep with its config file, its output dir and its MLflow
# child run (MLFLOW_RUN_ID, read from SWEEP_DIR/sweep.json), so a requeued task continues the
# same run from its own checkpoint.  Without SWEEP_DIR, nothing changes.
sv_sweep_trial() {
    [[ -n "${SWEEP_DIR:-}" ]] || return 0
    if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        echo "launch: SWEEP_DIR is set but this is no array task; submit sweeps with python -m launch.sweep run" >&2
        exit 2
    fi
    local trial
    trial=$(printf '%03d' "$SLURM_ARRAY_TASK_ID")
    OUTPUT_DIR=$SWEEP_DIR/trials/$trial
    SWEEP_CONFIG=$SWEEP_DIR/trials/$trial.yaml
    read -r MLFLOW_RUN_ID RUN_NAME < <("$PYTHON" -c 'import json, sys
state = json.load(open(sys.argv[1]))
entry = state["trials"][int(sys.argv[2])]
print(entry["run_id"], state["name"] + "-" + entry["trial"])' "$SWEEP_DIR/sweep.json" "$SLURM_ARRAY_TASK_ID") || true
    if [[ -z "$MLFLOW_RUN_ID" || "$MLFLOW_RUN_ID" == None ]]; then
        echo "launch: trial $trial of $SWEEP_DIR has no MLflow run id in sweep.json" >&2
        exit 2
    fi
    export MLFLOW_RUN_ID
    # several trials' rendezvous may share a head node (launch/slurm_multi_node.sbatch)
    RDZV_PORT=${RDZV_PORT:-$((29500 + SLURM_ARRAY_TASK_ID % 1000))}
    sv_log "sweep $SWEEP_DIR: trial $trial, MLflow run $MLFLOW_RUN_ID"
}

# Start a launcher (torchrun, or srun running torchrun) in the background so that this shell
# can run its USR1 trap while it waits.  A marker left by an earlier incarnation that then
# failed must not requeue this one.
sv_start() {
    mkdir -p "$OUTPUT_DIR"
    rm -f "$OUTPUT_DIR/$PREEMPTED_MARKER"
    sv_log "output dir $OUTPUT_DIR"
    sv_log "running: $*"
    "$@" &
    LAUNCHER_PID=$!
}

# Wait for the launcher; a trapped signal interrupts `wait`, so wait again until it has exited.
sv_wait() {
    LAUNCH_RC=0
    while true; do
        wait "$LAUNCHER_PID" && LAUNCH_RC=0 || LAUNCH_RC=$?
        kill -0 "$LAUNCHER_PID" 2> /dev/null || break
    done
    sv_log "launcher exited with $LAUNCH_RC"
}

# SIGUSR1 to the processes torchrun started (torchrun itself ignores it, see torchrun.sh).
sv_signal_workers() {
    local sig=$1 torchrun_pid=$2
    sv_log "SIG$sig: asking the training processes to checkpoint and stop"
    [[ -n "$torchrun_pid" ]] && pkill "-$sig" -P "$torchrun_pid" || true
}

sv_preempted() { [[ -f "$OUTPUT_DIR/$PREEMPTED_MARKER" ]]; }

# The end of a launch.  Preempted (the marker is there): under SLURM put the job back in the
# queue (the next incarnation keeps the job id, so it gets the same OUTPUT_DIR and
# `--resume auto` continues from the checkpoint); on a workstation say how to resume.
# Failed otherwise: make sure the MLflow run does not stay RUNNING if rank 0 died with it.
sv_finish() {
    local mode=$1
    if ! sv_preempted; then
        if (( LAUNCH_RC != 0 )); then
            "$PYTHON" "$REPO/launch/close_run.py" "$OUTPUT_DIR" || true
        fi
        exit "$LAUNCH_RC"
    fi
    if [[ "$mode" != requeue ]]; then
        sv_log "stopped after a checkpoint; run the same command again to resume"
        exit 75
    fi
    local restarts=${SLURM_RESTART_COUNT:-0} limit=${MAX_REQUEUES:-50}
    if (( restarts >= limit )); then
        sv_log "preempted, but the job was already requeued $restarts times (MAX_REQUEUES=$limit); not requeueing"
        exit 75
    fi
    sv_log "preempted after a checkpoint ($(tr '\n' ' ' < "$OUTPUT_DIR/$PREEMPTED_MARKER")); requeueing job $SLURM_JOB_ID"
    if ! scontrol requeue "$SLURM_JOB_ID"; then
        sv_log "ERROR: scontrol requeue failed; resume with: OUTPUT_DIR=$OUTPUT_DIR sbatch <this script> <same arguments>"
        exit 75
    fi
    exit 0
}

# The address SLURM uses for a node: its NodeAddr (the node name where slurm.conf gives none),
# as an IPv4 address where that name resolves.  c10d and gloo need an address every node can
# reach; a hostname that resolves only locally (or to 127.0.1.1, as Debian's /etc/hosts does)
# is the classic multi-node hang.
sv_node_addr() {
    local node=$1 addr resolved
    addr=$(scontrol show node "$node" 2> /dev/null | grep -o 'NodeAddr=[^ ]*' | head -n 1 | cut -d= -f2) || true
    addr=${addr:-$node}
    if [[ ! "$addr" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
        resolved=$(getent ahostsv4 "$addr" 2> /dev/null | awk 'NR == 1 {print $1}') || true
        [[ -n "$resolved" ]] && addr=$resolved
    fi
    echo "$addr"
}

# The network interface that holds address $1 on this node (empty if none does, or no `ip`).
sv_ifname_of() {
    command -v ip > /dev/null || return 0
    ip -o -4 addr show | awk -v want="$1" '{split($4, a, "/"); if (a[1] == want) {print $2; exit}}'
}
