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
