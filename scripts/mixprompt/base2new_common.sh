# Shared by base2new_train.sh and base2new_test.sh (sourced with STEP=train|test): MixPrompt's K and
# shared scope, then CoCoOp's base-to-new script for that step.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: [K=8] [DATA=...] [OUTPUT=...] [CFG=vit_b16] [SHOTS=16] bash $0 DATASET SEED [KEY VALUE ...]" >&2
    exit 2
fi
K=${K:-8}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
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
exec bash "$(dirname "${BASH_SOURCE[0]}")/../cocoop/base2new_$STEP.sh" "$1" "$2" \
    TRAINER.MIXPROMPT.SCOPE shared TRAINER.MIXPROMPT.K "$K" "${@:3}"
