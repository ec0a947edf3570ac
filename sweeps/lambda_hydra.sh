#!/usr/bin/env bash
# λ sweep with Hydra multirun: each (task, λ) pair is one job; extra arguments are passed through.
#   bash sweeps/lambda_hydra.sh                       # the quickstart tasks on the tiny CPU model
#   TASKS=mnist MODEL=vit_b32 bash sweeps/lambda_hydra.sh trainer=gpu
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-digits,shapes,colors,patterns}
LAMBDAS=${LAMBDAS:-0.01,0.1,1}
if [ -n "${MODEL:-}" ]; then set -- model="$MODEL" "$@"; else set -- experiment=quickstart "$@"; fi
exec .venv/bin/python train.py -m "$@" mode=standard_ortho dataset="$TASKS" ortho.lam="$LAMBDAS"
