#!/usr/bin/env bash
# The real-size benchmark on one CUDA device (docs/performance.md), printing one table; prepared for the day a
# GPU is available: it has not been run yet (no GPU was available when it was written), so its time is an
# estimate (about 8 minutes on one recent GPU).
#
#   scripts/bench_gpu.sh [OUT.json] [extra bench.py arguments ...]
#
# Sections 1, 2 and 5 of scripts/bench.py with a random-weight ViT-B/16 in OpenAI's format (written once into
# the work folder, $BENCH_WORK, default output/bench_gpu): text encoding trimmed vs padded, one step and one
# evaluation per method at Stanford Cars' 196 classes, then every method (zero-shot, linear probe, CoOp, CoOp
# the reference's way, CoCoOp, MixPrompt feature and token K 8) at 16 shots: start-up, step, epoch, test
# phase, peak memory, 3 interleaved rounds. Precision: $BENCH_PREC (default amp; fp16 is CoOp's).
# Real CLIP weights instead of random ones: BENCH_BACKBONE=ViT-B/16 (OpenAI's file in ~/.cache/clip).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OUT=$(absolute "${1:-output/bench_gpu.json}")
[ $# -gt 0 ] && shift
WORK=$(absolute "${BENCH_WORK:-output/bench_gpu}")
PREC=${BENCH_PREC:-amp}
BACKBONE=${BENCH_BACKBONE:-random:ViT-B/16}

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || fail "no CUDA device visible to torch; this script is for a GPU machine (scripts/bench.py runs on CPU)"
mkdir -p "$WORK" "$(dirname "$OUT")"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader || true
uptime

# Section 1 and 2 take --backbone, section 5 --real-backbone: the same weights for both.
START=$(date +%s)
"$PYTHON" "$REPO/scripts/bench.py" --device cuda --prec "$PREC" \
    --backbone "$BACKBONE" --real-backbone "$BACKBONE" \
    --sections text methods real --classes 196 --K 8 --batch 32 --reps 5 --warmup 2 \
    --real-classes 196 --real-shots 16 --real-test-per-class 8 --real-K 8 --real-rounds 3 --real-epochs 2 \
    --real-cocoop-steps 20 --work-dir "$WORK" --json "$OUT" "$@"
echo "bench_gpu.sh: $(( $(date +%s) - START )) s; figures in $OUT"
