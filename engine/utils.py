"""Logging (rank 0 only in distributed runs; optional Weights & Biases scalars), seeding, meters and small
file helpers (Dassl-compatible behaviour, our own code)."""
import os
import random
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from .distributed import is_main_process
from .errors import ConfigError


class _Tee:
    """Writes to the console and to a log file. The file gets whole lines only, each handed to the OS as
    soon as it is complete (a killed run keeps every line it printed, and its log never ends mid-line);
    ``flush`` also fsyncs, so the log survives a crash of the machine too."""

    def __init__(self, console, fpath):
        self.console = console
        self.file = open(fpath, "w", buffering=1)  # line-buffered
        self._partial = ""

    def write(self, msg):
        self.console.write(msg)
        lines, newline, self._partial = (self._partial + msg).rpartition("\n")
        if newline:
            self.file.write(lines + newline)

    def flush(self):
        self.console.flush()
        self.file.flush()
        os.fsync(self.file.fileno())

    def isatty(self):
        return False

    def close(self):
        self.file.write(self._partial)
        self._partial = ""
        self.file.close()


def quiet_other_ranks():
    """In a distributed run, ranks > 0 print nothing to stdout (rank 0 logs for all); stderr, where errors
    and tracebacks go, stays. A no-op on rank 0 and in a single process."""
    if is_main_process() or getattr(sys.stdout, "name", None) == os.devnull:
        return
    sys.stdout = open(os.devnull, "w")


def setup_logger(output=None):
    """Tee stdout into ``<output>/log.txt`` (or ``output`` itself when it ends in .txt/.log).

    Like Dassl, an existing log file is not overwritten: the new one gets a ``-%Y-%m-%d-%H-%M-%S`` suffix
    (then ``-2``, ``-3`` ... for several in one second).
    Returns the path of the log file (None when ``output`` is None, and on ranks > 0 of a distributed run,
    whose stdout is silenced instead: only rank 0 writes log.txt).
    """
    if not is_main_process():
        quiet_other_ranks()
        return None
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = os.path.join(output, "log.txt")
    if os.path.exists(fpath):
        stamped = fpath + time.strftime("-%Y-%m-%d-%H-%M-%S")
        fpath, n = stamped, 2
        while os.path.exists(fpath):  # resumed twice within a second: never overwrite an earlier log
            fpath, n = f"{stamped}-{n}", n + 1
    mkdir_if_missing(os.path.dirname(os.path.abspath(fpath)))
    if isinstance(sys.stdout, _Tee):
        sys.stdout.close()
        sys.stdout = sys.stdout.console
    sys.stdout = _Tee(sys.stdout, fpath)
    return fpath


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_rng_state():
    """Every RNG a run draws from, as plain containers (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _version(distribution):
    """The installed version of a distribution (read from its metadata, nothing imported), or "not installed"."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect_env_info():
    """The run's software and hardware, for the log's "System info" block: read in this process (torch's
    ``collect_env`` shells out to pip, nvidia-smi and others, about 2 s at every start)."""
    import platform

    lines = [
        f"PyTorch version: {torch.__version__}",
        f"Is debug build: {torch.version.debug}",
        f"CUDA used to build PyTorch: {torch.version.cuda or 'None'}",
        f"OS: {platform.system()} {platform.release()} ({platform.machine()})",
        f"Python version: {platform.python_version()} ({platform.python_implementation()})",
        f"CPU threads: {os.cpu_count()} (torch uses {torch.get_num_threads()})",
        f"Is CUDA available: {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        lines.append("GPU models: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
        lines.append(f"cuDNN version: {torch.backends.cudnn.version()}")
    lines.append("Versions of relevant libraries: " + ", ".join(
        f"{name} {_version(name)}" for name in ("numpy", "torchvision", "open_clip_torch", "pillow", "yacs")))
    return "\n".join(lines)


def mkdir_if_missing(dirname):
    if dirname:
        os.makedirs(dirname, exist_ok=True)


def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


class AverageMeter:
    """Running value and average; accepts tensors."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class MetricMeter:
    """Dict of AverageMeters rendered as ``name val (avg)`` with 4 decimals, in insertion order."""

    def __init__(self, delimiter=" "):
        self.meters = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict):
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("Input to MetricMeter.update() must be a dictionary")
        for key, value in input_dict.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters[key].update(value)

    def __str__(self):
        return self.delimiter.join(f"{name} {meter.val:.4f} ({meter.avg:.4f})" for name, meter in self.meters.items())


def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent, as one-element tensors (Dassl's ``compute_accuracy``)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / batch_size) for k in topk]


# ----------------------------------------------------------------------------------------- Weights & Biases
WANDB_MODES = ("online", "offline", "disabled")
WANDB_RUN_ID_FILE = "wandb_run_id"


def check_wandb_cfg(cfg):
    """Validate the ``WANDB`` node (every message names its key); when enabled, ``wandb`` must import.
    Configs without the node (built outside ``get_cfg_default``) mean W&B off."""
    w = cfg.get("WANDB")
    if w is None:
        return
    if not isinstance(w.ENABLED, bool):
        raise ConfigError(f"WANDB.ENABLED: must be True or False, got {w.ENABLED!r}")
    if w.MODE not in WANDB_MODES:
        raise ConfigError(f'WANDB.MODE: "{w.MODE}" is not one of {list(WANDB_MODES)} (offline writes the run under '
                          "OUTPUT_DIR/wandb/ for a later `wandb sync`)")
    for key in ("PROJECT", "ENTITY", "NAME", "GROUP"):
        if not isinstance(w[key], str):
            raise ConfigError(f"WANDB.{key}: must be a string, got {w[key]!r}")
    if w.ENABLED and not w.PROJECT.strip():
        raise ConfigError("WANDB.PROJECT: empty; name the W&B project the run is logged to")
    if isinstance(w.TAGS, str) or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in w.TAGS):
        raise ConfigError(f"WANDB.TAGS: must be a list of non-empty strings of at most 64 characters, e.g. "
                          f"\"['coop', 'cars']\", got {w.TAGS!r}")
    if w.ENABLED:
        import_wandb()


def import_wandb():
    try:
        import wandb
    except Exception as exc:  # ImportError, or wandb failing at import
        raise ConfigError(f"WANDB.ENABLED is True but the wandb package cannot be imported ({type(exc).__name__}: "
                          f"{exc}). Install it in this environment (pip install wandb), or set WANDB.ENABLED "
                          "False.") from None
    return wandb


def _wandb_run_id(output_dir):
    """The W&B run id of this run folder, created on first use, so a resumed run continues the same W&B run."""
    path = os.path.join(output_dir, WANDB_RUN_ID_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    import uuid

    run_id = uuid.uuid4().hex[:16]
    mkdir_if_missing(output_dir)
    with open(path, "w") as f:
        f.write(run_id + "\n")
    return run_id


def start_wandb(cfg):
    """A :class:`WandbLogger` for this run when WANDB.ENABLED, on rank 0 only; None otherwise."""
    w = cfg.get("WANDB")
    if w is None or not w.ENABLED or not is_main_process():
        return None
    check_wandb_cfg(cfg)
    wandb = import_wandb()
    import yaml

    try:
        run = wandb.init(
            project=w.PROJECT, entity=w.ENTITY or None, name=w.NAME or cfg.OUTPUT_DIR, group=w.GROUP or None,
            tags=list(w.TAGS), mode=w.MODE, dir=cfg.OUTPUT_DIR, config=yaml.safe_load(cfg.dump()),
            id=_wandb_run_id(cfg.OUTPUT_DIR), resume="allow",
        )
    except Exception as exc:  # not logged in, no network, bad entity or project
        raise ConfigError(f"WANDB: wandb.init failed ({type(exc).__name__}: {exc}). Log in (wandb login) and check "
                          f"WANDB.PROJECT / WANDB.ENTITY, or set WANDB.MODE offline (sync later with `wandb sync "
                          f"{os.path.join(cfg.OUTPUT_DIR, 'wandb')}/offline-run-*`).") from None
    print(f"Initialize Weights & Biases (project={w.PROJECT}, mode={w.MODE}, run id={run.id})")
    return WandbLogger(run)


class WandbLogger:
    """TensorBoard-style scalars to a W&B run. TensorBoard's tags count steps on two scales (iterations for
    ``train/*``, epochs for ``test/*``, ``val/*``, ``collapse/*``), while W&B's own step only increases, so
    each tag prefix gets its own x-axis metric ``<prefix>/step`` (``define_metric``)."""

    def __init__(self, run):
        self.run = run
        self._axes = set()

    def log_scalar(self, tag, value, global_step=None):
        prefix = tag.split("/", 1)[0] if "/" in tag else None
        row = {tag: float(value)}
        if prefix is not None and global_step is not None:
            axis = f"{prefix}/step"
            if axis not in self._axes:
                self.run.define_metric(axis)
                self.run.define_metric(f"{prefix}/*", step_metric=axis)
                self._axes.add(axis)
            row[axis] = global_step
        self.run.log(row)

    def finish(self):
        self.run.finish()
