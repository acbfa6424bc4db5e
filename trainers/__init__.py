"""Trainers: every module of this package is imported, and each trainer registers itself (``@register_trainer``,
``trainers/registry.py``) in the engine's TRAINER registry and in the project's catalogue. A new trainer is a
new file here plus its config folder ``configs/trainers/<Name>/`` (docs/extending.md)."""
import importlib
import pkgutil

from .config import extend_cfg  # noqa: F401

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
