#!/bin/bash
# Few-shot CoCoOp (CoOp's protocol, CoCoOp's recipe): one training run per seed.
#
#   bash scripts/cocoop/main.sh DATASET [KEY VALUE ...]
#   e.g. bash scripts/cocoop/main.sh stanford_cars
#
# DATASET names configs/datasets/<DATASET>.yaml. Trailing KEY VALUE pairs go to train.py as config opts;
# DATASET.NUM_SHOTS is refused there because it names the output folder (set SHOTS).
#
# Environment (defaults printed at start):
#   DATA     dataset root (train.py --root)                    default: data
#   OUTPUT   output root                                       default: output
#   SHOTS    training images per class                         default: 16
#   SEEDS    seeds, one run each                               default: "1 2 3"
#   CFG      configs/trainers/CoCoOp/<CFG>.yaml                default: vit_b16_c4_ep10_batch1_ctxv1
#   TAG      variant name, appended to the config folder:      default: none
#            <CFG>_<TAG>_<SHOTS>shots (keeps runs with other extra options apart)
#   PYTHON   interpreter                                       default: python (else python3)
#
# Output (CoCoOp's layout): $OUTPUT/<DATASET>/CoCoOp/<CFG>[_<TAG>]_<SHOTS>shots/seed<SEED>
# A finished run (its result.json, written last by train.py: trainers/runs.py) is skipped with
# CoOp's message; an unfinished one is run again into its folder and resumes from its latest checkpoint.
# The script stops with train.py's exit status at the first run that fails.
# Base-to-new generalisation: scripts/cocoop/base2new_train.sh and base2new_test.sh.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: [DATA=...] [OUTPUT=...] [SHOTS=16] [SEEDS=\"1 2 3\"] [CFG=vit_b16_c4_ep10_batch1_ctxv1] bash $0 DATASET [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
shift
TRAINER=CoCoOp

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
fewshot_settings vit_b16_c4_ep10_batch1_ctxv1

print_settings "CoCoOp few-shot: DATASET=$DATASET" \
    "SHOTS=$SHOTS SEEDS=\"$SEEDS\" CFG=$CFG TAG=$TAG PYTHON=$PYTHON" "$@"

# ---- checks before any run
check_fewshot_settings
check_pairs "$@"
args=("$@")
for ((i = 0; i < $#; i += 2)); do
    case ${args[i]} in
        DATASET.NUM_SHOTS) fail "set the shots with SHOTS=${args[i+1]}, not DATASET.NUM_SHOTS (it names the output folder)" ;;
    esac
done


# shellcheck disable=SC2086  # SEEDS is a list of words
run_sweep "$TRAINER" --shots "$SHOTS" --seeds $SEEDS -- "$@"
