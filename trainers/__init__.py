"""Trainers, registered by class name in the engine's TRAINER registry when this package is imported."""
from .config import extend_cfg  # noqa: F401
from . import cocoop, coop, linear_probe, mixprompt, zsclip  # noqa: F401  (registration side effects)
