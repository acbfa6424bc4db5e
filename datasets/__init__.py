"""Datasets, registered in ``engine.DATASET_REGISTRY`` by class name when their module is imported.

- ``StanfordCars`` (``stanford_cars``): Stanford Cars / Cars196, CoOp's split and few-shot cache.
- ``INaturalist`` (``inaturalist``): iNaturalist 2017-2021 releases, class-name choice, taxonomic subsets.
- ``SyntheticModes`` (``synthetic_modes``): generated classes made of known visual modes (collapse benchmark).
- ``SyntheticWorld`` (``synthetic_world*``): (colour, shape) classes of the generated world of the pretrained
  tiny CLIP (docs/synthetic_world.md).

Shared split, few-shot and subsampling helpers live in :mod:`datasets.common`.
"""
from . import inaturalist, stanford_cars, synthetic_modes, synthetic_world  # noqa: F401
from .inaturalist import add_inaturalist_config
from .synthetic_modes import add_synthetic_config
from .synthetic_world import add_synthetic_world_config


def extend_cfg(cfg):
    """Add the datasets' own config keys (``DATASET.<NAME>.*``) before any merge."""
    add_inaturalist_config(cfg)
    add_synthetic_config(cfg)
    add_synthetic_world_config(cfg)
    return cfg
