"""python scripts/is_finished.py RUN_DIR: exit status 0 when the run in RUN_DIR is finished, 1 otherwise.

The run scripts' ``finished`` test (scripts/common.sh); the rule itself is ``trainers.runs.is_finished``
(a record that matches the run). A script rather than ``python -m trainers.runs``: the trainers package
imports that module, and running it as ``__main__`` made Python warn on every call.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainers.runs import is_finished  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return 0 if len(argv) == 1 and is_finished(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
