"""Logging, seeding, meters and small file helpers (Dassl-compatible behaviour, our own code)."""
import os
import random
import sys
import time
from collections import defaultdict

import numpy as np
import torch


class _Tee:
    """Writes to the console and to a log file; ``flush`` also fsyncs so a killed run keeps its log."""

    def __init__(self, console, fpath):
        self.console = console
        self.file = open(fpath, "w")

    def write(self, msg):
        self.console.write(msg)
        self.file.write(msg)

    def flush(self):
        self.console.flush()
        self.file.flush()
        os.fsync(self.file.fileno())

    def isatty(self):
        return False

    def close(self):
        self.file.close()


def setup_logger(output=None):
    """Tee stdout into ``<output>/log.txt`` (or ``output`` itself when it ends in .txt/.log).

    Like Dassl, an existing log file is not overwritten: the new one gets a ``-%Y-%m-%d-%H-%M-%S`` suffix.
    Returns the path of the log file (None when ``output`` is None).
    """
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = os.path.join(output, "log.txt")
    if os.path.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
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


def collect_env_info():
    from torch.utils.collect_env import get_pretty_env_info
    import PIL

    try:
        info = get_pretty_env_info()
    except Exception as exc:  # collect_env shells out; never fail a run over it
        info = f"(torch env info unavailable: {exc})"
    return info + f"\n        Pillow ({PIL.__version__})"


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
