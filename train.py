"""Train or evaluate a CLIP prompt-learning method, with CoOp's command line.

    python train.py --root DATA --trainer CoOp \
        --dataset-config-file configs/datasets/stanford_cars.yaml \
        --config-file configs/trainers/CoOp/vit_b16_ep50.yaml \
        --output-dir output/stanford_cars/CoOp/seed1 --seed 1 DATASET.NUM_SHOTS 16

Merge order (later wins): defaults + project keys, dataset YAML, trainer YAML, flags, trailing KEY VALUE
opts. Differences from CoOp: ``--seed 0`` is honoured (CoOp silently ignores it), bad input stops with
one paragraph naming the culprit (exit status 2), and the resolved config is saved as ``config.yaml``.

Distributed data-parallel training on the built-in engine (docs/distributed.md):

    torchrun --nproc_per_node 4 train.py ...same arguments...

DATALOADER.TRAIN_X.BATCH_SIZE stays the global batch size; rank 0 logs, saves and evaluates.
"""
import os
import sys
import time

if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun ranks > 0 show no progress bars (read at tqdm import)
    os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

try:
    import engine
except Exception as exc:  # MIXPROMPT_ENGINE misconfigured: say so without a traceback
    if type(exc).__name__ in ("ConfigError", "UserError"):
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
    raise
from engine import UserError, build_trainer, collect_env_info, set_random_seed, setup_logger  # noqa: E402
from engine.distributed import (barrier, broadcast_from_main, check_distributed_support,  # noqa: E402
                                describe_distributed, destroy_distributed, init_distributed_from_env,
                                is_main_process, requested_world_size)
from engine.utils import check_wandb_cfg, quiet_other_ranks  # noqa: E402
from engine.data.image_check import check_dataset_images  # noqa: E402
from engine.data.manager import cap_num_workers  # noqa: E402
from engine.errors import fault_exit, quiet_fixable_thread_errors  # noqa: E402
from engine.run_lock import hold_run_lock  # noqa: E402

from trainers.cli import build_parser, setup_cfg  # noqa: E402  (registers datasets and trainers)
from trainers.runs import build_record, write_record  # noqa: E402


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


def main(args):
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


if __name__ == "__main__":
    quiet_fixable_thread_errors()
    try:
        main(build_parser().parse_args())
    except UserError as exc:
        report_user_error(exc)
        sys.exit(2)
    except (KeyboardInterrupt, OSError) as exc:  # Ctrl-C (exit 130), full disk or no permission (exit 2)
        status, message = fault_exit(exc)
        if status is None:
            raise
        report_user_error(message)
        sys.exit(status)
    finally:
        destroy_distributed()
