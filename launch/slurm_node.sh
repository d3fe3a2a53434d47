#!/usr/bin/env bash
# One node's part of launch/slurm_multi_node.sbatch: srun runs this once per node, and it execs
# torchrun for that node.  Not meant to be run by hand (it reads the job's environment).
#
# Every address comes from SLURM, not from hostnames (which may not resolve on other nodes):
#   --local-addr   this node's SLURM address: what the other nodes are told to connect to
#                  (torchrun would otherwise publish socket.getfqdn())
#   is_host        this node hosts the c10d rendezvous store iff it is HEAD_NODE (torchrun's own
#                  guess resolves the hostname, and fails where it doesn't resolve)
#   GLOO_SOCKET_IFNAME  default: the interface that holds this node's SLURM address (gloo
#                  otherwise binds to what the hostname resolves to, loopback as a last resort);
#                  set it to force one interface name (gloo takes names, not an exclusion list)
#   NCCL_SOCKET_IFNAME  passed through as set; unset, NCCL picks (it skips lo and docker*)
set -euo pipefail
trap '' USR1  # SLURM may signal the step before torchrun (which ignores USR1) is running
# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"

NODE=${SLURMD_NODENAME:-$(hostname)}
NODE_ADDR=$(sv_node_addr "$NODE")
if [[ -z "${GLOO_SOCKET_IFNAME:-}" ]]; then
    GLOO_SOCKET_IFNAME=$(sv_ifname_of "$NODE_ADDR")
    if [[ -n "$GLOO_SOCKET_IFNAME" ]]; then export GLOO_SOCKET_IFNAME; else unset GLOO_SOCKET_IFNAME; fi
fi
IS_HOST=0 HOSTED=""
if [[ "$NODE" == "$HEAD_NODE" ]]; then IS_HOST=1 HOSTED=" (hosted here)"; fi
sv_log "node $NODE (hostname $(hostname), node id ${SLURM_NODEID:-?}): address $NODE_ADDR," \
       "GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-<gloo default>}, NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-<NCCL default>}," \
       "rendezvous $RDZV_ADDR:$RDZV_PORT$HOSTED"
exec "$REPO/launch/torchrun.sh" --nnodes="$SLURM_NNODES" --nproc-per-node="$NPROC_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ADDR:$RDZV_PORT" --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-conf="is_host=$IS_HOST,join_timeout=$RDZV_JOIN_TIMEOUT" --local-addr="$NODE_ADDR" "$@"
