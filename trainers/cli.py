"""``train.py`` itself, importable: its command line, config assembly and run (the sweep checks configs with
it, a run folder's trainer is rebuilt with it, the collapse benchmark runs it in-process).

Merge order (later wins): engine defaults + project keys, dataset YAML, trainer YAML, flags, trailing
``KEY VALUE`` opts, as CoOp's ``train.py``.
"""
import argparse
import os
import sys
import time

import torch
import yaml

import datasets
import engine
import trainers
from engine import UserError, build_trainer, collect_env_info, get_cfg_default, set_random_seed, setup_logger
from engine.data.image_check import check_dataset_images
from engine.data.manager import cap_num_workers
from engine.distributed import (barrier, broadcast_from_main, check_distributed_support, describe_distributed,
                                destroy_distributed, init_distributed_from_env, is_main_process,
                                requested_world_size)
from engine.errors import ConfigError, fault_exit, quiet_fixable_thread_errors
from engine.run_lock import hold_run_lock
from engine.utils import check_wandb_cfg, quiet_other_ranks

from .run_folder import as_opts, saved_model_added_keys
from .runs import build_record, flatten, write_record

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


def print_header(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(vars(args)):
        print(f"{key}: {getattr(args, key)}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)
    print(f"Engine: {engine.ENGINE}")
    if describe_distributed():  # torchrun runs only
        print(describe_distributed())


def save_resolved_config(cfg):
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if os.path.exists(path):  # a re-run into the same folder keeps the first config next to its log
        path = os.path.join(cfg.OUTPUT_DIR, "config-latest.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())


def start_distributed(cfg):
    """Under torchrun (WORLD_SIZE > 1): join the process group before the trainer is built, silence the stdout
    of ranks > 0, and give every rank the same seed (rank 0's random draw when no --seed is given, written
    into the config). Returns the config; single-process runs get it back unchanged."""
    world_size = requested_world_size()
    if world_size <= 1:
        return cfg
    check_distributed_support(engine.ENGINE, world_size)
    init_distributed_from_env(use_cuda=cfg.USE_CUDA)
    quiet_other_ranks()
    if cfg.SEED < 0:
        drawn = torch.tensor(int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
        cfg.defrost()
        cfg.SEED = int(broadcast_from_main(drawn).item())
        cfg.freeze()
        print(f"Distributed run without --seed: every rank uses seed {cfg.SEED}, drawn by rank 0")
    return cfg


def evaluate_on_main(trainer):
    """Rank 0 evaluates the whole test set; the other ranks wait (``trainer.test()`` in a single process)."""
    if is_main_process():
        trainer.test()
    barrier()


def run(args):
    """One run of ``train.py`` (parsed ``args``): config, lock, log, trainer, training or evaluation, record."""
    cfg = setup_cfg(args)
    older = {}
    if args.eval_only and args.model_dir:  # a model trained before its trainer added a key: evaluated as trained
        current = flatten(cfg)
        older = {key: value for key, value in saved_model_added_keys(args.model_dir, args.opts or []).items()
                 if current.get(key) != value}
        if older:
            args.opts = [*as_opts(older), *(args.opts or [])]
            cfg = setup_cfg(args)
    check_wandb_cfg(cfg)
    cfg = start_distributed(cfg)
    lock_note = hold_run_lock(cfg.OUTPUT_DIR) if is_main_process() else None  # before anything is written there
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    setup_logger(cfg.OUTPUT_DIR)
    if lock_note:
        print(lock_note)
    cap_num_workers(cfg)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_header(args, cfg)
    if is_main_process():
        save_resolved_config(cfg)
        print("Collecting env info ...")
        print(f"** System info **\n{collect_env_info()}\n")
    if older:
        print(f"Note: {args.model_dir} was trained before " + ", ".join(f"{k} = {v!r}" for k, v in older.items())
              + " existed; evaluating it with that value, as it was trained (set the key to override)")
    started = time.time()
    trainer = build_trainer(cfg)
    check_dataset_images(trainer.dm.dataset)  # every split, before any training or evaluation
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        evaluate_on_main(trainer)
    elif not args.no_train:
        trainer.train()
    else:
        return
    if is_main_process():  # the run's record, written last: its presence marks the run finished
        write_record(cfg.OUTPUT_DIR, build_record(cfg, args, trainer, started))


def report_user_error(exc):
    """One paragraph on stderr (and in log.txt when the logger is up), no traceback. Under torchrun every
    rank reports its own error; ranks > 0 say which they are."""
    rank = os.environ.get("RANK", "0").strip()
    message = f"ERROR: {exc}" if rank in ("", "0") else f"ERROR: [rank {rank}] {exc}"
    print(message, file=sys.stderr)
    log_file = getattr(sys.stdout, "file", None)
    if log_file is not None:
        try:
            log_file.write(message + "\n")
            log_file.flush()
        except OSError:  # a full disk: stderr has the message
            pass


def main(argv=None):
    """``python train.py [argv]``: run, and turn every fault the user can fix into one ``ERROR:`` paragraph.
    Returns the exit status: 0, 2 (bad input, full disk, no permission), 130 (Ctrl-C)."""
    quiet_fixable_thread_errors()
    try:
        run(build_parser().parse_args(argv))
    except UserError as exc:
        report_user_error(exc)
        return 2
    except (KeyboardInterrupt, OSError) as exc:  # Ctrl-C (exit 130), full disk or no permission (exit 2)
        status, message = fault_exit(exc)
        if status is None:
            raise
        report_user_error(message)
        return status
    finally:
        destroy_distributed()
    return 0
