"""SyntheticWorld: classes that are (colour, shape) compositions of the generated world (datasets/world.py).

Classes are named like "red star". The attributes a class name leaves out (size, position, background) are
either drawn freely per image (``NUM_MODES 1``) or, with ``NUM_MODES M > 1``, fixed per *mode*: each
class gets M hidden looks, e.g. "large, on the left, striped background" and "small, at the top, dotted
background", and every image stores its true mode (collapse benchmark).

``COMPOSITIONS`` chooses the class pool: ``seen`` (the 80 pairs the pretrained tiny CLIP saw),
``held_out`` (the 20 pairs kept out of pretraining: zero-shot on them tests composition) or ``all``.
``NUM_CLASSES`` classes are drawn from the pool with ``SEED`` and ordered so that CoOp's base-to-new split
(``DATASET.SUBSAMPLE_CLASSES``: first half base, second half new) gives new classes that are new
compositions of a colour and a shape both seen among the base classes.

Generated on first use under ``DATASET.ROOT/synthetic_world/<settings>/`` (one folder per combination of
knobs) in CoOp's layout: ``images/{train,val,test}/*.png``, the split file ``split_synthetic_world.json``
(``[relative path, label, class name]``), ``split_fewshot/`` and ``index.json`` (every image's attributes
and true mode). Knobs under ``DATASET.SYNTHETIC_WORLD``: see :func:`add_synthetic_world_config`.
"""
import contextlib
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from yacs.config import CfgNode as CN

from engine import DATASET_REGISTRY, DatasetBase, Datum
from engine.errors import ConfigError

from . import world
from .common import count_shots, load_or_create_fewshot, read_split, save_split, subsample_classes
from .synthetic_modes import INDEX_FILE, load_index  # the same index.json contract

SPLIT_FILE = "split_synthetic_world.json"
POOLS = ("seen", "held_out", "all")
MAX_MODES = 15  # distinct (background, size, position) looks a class can get: 5 x 3 with distinct pairs


def add_synthetic_world_config(cfg):
    s = cfg.DATASET.SYNTHETIC_WORLD = CN()
    s.COMPOSITIONS = "seen"  # class pool: seen | held_out | all
    s.NUM_CLASSES = 20
    s.NUM_MODES = 1  # hidden looks per class; 1 = size, position and background drawn per image
    s.TRAIN_PER_CLASS = 32
    s.VAL_PER_CLASS = 4
    s.TEST_PER_CLASS = 30
    s.IMAGE_SIZE = 32  # the pretrained tiny CLIP's resolution (INPUT.SIZE must match the model)
    s.SEED = 0  # classes, modes and images
    return cfg


def _pool(name):
    return {"seen": world.seen_compositions, "held_out": world.held_out_compositions,
            "all": world.all_compositions}[name]()


def _validate(s):
    key = "DATASET.SYNTHETIC_WORLD."
    if s.COMPOSITIONS not in POOLS:
        raise ConfigError(f'{key}COMPOSITIONS: must be one of {", ".join(POOLS)}, got "{s.COMPOSITIONS}"')
    size = len(_pool(s.COMPOSITIONS))
    if not 2 <= s.NUM_CLASSES <= size:
        raise ConfigError(f"{key}NUM_CLASSES: must be in [2, {size}] for COMPOSITIONS {s.COMPOSITIONS} "
                          f"({size} compositions), got {s.NUM_CLASSES}")
    if not 1 <= s.NUM_MODES <= MAX_MODES:
        raise ConfigError(f"{key}NUM_MODES: must be in [1, {MAX_MODES}], got {s.NUM_MODES}")
    for name in ("TRAIN_PER_CLASS", "TEST_PER_CLASS"):
        if s[name] < s.NUM_MODES:
            raise ConfigError(f"{key}{name}: must be >= NUM_MODES ({s.NUM_MODES}) so that every mode has an "
                              f"image, got {s[name]}")
    if s.VAL_PER_CLASS < 0:
        raise ConfigError(f"{key}VAL_PER_CLASS: must be >= 0, got {s.VAL_PER_CLASS}")
    if s.IMAGE_SIZE < 16:
        raise ConfigError(f"{key}IMAGE_SIZE: must be >= 16, got {s.IMAGE_SIZE}")


def settings_name(s):
    return (f"{s.COMPOSITIONS}_c{s.NUM_CLASSES}_m{s.NUM_MODES}_n{s.TRAIN_PER_CLASS}_v{s.VAL_PER_CLASS}"
            f"_t{s.TEST_PER_CLASS}_px{s.IMAGE_SIZE}_seed{s.SEED}")


def dataset_folder(cfg):
    """The generated dataset's folder for ``cfg`` (``DATASET.ROOT`` and ``DATASET.SYNTHETIC_WORLD``)."""
    root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
    return os.path.join(root, SyntheticWorld.dataset_dir, settings_name(cfg.DATASET.SYNTHETIC_WORLD))


def choose_classes(pool, n, rng):
    """``n`` compositions from ``pool``, ordered so that every class of the second half (CoOp's "new")
    combines a colour and a shape that each occur in the first half ("base"), when the pool allows."""
    m = (n + 1) // 2
    order = list(rng.permutation(len(pool)))
    chosen = [pool[i] for i in order[:m]]
    colours, shapes = {c for c, _ in chosen}, {s for _, s in chosen}
    rest = [pool[i] for i in order[m:]]
    composed = [p for p in rest if p[0] in colours and p[1] in shapes]
    others = [p for p in rest if p not in composed]
    return chosen + (composed + others)[:n - m]


def mode_looks(n_modes, rng):
    """``n_modes`` distinct hidden looks (size, position, background) for one class."""
    sizes = [list(world.SIZES)[i] for i in rng.permutation(len(world.SIZES))]
    positions = [list(world.POSITIONS)[i] for i in rng.permutation(len(world.POSITIONS))]
    backgrounds = [world.BACKGROUNDS[i] for i in rng.permutation(len(world.BACKGROUNDS))]
    return [(sizes[m % len(sizes)], positions[m % len(positions)], backgrounds[m % len(backgrounds)])
            for m in range(n_modes)]


@contextlib.contextmanager
def _atomic_folder(folder):
    """Yield a temporary sibling folder to fill; renamed to ``folder`` on success, removed on failure."""
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(folder))
    try:
        yield tmp
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate(folder, s):
    """Render the dataset into ``folder`` (atomically: temporary folder, then rename)."""
    with _atomic_folder(folder) as tmp:
        rng = np.random.default_rng([s.SEED, 3])
        classes = choose_classes(_pool(s.COMPOSITIONS), s.NUM_CLASSES, rng)
        names = [world.class_name(c, sh) for c, sh in classes]
        looks = [mode_looks(s.NUM_MODES, rng) if s.NUM_MODES > 1 else [(None, None, None)] for _ in classes]
        index = {"settings": dict(s), "classnames": names, "held_out": [world.is_held_out(*p) for p in classes],
                 "modes": [[list(look) for look in class_looks] for class_looks in looks], "images": {}}
        splits = {}
        for split, per_class in (("train", s.TRAIN_PER_CLASS), ("val", s.VAL_PER_CLASS),
                                 ("test", s.TEST_PER_CLASS)):
            os.makedirs(os.path.join(tmp, "images", split))
            splits[split] = []
            for label, composition in enumerate(classes):
                for i in range(per_class):
                    mode = i % len(looks[label])  # modes in turn: balanced
                    size, position, background = looks[label][mode]
                    scene = world.sample_scene(rng, [composition], size=size, position=position,
                                               background=background)
                    rel = f"images/{split}/c{label:03d}_{i:04d}.png"
                    Image.fromarray(world.render(scene, s.IMAGE_SIZE, rng)).save(os.path.join(tmp, rel))
                    splits[split].append(Datum(impath=os.path.join(tmp, rel), label=label, classname=names[label]))
                    index["images"][rel] = {"mode": mode, "colour": scene.colour, "shape": scene.shape,
                                            "size": scene.size, "position": scene.position,
                                            "background": scene.background}
        save_split(splits["train"], splits["val"], splits["test"], os.path.join(tmp, SPLIT_FILE), tmp)
        with open(os.path.join(tmp, INDEX_FILE), "w") as f:
            json.dump(index, f)


def mode_of(folder):
    """impath -> true hidden mode for every image of the dataset in ``folder`` (as synthetic_modes.mode_of)."""
    return {os.path.join(folder, rel): info["mode"] for rel, info in load_index(folder)["images"].items()}


@DATASET_REGISTRY.register()
class SyntheticWorld(DatasetBase):
    dataset_dir = "synthetic_world"

    def __init__(self, cfg):
        s = cfg.DATASET.SYNTHETIC_WORLD
        _validate(s)
        self.dataset_dir = dataset_folder(cfg)
        if not os.path.isdir(self.dataset_dir):
            print(f"Generating the synthetic world dataset in {self.dataset_dir}")
            generate(self.dataset_dir, s)
        train, val, test = read_split(os.path.join(self.dataset_dir, SPLIT_FILE), self.dataset_dir)
        train, val = load_or_create_fewshot(self, train, val, cfg.DATASET.NUM_SHOTS, cfg.SEED,
                                            os.path.join(self.dataset_dir, "split_fewshot"))
        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        super().__init__(train_x=train, val=val, test=test)
        self.shots_per_class = count_shots(self.train_x, cfg.DATASET.NUM_SHOTS)
