"""Base-to-new results: base, new and H per method, from the run folders of the base2new scripts.

    python scripts/base2new_results.py output/base2new          # or its parent, output/

Layout read (scripts/*/base2new_train.sh and base2new_test.sh):

    ROOT/train_base/<DATASET>/shots_<S>/<TRAINER>/<CFG>/seed<N>/   base accuracy: the final test of the
        training run, on the base classes
    ROOT/test_new/<same tail>/                                      new accuracy: the evaluation on the
        new classes

Each run's accuracy is read from its record (``result.json``; ``trainers/runs.py``), or for folders written
by CoOp itself from its newest log with a final "* accuracy: X%".
Per (dataset, shots, trainer, config): base and new are the means over the seeds that have both results,
and H = 2 * base * new / (base + new) is the harmonic mean of those *means* (CoCoOp's tables), not the mean
of per-seed H. Seeds with only one of the two results are listed below the table and left out.
With several datasets, an "average" row per method covering all of them gives the mean base, mean new and
the H of those means, as in CoCoOp's "Average over 11 datasets".
"""
import argparse
import glob
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trainers.runs import EVAL_SIGNAL, TRAIN_SIGNAL, final_result  # noqa: E402

SEED_DIR = re.compile(r"^seed(-?\d+)$")


def resolve_root(root):
    """ROOT itself when it holds train_base/ or test_new/, else ROOT/base2new."""
    for candidate in (root, os.path.join(root, "base2new")):
        if os.path.isdir(os.path.join(candidate, "train_base")) or os.path.isdir(os.path.join(candidate, "test_new")):
            return candidate
    raise SystemExit(f"ERROR: no train_base/ or test_new/ folder in {root} or {os.path.join(root, 'base2new')}: "
                     "give the base2new output folder of the scripts (e.g. output/base2new)")


def collect(root):
    """{(dataset, shots, trainer, config): {seed: {"base": acc or None, "new": acc or None}}}."""
    runs = defaultdict(lambda: defaultdict(dict))
    for side, signal in (("train_base", TRAIN_SIGNAL), ("test_new", EVAL_SIGNAL)):
        key_name = "base" if side == "train_base" else "new"
        for seed_dir in sorted(glob.glob(os.path.join(root, side, "*", "*", "*", "*", "seed*"))):
            match = SEED_DIR.match(os.path.basename(seed_dir))
            if not match or not os.path.isdir(seed_dir):
                continue
            tail = os.path.relpath(os.path.dirname(seed_dir), os.path.join(root, side))
            dataset, shots, trainer, config = tail.split(os.sep)
            shots = shots[len("shots_"):] if shots.startswith("shots_") else shots
            runs[(dataset, shots, trainer, config)][int(match.group(1))][key_name] = final_result(seed_dir, signal)
    return runs


def harmonic_mean(base, new):
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def mean(values):
    return sum(values) / len(values)


def summarise(runs):
    """(rows, notes): one row per method with paired seeds; notes on seeds left out."""
    rows, notes = [], []
    for key in sorted(runs, key=lambda k: (k[0], k[1], k[2], k[3])):
        seeds = runs[key]
        paired = sorted(s for s, r in seeds.items() if r.get("base") is not None and r.get("new") is not None)
        for seed in sorted(set(seeds) - set(paired)):
            have = [side for side in ("base", "new") if seeds[seed].get(side) is not None]
            missing = [side for side in ("base", "new") if side not in have]
            notes.append(f"{'/'.join(key)}/seed{seed}: no finished {' or '.join(missing)} result, left out")
        if not paired:
            continue
        base = mean([seeds[s]["base"] for s in paired])
        new = mean([seeds[s]["new"] for s in paired])
        rows.append({"dataset": key[0], "shots": key[1], "trainer": key[2], "config": key[3], "seeds": len(paired),
                     "base": base, "new": new, "H": harmonic_mean(base, new)})
    datasets = sorted({row["dataset"] for row in rows})
    if len(datasets) > 1:
        by_method = defaultdict(list)
        for row in rows:
            by_method[(row["shots"], row["trainer"], row["config"])].append(row)
        for (shots, trainer, config), group in sorted(by_method.items()):
            if sorted(r["dataset"] for r in group) != datasets:
                continue
            base, new = mean([r["base"] for r in group]), mean([r["new"] for r in group])
            rows.append({"dataset": f"average ({len(datasets)} datasets)", "shots": shots, "trainer": trainer,
                         "config": config, "seeds": min(r["seeds"] for r in group), "base": base, "new": new,
                         "H": harmonic_mean(base, new)})
    return rows, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the base2new output folder (holding train_base/ and test_new/), or its parent")
    parser.add_argument("--tablefmt", default="github", help="tabulate table format (github, plain, latex, ...)")
    args = parser.parse_args(argv)
    from tabulate import tabulate

    root = resolve_root(args.root)
    rows, notes = summarise(collect(root))
    if not rows:
        print(f"No method in {root} has both a finished base (train_base) and new (test_new) result.")
        for note in notes:
            print(f"Note: {note}")
        return 1
    headers = ["dataset", "shots", "trainer", "config", "seeds", "base", "new", "H"]
    table = [[row[h] for h in headers] for row in rows]
    print(f"Base-to-new results in {root}")
    print("base / new: mean accuracy (%) over seeds; H: harmonic mean of the mean base and mean new accuracy")
    print(tabulate(table, headers=headers, tablefmt=args.tablefmt, floatfmt=".2f"))
    for note in notes:
        print(f"Note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
