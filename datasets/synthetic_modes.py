"""SyntheticModes: classes made of M known visual modes, for the collapse benchmark (a known truth).

Each class has its own colours and stripe/check/ring pattern; each of its modes changes the look (a hue
rotation and a grey block at a mode-specific place, both scaled by ``MODE_SEPARATION``), like the front
and rear views of one car model. Every image's ground-truth mode is stored in ``index.json``.

Generated on first use, seeded, under ``DATASET.ROOT/synthetic_modes/<settings>/`` (one folder per
combination of knobs, so settings never overwrite each other), written to a temporary folder and renamed
into place. Knobs (``DATASET.SYNTHETIC.*``): NUM_CLASSES, NUM_MODES, IMAGES_PER_MODE (train),
TEST_PER_MODE, MODE_SEPARATION (0 = the modes look alike, 1 = clearly distinct), IMBALANCE (images of
mode m = IMAGES_PER_MODE * IMBALANCE ** (m / (M - 1)) in train; test stays balanced), IMAGE_SIZE, SEED. Train and test
come straight from the generator; val is empty (NUM_SHOTS applies to train as in CoOp's datasets).
"""
import colorsys
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from yacs.config import CfgNode as CN

from engine import DATASET_REGISTRY, DatasetBase, Datum
from engine.errors import ConfigError, DataError

from .common import count_shots, load_or_create_fewshot

INDEX_FILE = "index.json"


def add_synthetic_config(cfg):
    s = cfg.DATASET.SYNTHETIC = CN()
    s.NUM_CLASSES = 6
    s.NUM_MODES = 4
    s.IMAGES_PER_MODE = 8
    s.TEST_PER_MODE = 4
    s.MODE_SEPARATION = 1.0
    s.IMBALANCE = 1.0
    s.IMAGE_SIZE = 32
    s.SEED = 0
    return cfg


def _validate(s):
    for key in ("NUM_CLASSES", "NUM_MODES", "IMAGES_PER_MODE", "TEST_PER_MODE"):
        if s[key] < 1:
            raise ConfigError(f"DATASET.SYNTHETIC.{key}: must be >= 1, got {s[key]}")
    if not 0.0 <= s.MODE_SEPARATION <= 1.0:
        raise ConfigError(f"DATASET.SYNTHETIC.MODE_SEPARATION: must be in [0, 1], got {s.MODE_SEPARATION}")
    if not 0.0 < s.IMBALANCE <= 1.0:
        raise ConfigError(f"DATASET.SYNTHETIC.IMBALANCE: must be in (0, 1], got {s.IMBALANCE}")
    if s.IMAGE_SIZE < 16:
        raise ConfigError(f"DATASET.SYNTHETIC.IMAGE_SIZE: must be >= 16, got {s.IMAGE_SIZE}")


def settings_name(s):
    return (f"c{s.NUM_CLASSES}_m{s.NUM_MODES}_n{s.IMAGES_PER_MODE}_t{s.TEST_PER_MODE}_sep{s.MODE_SEPARATION:g}"
            f"_imb{s.IMBALANCE:g}_px{s.IMAGE_SIZE}_seed{s.SEED}")


def mode_counts(n, n_modes, imbalance):
    """Images per mode: the first mode has n, the last n * imbalance (geometric in between), at least 1."""
    if n_modes == 1:
        return [n]
    return [max(1, round(n * imbalance ** (m / (n_modes - 1)))) for m in range(n_modes)]


def render(label, mode, n_classes, n_modes, separation, size, rng):
    """RGB uint8 image (size x size) of class ``label`` in mode ``mode``."""
    hue = (label * 0.618034) % 1.0
    kind, cycles = label % 4, 2 + (label // 4) % 3
    hue = (hue + separation * 0.5 * mode / max(n_modes, 1)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255 + rng.uniform(-10, 10, 3)
    bg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.4, 0.45)) * 255 + rng.uniform(-10, 10, 3)
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 0.25)
    u, v = x * cycles + phase, y * cycles + phase
    if kind == 0:
        mask = np.floor(v) % 2 == 1
    elif kind == 1:
        mask = np.floor(u) % 2 == 1
    elif kind == 2:
        mask = (np.floor(u) + np.floor(v)) % 2 == 1
    else:
        mask = np.floor(np.hypot(x - 0.5, y - 0.5) * 2 * cycles + phase) % 2 == 1
    image = np.where(mask[..., None], fg, bg)
    if mode > 0:  # a grey block at a place of the mode's own (mode 0 has none)
        cell = (mode - 1) % 8
        row, col = divmod(cell, 3) if cell < 6 else (2, cell - 6)
        r0, c0 = int(row * size / 3), int(col * size / 3)
        block = image[r0:r0 + size // 3, c0:c0 + size // 3]
        image[r0:r0 + size // 3, c0:c0 + size // 3] = (1 - separation) * block + separation * 128
    image = image + rng.normal(0, 5, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(folder, s):
    """Write images and ``index.json`` into ``folder`` (atomically: temp folder, then rename)."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        rng = np.random.default_rng(s.SEED)
        index = {"settings": dict(s), "classnames": [f"shape {c}" for c in range(s.NUM_CLASSES)]}
        for split, per_mode in (("train", s.IMAGES_PER_MODE), ("test", s.TEST_PER_MODE)):
            os.makedirs(os.path.join(tmp, split))
            entries = []
            for c in range(s.NUM_CLASSES):
                imbalance = s.IMBALANCE if split == "train" else 1.0  # test every mode equally
                for m, count in enumerate(mode_counts(per_mode, s.NUM_MODES, imbalance)):
                    for i in range(count):
                        rel = f"{split}/c{c:03d}_m{m:02d}_{i:03d}.png"
                        pixels = render(c, m, s.NUM_CLASSES, s.NUM_MODES, s.MODE_SEPARATION, s.IMAGE_SIZE, rng)
                        Image.fromarray(pixels).save(os.path.join(tmp, rel))
                        entries.append([rel, c, m])
            index[split] = entries
        with open(os.path.join(tmp, INDEX_FILE), "w") as f:
            json.dump(index, f)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_index(folder):
    path = os.path.join(folder, INDEX_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f'Cannot read "{path}" ({exc}); delete "{folder}" to regenerate it') from None


def mode_of(folder):
    """impath -> ground-truth mode for every image of the dataset in ``folder``."""
    index = load_index(folder)
    return {os.path.join(folder, rel): mode for split in ("train", "test") for rel, _, mode in index[split]}


@DATASET_REGISTRY.register()
class SyntheticModes(DatasetBase):
    dataset_dir = "synthetic_modes"

    def __init__(self, cfg):
        s = cfg.DATASET.SYNTHETIC
        _validate(s)
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = os.path.join(root, self.dataset_dir, settings_name(s))
        if not os.path.isdir(self.dataset_dir):
            print(f"Generating the synthetic dataset in {self.dataset_dir}")
            generate(self.dataset_dir, s)
        index = load_index(self.dataset_dir)
        names = index["classnames"]

        def items(split):
            return [Datum(impath=os.path.join(self.dataset_dir, rel), label=c, classname=names[c])
                    for rel, c, _ in index[split]]

        train, test = items("train"), items("test")
        train, _ = load_or_create_fewshot(self, train, [], cfg.DATASET.NUM_SHOTS, cfg.SEED,
                                          os.path.join(self.dataset_dir, "split_fewshot"))
        super().__init__(train_x=train, val=[], test=test)
        self.shots_per_class = count_shots(self.train_x, cfg.DATASET.NUM_SHOTS)
