#!/bin/bash
# Few-shot Tip-Adapter (training-free) or Tip-Adapter-F (FINETUNE=True): one run per seed.
#
#   bash scripts/tip_adapter/main.sh DATASET [KEY VALUE ...]
#   e.g. bash scripts/tip_adapter/main.sh stanford_cars
#
# DATASET names configs/datasets/<DATASET>.yaml. Trailing KEY VALUE pairs go to train.py as config opts;
# DATASET.NUM_SHOTS is refused there because it names the output folder (set SHOTS).
#
# Environment (defaults printed at start):
#   DATA     dataset root (train.py --root)                    default: data
#   OUTPUT   output root                                       default: output
#   SHOTS    training images per class                         default: 16
#   SEEDS    seeds, one run each                               default: "1 2 3"
#   CFG      configs/trainers/TipAdapter/<CFG>.yaml            default: vit_b16
#   FINETUNE True: Tip-Adapter-F (cache keys trained)          default: False
#   TAG      variant name, appended to the config folder:      default: none
#            <CFG>_<TAG>_<SHOTS>shots (keeps runs with other extra options apart)
#   PYTHON   interpreter                                       default: python (else python3)
#
# Output (CoOp's layout): $OUTPUT/<DATASET>/TipAdapter/<CFG>[_<TAG>]_<SHOTS>shots/<tip|tip_f>/seed<SEED>
# A finished run (its result.json, written last by train.py: trainers/runs.py) is skipped with
# CoOp's message; an unfinished one is run again into its folder and resumes from its latest checkpoint.
# The script stops with train.py's exit status at the first run that fails.
# Method and options: docs/tip_adapter.md.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: [DATA=...] [OUTPUT=...] [SHOTS=16] [SEEDS=\"1 2 3\"] [CFG=vit_b16] [FINETUNE=False] bash $0 DATASET [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
shift
TRAINER=TipAdapter

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
fewshot_settings vit_b16
FINETUNE=${FINETUNE:-False}

print_settings "TipAdapter few-shot: DATASET=$DATASET" \
    "SHOTS=$SHOTS SEEDS=\"$SEEDS\" CFG=$CFG FINETUNE=$FINETUNE TAG=$TAG PYTHON=$PYTHON" "$@"

# ---- checks before any run
check_fewshot_settings
[[ $FINETUNE =~ ^(True|False)$ ]] || fail "FINETUNE must be True or False, got \"$FINETUNE\""
check_pairs "$@"
args=("$@")
for ((i = 0; i < $#; i += 2)); do
    case ${args[i]} in
        DATASET.NUM_SHOTS) fail "set the shots with SHOTS=${args[i+1]}, not DATASET.NUM_SHOTS (it names the output folder)" ;;
        TRAINER.TIPADAPTER.FINETUNE) fail "set Tip-Adapter-F with FINETUNE=${args[i+1]}, not TRAINER.TIPADAPTER.FINETUNE (it names the output folder)" ;;
    esac
done

# shellcheck disable=SC2086  # SEEDS is a list of words
run_sweep "$TRAINER" --shots "$SHOTS" --seeds $SEEDS --finetune "$FINETUNE" -- "$@"
