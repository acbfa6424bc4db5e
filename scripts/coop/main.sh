#!/bin/bash
# Few-shot CoOp (CoOp's scripts/coop/main.sh with its positional settings as environment variables):
# one training run per seed.
#
#   bash scripts/coop/main.sh DATASET [KEY VALUE ...]
#   e.g. bash scripts/coop/main.sh stanford_cars
#        SHOTS=4 NCTX=4 bash scripts/coop/main.sh stanford_cars MODEL.BACKBONE.NAME weights/tiny_clip.pt
#
# DATASET names configs/datasets/<DATASET>.yaml. Trailing KEY VALUE pairs go to train.py as config opts;
# the keys the script sets itself (DATASET.NUM_SHOTS, TRAINER.COOP.N_CTX, TRAINER.COOP.CSC,
# TRAINER.COOP.CLASS_TOKEN_POSITION) are refused there because they name the output folder.
#
# Environment (defaults printed at start):
#   DATA     dataset root (train.py --root)                    default: data
#   OUTPUT   output root                                       default: output
#   SHOTS    training images per class                         default: 16
#   SEEDS    seeds, one run each                               default: "1 2 3"
#   CFG      configs/trainers/CoOp/<CFG>.yaml                  default: vit_b16_ep50 (MixPrompt's recipe;
#            CoOp's paper used rn50 for 8/16 shots, rn50_ep100 for 2/4, rn50_ep50 for 1)
#   NCTX     context tokens (TRAINER.COOP.N_CTX)               default: 16
#   CSC      class-specific context (TRAINER.COOP.CSC)         default: False
#   CTP      class token position (end | middle | front)       default: end
#   TAG      variant name, appended to the config folder:      default: none
#            <CFG>_<TAG>_<SHOTS>shots (keeps runs with other extra options apart)
#   PYTHON   interpreter                                       default: python (else python3)
#
# Output (CoOp's layout): $OUTPUT/<DATASET>/CoOp/<CFG>[_<TAG>]_<SHOTS>shots/nctx<NCTX>_csc<CSC>_ctp<CTP>/seed<SEED>
# A finished run (its result.json, written last by train.py: trainers/runs.py) is skipped with
# CoOp's message; an unfinished one is run again into its folder and resumes from its latest checkpoint.
# The script stops with train.py's exit status at the first run that fails.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: [DATA=...] [OUTPUT=...] [SHOTS=16] [SEEDS=\"1 2 3\"] [CFG=vit_b16_ep50] [NCTX=16] [CSC=False] [CTP=end] bash $0 DATASET [KEY VALUE ...]" >&2
    exit 2
fi
DATASET=$1
shift
TRAINER=CoOp

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
fewshot_settings vit_b16_ep50
NCTX=${NCTX:-16}
CSC=${CSC:-False}
CTP=${CTP:-end}
print_settings "CoOp few-shot: DATASET=$DATASET" \
    "SHOTS=$SHOTS SEEDS=\"$SEEDS\" CFG=$CFG TAG=$TAG NCTX=$NCTX CSC=$CSC CTP=$CTP PYTHON=$PYTHON" "$@"

# ---- checks before any run
[[ $NCTX =~ ^[1-9][0-9]*$ ]] || fail "NCTX must be a positive integer, got \"$NCTX\""
[[ $CSC =~ ^(True|False)$ ]] || fail "CSC must be True or False, got \"$CSC\""
[[ $CTP =~ ^(end|middle|front)$ ]] || fail "CTP must be end, middle or front, got \"$CTP\""
check_fewshot_settings
check_pairs "$@"
args=("$@")
for ((i = 0; i < $#; i += 2)); do
    case ${args[i]} in
        DATASET.NUM_SHOTS) fail "set the shots with SHOTS=${args[i+1]}, not DATASET.NUM_SHOTS (it names the output folder)" ;;
        TRAINER.COOP.N_CTX) fail "set NCTX=${args[i+1]} instead of TRAINER.COOP.N_CTX (it names the output folder)" ;;
        TRAINER.COOP.CSC) fail "set CSC=${args[i+1]} instead of TRAINER.COOP.CSC (it names the output folder)" ;;
        TRAINER.COOP.CLASS_TOKEN_POSITION) fail "set CTP=${args[i+1]} instead of TRAINER.COOP.CLASS_TOKEN_POSITION (it names the output folder)" ;;
    esac
done


# shellcheck disable=SC2086  # SEEDS is a list of words
run_sweep "$TRAINER" --shots "$SHOTS" --seeds $SEEDS --nctx "$NCTX" --csc "$CSC" --ctp "$CTP" -- "$@"
