"""Datasets, registered in ``engine.DATASET_REGISTRY`` by class name when their module is imported.

- ``StanfordCars`` (``stanford_cars``): Stanford Cars / Cars196, CoOp's split and few-shot cache.
- ``SyntheticModes`` (``synthetic_modes``): generated classes made of known visual modes (collapse benchmark).

Shared split, few-shot and subsampling helpers live in :mod:`datasets.common`.
"""
from . import stanford_cars  # noqa: F401
from . import synthetic_modes  # noqa: F401
from .synthetic_modes import add_synthetic_config


def extend_cfg(cfg):
    """Add the datasets' own config keys (``DATASET.<NAME>.*``) before any merge."""
    add_synthetic_config(cfg)
    return cfg
