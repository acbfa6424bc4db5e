"""The framework seam: real Dassl when importable, else the built-in compatible subset.

``MIXPROMPT_ENGINE`` selects the backend: ``auto`` (default: Dassl if ``import dassl`` works),
``dassl`` (required; an error if it cannot be imported) or ``builtin``. Trainers and datasets import the
names below from here and therefore register into whichever backend's registries are active.

Whatever the backend, the project's own optimizers, LR schedulers (with warmup), checkpoint saving and
loading are used, because Dassl's are broken on current torch (its warm-up schedulers pass a removed
``verbose`` argument; checkpoints holding pickled schedulers fail ``torch.load`` since torch 2.6). The
``WANDB`` config node and its W&B scalars exist on both backends.

Distributed training (torchrun, ``engine.distributed``, docs/distributed.md) is built-in only: on Dassl,
``train.py`` refuses WORLD_SIZE > 1 and says to set MIXPROMPT_ENGINE=builtin.

Note: importing Dassl disables Python ``logging`` at WARNING and below process-wide (its §4.6).
"""
import os

from .errors import ConfigError, DataError, UserError, WeightsError  # noqa: F401

ENGINE_CHOICES = ("auto", "dassl", "builtin")


def _resolve_backend():
    requested = os.environ.get("MIXPROMPT_ENGINE", "auto").strip().lower() or "auto"
    if requested not in ENGINE_CHOICES:
        raise ConfigError(
            f'MIXPROMPT_ENGINE="{requested}" is not one of {list(ENGINE_CHOICES)}: use auto (Dassl when '
            "importable), dassl (require it) or builtin (never use it)."
        )
    if requested == "builtin":
        return "builtin"
    try:
        import dassl  # noqa: F401
    except Exception as exc:  # ImportError, or Dassl failing at import on this torch
        if requested == "dassl":
            raise UserError(
                f"MIXPROMPT_ENGINE=dassl but Dassl cannot be imported ({type(exc).__name__}: {exc}). "
                "Install Dassl.pytorch into this environment, or set MIXPROMPT_ENGINE=builtin."
            ) from None
        return "builtin"
    return "dassl"


ENGINE = _resolve_backend()

from .checkpoint import CheckpointMixin, load_checkpoint, save_checkpoint  # noqa: E402,F401
from .distributed import (GlobalBatchSampler, all_reduce_class_mean, all_reduce_sum, barrier,  # noqa: E402,F401
                          check_distributed_support, destroy_distributed, get_rank, get_world_size,
                          init_distributed_from_env, is_distributed, is_main_process)
from .optim import build_lr_scheduler, build_optimizer  # noqa: E402,F401

if ENGINE == "dassl":
    from dassl.config import get_cfg_default as _dassl_get_cfg_default
    from dassl.data import DataManager  # noqa: F401
    from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum  # noqa: F401
    from dassl.engine import TRAINER_REGISTRY  # noqa: F401
    from dassl.engine import TrainerX as _DasslTrainerX
    from dassl.engine import build_trainer as _dassl_build_trainer
    from dassl.metrics import compute_accuracy  # noqa: F401
    from dassl.utils import collect_env_info, set_random_seed  # noqa: F401

    from .utils import setup_logger  # noqa: F401  (Dassl's: same files, but buffered; ours writes line by line)

    from .config import add_wandb_config as _add_wandb_config
    from .registry import check_availability as _check_availability
    from .utils import start_wandb as _start_wandb

    def get_cfg_default():
        """Dassl's defaults plus the engine's WANDB node."""
        return _add_wandb_config(_dassl_get_cfg_default())

    class TrainerX(CheckpointMixin, _DasslTrainerX):
        """Dassl's TrainerX with the project's checkpoint saving, resuming and loading, and W&B scalars.
        Single process only (train.py refuses WORLD_SIZE > 1 on Dassl)."""

        def sync_gradients(self, names=None):
            """Nothing to synchronise in a single process (the built-in engine's hook for torchrun runs)."""

        def init_writer(self, log_dir):
            super().init_writer(log_dir)
            if getattr(self, "_wandb", None) is None:
                self._wandb = _start_wandb(self.cfg)

        def write_scalar(self, tag, scalar_value, global_step=None):
            super().write_scalar(tag, scalar_value, global_step)
            if getattr(self, "_wandb", None) is not None:
                self._wandb.log_scalar(tag, scalar_value, global_step)

        def close_writer(self):
            super().close_writer()
            if getattr(self, "_wandb", None) is not None:
                self._wandb.finish()
                self._wandb = None

    def build_trainer(cfg):
        """Dassl's ``build_trainer``, after checking TRAINER.NAME and DATASET.NAME like the built-in engine
        does: a misspelt name is a ConfigError naming the key (one paragraph, exit status 2 in train.py)
        instead of Dassl's bare ValueError traceback."""
        _check_availability(cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names(), key="TRAINER.NAME")
        _check_availability(cfg.DATASET.NAME, DATASET_REGISTRY.registered_names(), key="DATASET.NAME")
        return _dassl_build_trainer(cfg)

else:
    from .config import get_cfg_default  # noqa: F401
    from .data.datasets import DATASET_REGISTRY, DatasetBase, Datum  # noqa: F401
    from .data.manager import DataManager  # noqa: F401
    from .trainer import TRAINER_REGISTRY, TrainerX, build_trainer  # noqa: F401
    from .utils import collect_env_info, compute_accuracy, set_random_seed, setup_logger  # noqa: F401
