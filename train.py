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

if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun ranks > 0 show no progress bars (read at tqdm import)
    os.environ.setdefault("TQDM_DISABLE", "1")

try:
    import engine  # noqa: F401  (first, so that a misconfigured engine is one ERROR line)
except Exception as exc:  # MIXPROMPT_ENGINE misconfigured: say so without a traceback
    if type(exc).__name__ in ("ConfigError", "UserError"):
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
    raise
from trainers.cli import main  # noqa: E402  (the run itself; registers datasets and trainers)


if __name__ == "__main__":
    sys.exit(main())
