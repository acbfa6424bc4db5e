#!/usr/bin/env python
"""Comparison table of the runs under a folder: mean, std and 95% CI of the test accuracy over seeds.

    python scripts/parse_results.py ROOT [ROOT ...] [--format markdown|csv|json] [--keyword accuracy]
                                    [--coop-stats] [--runs]

A run is a folder holding ``log.txt`` (and ``log.txt-<time>`` for re-runs into it, as Dassl names them).
Its result is what CoOp's ``parse_test_res.py`` reads: the last ``* accuracy: X%`` after ``Finish
training`` (training runs) or after ``=> result`` (``--eval-only`` runs such as zero-shot CLIP), taken
from the newest log that has one. Runs are grouped by method, dataset, shots, K (MixPrompt) and config:

- read from the run's ``config.yaml`` (``config-latest.yaml`` after a re-run) when present, else from
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
Zero-shot runs show shots 0.

A group is flagged INCOMPLETE when one of its runs has no final result (interrupted, failed: the note
says at which epoch or with which error) or when it lacks a seed that other groups have; a seed present
twice is flagged too. Exit status 1 when no run is found.
"""
import argparse
import ast
import csv
import io
import json
import math
import os
import re
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

# CoOp's dataset config names -> DATASET.NAME (reference: CoOp configs/datasets/*.yaml); the project's own
# configs/datasets/*.yaml are read on top of this.
COOP_DATASETS = {
    "caltech101": "Caltech101", "dtd": "DescribableTextures", "eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVCAircraft", "food101": "Food101", "imagenet": "ImageNet", "imagenet_a": "ImageNetA",
    "imagenet_r": "ImageNetR", "imagenet_sketch": "ImageNetSketch", "imagenetv2": "ImageNetV2",
    "oxford_flowers": "OxfordFlowers", "oxford_pets": "OxfordPets", "stanford_cars": "StanfordCars",
    "sun397": "SUN397", "ucf101": "UCF101", "inaturalist": "INaturalist",
}
METHOD_ORDER = ("ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "MixPrompt")
# Settings that do not change a result: runs differing only here are seeds of one experiment.
IGNORED_KEYS = {
    "SEED", "OUTPUT_DIR", "RESUME", "DATASET.ROOT", "DATALOADER.NUM_WORKERS", "DATALOADER.TEST.BATCH_SIZE",
    "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "USE_CUDA", "VERBOSE", "TRAINER.MIXPROMPT.ENCODE_CHUNK",
    "TRAINER.COCOOP.BATCH_CHUNK",
}
EPOCH_LINE = re.compile(r"^epoch \[(\d+)/(\d+)\]")
SHOTS_DIR = re.compile(r"^(.+)_(\d+)shots$")


def metric_pattern(keyword):
    return re.compile(r"\* " + re.escape(keyword) + r": ([\.\deE+-]+)%")


def dataset_names():
    names = dict(COOP_DATASETS)
    for path in sorted((REPO_ROOT / "configs" / "datasets").glob("*.yaml")):
        try:
            name = (yaml.safe_load(path.read_text()) or {}).get("DATASET", {}).get("NAME")
        except (OSError, yaml.YAMLError, AttributeError):
            name = None
        if name:
            names[path.stem] = name
    return names


DATASET_NAMES = dataset_names()


# ------------------------------------------------------------------------------------------ logs
def log_files(run_dir):
    """log.txt first, then the logs of re-runs (log.txt-<%Y-%m-%d-%H-%M-%S>) in time order."""
    names = [n for n in os.listdir(run_dir) if n == "log.txt" or n.startswith("log.txt-")]
    return [os.path.join(run_dir, n) for n in sorted(names, key=lambda n: (n != "log.txt", n))]


def parse_log(path, keyword="accuracy"):
    """What one log says: header arguments and config, the final result and how far it got."""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    info = {"path": path, "args": {}, "config": None, "result": None, "last_epoch": None, "error": None}
    # header: "** Arguments **" block of "key: value" lines, then "** Config **" and the yacs dump
    section, config_lines = None, []
    for line in lines[:5000]:
        if line == "** Arguments **":
            section = "args"
            continue
        if line == "** Config **":
            section = "config"
            continue
        if section and set(line) == {"*"}:
            continue
        if section == "args":
            key, sep, value = line.partition(": ")
            if sep:
                info["args"][key] = value
            elif line.endswith(":"):
                info["args"][line[:-1]] = ""
        elif section == "config":
            if line.startswith(("Collecting env info", "** System info", "Engine: ", "Loading trainer")):
                break
            config_lines.append(line)
    if config_lines:
        try:
            config = yaml.safe_load("\n".join(config_lines))
            info["config"] = config if isinstance(config, dict) else None
        except yaml.YAMLError:
            pass
    finish = next((i for i, line in enumerate(lines) if "Finish training" in line), None)
    trained = any(EPOCH_LINE.match(line) for line in lines)
    eval_only = info["args"].get("eval_only") == "True" or (not info["args"] and finish is None and not trained)
    info["eval_only"] = eval_only
    start = finish
    if eval_only:
        start = next((i for i, line in enumerate(lines) if "=> result" in line), None)
    if start is not None:
        pattern = metric_pattern(keyword)
        for line in lines[start:]:
            match = pattern.search(line)
            if match:
                info["result"] = float(match.group(1))
    for line in lines:
        match = EPOCH_LINE.match(line)
        if match:
            info["last_epoch"] = (int(match.group(1)), int(match.group(2)))
        if line.startswith("ERROR:"):
            info["error"] = line[len("ERROR:"):].strip()
    return info


# ------------------------------------------------------------------------------------------ runs
def find_runs(roots):
    """Folders holding a log.txt* (not looked into further), sorted, with the root each was found under."""
    runs = []
    for root in roots:
        root = os.path.abspath(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if any(n == "log.txt" or n.startswith("log.txt-") for n in filenames):
                runs.append((dirpath, root))
                dirnames[:] = []
    return runs


def read_config(run_dir):
    for name in ("config-latest.yaml", "config.yaml"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    config = yaml.safe_load(f)
                if isinstance(config, dict):
                    return config
            except (OSError, yaml.YAMLError):
                pass
    return None


def get(config, dotted, default=None):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def flatten(config, prefix=""):
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def infer_from_path(parts):
    """CoOp's output layouts -> method, dataset (config name), shots, K, config, seed (None when unknown)."""
    meta = {}
    if parts and re.fullmatch(r"seed\d+", parts[-1]):
        meta["seed"] = int(parts[-1][4:])
    for i, part in enumerate(parts):
        match = SHOTS_DIR.match(part)
        if match and i >= 1:  # <dataset>/<Trainer>/<cfg>_<N>shots/... or evaluation/<Trainer>/<cfg>_<N>shots/.../<dataset>/seed<S>
            meta.update(config=match.group(1), shots=int(match.group(2)), method=parts[i - 1])
            if i >= 2 and parts[i - 2] != "evaluation":
                meta["dataset"] = parts[i - 2]
            elif len(parts) >= 2 and "seed" in meta:
                meta["dataset"] = parts[-2]
            for later in parts[i + 1:]:
                if re.fullmatch(r"k\d+", later):
                    meta["K"] = int(later[1:])
            return meta
        match = re.fullmatch(r"shots_(\d+)", part)
        if match and 1 <= i and i + 2 < len(parts):  # base2new/<phase>/<dataset>/shots_<N>/<Trainer>/<cfg>/seed<S>
            meta.update(dataset=parts[i - 1], shots=int(match.group(1)), method=parts[i + 1], config=parts[i + 2])
            if i >= 2 and parts[i - 2] in ("train_base", "test_new"):
                meta["subsample"] = "base" if parts[i - 2] == "train_base" else "new"
            return meta
    for i, part in enumerate(parts):
        if part.startswith("ZeroshotCLIP") and i + 2 < len(parts):  # ZeroshotCLIP/<cfg>/<dataset>
            meta.update(method=part, config=parts[i + 1], dataset=parts[i + 2], shots=0)
            return meta
    return meta


def opts_dict(args):
    try:
        opts = ast.literal_eval(args.get("opts", "[]")) or []
    except (ValueError, SyntaxError):
        return {}
    return {str(k): str(v) for k, v in zip(opts[::2], opts[1::2])}


def as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def load_run(run_dir, root, keyword="accuracy"):
    """One run: its metadata, final result (None when unfinished) and status."""
    logs = [parse_log(p, keyword) for p in log_files(run_dir)]
    done = [log for log in logs if log["result"] is not None]
    chosen = done[-1] if done else logs[-1]
    header = next((log for log in reversed(logs) if log["args"]), chosen)
    config = read_config(run_dir)
    source = "config.yaml" if config else None
    if config is None and header["config"] and get(header["config"], "TRAINER.NAME"):
        config, source = header["config"], "log header"
    rel = os.path.relpath(run_dir, root)
    parts = [] if rel == "." else Path(rel).parts
    path_meta = infer_from_path(list(parts))
    args, opts = header["args"], opts_dict(header["args"])

    method = get(config, "TRAINER.NAME") or args.get("trainer") or path_meta.get("method") or "?"
    dataset = get(config, "DATASET.NAME")
    if not dataset and args.get("dataset_config_file"):
        dataset = Path(args["dataset_config_file"]).stem
    dataset = dataset or path_meta.get("dataset") or "?"
    dataset = DATASET_NAMES.get(dataset, dataset)
    if method.startswith("Zeroshot"):
        shots = 0
    else:
        shots = as_int(get(config, "DATASET.NUM_SHOTS", opts.get("DATASET.NUM_SHOTS", path_meta.get("shots"))))
    k = None
    if method == "MixPrompt":
        k = as_int(get(config, "TRAINER.MIXPROMPT.K", opts.get("TRAINER.MIXPROMPT.K", path_meta.get("K"))))
    seed = as_int(get(config, "SEED"))
    if seed is None or seed < 0:
        seed = as_int(args.get("seed"))
    if seed is None or seed < 0:
        seed = path_meta.get("seed")
    cfg_name = Path(args["config_file"]).stem if args.get("config_file") else path_meta.get("config", "?")
    if str(path_meta.get("config", "")).startswith(cfg_name + "_"):  # the scripts' <CFG>_<TAG> variant folders
        cfg_name = path_meta["config"]
    subsample = get(config, "DATASET.SUBSAMPLE_CLASSES") or opts.get("DATASET.SUBSAMPLE_CLASSES") \
        or path_meta.get("subsample") or "all"
    if subsample in ("base", "new"):
        cfg_name = f"{cfg_name} ({subsample})"
    elif chosen["eval_only"] and not method.startswith("Zeroshot"):
        cfg_name = f"{cfg_name} (eval)"  # a trained model evaluated elsewhere (e.g. CoOp's eval.sh)

    if done:
        status = "finished"
    elif chosen["error"]:
        status = f"failed: {chosen['error']}"
    elif chosen["last_epoch"]:
        status = "unfinished (epoch {}/{})".format(*chosen["last_epoch"])
    else:
        status = "unfinished (no result in its log)"
    return {
        "dir": run_dir, "run": rel, "root": root, "method": method, "dataset": dataset, "shots": shots, "K": k,
        "config": cfg_name, "seed": seed, "result": chosen["result"], "status": status,
        "log": chosen["path"], "meta_source": source or ("log header" if args else "path"),
        "settings": {k: v for k, v in flatten(config).items() if k not in IGNORED_KEYS} if config else None,
    }


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
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


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
        by_key[(run["method"], run["dataset"], run["shots"], run["K"], run["config"])].append(run)
    groups = []
    for (method, dataset, shots, k, config), members in by_key.items():
        for suffix, part in split_by_settings(members):
            groups.append({"method": method, "dataset": dataset, "shots": shots, "K": k, "config": config + suffix,
                           "runs": sorted(part, key=lambda r: (r["seed"] is None, r["seed"] or 0, r["run"]))})
    all_seeds = {r["seed"] for g in groups if g["shots"] for r in g["runs"] if r["seed"] is not None}
    for group in groups:
        finished = [r for r in group["runs"] if r["result"] is not None]
        values = [r["result"] for r in finished]
        group["n"] = len(values)
        group["mean"], group["std"], group["ci95"] = statistics(values, coop_stats)
        group["seeds"] = [r["seed"] for r in finished]
        issues = []
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
    groups.sort(key=lambda g: (g["dataset"], method_rank(g["method"]), g["shots"] or 0, g["K"] or 0, g["config"]))
    return groups


# ------------------------------------------------------------------------------------------ output
HEADERS = ["method", "dataset", "shots", "K", "config", "n", "seeds", "mean", "std", "ci95", "note"]


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(groups, digits=2):
    rows = []
    for g in groups:
        note = ("INCOMPLETE: " + "; ".join(g["issues"])) if g["issues"] else ""
        if g["n"] == 1 and not note and g["seeds"] != [None]:
            note = "1 seed"
        rows.append([g["method"], g["dataset"], g["shots"] if g["shots"] is not None else "-",
                     g["K"] if g["K"] is not None else "-", g["config"], g["n"],
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
            item = {k: g[k] for k in ("method", "dataset", "shots", "K", "config", "n", "seeds", "mean", "std",
                                      "ci95", "complete", "issues")}
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
        print(f"Nothing found in {' '.join(args.roots)}: no folder with a log.txt", file=sys.stderr)
        return 1
    print(render(group_runs(runs, args.coop_stats), args.format, args.keyword, args.coop_stats, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
