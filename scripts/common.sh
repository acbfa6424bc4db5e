# Shared by the run scripts (sourced, not run): repository root, paths, checks and the finished-run test.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# absolute PATH: PATH made absolute against the current folder
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# fail MESSAGE: one ERROR line on stderr, exit status 2 (bad usage, nothing run)
fail() { echo "ERROR: $*" >&2; exit 2; }

# PYTHON: the interpreter, python unless set (python3 where there is no python)
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python
    command -v python >/dev/null 2>&1 || PYTHON=python3
fi

# check_pairs ARGS...: the extra arguments must be KEY VALUE pairs
check_pairs() { [ $(($# % 2)) -eq 0 ] || fail "extra arguments must be KEY VALUE pairs; got an odd number: $*"; }

# fewshot_settings DEFAULT_CFG: DATA and OUTPUT made absolute; SHOTS, SEEDS, TAG and CFG from the
# environment or their defaults
fewshot_settings() {
    DATA=$(absolute "${DATA:-data}")
    OUTPUT=$(absolute "${OUTPUT:-output}")
    SHOTS=${SHOTS:-16}
    SEEDS=${SEEDS:-1 2 3}
    TAG=${TAG:-}
    CFG=${CFG:-$1}
}

# print_settings TITLE SETTINGS ARGS...: the lines every run script prints first (ARGS: the extra options)
print_settings() {
    echo "$1"
    echo "  DATA=$DATA"
    echo "  OUTPUT=$OUTPUT"
    echo "  $2"
    shift 2
    echo "  extra options: ${*:-none}"
}

# check_fewshot_settings: SHOTS a positive integer, SEEDS non-empty non-negative integers, TAG a safe name
check_fewshot_settings() {
    [[ $SHOTS =~ ^[1-9][0-9]*$ ]] || fail "SHOTS must be a positive integer, got \"$SHOTS\""
    [ -n "${SEEDS// /}" ] || fail "SEEDS is empty"
    [[ $TAG =~ ^[A-Za-z0-9.+-][A-Za-z0-9_.+-]*$ || -z $TAG ]] || fail "TAG may hold letters, digits and . _ + - only, got \"$TAG\""
    local s; for s in $SEEDS; do [[ $s =~ ^[0-9]+$ ]] || fail "SEEDS must be non-negative integers, got \"$s\""; done
}

# finished DIR: the run in DIR is finished (trainers/runs.py, the one home of that rule: its result.json
# exists; for a folder written by CoOp itself, its log shows the final "* accuracy: X%")
finished() { "$PYTHON" "$REPO/scripts/is_finished.py" "$1"; }

# run_sweep TRAINER SWEEP_FLAGS... -- USER_OPTS...
# The script's runs through scripts/sweep.py (the one home of the run layout): $DATASET, $DATA, $OUTPUT,
# $CFG and $TAG, the script's own sweep flags (e.g. --shots "$SHOTS" --seeds $SEEDS --K "$K"), then the
# user's KEY VALUE opts. A finished run is skipped with CoOp's message, an unfinished one is run again into
# its folder (train.py resumes from the latest checkpoint). Stops with train.py's exit status at the first
# failure.
run_sweep() {
    local trainer=$1
    shift
    local flags=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do flags+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    "$PYTHON" "$REPO/scripts/sweep.py" --trainers "$trainer" --datasets "$DATASET" --data "$DATA" \
        --output "$OUTPUT" --cfg "$CFG" ${TAG:+--tag "$TAG"} --python "$PYTHON" --stop-on-failure \
        "${flags[@]}" --opts "$@"
}
