"""A run folder: where it lives (the layout), its record (``result.json``) and whether it is finished.

This module is the one home of these three rules; ``train.py``, the run scripts (through
``scripts/sweep.py``), and every report read them from here.

Layout (CoOp's, plus the trainer's variant keys, ``registry.VariantKey``):

    few-shot trainers:   OUTPUT/<dataset>/<Trainer>/<cfg>[_<tag>]_<shots>shots[/<variant>]/seed<seed>
    evaluation only:     OUTPUT/<Trainer>/<cfg><variant>[_<tag>]/<dataset>

``<dataset>`` is the dataset config's name (``configs/datasets/<dataset>.yaml``), ``<cfg>`` the trainer
config's, ``<variant>`` the pieces of the trainer's variant keys joined by ``_`` (MixPrompt: ``k8``; CoOp:
``nctx16_cscFalse_ctpend``); for evaluation-only trainers the pieces are suffixes of ``<cfg>``
(ZeroshotCLIP: ``vit_b16_ensemble``).

Record: ``train.py`` writes ``result.json`` atomically as its last act: the final evaluation's metrics, what
was run (trainer, dataset, configs, shots asked for and used, seed, variant, every result-relevant setting),
wall time, engine, torch version and the diagnostics summary's file name.

Finished: a folder is finished when its ``result.json`` exists and matches what is asked for (trainer,
dataset, config, shots, seed, variant); a record of another run there is an error, never silently reused.
Folders written by CoOp itself (no ``config.yaml``, no record) are finished when a log shows
``* accuracy: X%`` after ``Finish training`` (evaluation-only runs: after ``=> result``), as CoOp's scripts
and ``parse_test_res.py`` read them.
"""
import datetime
import glob
import json
import os
import platform
import re
import time
from pathlib import Path

from engine.checkpoint import atomic_write_text
from engine.errors import UserError

from .registry import get_trainer

RESULT_FILE = "result.json"
RECORD_VERSION = 1
CONFIG_FILES = ("config-latest.yaml", "config.yaml")  # newest first: a re-run into a folder writes the first
SKIP_MESSAGE = "Oops! The results exist at {} (so skip this job)"
TRAIN_SIGNAL, EVAL_SIGNAL = "Finish training", "=> result"
ACCURACY_LINE = re.compile(r"^\* accuracy: ([0-9.eE+-]+)%")
#: settings that never change a result: runs differing only there are seeds of one experiment (the trainers
#: add their own, ``result_neutral_keys``)
RESULT_NEUTRAL_KEYS = frozenset({
    "SEED", "OUTPUT_DIR", "RESUME", "DATASET.ROOT", "DATALOADER.NUM_WORKERS", "DATALOADER.TEST.BATCH_SIZE",
    "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "USE_CUDA", "VERBOSE",
})
#: what a record must agree on with what is asked for, to count as that run finished
MATCHED_FIELDS = ("trainer", "dataset_config", "config", "shots", "seed", "variant")


class RunRecordError(UserError):
    """A run folder's record cannot be read, or records another run than the one asked for."""


# ------------------------------------------------------------------------------------------ layout
def variant_pieces(trainer, variant):
    """The folder pieces of ``variant`` ({key: value as a string}) in the trainer's declared order."""
    return [spec.piece(str(variant[spec.key])) for spec in trainer.variant_keys]


def run_dir(output, trainer_name, dataset, cfg_name, variant=None, shots=None, seed=None, tag=""):
    """The folder of one run (see the module docstring)."""
    trainer = get_trainer(trainer_name)
    pieces = variant_pieces(trainer, variant or {})
    tagged = f"_{tag}" if tag else ""
    if not trainer.few_shot:
        return f"{output}/{trainer.__name__}/{cfg_name}{''.join(pieces)}{tagged}/{dataset}"
    variant_dir = "_".join(p for p in pieces if p)
    parent = f"{output}/{dataset}/{trainer.__name__}/{cfg_name}{tagged}_{shots}shots"
    return f"{parent}/{variant_dir}/seed{seed}" if variant_dir else f"{parent}/seed{seed}"


def expected_run(trainer_name, dataset, cfg_name, variant=None, shots=None, seed=None):
    """What a planned run's record must say (``MATCHED_FIELDS``)."""
    trainer = get_trainer(trainer_name)
    return {"trainer": trainer.__name__, "dataset_config": dataset, "config": cfg_name,
            "shots": int(shots) if trainer.few_shot else 0, "seed": int(seed) if trainer.few_shot else None,
            "variant": {spec.key: str((variant or {})[spec.key]) for spec in trainer.variant_keys}}


# ------------------------------------------------------------------------------------------ record
def flatten(config, prefix=""):
    """{"A.B.C": value} from a nested config (a yacs CfgNode or a dict)."""
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def neutral_keys():
    keys = set(RESULT_NEUTRAL_KEYS)
    from .config import FEATURE_CACHE_NEUTRAL_KEYS
    from .registry import all_trainers

    for trainer in all_trainers():
        keys.update(trainer.result_neutral_keys)
        if trainer.cfg_node:
            keys.update(f"TRAINER.{trainer.cfg_node}.{name}" for name in FEATURE_CACHE_NEUTRAL_KEYS)
    return keys


def result_settings(config):
    """The settings of a resolved config that can change a result (flattened, neutral keys left out)."""
    neutral = neutral_keys()
    return {k: v for k, v in flatten(config).items() if k not in neutral}


def complete_settings(settings, trainer_name):
    """A run's result-changing settings (from its record or its saved config) with every key its trainer
    added after it was written read as the value the run behaved as (``keys_added_later``). Only the run's
    own trainer's keys: another trainer's node cannot change the run, and its earlier values may differ from
    today's defaults. None stays None; a trainer this code does not know keeps its settings as written."""
    if settings is None:
        return None
    return {**keys_added_later(trainer_name), **settings}


def keys_added_later(trainer_name):
    """{key: value the older runs behaved as} of the trainer named ``trainer_name`` (its ``keys_added_later``);
    empty for a trainer this code does not know."""
    try:
        return dict(get_trainer(trainer_name or "").keys_added_later)
    except KeyError:
        return {}


def stem(path):
    return Path(path).stem if path else ""


def build_record(cfg, args, trainer, started):
    """The run's record (``result.json``) after the final evaluation of ``trainer``."""
    import torch

    import engine
    from datasets.common import actual_shots_summary

    spec = get_trainer(cfg.TRAINER.NAME)
    flat = flatten(cfg)
    results = getattr(trainer.evaluator, "last_results", None)
    dataset = trainer.dm.dataset
    split = cfg.TEST.SPLIT if cfg.TEST.SPLIT != "val" or len(getattr(dataset, "val", None) or []) else "test"
    shots_used = getattr(dataset, "shots_per_class", None)
    summary = os.path.join(cfg.OUTPUT_DIR, "diagnostics_summary.json")
    return {
        "record_version": RECORD_VERSION,
        "trainer": spec.__name__,
        "dataset": cfg.DATASET.NAME,
        "dataset_config": stem(args.dataset_config_file),
        "config": stem(args.config_file),
        "shots": cfg.DATASET.NUM_SHOTS if spec.few_shot else 0,
        "shots_used": actual_shots_summary(shots_used, cfg.DATASET.NUM_SHOTS) if shots_used else None,
        "subsample": cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"),
        "seed": cfg.SEED if spec.few_shot else None,
        "variant": {v.key: str(flat[v.key]) for v in spec.variant_keys},
        "eval_only": bool(args.eval_only),
        "load_epoch": args.load_epoch,
        "results": {split: {k: float(v) for k, v in results.items()}} if results else {},
        "settings": result_settings(cfg),
        "wall_seconds": round(time.time() - started, 3),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "engine": engine.ENGINE,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "diagnostics_summary": os.path.basename(summary) if os.path.isfile(summary) else None,
    }


def write_record(run_folder, record):
    atomic_write_text(os.path.join(run_folder, RESULT_FILE), json.dumps(record, indent=1) + "\n")


def read_record(run_folder):
    """The folder's record, or None when it has none."""
    path = os.path.join(run_folder, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunRecordError(f'"{path}" cannot be read as a run record ({exc}); remove it to run again') from None
    if not isinstance(record, dict) or "results" not in record:
        raise RunRecordError(f'"{path}" is not a run record written by train.py; remove it to run again')
    return record


def primary_result(record, metric="accuracy"):
    """The final evaluation's ``metric`` (percent) from a record, or None."""
    for values in (record.get("results") or {}).values():
        if metric in values:
            return values[metric]
    return None


def describe(fields):
    variant = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (fields.get("variant") or {}).items())
    return (f"{fields.get('trainer')} on {fields.get('dataset_config')} with config {fields.get('config')}, "
            f"{fields.get('shots')} shots, seed {fields.get('seed')}" + (f", {variant}" if variant else ""))


# ------------------------------------------------------------------------------------------ finished
def is_ours(run_folder):
    """Written by this project's train.py (it saves the resolved config), not by CoOp itself."""
    return any(os.path.isfile(os.path.join(run_folder, name)) for name in CONFIG_FILES)


def log_files(run_folder):
    """The folder's logs, oldest first: ``log.txt``, then those of re-runs into it (``log.txt-<time>``, as
    Dassl names them), by modification time, then name."""
    paths = [p for p in glob.glob(os.path.join(glob.escape(run_folder), "log.txt*")) if os.path.isfile(p)
             and (os.path.basename(p) == "log.txt" or os.path.basename(p).startswith("log.txt-"))]
    return sorted(paths, key=lambda p: (os.path.getmtime(p), os.path.basename(p) != "log.txt", p))


def log_result(run_folder, signal, metric="accuracy"):
    """CoOp's reading of a folder it wrote: the last ``* <metric>: X%`` after a line starting with
    ``signal`` in the newest ``log.txt*`` that has one; None when none has."""
    pattern = re.compile(r"^\* " + re.escape(metric) + r": ([0-9.eE+-]+)%")
    found = None
    for path in log_files(run_folder):
        seen, value = False, None
        with open(path, errors="replace") as f:
            for line in f:
                seen = seen or line.startswith(signal)
                match = pattern.match(line) if seen else None
                if match:
                    value = float(match.group(1))
        found = value if value is not None else found
    return found


def final_result(run_folder, signal=TRAIN_SIGNAL, metric="accuracy"):
    """The run's final ``metric``: from its record, or for a folder written by CoOp itself from its logs
    (``signal``: ``TRAIN_SIGNAL`` for training runs, ``EVAL_SIGNAL`` for evaluations); None if unfinished."""
    record = read_record(run_folder)
    if record is not None:
        return primary_result(record, "error_rate" if metric == "error" else metric)
    return None if is_ours(run_folder) else log_result(run_folder, signal, metric)


def run_status(run_folder, expected=None):
    """"finished", "partial" (the folder exists: a re-run resumes it) or "pending". With ``expected``
    (``expected_run``), a record of another run raises ``RunRecordError``."""
    if not os.path.isdir(run_folder):
        return "pending"
    record = read_record(run_folder)
    if record is not None:
        if expected is not None:
            differing = [f for f in MATCHED_FIELDS if f in expected and record.get(f) != expected[f]]
            if differing:
                raise RunRecordError(
                    f'"{run_folder}" holds a finished run of {describe(record)}, not of {describe(expected)} '
                    f"(they differ in {', '.join(differing)}). Use another OUTPUT or TAG, or remove the folder.")
        return "finished"
    if not is_ours(run_folder):
        trained = expected is None or get_trainer(expected["trainer"]).few_shot
        if log_result(run_folder, TRAIN_SIGNAL if trained else EVAL_SIGNAL) is not None:
            return "finished"
    return "partial"


def is_finished(run_folder, expected=None):
    return run_status(run_folder, expected) == "finished"
