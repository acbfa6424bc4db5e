"""The trainers' catalogue: what every tool needs to know of a trainer, declared next to its class.

A trainer is one file under ``trainers/`` and one config folder ``configs/trainers/<Name>/``:

    @register_trainer
    class MyPrompt(CLIPTrainer):
        cfg_node = "MYPROMPT"                  # its keys live under TRAINER.MYPROMPT
        default_config = "vit_b16"             # configs/trainers/MyPrompt/vit_b16.yaml
        variant_keys = (VariantKey("TRAINER.MYPROMPT.N", flag="--n", folder="n{}", default="4"),)

        @staticmethod
        def add_config(cfg):                   # the node and its defaults, before any YAML is merged
            cfg.TRAINER.MYPROMPT = CN()
            cfg.TRAINER.MYPROMPT.N = 4

``register_trainer`` registers the class in the engine's TRAINER registry (Dassl's when Dassl is used) and
in this catalogue. ``trainers/__init__.py`` imports every module of the package, so a new file is found
without editing any other. ``train.py`` (config defaults), ``scripts/sweep.py`` and the run scripts (run
folders and their flags), ``scripts/parse_results.py`` (grouping) and ``scripts/bench.py`` (methods) read
the catalogue; docs/extending.md walks through it.
"""
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union

from engine import TRAINER_REGISTRY

POSITIVE_INT = r"[1-9][0-9]*"


@dataclass(frozen=True)
class VariantKey:
    """A config key that names a run's folder (and so is a sweep flag, not an opt).

    ``folder`` is a format string for the value (``"k{}"`` -> ``k8``) or a mapping value -> piece
    (``{"True": "_ensemble", "False": ""}``). ``default`` is the sweep's value when the flag is not given
    (``None``: the flag is required). A value must match ``pattern`` (a full-match regex), described in
    messages as ``what``.
    """
    key: str
    flag: str
    folder: Union[str, Mapping[str, str]]
    default: Optional[str] = None
    pattern: str = POSITIVE_INT
    what: str = "positive integers"
    help: str = ""

    def piece(self, value: str) -> str:
        if isinstance(self.folder, str):
            return self.folder.format(value)
        return self.folder[value]

    def check(self, value: str) -> bool:
        return re.fullmatch(self.pattern, str(value)) is not None


#: name -> trainer class, in registration order
_CATALOGUE: Dict[str, type] = {}


def register_trainer(cls):
    """Class decorator: register ``cls`` in the engine's TRAINER registry and in the catalogue."""
    if not getattr(cls, "cfg_node", ""):
        raise TypeError(f"{cls.__name__}: a trainer declares its config node (cfg_node = 'NAME')")
    TRAINER_REGISTRY.register(cls)
    _CATALOGUE[cls.__name__] = cls
    return cls


def trainer_names() -> Tuple[str, ...]:
    return tuple(_CATALOGUE)


def get_trainer(name: str) -> type:
    """The trainer class registered as ``name`` (exact name, or any case)."""
    if name in _CATALOGUE:
        return _CATALOGUE[name]
    for cls in _CATALOGUE.values():
        if name.lower() in (cls.__name__.lower(), *cls.aliases):
            return cls
    raise KeyError(name)


def all_trainers():
    return list(_CATALOGUE.values())


def default_node(trainer: type):
    """The trainer's config node with its defaults (``TRAINER.<cfg_node>`` as ``add_config`` makes it)."""
    from yacs.config import CfgNode as CN

    cfg = CN({"TRAINER": CN()})
    trainer.add_config(cfg)
    return cfg.TRAINER[trainer.cfg_node]


def config_path(trainer: type, cfg_name: str) -> str:
    """``configs/trainers/<config_dir>/<cfg_name>.yaml``, relative to the repository root."""
    return f"configs/trainers/{trainer.config_folder()}/{cfg_name}.yaml"
