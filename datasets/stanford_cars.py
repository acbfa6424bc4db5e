"""Stanford Cars (Cars196) in CoOp's layout.

``DATASET.ROOT/stanford_cars/`` holds ``cars_train/``, ``cars_test/`` and either CoOp's
``split_zhou_StanfordCars.json`` or the original release's annotations (``devkit/cars_meta.mat``,
``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``), from which the split is built
(20% of each class's training images go to val) and saved. The combined release (``car_ims/`` plus
``cars_annos.mat``) is accepted as a fallback source; its file names differ from the original release's,
so CoOp's published split file cannot be used with it.

Class names have the year moved to the front, as in CoOp: ``2012 Acura RL Sedan``.
"""
import os

import numpy as np
import scipy.io

from engine import DATASET_REGISTRY, DatasetBase, Datum
from engine.errors import DataError

from .common import (count_shots, load_or_create_fewshot, read_split, save_split, split_trainval,
                     subsample_classes)

SPLIT_FILE = "split_zhou_StanfordCars.json"
META_FILE = os.path.join("devkit", "cars_meta.mat")
TRAIN_ANNOS = os.path.join("devkit", "cars_train_annos.mat")
TEST_ANNOS = "cars_test_annos_withlabels.mat"
LABELLESS_TEST_ANNOS = "cars_test_annos.mat"
COMBINED_ANNOS = "cars_annos.mat"
COMBINED_IMAGES = "car_ims"

EXPECTED_LAYOUT = (
    "Expected inside stanford_cars/: cars_train/ and cars_test/ (images 00001.jpg ...) plus either "
    f"{SPLIT_FILE} (CoOp's split) or the original annotations devkit/cars_meta.mat, "
    f"devkit/cars_train_annos.mat and {TEST_ANNOS} (next to cars_train/, not in devkit/)."
)

# Makes of the 196 classes that span several words; every other make is a single token
# (Acura, Mercedes-Benz, Rolls-Royce, McLaren, smart, Ram, Eagle, Geo, ...).
MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")

# Trailing body types, longest first so that "Crew Cab" wins over "Cab" and "Cargo Van" over "Van".
# Anything else at the end of a name (Type-S, SRT-8, Abarth, SS, ZR1 ...) is a trim and stays in the model.
BODY_TYPES = tuple(sorted(
    ("Crew Cab", "Extended Cab", "Regular Cab", "Club Cab", "Quad Cab", "Cargo Van", "Passenger Van",
     "SuperCab", "Minivan", "SUV", "Sedan", "Coupe", "Convertible", "Hatchback", "Wagon", "Van", "Cab"),
    key=lambda t: -len(t.split()),
))


# --------------------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------------------
def _is_year(token):
    return len(token) == 4 and token.isdigit()


def _starts_with(tokens, words):
    words = words.lower().split()
    return [t.lower() for t in tokens[:len(words)]] == words


def parse_car_classname(name):
    """Split a class name into ``{"make", "model", "type", "year"}`` (strings; "" when absent).

    Accepts CoOp's year-first form ("2012 Acura RL Sedan") and the release's year-last form
    ("Acura RL Sedan 2012"). ``type`` is a trailing body type ("SUV", "Crew Cab", ...); trims such as
    "Type-S" stay in the model. Never raises: an unusual name gets a best-effort make and model.
    """
    tokens = str(name).split()
    year = ""
    if tokens and _is_year(tokens[0]):
        year = tokens.pop(0)
    elif tokens and _is_year(tokens[-1]):
        year = tokens.pop()
    make_len = next((len(m.split()) for m in MULTI_WORD_MAKES if _starts_with(tokens, m)), 1)
    make, rest = " ".join(tokens[:make_len]), tokens[make_len:]
    body = ""
    for body_type in BODY_TYPES:
        n = len(body_type.split())
        if len(rest) > n and _starts_with(rest[-n:], body_type):
            body, rest = " ".join(rest[-n:]), rest[:-n]
            break
    return {"make": make, "model": " ".join(rest), "type": body, "year": year}


def year_first(name):
    """CoOp's class name: the release name with its last token (the year) moved to the front."""
    tokens = name.split(" ")
    return " ".join([tokens[-1]] + tokens[:-1])


# --------------------------------------------------------------------------------------------------------
# .mat reading (scipy default mode: structs are (1, N) structured arrays)
# --------------------------------------------------------------------------------------------------------
def _load_mat_variable(path, variable):
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # truncated file, random bytes, HDF5 (v7.3) ... : all unreadable for us
        raise DataError(
            f'Cannot read "{path}" as a MATLAB v5 .mat file ({type(exc).__name__}: {exc}). '
            "Re-download or re-extract it."
        ) from None
    if variable not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f'"{path}" has no variable "{variable}" (found: {found}); is it the right file?')
    return mat[variable]


def _scalar(value, path, what):
    """The single element of a MATLAB value (e.g. ``array([[14]])`` or ``array(['00001.jpg'])``)."""
    flat = np.asarray(value).ravel()
    if flat.size != 1:
        raise DataError(f'"{path}": {what} should hold one value, got {flat.size}: {flat!r}')
    return flat[0]


def _read_class_names(path):
    names = _load_mat_variable(path, "class_names")
    if names.dtype.kind == "U":  # char matrix instead of a cell array: rows padded with spaces
        result = [str(n).rstrip() for n in names.ravel()]
    else:
        result = [str(_scalar(n, path, f"class_names[{i}]")) for i, n in enumerate(names.ravel())]
    if not result:
        raise DataError(f'"{path}": "class_names" is empty')
    return result


def _annotation_records(path, required):
    """The ``annotations`` struct array of ``path`` as a flat array, after checking its fields."""
    annos = _load_mat_variable(path, "annotations")
    fields = annos.dtype.names or ()
    missing = [f for f in required if f not in fields]
    if "class" in missing and os.path.basename(path) == TEST_ANNOS:
        raise DataError(
            f'"{path}" has no "class" field: it is the label-less devkit file {LABELLESS_TEST_ANNOS} under '
            f"the wrong name. Download the real {TEST_ANNOS} (a separate file, linked from "
            "pytorch/vision#7545) and put it in its place."
        )
    if missing:
        raise DataError(f'"{path}": the "annotations" struct lacks the field(s) {missing} (has {list(fields)})')
    return annos.ravel()


def _class_id(record, path, index, num_classes):
    where = f'"{path}", annotation {index}'
    try:
        class_id = int(_scalar(record["class"], path, f"annotation {index} class"))
    except (TypeError, ValueError):
        raise DataError(f"{where}: class is not an integer: {record['class']!r}") from None
    if not 1 <= class_id <= num_classes:
        raise DataError(
            f"{where}: class id {class_id} is out of range; expected 1..{num_classes} "
            "(the number of names in cars_meta.mat)"
        )
    return class_id


def _make_datum(dataset_dir, relpath, class_id, classnames, anno_path, index):
    impath = os.path.join(dataset_dir, relpath)
    if not os.path.isfile(impath):
        raise DataError(f'"{anno_path}", annotation {index}: image "{impath}" does not exist')
    return Datum(impath=impath, label=class_id - 1, classname=classnames[class_id - 1])


def _read_annotations(dataset_dir, anno_file, image_folder, classnames):
    """Datum list for an original-release annotation file whose ``fname`` entries live in ``image_folder``."""
    path = os.path.join(dataset_dir, anno_file)
    items = []
    for index, record in enumerate(_annotation_records(path, ("class", "fname"))):
        class_id = _class_id(record, path, index, len(classnames))
        fname = str(_scalar(record["fname"], path, f"annotation {index} fname"))
        items.append(_make_datum(dataset_dir, os.path.join(image_folder, fname), class_id, classnames, path, index))
    return items


def _check_every_class_present(items, classnames, path):
    present = {item.label for item in items}
    absent = [f'{label + 1} "{name}"' for label, name in enumerate(classnames) if label not in present]
    if absent:
        raise DataError(f'"{path}" has no training images for class id(s) {", ".join(absent[:10])}')


def _read_original_release(dataset_dir):
    classnames = [year_first(n) for n in _read_class_names(os.path.join(dataset_dir, META_FILE))]
    trainval = _read_annotations(dataset_dir, TRAIN_ANNOS, "cars_train", classnames)
    _check_every_class_present(trainval, classnames, os.path.join(dataset_dir, TRAIN_ANNOS))
    test = _read_annotations(dataset_dir, TEST_ANNOS, "cars_test", classnames)
    return trainval, test, len(classnames)


def _read_combined_release(dataset_dir):
    """``cars_annos.mat`` (relative_im_path, class, test flag) with ``car_ims/``: same train/test partition."""
    path = os.path.join(dataset_dir, COMBINED_ANNOS)
    classnames = [year_first(n) for n in _read_class_names(path)]
    trainval, test = [], []
    for index, record in enumerate(_annotation_records(path, ("relative_im_path", "class", "test"))):
        class_id = _class_id(record, path, index, len(classnames))
        relpath = str(_scalar(record["relative_im_path"], path, f"annotation {index} relative_im_path"))
        is_test = int(_scalar(record["test"], path, f"annotation {index} test"))
        item = _make_datum(dataset_dir, relpath, class_id, classnames, path, index)
        (test if is_test else trainval).append(item)
    _check_every_class_present(trainval, classnames, path)
    return trainval, test, len(classnames)


# --------------------------------------------------------------------------------------------------------
# Layout checks with instructions for common user copies
# --------------------------------------------------------------------------------------------------------
def _check_dataset_folder(root, dataset_dir):
    if os.path.isdir(dataset_dir):
        return
    hint = ""
    if os.path.isdir(os.path.join(root, "cars_train")):
        hint = f' "{root}" itself looks like the stanford_cars folder: pass its parent folder as --root.'
    raise DataError(
        f'Stanford Cars folder not found: "{dataset_dir}". DATASET.ROOT (--root) must be the folder that '
        f"contains stanford_cars/.{hint} {EXPECTED_LAYOUT}"
    )


def _has_jpegs(folder):
    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith((".jpg", ".jpeg")) and e.is_file() for e in entries)


def _check_nested_image_folders(dataset_dir):
    """The Kaggle copy nests the images one level deeper (cars_train/cars_train/*.jpg)."""
    for name in ("cars_train", "cars_test"):
        outer = os.path.join(dataset_dir, name)
        inner = os.path.join(outer, name)
        if os.path.isdir(inner) and not _has_jpegs(outer):
            raise DataError(
                f'The images are one level too deep in "{inner}" (the Kaggle copy nests them); they must be '
                f'directly in "{outer}". Move them up, e.g.: cd "{dataset_dir}" && mv {name} {name}_nested && '
                f"mv {name}_nested/{name} {name} && rmdir {name}_nested"
            )


def _missing_release_problems(dataset_dir):
    """What prevents building the split from the original release, each with what to do about it."""
    def at(*parts):
        return os.path.join(dataset_dir, *parts)

    problems = []
    for relpath in (META_FILE, TRAIN_ANNOS):
        if os.path.isfile(at(relpath)):
            continue
        top = at(os.path.basename(relpath))
        if os.path.isfile(top):
            problems.append(f'"{top}" is at the top level: move it to "{at(relpath)}"')
        else:
            problems.append(f'"{at(relpath)}" is missing (it comes with the devkit, car_devkit.tgz)')
    if not os.path.isfile(at(TEST_ANNOS)):
        labelless = [p for p in (at("devkit", LABELLESS_TEST_ANNOS), at(LABELLESS_TEST_ANNOS)) if os.path.isfile(p)]
        if os.path.isfile(at("devkit", TEST_ANNOS)):
            problems.append(f'"{at("devkit", TEST_ANNOS)}" is inside devkit/: move it to "{at(TEST_ANNOS)}"')
        elif labelless:
            problems.append(
                f'only "{labelless[0]}" was found, which has no class labels; the test labels are in the '
                f'separate file {TEST_ANNOS} (linked from pytorch/vision#7545): put it at "{at(TEST_ANNOS)}"'
            )
        else:
            problems.append(f'"{at(TEST_ANNOS)}" is missing (a separate download, next to cars_train/)')
    for folder in ("cars_train", "cars_test"):
        if not os.path.isdir(at(folder)):
            problems.append(f'the image folder "{at(folder)}" is missing')
    if os.path.isfile(at(COMBINED_ANNOS)) and not os.path.isdir(at(COMBINED_IMAGES)):
        problems.append(
            f'"{at(COMBINED_ANNOS)}" belongs to the combined release, whose images are in car_ims/ '
            f"(000001.jpg ...), which is missing; its names do not match cars_train/ and cars_test/"
        )
    return problems


def _raise_incomplete_release(dataset_dir, split_path):
    problems = _missing_release_problems(dataset_dir)
    listed = "".join(f"\n  - {p}" for p in problems)
    raise DataError(
        f'Cannot load Stanford Cars from "{dataset_dir}": there is no split file "{split_path}", and the '
        f"original release needed to build it is incomplete:{listed}\n{EXPECTED_LAYOUT} "
        "The combined release (car_ims/ with cars_annos.mat) is also accepted."
    )


def _release_kind(dataset_dir):
    """``"original"``, ``"combined"`` or None, depending on which complete release is present."""
    original = [META_FILE, TRAIN_ANNOS, TEST_ANNOS]
    if all(os.path.isfile(os.path.join(dataset_dir, p)) for p in original) and all(
        os.path.isdir(os.path.join(dataset_dir, d)) for d in ("cars_train", "cars_test")
    ):
        return "original"
    if os.path.isfile(os.path.join(dataset_dir, COMBINED_ANNOS)) and os.path.isdir(
        os.path.join(dataset_dir, COMBINED_IMAGES)
    ):
        return "combined"
    return None


def build_split_from_release(dataset_dir, split_path):
    """Build train/val/test from the release found in ``dataset_dir``, save the split JSON, return them."""
    kind = _release_kind(dataset_dir)
    if kind is None:
        _raise_incomplete_release(dataset_dir, split_path)
    reader = _read_original_release if kind == "original" else _read_combined_release
    trainval, test, num_classes = reader(dataset_dir)
    train, val = split_trainval(trainval, p_val=0.2)
    save_split(train, val, test, split_path, dataset_dir)
    source = "the original release" if kind == "original" else "the combined release (car_ims/, cars_annos.mat)"
    print(
        f"Built the split from {source}: {len(train)} train, {len(val)} val, {len(test)} test, "
        f"{num_classes} classes"
    )
    if kind == "combined":
        print("Note: CoOp's published split file uses cars_train/ and cars_test/ names and does not fit car_ims/")
    return train, val, test


# --------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------
@DATASET_REGISTRY.register()
class StanfordCars(DatasetBase):
    """196 car models; CoOp's split, few-shot cache and base/new subsampling.

    ``class_metadata[label]`` is ``parse_car_classname`` of that class (make, model, type, year);
    ``shots_per_class`` maps each class name to its number of training images (``datasets.common.count_shots``).
    """

    dataset_dir = "stanford_cars"

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        self.split_path = os.path.join(self.dataset_dir, SPLIT_FILE)
        self.split_fewshot_dir = os.path.join(self.dataset_dir, "split_fewshot")
        _check_dataset_folder(root, self.dataset_dir)
        _check_nested_image_folders(self.dataset_dir)

        if os.path.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.dataset_dir)
        else:
            train, val, test = build_split_from_release(self.dataset_dir, self.split_path)

        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            self._make_cache_dir()
        train, val = load_or_create_fewshot(self, train, val, num_shots, cfg.SEED, self.split_fewshot_dir)
        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        train, val, test = subsample_classes(train, val, test, subsample=subsample)

        super().__init__(train_x=train, val=val, test=test)
        self.shots_per_class = count_shots(self.train_x, num_shots)
        self.class_metadata = [parse_car_classname(name) for name in self.classnames]

    def _make_cache_dir(self):
        try:
            os.makedirs(self.split_fewshot_dir, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f'Cannot create the few-shot cache folder "{self.split_fewshot_dir}" ({exc.strerror or exc}); '
                "the dataset folder must be writable."
            ) from None
