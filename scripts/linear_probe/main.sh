#!/bin/bash
# Few-shot linear-probe CLIP (CoOp's linear-probe baseline): logistic regression on frozen CLIP image
# features of the few-shot train split, its L2 strength C searched on the val split; one run per seed.
#
#   bash scripts/linear_probe/main.sh DATASET [KEY VALUE ...]
#   e.g. bash scripts/linear_probe/main.sh stanford_cars
#        SHOTS=4 bash scripts/linear_probe/main.sh stanford_cars MODEL.BACKBONE.NAME weights/tiny_clip.pt
#
# DATASET names configs/datasets/<DATASET>.yaml. Trailing KEY VALUE pairs go to train.py as config opts
# (e.g. TRAINER.LINEAR_PROBE.REFINE_STEPS 4); DATASET.NUM_SHOTS is refused there (set SHOTS: it names the
# output folder).
#
# Environment (defaults printed at start):
#   DATA     dataset root (train.py --root)                    default: data
#   OUTPUT   output root                                       default: output
#   SHOTS    training images per class                         default: 16
#   SEEDS    seeds, one run each (they pick the few-shot set)  default: "1 2 3"
#   CFG      configs/trainers/LinearProbeCLIP/<CFG>.yaml       default: vit_b16 (rn50: CoOp's paper backbone)
#   TAG      variant name, appended to the config folder:      default: none
#            <CFG>_<TAG>_<SHOTS>shots
#   PYTHON   interpreter                                       default: python (else python3)
#
# Output (CoOp's layout): $OUTPUT/<DATASET>/LinearProbeCLIP/<CFG>[_<TAG>]_<SHOTS>shots/seed<SEED>
# A finished run (its result.json, written last by train.py: trainers/runs.py) is skipped with
# CoOp's message; an unfinished one is run again into its folder (a saved head is reused, else refitted).
# The script stops with train.py's exit status at the first run that fails.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: [DATA=...] [OUTPUT=...] [SHOTS=16] [SEEDS=\"1 2 3\"] [CFG=vit_b16] [TAG=...] bash $0 DATASET [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
shift
TRAINER=LinearProbeCLIP

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
fewshot_settings vit_b16

print_settings "Linear-probe CLIP few-shot: DATASET=$DATASET" \
    "SHOTS=$SHOTS SEEDS=\"$SEEDS\" CFG=$CFG TAG=$TAG PYTHON=$PYTHON" "$@"

# ---- checks before any run
check_fewshot_settings
[ -f "$REPO/configs/trainers/$TRAINER/$CFG.yaml" ] || fail "CFG: configs/trainers/$TRAINER/$CFG.yaml does not exist"
check_pairs "$@"
args=("$@")
for ((i = 0; i < $#; i += 2)); do
    case ${args[i]} in
        DATASET.NUM_SHOTS) fail "set the shots with SHOTS=${args[i+1]}, not DATASET.NUM_SHOTS (it names the output folder)" ;;
    esac
done


# shellcheck disable=SC2086  # SEEDS is a list of words
run_sweep "$TRAINER" --shots "$SHOTS" --seeds $SEEDS -- "$@"
