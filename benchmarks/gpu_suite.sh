#!/usr/bin/env bash
# Every GPU benchmark of issue #13 on one GPU, in at most 6 minutes, figures written to a folder.
#
#   bash benchmarks/gpu_suite.sh RESULTS_DIR            (from the project root, on the GPU machine)
#   SUITE_SMOKE=1 bash benchmarks/gpu_suite.sh /tmp/s   (CPU, tiny sizes: checks that every step runs)
#
# Steps, most wanted first; each has its own time limit and the suite stops starting new ones once
# SUITE_BUDGET_S (default 360) would be passed, naming what it skipped, so it always fits its budget
# (estimated from earlier H200 runs, ~19 s per ViT-B-32 mode and ~33 s per ViT-L-14 mode: steps 1-4
# fit in 6 minutes, step 5 runs only if time is left, or with SUITE_BUDGET_S=480):
#   1 modes_vitb32_bf16   benchmarks/modes.py, ViT-B-32, bf16-mixed, batch 128: standard, standard_ortho,
#                         standard_ortho@late-penalty (penalty after the forward, as before), linear and
#                         linear@math-attention (the JVP before lean_attention)
#   2 modes_vitl14_fp32   ViT-L-14, 32-true, batch 128: standard, standard_ortho, linear,
#                         linear@math-attention (the linearized targets: <= 1.6x time, <= 1.3x memory)
#   3 penalty             benchmarks/penalty.py on ViT-B-32 and ViT-L-14 (ours / plain / per-matrix floor)
#   4 throughput          benchmarks/throughput.py, ViT-B-32 bf16-mixed batch 128: loop / data-free
#   5 modes_vitb32_fp32   ViT-B-32, 32-true: standard, standard_ortho, linear, and standard@tf32 /
#                         linear@tf32 (trainer.matmul_precision=high) against the default highest
# Writes RESULTS_DIR/<step>.txt and RESULTS_DIR/suite.txt (environment, per-step wall time and exit
# status); copies them to $OUT when that is set (the device tool brings back 8 files at most: 6 here).
# open_clip / Hydra missing (the lent H200 has neither): installs the wheels of .whl/ first
# (bash ../shared/tools/device-prep.sh puts them there; carry ".whl").
set -uo pipefail
DEST=${1:?usage: bash benchmarks/gpu_suite.sh RESULTS_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$DEST"
BUDGET=${SUITE_BUDGET_S:-360}
START=$SECONDS
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=$PWD/.venv/bin/python
PY=$(command -v "$PY")  # absolute: the steps run inside benchmarks/
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

if ! $PY -c "import open_clip, hydra" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "open_clip/hydra missing and no .whl/: run bash ../shared/tools/device-prep.sh here first" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ -n "${SUITE_SMOKE:-}" ]; then  # every step on the CPU at toy sizes
    B32=orthoreg-tiny-vit L14=orthoreg-tiny-vit BATCH=8 STEPS="--steps 1" REPS="--reps 1" DEVICE="--device cpu"
    TP_STEPS="--steps 1 --workers 1"
else
    B32=ViT-B-32 L14=ViT-L-14 BATCH=128 STEPS="--steps 5" REPS="--reps 20" DEVICE=""
    TP_STEPS="--steps 20 --workers 12"
fi

SUMMARY="$DEST/suite.txt"
{
    echo "gpu_suite $(date -u +%FT%TZ), budget ${BUDGET}s, smoke=${SUITE_SMOKE:-0}"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
    git log -1 --format='commit %h %s' 2>/dev/null || true
} >"$SUMMARY"

# step NAME LIMIT_S COMMAND...: runs COMMAND (output to NAME.txt) unless the budget would be passed.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < limit / 2)); then
        echo "$name: skipped, ${left}s of the budget left" | tee -a "$SUMMARY"
        return
    fi
    ((limit > left)) && limit=$left
    local t0=$SECONDS
    (cd benchmarks && timeout "$limit" "$@") >"$DEST/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - t0))s (limit ${limit}s)" | tee -a "$SUMMARY"
}

step modes_vitb32_bf16 110 "$PY" modes.py --archs "$B32" --batch "$BATCH" $STEPS $DEVICE --precision bf16-mixed \
    --modes standard standard_ortho standard_ortho@late-penalty linear linear@math-attention
step modes_vitl14_fp32 130 "$PY" modes.py --archs "$L14" --batch "$BATCH" $STEPS $DEVICE --precision 32-true \
    --modes standard standard_ortho linear linear@math-attention
step penalty 60 bash -c "'$PY' penalty.py --arch '$B32' $REPS $DEVICE && '$PY' penalty.py --arch '$L14' $REPS $DEVICE"
step throughput 60 "$PY" throughput.py --arch "$B32" --batch "$BATCH" $TP_STEPS $DEVICE --precision bf16-mixed
step modes_vitb32_fp32 100 "$PY" modes.py --archs "$B32" --batch "$BATCH" $STEPS $DEVICE --precision 32-true \
    --modes standard standard_ortho linear standard@tf32 linear@tf32

echo "total $((SECONDS - START))s" | tee -a "$SUMMARY"
if [ -n "${OUT:-}" ] && [ "$DEST" != "$OUT" ]; then
    cp "$DEST"/*.txt "$OUT"/
fi
