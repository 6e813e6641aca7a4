#!/usr/bin/env bash
# Multi-node data-parallel fine-tuning with torchrun. Run the SAME command on every node:
#   configs/distributed/torchrun_multinode.sh --config configs/finetune-hfl-roberta.yaml --out /shared/runs/ft
# after editing multinode.env (NODE_RANK differs per node; export NODE_RANK=... also works).
# --out must be on storage every node can read (rank 0 writes it; all ranks resume from it).
# UNTESTED here (one machine): see docs/scaling.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
node_rank="${NODE_RANK:-}"
# shellcheck disable=SC1091
source "${ZHTUNE_MULTINODE_ENV:-$here/multinode.env}"
NODE_RANK="${node_rank:-$NODE_RANK}"
exec torchrun \
  --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RDZV_ID" \
  -m zhtune "${ZHTUNE_COMMAND:-finetune}" "$@"
