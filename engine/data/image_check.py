"""Every image of every split is decoded once before a run trains or evaluates, so that a corrupt or
unreadable file stops the run at the start with one message naming it, instead of in the middle of
training, or after it when a test image is broken.

Images are decoded in parallel threads (PIL releases the GIL while decoding; JPEGs at reduced scale, which
still reads the whole stream). Images found readable are remembered in ``.image_check.json`` in the
dataset's cache or data folder, keyed by absolute path with the file's size and modification time: a later
run re-checks only new or changed files, and a copied data folder is checked afresh. A folder that cannot
be written is simply checked every time.
"""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ..errors import DataError

CACHE_FILE = ".image_check.json"
SPLITS = ("train_x", "train_u", "val", "test")


def _signature(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _decode(path):
    """None when ``path`` decodes as an image, else the reason."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (32, 32))  # JPEG: decode at 1/8 scale (the whole stream is still read)
            img.load()
        return None
    except Exception as exc:  # truncated, not an image, unreadable: all make the run fail later
        return f"{type(exc).__name__}: {exc}"


def _check(path, known):
    """``(path, signature or None, problem or None, decoded)`` for one image."""
    try:
        signature = _signature(path)
    except OSError as exc:
        return path, None, f"{type(exc).__name__}: {exc.strerror or exc}", False
    if known.get(path) == signature:
        return path, signature, None, False
    return path, signature, _decode(path), True


def _cache_path(dataset, paths):
    for attr in ("cache_root", "dataset_dir"):
        folder = getattr(dataset, attr, "")
        if isinstance(folder, str) and folder and os.path.isdir(folder):
            return os.path.join(folder, CACHE_FILE)
    return os.path.join(os.path.commonpath(paths), CACHE_FILE) if paths else None


def _load_cache(path):
    try:
        with open(path, encoding="utf-8") as f:
            images = json.load(f).get("images", {})
        return images if isinstance(images, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _save_cache(path, images):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"images": images}, f)
        os.replace(tmp, path)
    except OSError:  # a read-only data folder: check every time
        if os.path.exists(tmp):
            os.remove(tmp)


def check_images(paths_by_split, cache_path=None, workers=None):
    """Decode every image (``{split: [path, ...]}``), skipping those the cache knows unchanged; raises a
    DataError naming the unreadable ones. Returns ``(number of images, number decoded now)``."""
    from .manager import usable_cpus

    split_of = {}
    for split, paths in paths_by_split.items():
        for path in paths:
            split_of.setdefault(path, split)
    known = _load_cache(cache_path) if cache_path else {}
    workers = workers or min(8, usable_cpus() + 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _check(p, known), split_of))
    bad = [(path, problem) for path, _, problem, _ in results if problem]
    decoded = sum(1 for *_, fresh in results if fresh)
    if cache_path and decoded:
        good = {path: signature for path, signature, problem, fresh in results if fresh and not problem}
        if good:
            _save_cache(cache_path, {**known, **good})
    if bad:
        shown = "; ".join(f'"{path}" ({split_of[path]}): {problem}' for path, problem in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(
            f"{len(bad)} of the {len(split_of)} images of this dataset cannot be read: {shown}{more}. Re-extract "
            "or re-download them (or remove them from the data). Nothing was trained: every image is checked "
            "before a run starts."
        )
    return len(split_of), decoded


def check_dataset_images(dataset):
    """:func:`check_images` over every split of a dataset object (train_x, train_u, val, test), with one
    log line; the cache lives in the dataset's cache or data folder."""
    start = time.time()
    paths_by_split = {split: [item.impath for item in (getattr(dataset, split, None) or [])] for split in SPLITS}
    all_paths = [path for paths in paths_by_split.values() for path in paths]
    cache_path = _cache_path(dataset, all_paths)
    total, decoded = check_images(paths_by_split, cache_path)
    print(f"Checked the {total:,} images of every split: all readable ({decoded:,} decoded now, the others "
          f"unchanged since an earlier check; {time.time() - start:.1f} s)")
    return total
