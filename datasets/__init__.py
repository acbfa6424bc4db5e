"""Datasets, registered in ``engine.DATASET_REGISTRY`` by class name when their module is imported.

- ``StanfordCars`` (``stanford_cars``): Stanford Cars / Cars196, CoOp's split and few-shot cache.

Shared split, few-shot and subsampling helpers live in :mod:`datasets.common`.
"""
from . import stanford_cars  # noqa: F401
