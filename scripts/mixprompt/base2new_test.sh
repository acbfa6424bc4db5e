#!/bin/bash
# Base-to-new generalisation for MixPrompt, step 2: evaluate on the new classes.
#
#   bash scripts/mixprompt/base2new_test.sh DATASET SEED [KEY VALUE ...]
#
# Only TRAINER.MIXPROMPT.SCOPE shared (K sub-prompts shared by all classes) can score classes unseen in
# training, so this script sets it; K comes from the environment (K, default 8) and names the run folder
# <CFG>_shared_k<K>[_<TAG>]. Everything else (environment variables DATA OUTPUT CFG SHOTS TAG PYTHON LOADEP,
# output layout, skipping finished runs) is scripts/cocoop/base2new_test.sh; see docs/base2new.md.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: [K=8] [DATA=...] [OUTPUT=...] [CFG=vit_b16] [SHOTS=16] bash $0 DATASET SEED [KEY VALUE ...]" >&2
    exit 2
fi
K=${K:-8}
fail() { echo "ERROR: $*" >&2; exit 2; }
[[ $K =~ ^[1-9][0-9]*$ ]] || fail "K must be a positive integer, got \"$K\""
args=("$@")
for ((i = 2; i < $#; i += 2)); do
    case ${args[i]} in
        TRAINER.MIXPROMPT.K) fail "set K=${args[i+1]:-N} in the environment, not TRAINER.MIXPROMPT.K (it names the output folder)" ;;
        TRAINER.MIXPROMPT.SCOPE) fail "TRAINER.MIXPROMPT.SCOPE is shared in base-to-new (only shared sub-prompts can score new classes)" ;;
    esac
done
export TRAINER=MixPrompt
export CFG=${CFG:-vit_b16}
export TAG=shared_k$K${TAG:+_$TAG}
echo "MixPrompt base-to-new: K=$K (environment variable), TRAINER.MIXPROMPT.SCOPE shared"
exec bash "$(dirname "${BASH_SOURCE[0]}")/../cocoop/base2new_test.sh" "$1" "$2" \
    TRAINER.MIXPROMPT.SCOPE shared TRAINER.MIXPROMPT.K "$K" "${@:3}"
