"""``train.py``'s command line and config assembly, importable (the sweep checks configs with it, a run
folder's trainer is rebuilt with it) without importing the entry point.

Merge order (later wins): engine defaults + project keys, dataset YAML, trainer YAML, flags, trailing
``KEY VALUE`` opts, as CoOp's ``train.py``.
"""
import argparse
import os

import yaml

import datasets
import trainers
from engine import get_cfg_default
from engine.errors import ConfigError

DESCRIPTION = "Train or evaluate a CLIP prompt-learning method, with CoOp's command line."


def build_parser():
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=-1, help="only non-negative value enables a fixed seed")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command-line")
    return parser


def _yacs_error(exc, where):
    """Turn yacs' KeyError / ValueError / AssertionError into a ConfigError naming the source."""
    msg = exc.args[0] if exc.args else str(exc)
    if isinstance(exc, (KeyError, AssertionError)) and "Non-existent" in str(msg):
        key = str(msg).split(":", 1)[-1].strip()
        return ConfigError(f"Unknown config key {key} in {where}. Keys must exist in the defaults; check the "
                           "spelling (trainer keys live under TRAINER.<NAME>, e.g. TRAINER.COOP.N_CTX).")
    if isinstance(exc, ValueError) and str(msg).startswith("Type mismatch (<class 'str'> vs."):
        key = str(msg).rsplit(":", 1)[-1].strip()  # a string key given a number (e.g. a year)
        return ConfigError(f"Wrong type in {where}: {msg}. {key} takes a string: quote a value that looks like "
                           f"a number, e.g. {key} \"'2021'\" on the command line, {key}: \"2021\" in YAML.")
    if isinstance(exc, ValueError) and "Type mismatch" in str(msg):
        return ConfigError(f"Wrong type in {where}: {msg}. Write floats with a decimal point (0.002, 1e-3) "
                           "and integers without one.")
    return ConfigError(f"Invalid config in {where}: {type(exc).__name__}: {msg}")


def merge_file(cfg, path, what):
    if not os.path.isfile(path):
        raise ConfigError(f'{what} "{path}" does not exist')
    try:
        cfg.merge_from_file(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f'{what} "{path}" is not valid YAML: {exc}') from None
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        raise _yacs_error(exc, f'{what} "{path}"') from None


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed >= 0:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def setup_cfg(args):
    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    datasets.extend_cfg(cfg)
    if args.dataset_config_file:
        merge_file(cfg, args.dataset_config_file, "dataset config file")
    if args.config_file:
        merge_file(cfg, args.config_file, "config file")
    reset_cfg(cfg, args)
    opts = args.opts or []
    if len(opts) % 2:
        raise ConfigError(f"Command-line options must be KEY VALUE pairs; got an odd number: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        raise _yacs_error(exc, "the command-line options") from None
    cfg.freeze()
    return cfg
