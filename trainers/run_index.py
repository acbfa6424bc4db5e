"""Where the report tools find runs and what they read of each: its record (``result.json``, see
``trainers/runs.py``) when it has one; for folders written by CoOp itself, what CoOp's ``parse_test_res.py``
reads (the last ``* accuracy: X%`` after ``Finish training``, or after ``=> result`` for ``--eval-only``
runs), with the run's config from ``config.yaml``, the log header, or CoOp's folder layouts.
"""
import ast
import os
import re
from pathlib import Path

import yaml

from .registry import get_trainer
from .runs import (CONFIG_FILES, RESULT_FILE, flatten, is_ours, log_files, primary_result, read_record,  # noqa: F401
                   complete_settings, result_settings, variant_pieces)

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
    """Run folders (a result.json or a log.txt*; not looked into further), sorted, with the root each was found
    under."""
    runs = []
    for root in roots:
        root = os.path.abspath(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if RESULT_FILE in filenames or any(n == "log.txt" or n.startswith("log.txt-") for n in filenames):
                runs.append((dirpath, root))
                dirnames[:] = []
    return runs


def read_config(run_dir):
    for name in CONFIG_FILES:
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


def few_shot(method):
    """Whether ``method`` trains with shots (registered trainers say so; CoOp's own zero-shot names do not)."""
    try:
        return get_trainer(method).few_shot
    except KeyError:
        return not method.startswith("Zeroshot")


def variant_name(method, flat):
    """The run's variant as its folder piece (MixPrompt ``k8``), from its resolved settings; None if unknown."""
    try:
        trainer = get_trainer(method)
    except KeyError:
        return None
    if not trainer.variant_keys or any(spec.key not in flat for spec in trainer.variant_keys):
        return None
    pieces = variant_pieces(trainer, {spec.key: str(flat[spec.key]) for spec in trainer.variant_keys})
    return "_".join(p.lstrip("_") for p in pieces if p) or "-"


RECORD_METRICS = {"error": "error_rate"}  # the log's "* error: X%" is the record's error_rate


def load_run(run_dir, root, keyword="accuracy"):
    """One run: its metadata, final result (None when unfinished) and status; from its record
    (``result.json``) when it has one, else from its logs, config and path (folders written by CoOp)."""
    logs = [parse_log(p, keyword) for p in log_files(run_dir)]
    done = [log for log in logs if log["result"] is not None]
    chosen = done[-1] if done else (logs[-1] if logs else {"path": None, "args": {}, "config": None, "result": None,
                                                             "last_epoch": None, "error": None, "eval_only": False})
    header = next((log for log in reversed(logs) if log["args"]), chosen)
    record = read_record(run_dir)
    config = read_config(run_dir)
    source = "result.json" if record else ("config.yaml" if config else None)
    if config is None and header["config"] and get(header["config"], "TRAINER.NAME"):
        config, source = header["config"], "log header"
    rel = os.path.relpath(run_dir, root)
    parts = [] if rel == "." else Path(rel).parts
    path_meta = infer_from_path(list(parts))
    args, opts = header["args"], opts_dict(header["args"])

    method = (record or {}).get("trainer") or get(config, "TRAINER.NAME") or args.get("trainer") \
        or path_meta.get("method") or "?"
    dataset = (record or {}).get("dataset") or get(config, "DATASET.NAME")
    if not dataset and args.get("dataset_config_file"):
        dataset = Path(args["dataset_config_file"]).stem
    dataset = dataset or path_meta.get("dataset") or "?"
    dataset = DATASET_NAMES.get(dataset, dataset)
    if not few_shot(method):
        shots = 0
    else:
        shots = as_int(get(config, "DATASET.NUM_SHOTS", opts.get("DATASET.NUM_SHOTS", path_meta.get("shots"))))
    seed = as_int(get(config, "SEED"))
    if seed is None or seed < 0:
        seed = as_int(args.get("seed"))
    if seed is None or seed < 0:
        seed = path_meta.get("seed")
    if record is not None:
        cfg_name = record.get("config") or path_meta.get("config", "?")
    else:
        cfg_name = Path(args["config_file"]).stem if args.get("config_file") else path_meta.get("config", "?")
    if str(path_meta.get("config", "")).startswith(cfg_name + "_"):  # the scripts' <CFG>_<TAG> variant folders
        cfg_name = path_meta["config"]
    subsample = get(config, "DATASET.SUBSAMPLE_CLASSES") or opts.get("DATASET.SUBSAMPLE_CLASSES") \
        or path_meta.get("subsample") or "all"
    eval_only = record["eval_only"] if record is not None else chosen["eval_only"]
    if subsample in ("base", "new"):
        cfg_name = f"{cfg_name} ({subsample})"
    elif eval_only and few_shot(method):
        cfg_name = f"{cfg_name} (eval)"  # a trained model evaluated elsewhere (e.g. CoOp's eval.sh)

    settings = complete_settings(result_settings(config), method) if config else None
    if record is not None:
        result = primary_result(record, RECORD_METRICS.get(keyword, keyword))
        status = "finished"
        if record.get("settings") is not None:
            settings = complete_settings(record["settings"], method)
    else:
        result = None if is_ours(run_dir) else chosen["result"]  # ours: no record, not finished
        if result is not None:
            status = "finished"
        elif chosen["error"]:
            status = f"failed: {chosen['error']}"
        elif chosen["last_epoch"]:
            status = "unfinished (epoch {}/{})".format(*chosen["last_epoch"])
        else:
            status = "unfinished (no result yet)"
    shots_used = (record or {}).get("shots_used")
    return {
        "dir": run_dir, "run": rel, "root": root, "method": method, "dataset": dataset, "shots": shots,
        "shots_used": shots_used, "variant": variant_name(method, flatten(config)) if config else None,
        "config": cfg_name, "seed": seed, "result": result, "status": status,
        "log": chosen["path"], "meta_source": source or ("log header" if args else "path"), "settings": settings,
    }
