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

# finished DIR SIGNAL: some log.txt* in DIR (log.txt-<time> are the logs of re-runs) has a line starting
# with SIGNAL, later followed by "* accuracy: X%" -- what CoOp's parse_test_res.py reads.
finished() {
    local log
    for log in "$1"/log.txt*; do
        [ -f "$log" ] || continue
        if awk -v sig="$2" 'index($0, sig) == 1 { seen = 1 }
                            seen && /^\* accuracy: [0-9.eE+-]+%/ { found = 1 }
                            END { exit !found }' "$log"; then
            return 0
        fi
    done
    return 1
}

# run_seeds LABEL RUN_PARENT SCRIPT_OPTS... -- USER_OPTS...
# One few-shot training run per seed in $SEEDS, into RUN_PARENT/seed<SEED>, with $TRAINER, $CFG
# (configs/trainers/$TRAINER/$CFG.yaml), $DATASET, $DATA and $SHOTS; the script's own opts, then the
# user's. A finished run is skipped with CoOp's message, an unfinished one is run again into its folder
# (train.py resumes from the latest checkpoint). Stops with train.py's exit status at the first failure.
run_seeds() {
    local label=$1 parent=$2 n i=0 SEED DIR rc
    shift 2
    local script_opts=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do script_opts+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    n=$(echo $SEEDS | wc -w)
    for SEED in $SEEDS; do
        i=$((i + 1))
        DIR=$parent/seed$SEED
        if finished "$DIR" "Finish training"; then
            echo "Oops! The results exist at $DIR (so skip this job)"
            continue
        fi
        if [ -d "$DIR" ]; then
            echo "==> [$i/$n] $label seed $SEED: unfinished run at $DIR, running it again (resumes from its latest checkpoint)"
        else
            echo "==> [$i/$n] $label seed $SEED -> $DIR"
        fi
        "$PYTHON" "$REPO/train.py" \
            --root "$DATA" \
            --seed "$SEED" \
            --trainer "$TRAINER" \
            --dataset-config-file "$REPO/configs/datasets/$DATASET.yaml" \
            --config-file "$REPO/configs/trainers/$TRAINER/$CFG.yaml" \
            --output-dir "$DIR" \
            DATASET.NUM_SHOTS "$SHOTS" \
            "${script_opts[@]}" "$@"
        rc=$?
        if [ $rc -ne 0 ]; then
            echo "ERROR: $label seed $SEED failed (train.py exit status $rc); output folder: $DIR." >&2
            echo "       Later seeds were not run. Fix the cause and run this command again: finished runs are skipped, this one resumes." >&2
            exit $rc
        fi
    done
    echo "==> $label: done. Results: python scripts/parse_results.py $OUTPUT/$DATASET"
}
