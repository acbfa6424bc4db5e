"""Optimizers and LR schedulers, used on both engines.

The scheduler is one class whose lr is a closed-form function of the number of completed scheduler steps
(one step per epoch in CoOp-style trainers). It holds no other scheduler object, so its ``state_dict`` is
plain data: checkpoints load with ``torch.load(weights_only=True)`` and resuming continues the schedule
exactly (Dassl's warmup wrappers break on both counts on current torch, §6).
"""
import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from .errors import ConfigError

OPTIMIZERS = ("adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw")
SCHEDULERS = ("single_step", "multi_step", "cosine")
WARMUP_TYPES = ("constant", "linear")


def build_optimizer(model, optim_cfg, param_groups=None):
    """Optimizer named by ``OPTIM.NAME`` over ``param_groups`` or the parameters of ``model``."""
    name = optim_cfg.NAME
    if name not in OPTIMIZERS:
        raise ConfigError(f'OPTIM.NAME: "{name}" is not one of {list(OPTIMIZERS)}')
    if param_groups is not None:
        params = param_groups
    elif isinstance(model, torch.nn.Module):
        params = model.parameters()
    else:
        params = model
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, amsgrad=name == "amsgrad")
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
            dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)


def _milestones(optim_cfg):
    stepsize = optim_cfg.STEPSIZE
    if optim_cfg.LR_SCHEDULER == "single_step":
        step = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        if not isinstance(step, int):
            raise ConfigError(f"OPTIM.STEPSIZE: single_step needs an integer step size, got {stepsize!r}")
        return (optim_cfg.MAX_EPOCH if step <= 0 else step,)
    if not isinstance(stepsize, (list, tuple)) or not all(isinstance(s, int) for s in stepsize):
        raise ConfigError(f"OPTIM.STEPSIZE: multi_step needs a list of integer epochs, got {stepsize!r}")
    return tuple(sorted(stepsize))


class EpochLRScheduler(LRScheduler):
    """Base schedule (cosine / single_step / multi_step) with optional constant or linear warmup.

    With ``last_epoch = e`` scheduler steps completed, the lr is:
    - warmup (e < warmup_epoch): ``warmup_cons_lr`` (constant), or ``warmup_min_lr`` at e = 0 and
      ``base_lr * e / warmup_epoch`` afterwards (linear);
    - then the base schedule at step ``s = e - warmup_epoch`` (``warmup_recount`` True, Dassl's default) or
      ``s = e``: cosine ``base_lr * (1 + cos(pi * s / max_epoch)) / 2``; step ``base_lr * gamma ** k``
      with k the number of milestones <= s (single_step uses the milestones step, 2*step, ...).
    Dassl computes the same values, except with ``WARMUP_RECOUNT False``, where its chained recursive update
    drifts from the closed form; we use the closed form.
    """

    def __init__(self, optimizer, kind, max_epoch, gamma=0.1, milestones=(), warmup_epoch=0,
                 warmup_type="constant", warmup_cons_lr=1e-5, warmup_min_lr=1e-5, warmup_recount=True):
        self.kind = kind
        self.max_epoch = float(max_epoch)
        self.gamma = float(gamma)
        self.milestones = tuple(int(m) for m in milestones)
        self.warmup_epoch = max(int(warmup_epoch), 0)
        self.warmup_type = warmup_type
        self.warmup_cons_lr = float(warmup_cons_lr)
        self.warmup_min_lr = float(warmup_min_lr)
        self.warmup_recount = bool(warmup_recount)
        super().__init__(optimizer)

    def lr_at(self, epoch, base_lr):
        """The lr used after ``epoch`` completed scheduler steps."""
        warm = self.warmup_epoch
        if epoch < warm:
            if self.warmup_type == "constant":
                return self.warmup_cons_lr
            return self.warmup_min_lr if epoch == 0 else base_lr * epoch / warm
        step = epoch - warm if self.warmup_recount else epoch
        if self.kind == "cosine":
            return base_lr * (1 + math.cos(math.pi * step / self.max_epoch)) / 2
        if self.kind == "single_step":
            return base_lr * self.gamma ** (step // self.milestones[0])
        return base_lr * self.gamma ** sum(1 for m in self.milestones if m <= step)

    _SETTINGS = ("kind", "max_epoch", "gamma", "milestones", "warmup_epoch", "warmup_type", "warmup_cons_lr",
                 "warmup_min_lr", "warmup_recount")

    def state_dict(self):
        """Progress only: the schedule's settings come from the config, so a resumed run that changes
        e.g. OPTIM.MAX_EPOCH follows the new schedule instead of the checkpoint's."""
        return {k: v for k, v in super().state_dict().items() if k not in self._SETTINGS}

    def load_state_dict(self, state_dict):
        """Restore progress and set the optimizer's lr from it (load after the optimizer's own state)."""
        super().load_state_dict(state_dict)
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_lr(self):
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def _get_closed_form_lr(self):
        return self.get_lr()


def build_lr_scheduler(optimizer, optim_cfg):
    """Scheduler named by ``OPTIM.LR_SCHEDULER``, wrapped in warmup when ``OPTIM.WARMUP_EPOCH`` > 0."""
    kind = optim_cfg.LR_SCHEDULER
    if kind not in SCHEDULERS:
        raise ConfigError(f'OPTIM.LR_SCHEDULER: "{kind}" is not one of {list(SCHEDULERS)}')
    warmup_epoch = optim_cfg.WARMUP_EPOCH
    if warmup_epoch > 0 and optim_cfg.WARMUP_TYPE not in WARMUP_TYPES:
        raise ConfigError(f'OPTIM.WARMUP_TYPE: "{optim_cfg.WARMUP_TYPE}" is not one of {list(WARMUP_TYPES)}')
    if optim_cfg.MAX_EPOCH < 1:
        raise ConfigError(f"OPTIM.MAX_EPOCH: must be >= 1, got {optim_cfg.MAX_EPOCH}")
    milestones = () if kind == "cosine" else _milestones(optim_cfg)
    return EpochLRScheduler(
        optimizer, kind, optim_cfg.MAX_EPOCH, gamma=optim_cfg.GAMMA, milestones=milestones,
        warmup_epoch=warmup_epoch, warmup_type=optim_cfg.WARMUP_TYPE,
        warmup_cons_lr=optim_cfg.WARMUP_CONS_LR, warmup_min_lr=optim_cfg.WARMUP_MIN_LR,
        warmup_recount=optim_cfg.WARMUP_RECOUNT,
    )
