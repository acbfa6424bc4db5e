#!/usr/bin/env python
"""Comparison table of the runs under a folder: mean, std and 95% CI of the test accuracy over seeds.

    python scripts/parse_results.py ROOT [ROOT ...] [--format markdown|csv|json] [--keyword accuracy]
                                    [--coop-stats] [--runs]

A run is a folder holding the record ``result.json`` that ``train.py`` writes last, or, for folders written
by CoOp itself, a ``log.txt`` (``trainers/run_index.py``): then its result is what CoOp's
``parse_test_res.py`` reads, the last ``* accuracy: X%`` after ``Finish training`` (after ``=> result`` for
``--eval-only`` runs such as zero-shot CLIP). Runs are grouped by method, dataset, shots, variant (the
trainer's folder-naming keys, e.g. MixPrompt's ``k8``) and config:

- read from the run's record or ``config.yaml`` when present, else from
  the config that CoOp/Dassl print into the log header, else inferred from the path like CoOp's
  layouts (``<dataset>/<Trainer>/<cfg>_<N>shots/[...]/seed<S>``, ``ZeroshotCLIP/<cfg>/<dataset>``,
  ``base2new/<phase>/<dataset>/shots_<N>/<Trainer>/<cfg>/seed<S>``), so logs written by CoOp itself work;
- ``config`` is the trainer YAML's name (``--config-file``; ``<CFG>_<TAG>`` for the scripts' TAG
  variants), with ``(base)`` / ``(new)`` for base-to-new runs and ``(eval)`` for other ``--eval-only``
  runs of a trained method (CoOp's ``eval.sh``); runs of one config whose resolved settings differ (e.g.
  another ``OPTIM.MAX_EPOCH`` passed as an option) are split into separate rows that name the differing
  keys, never averaged together.

Statistics over the finished runs of a group: ``n``, ``mean``, ``std`` = sample standard deviation
(ddof 1), ``ci95`` = Student-t half-width t(0.975, n-1) * std / sqrt(n). ``--coop-stats`` gives CoOp's
``parse_test_res.py`` numbers instead: population std (ddof 0) and ci95 = 1.96 * std / sqrt(n).
Zero-shot runs show shots 0. When a class had fewer training images than the shots asked for, the note
says how many were used (from the record).

A group is flagged INCOMPLETE when one of its runs has no final result (interrupted, failed: the note
says at which epoch or with which error) or when it lacks a seed that other groups have; a seed present
twice is flagged too. Exit status 1 when no run is found.
"""
import argparse
import csv
import io
import json
import math
import os
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trainers.registry import get_trainer  # noqa: E402
from trainers.run_index import find_runs, load_run  # noqa: E402

# ------------------------------------------------------------------------------------------ groups
def split_by_settings(runs):
    """[(label suffix, runs)]: one entry unless resolved settings differ between the runs."""
    known = [r for r in runs if r["settings"] is not None]
    if len(known) < 2:
        return [("", runs)]
    common = set.intersection(*(set(r["settings"]) for r in known))
    varying = sorted(k for k in common if len({json.dumps(r["settings"][k], default=str) for r in known}) > 1)
    if not varying:
        return [("", runs)]
    parts = defaultdict(list)
    for run in runs:
        if run["settings"] is None:
            parts["settings unknown"].append(run)
        else:
            parts[", ".join(f"{k}={run['settings'][k]}" for k in varying)].append(run)
    return [(f" [{label}]", members) for label, members in sorted(parts.items())]


def method_rank(method):
    """Baselines first: the trainers' declared ``report_order`` (unknown methods, e.g. CoOp's own, last)."""
    try:
        return (get_trainer(method).report_order, method)
    except KeyError:
        return (0 if method.startswith("Zeroshot") else 1000, method)


def t_quantile_975(df):
    try:
        from scipy.stats import t
        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy is a dependency
        return 1.96


def statistics(values, coop_stats=False):
    n = len(values)
    if not n:
        return None, None, None
    mean = sum(values) / n
    if coop_stats:
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        return mean, std, 1.96 * std / math.sqrt(n)
    if n < 2:
        return mean, None, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, t_quantile_975(n - 1) * std / math.sqrt(n)


def group_runs(runs, coop_stats=False):
    by_key = defaultdict(list)
    for run in runs:
        by_key[(run["method"], run["dataset"], run["shots"], run["variant"], run["config"])].append(run)
    groups = []
    for (method, dataset, shots, k, config), members in by_key.items():
        for suffix, part in split_by_settings(members):
            groups.append({"method": method, "dataset": dataset, "shots": shots, "variant": k, "config": config + suffix,
                           "runs": sorted(part, key=lambda r: (r["seed"] is None, r["seed"] or 0, r["run"]))})
    all_seeds = {r["seed"] for g in groups if g["shots"] for r in g["runs"] if r["seed"] is not None}
    for group in groups:
        finished = [r for r in group["runs"] if r["result"] is not None]
        values = [r["result"] for r in finished]
        group["n"] = len(values)
        group["mean"], group["std"], group["ci95"] = statistics(values, coop_stats)
        group["seeds"] = [r["seed"] for r in finished]
        issues = []
        short = sorted({(r["shots_used"]["min"], r["shots_used"]["max"]) for r in group["runs"]
                        if (r.get("shots_used") or {}).get("min") is not None
                        and r["shots_used"]["min"] < r["shots_used"]["requested"]})
        used = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in short)
        group["shots_note"] = f"used {used} training images per class, not {group['shots']}" if short else ""
        for run in group["runs"]:
            if run["result"] is None:
                who = f"seed {run['seed']}" if run["seed"] is not None else run["run"]
                issues.append(f"{who} {run['status']}")
        seeds = [r["seed"] for r in group["runs"] if r["seed"] is not None]
        doubles = sorted(s for s, c in Counter(seeds).items() if c > 1)
        if doubles:
            issues.append("seed " + " ".join(map(str, doubles)) + " more than once")
        missing = sorted(all_seeds - set(seeds)) if group["shots"] and seeds else []
        if missing:
            issues.append("missing seed " + " ".join(map(str, missing)) + " (run elsewhere)")
        group["complete"] = not issues
        group["issues"] = issues
    groups.sort(key=lambda g: (g["dataset"], method_rank(g["method"]), g["shots"] or 0, str(g["variant"] or ""),
                               g["config"]))
    return groups


# ------------------------------------------------------------------------------------------ output
HEADERS = ["method", "dataset", "shots", "variant", "config", "n", "seeds", "mean", "std", "ci95", "note"]


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(groups, digits=2):
    rows = []
    for g in groups:
        note = ("INCOMPLETE: " + "; ".join(g["issues"])) if g["issues"] else ""
        if g["n"] == 1 and not note and g["seeds"] != [None]:
            note = "1 seed"
        note = "; ".join(n for n in (note, g["shots_note"]) if n)
        rows.append([g["method"], g["dataset"], g["shots"] if g["shots"] is not None else "-",
                     g["variant"] if g["variant"] is not None else "-", g["config"], g["n"],
                     " ".join(str(s) for s in g["seeds"] if s is not None) or "-", fmt(g["mean"], digits), fmt(g["std"], digits),
                     fmt(g["ci95"], digits), note])
    return rows


def run_rows(groups):
    return [[r["run"], r["method"], r["seed"] if r["seed"] is not None else "-", fmt(r["result"]), r["status"]]
            for g in groups for r in g["runs"]]


def render(groups, fmt_name, keyword, coop_stats, show_runs):
    if fmt_name == "json":
        out = []
        for g in groups:
            item = {k: g[k] for k in ("method", "dataset", "shots", "variant", "config", "n", "seeds", "mean", "std",
                                      "ci95", "complete", "issues", "shots_note")}
            item["metric"] = keyword
            item["runs"] = [{k: r[k] for k in ("run", "dir", "seed", "result", "status", "log", "meta_source")}
                            for r in g["runs"]]
            out.append(item)
        return json.dumps(out, indent=2)
    if fmt_name == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(HEADERS)
        writer.writerows(table_rows(groups, digits=4))
        return buf.getvalue().rstrip("\n")
    from tabulate import tabulate

    spread = "population std, ci95 = 1.96*std/sqrt(n) (CoOp's parse_test_res.py)" if coop_stats else \
        "sample std (ddof 1), ci95 = Student-t half-width"
    align = ["left", "left", "right", "right", "left", "right", "left", "right", "right", "right", "left"]
    text = [f"Test {keyword} (%) over seeds; {spread}.",
            tabulate(table_rows(groups), headers=HEADERS, tablefmt="github", disable_numparse=True, colalign=align)]
    if show_runs:
        text += ["", tabulate(run_rows(groups), headers=["run", "method", "seed", keyword, "status"],
                              tablefmt="github", disable_numparse=True)]
    return "\n".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("roots", nargs="+", metavar="ROOT", help="folder(s) searched for run folders")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--keyword", default="accuracy", help='metric of the "* <keyword>: X%%" lines '
                        "(accuracy, error, macro_f1); default accuracy")
    parser.add_argument("--coop-stats", action="store_true", help="population std and 1.96*std/sqrt(n), "
                        "exactly as CoOp's parse_test_res.py")
    parser.add_argument("--runs", action="store_true", help="markdown: also list every run with its status")
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGPIPE"):  # `... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    for root in args.roots:
        if not os.path.isdir(root):
            print(f'ERROR: "{root}" is not a folder', file=sys.stderr)
            return 2
    runs = [load_run(d, root, args.keyword) for d, root in find_runs(args.roots)]
    if not runs:
        print(f"Nothing found in {' '.join(args.roots)}: no folder with a result.json or a log.txt", file=sys.stderr)
        return 1
    print(render(group_runs(runs, args.coop_stats), args.format, args.keyword, args.coop_stats, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
