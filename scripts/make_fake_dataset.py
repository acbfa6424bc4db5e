#!/usr/bin/env python
"""Write a tiny fake dataset in a real on-disk format, to smoke-test an install or a training run.

    python scripts/make_fake_dataset.py stanford_cars ROOT [--classes 6] [--train-per-class 8]
        [--test-per-class 4] [--seed 0] [--image-size 64] [--with-split] [--force]

writes ROOT/stanford_cars/ in the original release format (reference/datasets.md §1.10). Images are
learnable: each class has its own colours and stripe/check/ring pattern, with small per-image jitter.
Each dataset is one ``write_fake_<name>`` function plus one subcommand.
"""
import argparse
import colorsys
import random
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import scipy.io  # noqa: E402
from PIL import Image  # noqa: E402

from engine.errors import UserError  # noqa: E402

# Real Stanford Cars names (cars_meta.mat form, year last), chosen to cover the parsing corner cases.
REAL_CAR_NAMES = (
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Ram C/V Cargo Van Minivan 2012",
    "smart fortwo Convertible 2012",
    "Aston Martin V8 Vantage Coupe 2012",
    "Land Rover Range Rover SUV 2012",
    "Rolls-Royce Ghost Sedan 2012",
    "Mercedes-Benz C-Class Sedan 2012",
    "Chevrolet Silverado 1500 Extended Cab 2012",
    "Acura TL Type-S 2008",
    "Dodge Ram Pickup 3500 Crew Cab 2010",
    "Nissan NV Passenger Van 2012",
    "FIAT 500 Abarth 2012",
    "McLaren MP4-12C Coupe 2012",
    "Audi 100 Wagon 1994",
    "Volkswagen Golf Hatchback 1991",
    "Chevrolet Express Cargo Van 2007",
    "BMW X5 SUV 2007",
    "Eagle Talon Hatchback 1998",
    "Geo Metro Convertible 1993",
)

ANNOTATION_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def fake_car_names(num_classes):
    """``num_classes`` class names: the real ones above, then "Make Model<N> Sedan 2012"."""
    names = list(REAL_CAR_NAMES[:num_classes])
    names += [f"Make Model{n} Sedan 2012" for n in range(len(names) + 1, num_classes + 1)]
    return names


# --------------------------------------------------------------------------------------------------------
# .mat writers (structures exactly as scipy reads the real files in its default mode)
# --------------------------------------------------------------------------------------------------------
def _mat_int(value):
    """A (1, 1) integer array, uint8 when it fits, else uint16, like the real files."""
    return np.array([[value]], dtype=np.uint8 if 0 <= value < 256 else np.uint16)


def save_class_names(path, names):
    """``class_names`` as a 1xC cell array of strings (an object array, not a list: see §1.10)."""
    cells = np.empty((1, len(names)), dtype=object)
    for k, name in enumerate(names):
        cells[0, k] = name
    scipy.io.savemat(path, {"class_names": cells})


def save_cars_annotations(path, records, with_class=True):
    """``annotations`` as a 1xN struct array; ``records`` are dicts with the six release fields.

    ``with_class=False`` writes the label-less layout of the devkit's ``cars_test_annos.mat``.
    """
    fields = [f for f in ANNOTATION_FIELDS if with_class or f != "class"]
    annos = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for i, record in enumerate(records):
        for field in fields:
            value = record[field]
            annos[0, i][field] = value if field == "fname" else _mat_int(int(value))
    scipy.io.savemat(path, {"annotations": annos})


# --------------------------------------------------------------------------------------------------------
# Learnable images
# --------------------------------------------------------------------------------------------------------
def _class_style(label, num_classes):
    """Colours, pattern kind and pattern frequency that identify one class."""
    hue = (label * 0.618034) % 1.0 if num_classes > 12 else label / num_classes
    fg = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255
    bg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.35, 0.35 + 0.3 * (label % 2))) * 255
    return {"fg": fg, "bg": bg, "kind": label % 4, "cycles": 2 + (label // 4) % 4}


def _pattern_mask(kind, cycles, height, width, phase):
    """1 where the foreground colour goes: stripes, vertical stripes, checks or rings."""
    y, x = np.mgrid[0:height, 0:width]
    u = x / width * cycles + phase
    v = y / height * cycles + phase
    if kind == 0:
        return (np.floor(v) % 2).astype(bool)
    if kind == 1:
        return (np.floor(u) % 2).astype(bool)
    if kind == 2:
        return ((np.floor(u) + np.floor(v)) % 2).astype(bool)
    radius = np.hypot(x / width - 0.5, y / height - 0.5) * 2 * cycles + phase
    return (np.floor(radius) % 2).astype(bool)


def render_class_image(label, num_classes, image_size, rng, mode=0):
    """One RGB uint8 image of class ``label``: its pattern and colours, jittered and noisy.

    ``mode`` > 0 gives the same class a different look (like the front and rear views of one car model):
    odd modes swap foreground and background colours, and modes >= 2 cover a quadrant (which one depends
    on the mode) with a flat grey block.
    """
    style = _class_style(label, num_classes)
    height = image_size
    width = image_size + int(rng.integers(0, image_size // 4 + 1))
    mask = _pattern_mask(style["kind"], style["cycles"], height, width, phase=rng.uniform(0, 0.3))
    fg = style["fg"] + rng.uniform(-12, 12, size=3)
    bg = style["bg"] + rng.uniform(-12, 12, size=3)
    if mode % 2:
        fg, bg = bg, fg
    image = np.where(mask[..., None], fg, bg)
    if mode >= 2:
        quadrant = (mode // 2 - 1) % 4
        rows = slice(0, height // 2) if quadrant < 2 else slice(height // 2, height)
        cols = slice(0, width // 2) if quadrant % 2 == 0 else slice(width // 2, width)
        image[rows, cols] = 128
    image = image + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------
# Stanford Cars
# --------------------------------------------------------------------------------------------------------
def _prepare_target(target, force):
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not force:
            raise UserError(
                f'"{target}" already exists and is not empty; refusing to overwrite it. Choose another ROOT, '
                "or pass --force to delete and replace it."
            )
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.mkdir(parents=True, exist_ok=True)


def _write_image_folder(folder, labels, num_classes, image_size, rng, modes=1):
    """Images 00001.jpg ... for ``labels`` (in file-number order); returns their annotation records.
    With ``modes`` > 1 the images of each class cycle through that many looks."""
    folder.mkdir()
    records = []
    seen = {}
    for number, label in enumerate((int(x) for x in labels), start=1):
        fname = f"{number:05d}.jpg"
        mode = seen.get(label, 0) % modes
        seen[label] = seen.get(label, 0) + 1
        pixels = render_class_image(label, num_classes, image_size, rng, mode=mode)
        Image.fromarray(pixels).save(folder / fname, quality=92)
        height, width = pixels.shape[:2]
        records.append({
            "bbox_x1": int(rng.integers(0, width // 8 + 1)), "bbox_y1": int(rng.integers(0, height // 8 + 1)),
            "bbox_x2": width - 1 - int(rng.integers(0, width // 8 + 1)),
            "bbox_y2": height - 1 - int(rng.integers(0, height // 8 + 1)),
            "class": label + 1, "fname": fname,
        })
    return records


def _write_split(target, train_records, test_records, names, seed):
    """CoOp's split JSON built with the project's own helpers, without disturbing the global RNG."""
    from datasets.common import save_split, split_trainval
    from datasets.stanford_cars import SPLIT_FILE, year_first
    from engine import Datum

    def items(records, folder):
        return [
            Datum(impath=str(target / folder / r["fname"]), label=r["class"] - 1,
                  classname=year_first(names[r["class"] - 1]))
            for r in records
        ]

    state = random.getstate()
    random.seed(seed)
    try:
        train, val = split_trainval(items(train_records, "cars_train"), p_val=0.2)
    finally:
        random.setstate(state)
    save_split(train, val, items(test_records, "cars_test"), str(target / SPLIT_FILE), str(target))
    return len(train), len(val)


def write_fake_stanford_cars(root, classes=6, train_per_class=8, test_per_class=4, seed=0, image_size=64,
                             with_split=False, force=False, modes=1):
    """Write ``root/stanford_cars`` in the original release format; returns that folder.

    cars_train/ and cars_test/ hold five-digit JPEGs (the same names occur in both), devkit/ holds
    cars_meta.mat, cars_train_annos.mat and the label-less cars_test_annos.mat, and
    cars_test_annos_withlabels.mat sits next to the image folders. ``with_split`` also writes CoOp's
    split JSON. An existing non-empty folder is refused unless ``force``.
    """
    if classes < 1 or train_per_class < 1 or test_per_class < 1 or image_size < 8 or modes < 1:
        raise UserError("need classes >= 1, train/test images per class >= 1, image size >= 8 and modes >= 1")
    target = Path(root).expanduser().resolve() / "stanford_cars"
    _prepare_target(target, force)
    rng = np.random.default_rng(seed)
    names = fake_car_names(classes)

    train_labels = np.repeat(np.arange(classes), train_per_class)
    test_labels = np.repeat(np.arange(classes), test_per_class)
    rng.shuffle(train_labels)
    rng.shuffle(test_labels)
    train_records = _write_image_folder(target / "cars_train", train_labels, classes, image_size, rng, modes)
    test_records = _write_image_folder(target / "cars_test", test_labels, classes, image_size, rng, modes)

    (target / "devkit").mkdir()
    save_class_names(target / "devkit" / "cars_meta.mat", names)
    save_cars_annotations(target / "devkit" / "cars_train_annos.mat", train_records)
    save_cars_annotations(target / "devkit" / "cars_test_annos.mat", test_records, with_class=False)
    save_cars_annotations(target / "cars_test_annos_withlabels.mat", test_records)

    written = ["cars_train/", "cars_test/", "devkit/cars_meta.mat", "devkit/cars_train_annos.mat",
               "devkit/cars_test_annos.mat", "cars_test_annos_withlabels.mat"]
    if with_split:
        n_train, n_val = _write_split(target, train_records, test_records, names, seed)
        written.append(f"split_zhou_StanfordCars.json ({n_train} train, {n_val} val)")
    print(
        f"Wrote a fake Stanford Cars (original release format) to {target}: {classes} classes, "
        f"{len(train_records)} train and {len(test_records)} test images of about {image_size}px.\n"
        f"  Files: {', '.join(written)}\n"
        f"  Use it with --root {target.parent}"
    )
    return target


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
def _add_stanford_cars(subparsers):
    p = subparsers.add_parser("stanford_cars", help="Stanford Cars, original release format")
    p.add_argument("root", help="dataset root (the folder that will contain stanford_cars/)")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train-per-class", type=int, default=8)
    p.add_argument("--test-per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--with-split", action="store_true", help="also write CoOp's split_zhou_StanfordCars.json")
    p.add_argument("--force", action="store_true", help="replace an existing ROOT/stanford_cars")
    p.add_argument("--modes", type=int, default=1,
                   help="distinct looks per class (swapped colours, grey quadrant), for sub-prompts to find")
    p.set_defaults(run=lambda a: write_fake_stanford_cars(
        a.root, a.classes, a.train_per_class, a.test_per_class, a.seed, a.image_size, a.with_split, a.force,
        a.modes
    ))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="dataset", required=True, metavar="dataset")
    _add_stanford_cars(subparsers)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
