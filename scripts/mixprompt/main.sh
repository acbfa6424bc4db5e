#!/bin/bash
# Few-shot MixPrompt (CoOp's protocol): K sub-prompts per class, one training run per seed.
#
#   bash scripts/mixprompt/main.sh DATASET K [KEY VALUE ...]
#   e.g. bash scripts/mixprompt/main.sh stanford_cars 8
#        CFG=original SEEDS="1" bash scripts/mixprompt/main.sh stanford_cars 8 MODEL.BACKBONE.NAME weights/tiny_clip.pt
#
# DATASET names configs/datasets/<DATASET>.yaml. Trailing KEY VALUE pairs go to train.py as config opts
# (e.g. a local CLIP file: MODEL.BACKBONE.NAME /path/ViT-B-16.pt); the keys the script sets itself
# (DATASET.NUM_SHOTS, TRAINER.MIXPROMPT.K) are refused there because they name the output folder.
#
# Environment (defaults printed at start):
#   DATA     dataset root (train.py --root)                    default: data
#   OUTPUT   output root                                       default: output
#   SHOTS    training images per class                         default: 16
#   SEEDS    seeds, one run each                               default: "1 2 3"
#   CFG      configs/trainers/MixPrompt/<CFG>.yaml             default: vit_b16 (fixed defaults;
#            "seed" = the earlier system's objective and recipe, which collapses;
#            "original" = a hybrid kept for the collapse benchmark)
#   TAG      variant name, appended to the config folder:      default: none
#            <CFG>_<TAG>_<SHOTS>shots (keeps runs with other extra options apart)
#   PYTHON   interpreter                                       default: python (else python3)
#
# Output (CoOp's layout plus K): $OUTPUT/<DATASET>/MixPrompt/<CFG>[_<TAG>]_<SHOTS>shots/k<K>/seed<SEED>
# A finished run (its result.json, written last by train.py: trainers/runs.py) is skipped with
# CoOp's message; an unfinished one is run again into its folder and resumes from its latest checkpoint.
# The script stops with train.py's exit status at the first run that fails.
# Tables: python scripts/parse_results.py $OUTPUT and python scripts/collapse_report.py $OUTPUT (docs/scripts.md).
set -uo pipefail

if [ $# -lt 2 ]; then
    echo "usage: [DATA=...] [OUTPUT=...] [SHOTS=16] [SEEDS=\"1 2 3\"] [CFG=vit_b16] bash $0 DATASET K [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
K=$2
shift 2
TRAINER=MixPrompt

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
fewshot_settings vit_b16

print_settings "MixPrompt few-shot: DATASET=$DATASET K=$K" \
    "SHOTS=$SHOTS SEEDS=\"$SEEDS\" CFG=$CFG TAG=$TAG PYTHON=$PYTHON" "$@"

# ---- checks before any run
[[ $K =~ ^[1-9][0-9]*$ ]] || fail "K must be a positive integer, got \"$K\""
check_fewshot_settings
check_pairs "$@"
args=("$@")
for ((i = 0; i < $#; i += 2)); do
    case ${args[i]} in
        DATASET.NUM_SHOTS) fail "set the shots with SHOTS=${args[i+1]}, not DATASET.NUM_SHOTS (it names the output folder)" ;;
        TRAINER.MIXPROMPT.K) fail "give K as the second argument, not TRAINER.MIXPROMPT.K (it names the output folder)" ;;
    esac
done


# shellcheck disable=SC2086  # SEEDS is a list of words
run_sweep "$TRAINER" --shots "$SHOTS" --seeds $SEEDS --K "$K" -- "$@"
