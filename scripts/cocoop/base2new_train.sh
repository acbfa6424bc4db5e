#!/bin/bash
# Base-to-new generalisation (CoCoOp's protocol), step 1: train on the base classes.
#
#   bash scripts/cocoop/base2new_train.sh DATASET SEED [KEY VALUE ...]
#
# DATASET names configs/datasets/<DATASET>.yaml (e.g. stanford_cars). DATASET.SUBSAMPLE_CLASSES base keeps
# the first half of the sorted labels (re-indexed); the final test of the run is on the base classes of the
# test split. Trailing KEY VALUE pairs are passed to train.py after the script's own options (so they win).
# Then run base2new_test.sh with the same arguments, and `python scripts/base2new_results.py output/base2new`.
#
# Environment (defaults printed at start):
#   DATA     dataset root (train.py --root)                    default: data
#   OUTPUT   output root                                       default: output
#   TRAINER  trainer class                                     default: CoCoOp
#   CFG      configs/trainers/<TRAINER>/<CFG>.yaml             default: vit_b16_c4_ep10_batch1_ctxv1
#   SHOTS    training images per class                         default: 16
#   TAG      suffix of the config folder: <CFG>_<TAG>          default: none
#   PYTHON   interpreter                                       default: python (else python3)
# scripts/coop/ and scripts/mixprompt/ call this script with their own TRAINER, CFG and options.
#
# Output: $OUTPUT/base2new/train_base/<DATASET>/shots_<SHOTS>/<TRAINER>/<CFG>[_<TAG>]/seed<SEED>
# A finished run (its result.json, trainers/runs.py) is skipped; an
# unfinished one is run again into its folder and resumes from its latest checkpoint.
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
DIR=$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$RUN/seed$SEED

echo "base2new train: DATASET=$DATASET SEED=$SEED TRAINER=$TRAINER CFG=$CFG SHOTS=$SHOTS TAG=$TAG"
echo "  DATA=$DATA OUTPUT=$OUTPUT PYTHON=$PYTHON (environment variables)"
echo "  extra options: ${*:-none}"

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


if finished "$DIR"; then
    echo "Oops! The results exist at $DIR (so skip this job)"
    exit 0
fi
if [ -d "$DIR" ]; then
    echo "Unfinished run at $DIR: running it again (it resumes from its latest checkpoint)"
fi

"$PYTHON" "$REPO/train.py" \
    --root "$DATA" \
    --seed "$SEED" \
    --trainer "$TRAINER" \
    --dataset-config-file "$REPO/configs/datasets/$DATASET.yaml" \
    --config-file "$REPO/configs/trainers/$TRAINER/$CFG.yaml" \
    --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$SHOTS" \
    DATASET.SUBSAMPLE_CLASSES base \
    "$@"
