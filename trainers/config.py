"""Config keys shared by the trainers, and ``extend_cfg``: the project's keys added to the engine defaults.

Every trainer knob lives under ``TRAINER.<NAME>.*``, declared with its default next to the trainer's class
(its ``add_config``); ``extend_cfg`` asks every registered trainer for its node. Trainers validate their
node once at start-up (``check_cfg``) with messages that name the key.
"""
from .registry import all_trainers

PRECISIONS = ("fp16", "fp32", "amp", "bf16")
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
SUBSAMPLE_CHOICES = ("all", "base", "new")
DEFAULT_FEATURE_CACHE_EVAL_MAX_MB = 2048  # 1M images at D 512 in float32


def extend_cfg(cfg):
    """Add the project's keys to a default config (CoOp's ``extend_cfg``)."""
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all | base | new (CoOp's base-to-new split)
    for trainer in all_trainers():
        trainer.add_config(cfg)
    return cfg


# Feature-cache keys that never change a result (the cached features are the encoder's, bit for bit): runs
# that differ only in them are the same experiment (trainers/runs.py).
FEATURE_CACHE_NEUTRAL_KEYS = ("FEATURE_CACHE_EVAL", "FEATURE_CACHE_EVAL_MAX_MB", "FEATURE_CACHE_DIR")


def add_feature_cache_config(node):
    """Image-feature cache keys of a trainer whose image encoder is frozen (trainers/feature_cache.py,
    docs/performance.md)."""
    node.FEATURE_CACHE_VIEWS = 0  # N > 0: encode N augmented views per training image once, draw one per epoch
    # exact: test/val images (and MixPrompt's training images) under the test transform encoded once per run
    node.FEATURE_CACHE_EVAL = True
    # memory bound of those features (N x D float32 per split, in MiB); a split that does not fit is encoded
    # batch by batch at every evaluation instead (the uncached path; same results)
    node.FEATURE_CACHE_EVAL_MAX_MB = DEFAULT_FEATURE_CACHE_EVAL_MAX_MB
    node.FEATURE_CACHE_DIR = ""  # a folder: save the cached features there, keyed, and reuse them across runs
    return node
