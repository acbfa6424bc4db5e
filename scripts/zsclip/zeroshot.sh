#!/bin/bash
# Zero-shot CLIP (CoOp's scripts/coop/zeroshot.sh): evaluate the hand-written prompt of the dataset
# ("a photo of a {}." for Stanford Cars) on the test split. No training, so no shots and no seeds.
#
#   bash scripts/zsclip/zeroshot.sh DATASET [KEY VALUE ...]
#   e.g. bash scripts/zsclip/zeroshot.sh stanford_cars
#
# DATASET names configs/datasets/<DATASET>.yaml. Trailing KEY VALUE pairs go to train.py as config opts
# (e.g. MODEL.BACKBONE.NAME /path/ViT-B-16.pt); TRAINER.ZSCLIP.ENSEMBLE is refused there (set ENSEMBLE).
#
# Environment (defaults printed at start):
#   DATA      dataset root (train.py --root)                   default: data
#   OUTPUT    output root                                      default: output
#   CFG       configs/trainers/CoOp/<CFG>.yaml (backbone,      default: vit_b16
#             input size, test batch size)
#   ENSEMBLE  True: average the dataset template and the 7     default: False
#             IMAGENET_TEMPLATES_SELECT prompts (CoOp's ZeroshotCLIP2)
#   TAG       variant name: <CFG>[_ensemble]_<TAG>             default: none
#   PYTHON    interpreter                                      default: python (else python3)
#   (SHOTS and SEEDS are not used.)
#
# Output (CoOp's layout): $OUTPUT/ZeroshotCLIP/<CFG>[_ensemble][_<TAG>]/<DATASET> (_ensemble with ENSEMBLE=True).
# A finished evaluation (its result.json, written last by train.py) is skipped with CoOp's
# message; exit status of train.py when it fails.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: [DATA=...] [OUTPUT=...] [CFG=vit_b16] [ENSEMBLE=False] [TAG=...] bash $0 DATASET [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
shift
TRAINER=ZeroshotCLIP

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
DATA=$(absolute "${DATA:-data}")
OUTPUT=$(absolute "${OUTPUT:-output}")
CFG=${CFG:-vit_b16}
ENSEMBLE=${ENSEMBLE:-False}
TAG=${TAG:-}

print_settings "Zero-shot CLIP: DATASET=$DATASET" \
    "CFG=$CFG ENSEMBLE=$ENSEMBLE TAG=$TAG PYTHON=$PYTHON (SHOTS and SEEDS are not used: no training)" "$@"

[[ $ENSEMBLE =~ ^(True|False)$ ]] || fail "ENSEMBLE must be True or False, got \"$ENSEMBLE\""
[[ $TAG =~ ^[A-Za-z0-9.+-][A-Za-z0-9_.+-]*$ || -z $TAG ]] || fail "TAG may hold letters, digits and . _ + - only, got \"$TAG\""
check_pairs "$@"
args=("$@")
for ((i = 0; i < $#; i += 2)); do
    case ${args[i]} in
        TRAINER.ZSCLIP.ENSEMBLE) fail "set ENSEMBLE=${args[i+1]} instead of TRAINER.ZSCLIP.ENSEMBLE (it names the output folder)" ;;
    esac
done


run_sweep "$TRAINER" --ensemble "$ENSEMBLE" -- "$@"
