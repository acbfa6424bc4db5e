"""Split, few-shot and class-subsampling helpers shared by the datasets (CoOp's conventions).

Formats follow CoOp's ``OxfordPets`` helpers and Dassl's few-shot cache, so split JSON files and
``split_fewshot/shot_K-seed_S.pkl`` caches are interchangeable with CoOp's in both directions: caches
written here name their items ``dassl.data.datasets.base_dataset.Datum`` (what CoOp on Dassl unpickles),
and caches written by Dassl are read without Dassl installed. Unlike CoOp, every malformed input stops with
a :class:`DataError` that names the file, the offending entry and what was expected; a train/val split
depends only on the data (its own fixed seed, never the global RNG); and a cache copied or moved with its
data folder reads the images of the folder it is in.
"""
import io
import json
import math
import os
import pickle
import random
from collections import Counter, defaultdict

from engine import Datum
from engine.errors import DataError

SPLIT_KEYS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------
def _write_atomic(filepath, data, what):
    """Write ``data`` (bytes) to ``filepath`` through a temporary file and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(filepath))
    tmp_path = f"{filepath}.tmp{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp_path, "wb") as f:
            f.write(data)
        os.replace(tmp_path, filepath)
    except OSError as exc:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise DataError(
            f'Cannot write the {what} "{filepath}" ({exc.strerror or exc}). '
            f'The folder "{folder}" must be writable.'
        ) from None


# --------------------------------------------------------------------------------------------------------
# Split JSON (CoOp's split_zhou_<Dataset>.json)
# --------------------------------------------------------------------------------------------------------
def _load_json(filepath):
    try:
        with open(filepath, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f'Cannot read the split file "{filepath}": {exc}') from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f'The split file "{filepath}" is not valid JSON ({exc}). Expected CoOp\'s format: '
            '{"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}. '
            "Delete it to have it rebuilt, or download it again."
        ) from None


def _check_entry(filepath, split, index, entry, path_prefix):
    """Validate one ``[relative_path, label, classname]`` entry; return (absolute path, label, classname)."""
    where = f'split file "{filepath}", {split}[{index}]'
    if not isinstance(entry, list) or len(entry) != 3:
        raise DataError(f"{where}: expected a 3-element list [relative_path, label, classname], got {entry!r}")
    relpath, label, classname = entry
    if not isinstance(relpath, str) or not relpath:
        raise DataError(f"{where}: the image path must be a non-empty string, got {relpath!r}")
    if os.path.isabs(relpath):
        raise DataError(
            f'{where}: the image path "{relpath}" is absolute; paths must be relative to the dataset '
            f'folder "{path_prefix}"'
        )
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataError(f"{where}: the label must be an integer, got {label!r} ({type(label).__name__})")
    if label < 0:
        raise DataError(f"{where}: the label must be >= 0, got {label}")
    if not isinstance(classname, str):
        raise DataError(f"{where}: the class name must be a string, got {classname!r}")
    impath = os.path.join(path_prefix, relpath)
    if not os.path.isfile(impath):
        raise DataError(f'{where}: image file not found: "{impath}" (listed as "{relpath}")')
    return impath, label, classname


def _check_labels(filepath, label_names):
    """Labels over all splits must be exactly 0..C-1."""
    labels = set(label_names)
    if not labels:
        raise DataError(f'Split file "{filepath}" lists no images: train, val and test are all empty')
    expected = set(range(max(labels) + 1))
    missing = sorted(expected - labels)
    if missing:
        shown = ", ".join(str(m) for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise DataError(
            f'Split file "{filepath}": labels must be contiguous 0..{max(labels)} over train/val/test, '
            f"but {len(missing)} label(s) never occur: {shown}"
        )


def read_split(filepath, path_prefix):
    """Read a CoOp split JSON; returns ``(train, val, test)`` lists of Datum with absolute paths.

    Each entry is ``[path relative to path_prefix, label, classname]``. Every entry is validated (arity,
    types, relative path, image on disk, one class name per label, contiguous labels).
    """
    print(f"Reading split from {filepath}")
    data = _load_json(filepath)
    if not isinstance(data, dict) or any(key not in data for key in SPLIT_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(
            f'Split file "{filepath}": expected a JSON object with the keys "train", "val" and "test", '
            f"found {found}"
        )
    label_names = {}
    checked = {}
    for split in SPLIT_KEYS:
        entries = data[split]
        if not isinstance(entries, list):
            raise DataError(f'Split file "{filepath}": "{split}" must be a list, got {type(entries).__name__}')
        checked[split] = []
        for index, entry in enumerate(entries):
            impath, label, classname = _check_entry(filepath, split, index, entry, path_prefix)
            known = label_names.setdefault(label, (classname, split, index))
            if known[0] != classname:
                raise DataError(
                    f'Split file "{filepath}", {split}[{index}]: label {label} is named "{classname}", '
                    f'but {known[1]}[{known[2]}] names it "{known[0]}"; each label needs one class name'
                )
            checked[split].append((impath, label, classname))
    _check_labels(filepath, label_names)
    return tuple(
        [Datum(impath=impath, label=label, classname=classname) for impath, label, classname in checked[split]]
        for split in SPLIT_KEYS
    )


def _relative_to(impath, path_prefix):
    prefix = os.path.join(os.path.abspath(path_prefix), "")
    full = os.path.abspath(impath)
    if not full.startswith(prefix):
        raise DataError(f'Cannot save "{impath}" in a split file: it is not inside "{path_prefix}"')
    return full[len(prefix):].replace(os.sep, "/")


def save_split(train, val, test, filepath, path_prefix):
    """Write a CoOp split JSON (indent 4) with paths relative to ``path_prefix``, atomically."""
    data = {
        name: [[_relative_to(item.impath, path_prefix), int(item.label), item.classname] for item in items]
        for name, items in zip(SPLIT_KEYS, (train, val, test))
    }
    text = json.dumps(data, indent=4, separators=(",", ": "))
    _write_atomic(filepath, text.encode("utf-8"), "split file")
    print(f"Saved split to {filepath}")


# --------------------------------------------------------------------------------------------------------
# Train/val split, class subsampling
# --------------------------------------------------------------------------------------------------------
def _min_images_for(p_val):
    """Smallest class size n with 0 < round(n * p_val) < n (3 for p_val = 0.2)."""
    for n in range(1, 1000):
        if 0 < round(n * p_val) < n:
            return n
    return None


SPLIT_SEED = 1  # the train/val split's own seed: a split depends on the data alone


def split_trainval(trainval, p_val=0.2, seed=SPLIT_SEED):
    """CoOp's per-class train/val split: ``round(n * p_val)`` random images of each class go to val.

    Classes are taken in first-appearance order and each class's indices are shuffled as CoOp does, but
    with a private ``random.Random(seed)`` instead of the global generator (CoOp's split depends on what
    drew from it before and on the run's seed): the same data gives the same split in any process,
    whichever trainer or seed builds it, and the global generator is left untouched for the few-shot draw.
    """
    print(f"Splitting trainval into {1 - p_val:.0%} train and {p_val:.0%} val")
    tracker = defaultdict(list)
    for index, item in enumerate(trainval):
        tracker[item.label].append(index)
    too_small = [
        (label, len(indices)) for label, indices in tracker.items()
        if not 0 < round(len(indices) * p_val) < len(indices)
    ]
    if too_small:
        names = {item.label: item.classname for item in trainval}
        listed = "; ".join(f'label {label} "{names[label]}" has {n} image(s)' for label, n in too_small[:10])
        more = f" (and {len(too_small) - 10} more)" if len(too_small) > 10 else ""
        raise DataError(
            f"Cannot split train into train and val with p_val={p_val}: at least {_min_images_for(p_val)} "
            f"training images per class are needed so that both parts get one. {listed}{more}."
        )
    rng = random.Random(seed)
    train, val = [], []
    for indices in tracker.values():
        n_val = round(len(indices) * p_val)
        rng.shuffle(indices)
        for rank, index in enumerate(indices):
            (val if rank < n_val else train).append(trainval[index])
    return train, val


def subsample_classes(*datasets, subsample="all"):
    """CoOp's base-to-new protocol: keep the first ``ceil(n/2)`` (base) or the other (new) labels.

    Labels are those of the first dataset, sorted; kept labels are renumbered 0.. in sorted order and
    every dataset is filtered and rebuilt with domain 0. ``"all"`` returns the inputs unchanged.
    """
    if subsample not in ("all", "base", "new"):
        raise DataError(f'DATASET.SUBSAMPLE_CLASSES must be "all", "base" or "new", got "{subsample}"')
    if subsample == "all":
        return datasets
    labels = sorted({item.label for item in datasets[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {label: new for new, label in enumerate(selected)}
    return [
        [
            Datum(impath=item.impath, label=relabel[item.label], classname=item.classname)
            for item in dataset if item.label in relabel
        ]
        for dataset in datasets
    ]


def classnames_from(data):
    """Class names ordered by label (``result[label]``), from a list of Datum."""
    mapping = {item.label: item.classname for item in data}
    return [mapping[label] for label in sorted(mapping)]


# --------------------------------------------------------------------------------------------------------
# Few-shot cache (CoOp's split_fewshot/shot_K-seed_S.pkl)
# --------------------------------------------------------------------------------------------------------
DASSL_DATUM = ("dassl.data.datasets.base_dataset", "Datum")  # where CoOp on Dassl finds Datum

_SAFE_GLOBALS = {
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("__builtin__", "object"),
}


class _CacheUnpickler(pickle.Unpickler):
    """Loads few-shot caches written by CoOp on Dassl or by this project, with or without Dassl installed.

    Any class named ``Datum`` (e.g. ``dassl.data.datasets.base_dataset.Datum``) becomes the active
    ``engine.Datum``; pickle restores it with ``__new__`` plus its ``__dict__``, never calling
    ``__init__``. Nothing else but plain containers may appear in a cache.
    """

    def find_class(self, module, name):
        if name == "Datum":
            return Datum
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a few-shot cache")


class _DasslDatumPickler(pickle._Pickler):
    """Pickles the built-in engine's ``Datum`` under Dassl's name, so that CoOp on Dassl can read the cache
    (Datum's attributes are Dassl's: ``_impath``, ``_label``, ``_domain``, ``_classname``). The class is
    written as a plain GLOBAL reference; pickle's usual check that the name is importable here is skipped
    for it, since Dassl need not be installed. On the Dassl engine ``Datum`` already has that name."""

    def save_global(self, obj, name=None):
        if obj is Datum and obj.__module__ != DASSL_DATUM[0]:
            self.write(pickle.GLOBAL + "{}\n{}\n".format(*DASSL_DATUM).encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_fewshot_cache(train, val, dataset_dir):
    """The bytes of a few-shot cache: Dassl's ``{"train": [Datum...], "val": [Datum...]}`` plus the data
    folder the paths were taken in (``"dataset_dir"``, ignored by Dassl), so a copied folder can re-root."""
    buffer = io.BytesIO()
    payload = {"train": list(train), "val": list(val),
               "dataset_dir": os.path.abspath(dataset_dir) if dataset_dir else None}
    _DasslDatumPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    return buffer.getvalue()


def _written_in(impath, dataset_dir):
    """The data folder a cached path was written in, found as the longest head of ``impath`` whose tail
    exists inside ``dataset_dir`` (caches written by Dassl do not record it); None when nothing fits."""
    parts = os.path.normpath(impath).split(os.sep)
    for cut in range(1, len(parts)):
        if os.path.isfile(os.path.join(dataset_dir, *parts[cut:])):
            return os.sep.join(parts[:cut]) or os.sep
    return None


def _inside(path, folder):
    return os.path.abspath(path).startswith(os.path.join(os.path.abspath(folder), ""))


def _reroot(path, items, key, written_dir, dataset_dir):
    """``items`` with their paths moved from ``written_dir`` (inferred when None) into ``dataset_dir``,
    each of which must exist there; returns them and ``written_dir``."""
    moved = []
    for index, item in enumerate(items):
        impath = item.impath
        if dataset_dir and not _inside(impath, dataset_dir):
            if written_dir is None:
                written_dir = _written_in(impath, dataset_dir)
            if written_dir is None or not _inside(impath, written_dir):
                raise DataError(
                    f'The few-shot cache "{path}" lists "{impath}" ({key}[{index}]), which is not in the data '
                    f'folder "{dataset_dir}" and has no counterpart there. The dataset was probably moved or '
                    "renamed, or the cache belongs to other data (caches store absolute paths). Delete the "
                    "cache file; it is regenerated on the next run."
                )
            impath = os.path.join(dataset_dir, os.path.relpath(impath, written_dir))
        if not os.path.isfile(impath):
            raise DataError(
                f'The few-shot cache "{path}" lists "{impath}" ({key}[{index}]), which does not exist: images '
                "were moved or removed after the cache was written. Delete the cache file; it is regenerated "
                "on the next run."
            )
        if impath != item.impath:
            item = Datum(impath=impath, label=item.label, domain=item.domain, classname=item.classname)
        moved.append(item)
    return moved, written_dir


def load_fewshot_cache(path, dataset_dir):
    """``(train, val)`` of a few-shot cache written by this project or by Dassl, with every image path
    inside ``dataset_dir``: a cache copied or moved along with its data folder lists the original folder's
    absolute paths, which are re-rooted into this one (and said so) instead of silently reading the
    original's images. Unreadable or malformed caches are a DataError saying to delete the file."""
    try:
        with open(path, "rb") as f:
            data = _CacheUnpickler(f).load()
    except Exception as exc:  # corrupt or truncated file: any unpickling error
        raise DataError(
            f'The few-shot cache "{path}" cannot be read ({type(exc).__name__}: {exc}). Delete it; it is '
            "regenerated on the next run."
        ) from None
    if not isinstance(data, dict) or any(not isinstance(data.get(key), list) for key in ("train", "val")):
        raise DataError(
            f'The few-shot cache "{path}" does not hold {{"train": [Datum...], "val": [Datum...]}}. '
            "Delete it; it is regenerated on the next run."
        )
    written_dir = data.get("dataset_dir") if isinstance(data.get("dataset_dir"), str) else None
    result = []
    for key in ("train", "val"):
        for index, item in enumerate(data[key]):
            if not isinstance(item, Datum):
                raise DataError(f'The few-shot cache "{path}": {key}[{index}] is not a Datum. Delete the file.')
        items, written_dir = _reroot(path, data[key], key, written_dir, dataset_dir)
        result.append(items)
    if any(a is not b for a, b in zip(result[0] + result[1], data["train"] + data["val"])):
        print(f'Note: the few-shot cache "{path}" was written for the data in "{written_dir}"; reading the same '
              f'images from "{dataset_dir}", where the cache now is')
    return result[0], result[1]


def load_or_create_fewshot(dataset, train, val, num_shots, seed, cache_dir):
    """Return ``(train, val)`` reduced to ``num_shots`` (val: ``min(num_shots, 4)``) images per class.

    Reads ``cache_dir/shot_{K}-seed_{S}.pkl`` when present (its paths re-rooted into
    ``dataset.dataset_dir``); otherwise draws the subsets with ``dataset.generate_fewshot_dataset`` (train
    first, then val, as Dassl/CoOp do) and writes the cache. ``num_shots < 1`` returns the inputs unchanged.
    """
    if num_shots < 1:
        return train, val
    path = os.path.join(cache_dir, f"shot_{num_shots}-seed_{seed}.pkl")
    if os.path.isfile(path):
        print(f"Loading preprocessed few-shot data from {path}")
        return load_fewshot_cache(path, _data_folder(dataset))
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    save_fewshot_cache(path, train, val, _data_folder(dataset))
    return train, val


def _data_folder(dataset):
    """The dataset's folder (``dataset_dir``), or None when it has none on disk (no re-rooting then)."""
    folder = getattr(dataset, "dataset_dir", "")
    return folder if isinstance(folder, str) and folder and os.path.isdir(folder) else None


def save_fewshot_cache(path, train, val, dataset_dir):
    print(f"Saving preprocessed few-shot data to {path}")
    _write_atomic(path, dump_fewshot_cache(train, val, dataset_dir), "few-shot cache")


# --------------------------------------------------------------------------------------------------------
# Shots actually used
# --------------------------------------------------------------------------------------------------------
def count_shots(train, num_shots):
    """``{classname: training images used}`` (label order) of a dataset's final ``train_x``, the datasets'
    ``shots_per_class``. With ``num_shots >= 1``, classes that have fewer images than that are named in one
    log line (Dassl keeps such classes whole and still says "Creating a K-shot dataset")."""
    labels = {}
    counts = Counter()
    for item in train:
        labels.setdefault(item.classname, item.label)
        counts[item.classname] += 1
    shots = {name: counts[name] for name in sorted(labels, key=labels.get)}
    short = {name: n for name, n in shots.items() if n < num_shots}
    if num_shots >= 1 and short:
        fewest = min(short, key=short.get)
        low, high = short[fewest], max(short.values())
        using = f"{low}" if low == high else f"{low} to {high}"
        print(f'DATASET.NUM_SHOTS is {num_shots} but class "{fewest}" has only {low} training images: using '
              f"{using} for {len(short)} of {len(shots)} classes (all the images they have)")
    return shots


def actual_shots_summary(shots_per_class, requested=None):
    """``{"min", "max", "requested"}`` of a ``shots_per_class`` dict (None values when it is empty), for
    reports: a run asked for ``requested`` shots (DATASET.NUM_SHOTS) and used min..max per class."""
    values = list((shots_per_class or {}).values())
    return {"min": min(values) if values else None, "max": max(values) if values else None,
            "requested": requested}
