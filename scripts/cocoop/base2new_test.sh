#!/bin/bash
# Base-to-new generalisation (CoCoOp's protocol), step 2: evaluate the model trained by base2new_train.sh
# on the new classes (the second half of the sorted labels, re-indexed), from its last-epoch checkpoint.
#
#   bash scripts/cocoop/base2new_test.sh DATASET SEED [KEY VALUE ...]
#
# Give the same arguments and environment as to base2new_train.sh (trailing KEY VALUE pairs included: the
# model must be rebuilt as it was trained). The base accuracy is the final test of the training run; this
# script adds the new accuracy. Then: `python scripts/base2new_results.py output/base2new`.
#
# Environment (defaults printed at start): DATA, OUTPUT, TRAINER, CFG, SHOTS, TAG, PYTHON as in
# base2new_train.sh, and
#   LOADEP   checkpoint epoch to load     default: OPTIM.MAX_EPOCH of the training run (its config.yaml)
#
# Output: $OUTPUT/base2new/test_new/<DATASET>/shots_<SHOTS>/<TRAINER>/<CFG>[_<TAG>]/seed<SEED>
# (model from the same path under train_base/). A finished evaluation (its result.json, trainers/runs.py)
# is skipped; a missing or unfinished training run is an error.
set -uo pipefail

if [ $# -lt 2 ]; then
    echo "usage: [DATA=...] [OUTPUT=...] [TRAINER=CoCoOp] [CFG=...] [SHOTS=16] bash $0 DATASET SEED [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
SEED=$2
shift 2

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
DATA=$(absolute "${DATA:-data}")
OUTPUT=$(absolute "${OUTPUT:-output}")
TRAINER=${TRAINER:-CoCoOp}
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=${SHOTS:-16}
TAG=${TAG:-}

RUN=${CFG}${TAG:+_$TAG}
TAIL=$DATASET/shots_$SHOTS/$TRAINER/$RUN/seed$SEED
MODEL_DIR=$OUTPUT/base2new/train_base/$TAIL
DIR=$OUTPUT/base2new/test_new/$TAIL

# ---- checks before any run
[[ $SEED =~ ^[0-9]+$ ]] || fail "SEED must be a non-negative integer, got \"$SEED\""
[[ $SHOTS =~ ^[1-9][0-9]*$ ]] || fail "SHOTS must be a positive integer, got \"$SHOTS\""
check_pairs "$@"
args=("$@")
for ((i = 0; i < $#; i += 2)); do
    case ${args[i]} in
        DATASET.NUM_SHOTS) fail "set the shots with SHOTS=${args[i+1]}, not DATASET.NUM_SHOTS (it names the output folder)" ;;
        DATASET.SUBSAMPLE_CLASSES) fail "DATASET.SUBSAMPLE_CLASSES is set by the script (base to train, new to test)" ;;
    esac
done


# OPTIM.MAX_EPOCH of the training run, from the resolved config train.py saved (a re-run writes config-latest.yaml)
max_epoch() {
    local config=$1/config-latest.yaml
    [ -f "$config" ] || config=$1/config.yaml
    [ -f "$config" ] || return 0
    awk '/^OPTIM:/ { in_optim = 1; next } /^[^ ]/ { in_optim = 0 }
         in_optim && /^  MAX_EPOCH:/ { print $2; exit }' "$config"
}

LOADEP=${LOADEP:-$(max_epoch "$MODEL_DIR")}

echo "base2new test: DATASET=$DATASET SEED=$SEED TRAINER=$TRAINER CFG=$CFG SHOTS=$SHOTS TAG=$TAG LOADEP=$LOADEP"
echo "  DATA=$DATA OUTPUT=$OUTPUT PYTHON=$PYTHON (environment variables)"
echo "  extra options: ${*:-none}"

if finished "$DIR"; then
    echo "Oops! The results exist at $DIR (so skip this job)"
    exit 0
fi
if ! finished "$MODEL_DIR"; then
    fail "no finished training run at $MODEL_DIR; run base2new_train.sh $DATASET $SEED (same options) first"
fi
[[ $LOADEP =~ ^[1-9][0-9]*$ ]] || fail "LOADEP must be a checkpoint epoch (cannot read OPTIM.MAX_EPOCH from $MODEL_DIR/config.yaml?), got \"$LOADEP\""

"$PYTHON" "$REPO/train.py" \
    --root "$DATA" \
    --seed "$SEED" \
    --trainer "$TRAINER" \
    --dataset-config-file "$REPO/configs/datasets/$DATASET.yaml" \
    --config-file "$REPO/configs/trainers/$TRAINER/$CFG.yaml" \
    --output-dir "$DIR" \
    --model-dir "$MODEL_DIR" \
    --load-epoch "$LOADEP" \
    --eval-only \
    DATASET.NUM_SHOTS "$SHOTS" \
    DATASET.SUBSAMPLE_CLASSES new \
    "$@"
