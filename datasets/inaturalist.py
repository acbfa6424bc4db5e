"""iNaturalist competition releases (2017, 2018, 2019, 2021, 2021-mini) for few-shot prompt learning.

Layout (``docs/inaturalist.md`` has the releases and the download list). Each release lives in
``DATASET.ROOT/inaturalist/<year>/``, with the annotation JSONs next to the extracted image folder(s), so that
every ``file_name`` in the JSON resolves as ``<year folder>/<file_name>``::

    inaturalist/2017/  train_val_images/  train2017.json  val2017.json   (or train_val2017/{train,val}2017.json)
    inaturalist/2018/  train_val2018/     train2018.json  val2018.json   categories.json
    inaturalist/2019/  train_val2019/     train2019.json  val2019.json   categories.json
    inaturalist/2021/  train/ val/ [train_mini/]  train.json val.json [train_mini.json]

``2021_mini`` is the 2021 folder read through ``train_mini.json``. 2018 and 2019 ship obfuscated names in
their JSONs; the real ones come from ``categories.json`` (same ids), which is therefore required.
``DATASET.INATURALIST.VERSION`` ``auto`` detects the release from the files present (and says which).

Protocol (there is no CoOp-family standard for iNaturalist; this one follows CoOp's ImageNet precedent):

- test = the official validation JSON, whole (restricted to the selected classes);
- held-out val = carved from the official train JSON: per class, ``min(VAL_PER_CLASS, n // 2)`` images
  drawn with a private RNG seeded by ``(SPLIT_SEED, category id)``, so the carve is the same for every run
  seed, every subset and every engine, and never disturbs the global RNG. It is cached (and can be shared)
  as ``split_heldout/<train json>_val<V>-s<S>.json`` (image ids per category);
- train pool = the rest of the train JSON. ``NUM_SHOTS`` >= 1 draws K images per class from the train
  pool and ``min(K, 4)`` from the held-out val with the global ``random`` module exactly as Dassl's
  ``generate_fewshot_dataset`` would on the same items (same seed, same picks), and caches them in
  ``split_fewshot/<version>_<train json>_val<V>-s<S>_<subset>/shot_K-seed_S.pkl`` (CoOp's pickle format;
  the folder name encodes everything that changes the draw). Classes with fewer than K pool images keep
  them all (Dassl's behaviour, logged), are dropped, or stop the run: ``FEWER_THAN_SHOTS``.

Classes: the categories with at least one training image, optionally restricted (``SUBSET_TAXA``, e.g.
``"supercategory=Birds"`` or ``"class=Aves,class=Reptilia"``, union of the terms; ``SUBSET_CLASS_FILE``,
one category id, scientific name or common name per line; ``SUBSET_TOP_N``, the N classes with the most
training images). Filters intersect. Labels are dense ``0..C-1`` in increasing category-id order; the
mapping (label, category id, names, taxonomy, image counts) is written to ``OUTPUT_DIR/inaturalist_classes.json``.

Class names (``NAME_TYPE``): ``common`` (2021's ``common_name``, falling back to the scientific name where a
release or a category has none), ``scientific`` (``name``) or ``both`` (``"common (scientific)"``). Names that
collide are disambiguated over the whole release (so a subset never renames a class) and logged.
``class_metadata[label]`` holds the taxonomy (keys in ``METADATA_KEYS``; None where the release lacks it).

Index cache: parsing the 2021 train JSON (1 GB) takes tens of seconds, so each JSON is reduced once to a
compact index (``index_cache/<json>.npz``: numpy arrays of ids, labels and de-duplicated paths, plus the
categories; no pickle) and re-read from there while the JSON's size, mtime and the SHA-1 of its first and
last MiB are unchanged. Parsing streams the file through the stdlib JSON scanner one array element at a
time, so the parsed document is never held in memory (see ``docs/inaturalist.md`` for measured figures).
Caches go next to the data, or under ``CACHE_DIR/inaturalist/<year>/`` when the data is read-only.
"""
import array
import codecs
import difflib
import hashlib
import json
import os
import random
import re
import time
from collections import Counter, namedtuple

import numpy as np
from yacs.config import CfgNode as CN

from engine import DATASET_REGISTRY, DatasetBase, Datum
from engine.errors import ConfigError, DataError

from .common import _write_atomic, count_shots, load_fewshot_cache, save_fewshot_cache, subsample_classes

VERSIONS = ("2017", "2018", "2019", "2021", "2021_mini")
VERSION_ALIASES = {"2021-mini": "2021_mini", "2021mini": "2021_mini", "2021_train_mini": "2021_mini"}
NAME_TYPES = ("common", "scientific", "both")
FEWER_THAN_SHOTS_CHOICES = ("keep", "drop", "error")
TAXONOMY_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")
METADATA_KEYS = ("category_id", "name", "common_name", "supercategory") + TAXONOMY_RANKS + (
    "species", "specific_epithet")
SUBSET_RANKS = ("supercategory",) + TAXONOMY_RANKS + ("species", "name", "common_name")
MAPPING_FILE = "inaturalist_classes.json"
INDEX_FORMAT = 1
INDEX_DIR = "index_cache"
HELDOUT_DIR = "split_heldout"
FEWSHOT_DIR = "split_fewshot"
_FINGERPRINT_BYTES = 1 << 20

Release = namedtuple("Release", "version folder train_json val_json train_images val_images categories_json "
                                "image_archives annotation_archives")

RELEASES = {
    "2017": Release("2017", "2017", ("train2017.json", "train_val2017/train2017.json"),
                    ("val2017.json", "train_val2017/val2017.json"), "train_val_images", "train_val_images", None,
                    "train_val_images.tar.gz", "train_val2017.zip"),
    "2018": Release("2018", "2018", ("train2018.json",), ("val2018.json",), "train_val2018", "train_val2018",
                    "categories.json", "train_val2018.tar.gz",
                    "train2018.json.tar.gz, val2018.json.tar.gz and categories.json.tar.gz"),
    "2019": Release("2019", "2019", ("train2019.json",), ("val2019.json",), "train_val2019", "train_val2019",
                    "categories.json", "train_val2019.tar.gz",
                    "train2019.json.tar.gz, val2019.json.tar.gz and categories.json.tar.gz"),
    "2021": Release("2021", "2021", ("train.json",), ("val.json",), "train", "val", None,
                    "train.tar.gz and val.tar.gz", "train.json.tar.gz and val.json.tar.gz"),
    "2021_mini": Release("2021_mini", "2021", ("train_mini.json",), ("val.json",), "train_mini", "val", None,
                         "train_mini.tar.gz and val.tar.gz", "train_mini.json.tar.gz and val.json.tar.gz"),
}

# Top-level image folder of each annotation file -> the release and split it belongs to (wrong-file messages).
_KNOWN_TOP_FOLDERS = {
    "train_val_images": "the 2017 release", "train_val2018": "the 2018 release", "train_val2019": "the 2019 release",
    "train": "the 2021 train split", "train_mini": "the 2021 train_mini split", "val": "the 2021 val split",
    "public_test": "the 2021 test split", "test2017": "the 2017 test split", "test2018": "the 2018 test split",
    "test2019": "the 2019 test split",
}
# torchvision's INaturalist renames the archive's top folder to its version string.
_TORCHVISION_FOLDERS = {"train_val_images": "2017", "train_val2018": "2018", "train_val2019": "2019",
                        "train": "2021_train", "train_mini": "2021_train_mini", "val": "2021_valid"}


# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------
def add_inaturalist_config(cfg):
    """Add ``DATASET.INATURALIST.*`` (defaults below) to ``cfg``; a second call changes nothing."""
    if "INATURALIST" in cfg.DATASET:
        return cfg
    n = cfg.DATASET.INATURALIST = CN()
    n.VERSION = "auto"  # auto | 2017 | 2018 | 2019 | 2021 | 2021_mini (auto: detected from the files)
    n.NAME_TYPE = "common"  # common (fallback: scientific) | scientific | both ("common (scientific)")
    n.SUBSET_TAXA = ""  # "rank=value[,rank=value...]" (union), ranks: see SUBSET_RANKS
    n.SUBSET_CLASS_FILE = ""  # text file: one category id, scientific or common name per line (# comments)
    n.SUBSET_TOP_N = 0  # keep the N classes with the most training images (0: no limit)
    n.VAL_PER_CLASS = 4  # held-out val carved from train: min(VAL_PER_CLASS, n // 2) images per class
    n.SPLIT_SEED = 1  # seed of the held-out carve (independent of --seed, like a fixed split file)
    n.FEWER_THAN_SHOTS = "keep"  # classes with fewer than NUM_SHOTS pool images: keep | drop | error
    n.CACHE_DIR = ""  # "" = caches next to the data; else CACHE_DIR/inaturalist/<year>/
    return cfg


def _inat_node(cfg):
    node = cfg.DATASET.get("INATURALIST")
    if node is None:
        print("Note: DATASET.INATURALIST is not in the config (add_inaturalist_config was not called); "
              "using its defaults")
        node = add_inaturalist_config(CN({"DATASET": CN()})).DATASET.INATURALIST
    return node


def _check_choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f'DATASET.INATURALIST.{key}: "{value}" is not one of {list(choices)}')
    return value


def version_opt(version):
    """The ``KEY VALUE`` opt selecting ``version`` on train.py's command line. The value is quoted for yacs
    (``"'2021'"``): a bare 2021 would be read as a number, and VERSION is a string key."""
    return f"DATASET.INATURALIST.VERSION \"'{version}'\""


def normalize_version(value):
    value = str(value).strip().lower()
    value = VERSION_ALIASES.get(value, value)
    if value != "auto" and value not in VERSIONS:
        raise ConfigError(
            f'DATASET.INATURALIST.VERSION: "{value}" is not a supported release; expected auto or one of '
            f"{list(VERSIONS)} (2021_mini = the 2021 folder read through train_mini.json)"
        )
    return value


def parse_taxa(spec):
    """``"class=Aves, supercategory=Plants"`` -> ``[("class", "aves"), ("supercategory", "plants")]``."""
    terms = []
    for raw in str(spec).split(","):
        term = raw.strip()
        if not term:
            continue
        rank, sep, value = term.partition("=")
        rank, value = rank.strip().lower(), value.strip()
        if not sep or not value:
            raise ConfigError(
                f'DATASET.INATURALIST.SUBSET_TAXA: "{term}" is not of the form rank=value '
                '(e.g. "supercategory=Birds" or "class=Aves,order=Squamata")'
            )
        if rank not in SUBSET_RANKS:
            raise ConfigError(
                f'DATASET.INATURALIST.SUBSET_TAXA: unknown rank "{rank}" in "{term}"; expected one of '
                f"{list(SUBSET_RANKS)}"
            )
        terms.append((rank, value.lower()))
    return terms


# --------------------------------------------------------------------------------------------------------
# Streaming JSON reading: one element of the big arrays at a time, never the whole document
# --------------------------------------------------------------------------------------------------------
# Not ijson: its C backend measured 2-3.5x slower and rejects NaN ("Why a hand-written reader" in docs/inaturalist.md).
_WS = re.compile(r"[ \t\n\r]*")
_CHUNK_CHARS = 1 << 22
_MAX_ELEMENT = 64 << 20  # an array element (or a small top-level value) larger than this is a broken file


class _JsonStream:
    """Reads a JSON file in chunks; ``value()`` decodes the next value with the stdlib's C scanner."""

    def __init__(self, f, path):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        decoder = json.JSONDecoder()
        self.scan, self.raw_decode = decoder.scan_once, decoder.raw_decode
        self.buf, self.pos, self.eof, self.offset = "", 0, False, 0

    def fill(self):
        """Append the next chunk (dropping what was consumed); False at end of file."""
        if self.eof:
            return False
        try:
            data = self.f.read(_CHUNK_CHARS)
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise self.error(f"it is not UTF-8 text ({exc.reason})") from None
        self.offset += self.pos
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        self.eof = not data
        return True

    def error(self, what):
        return DataError(
            f'"{self.path}" is not a valid iNaturalist annotation file: {what} (near character '
            f"{self.offset + self.pos}). Expected the competition's JSON (an object with \"images\", "
            '"annotations" and "categories"); re-download and re-extract it.'
        )

    def peek(self):
        """The next non-whitespace character ("" at end of file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def expect(self, chars, what):
        char = self.peek()
        if not char or char not in chars:
            raise self.error(f"expected {what}, found {repr(char) if char else 'the end of the file (truncated?)'}")
        self.pos += 1
        return char

    def value(self):
        self.peek()
        while True:
            try:
                obj, end = self.scan(self.buf, self.pos)
            except StopIteration:
                obj, end = None, -1
            except json.JSONDecodeError as exc:  # e.g. an unterminated string: maybe cut by the buffer end
                if len(self.buf) - self.pos < _MAX_ELEMENT and self.fill():
                    continue
                raise self.error(exc.msg + (" (the file ends early: truncated?)" if self.eof else "")) from None
            # Incomplete at the end of the buffer (or possibly so: a number cut by the chunk boundary).
            if end < 0 or end >= len(self.buf):
                if len(self.buf) - self.pos < _MAX_ELEMENT and self.fill():
                    continue
                if end < 0:
                    raise self.error("a value is truncated or malformed")
            self.pos = end
            return obj

    def array(self):
        """Yield the elements of the array that starts at the next character.

        Elements are decoded in batches: the text from the current element start up to the last "}" of the
        buffer is decoded as one list (``raw_decode`` stops at the array's own "]" if it comes first). A
        successful decode of text that starts at an element boundary and ends with "}" can only be complete
        elements, exactly as in the document; a cut inside a string or a nested object fails to decode and
        is retried at the previous "}" (three times), then on the first half, down to one element at a time.
        """
        self.expect("[", "an array")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            if len(self.buf) - self.pos < _CHUNK_CHARS // 2:
                self.fill()
            buf, pos = self.buf, self.pos
            cut = buf.rfind("}", pos)
            batch, failures = None, 0
            while cut > pos:
                text = "[" + buf[pos:cut + 1] + "]"
                try:
                    batch, end = self.raw_decode(text)
                    break
                except ValueError:  # try the previous "}" a few times (nested objects), then halve
                    failures += 1
                    cut = buf.rfind("}", pos, cut if failures <= 3 else (pos + cut) // 2)
            if batch is None:
                yield self.value()
            else:
                yield from batch
                if end < len(text):  # the array ended inside this text: continue after its "]"
                    self.pos = pos + end - 1
                    return
                self.pos = cut + 1
            if self.expect(",]", '"," or "]"') == "]":
                return


def _stream_document(path, handlers):
    """Walk the top-level object of ``path``; arrays under ``handlers`` keys are fed element by element
    to ``handlers[key](iterator)``; other values are decoded whole. Returns ``{key: value}`` of the others
    and the set of keys seen."""
    others, seen = {}, set()
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DataError(f'Cannot read "{path}": {exc.strerror or exc}') from None
    with f:
        stream = _JsonStream(f, path)
        stream.expect("{", "a JSON object")
        if stream.peek() == "}":
            stream.pos += 1
            return others, seen
        while True:
            if stream.peek() != '"':
                raise stream.error("expected a key")
            key = stream.value()
            stream.expect(":", '":"')
            seen.add(key)
            if key in handlers:
                if stream.peek() != "[":
                    raise stream.error(f'"{key}" must be a list')
                handlers[key](stream.array())
            else:
                others[key] = stream.value()
            if stream.expect(",}", '"," or "}"') == "}":
                break
        if stream.peek():
            raise stream.error("unexpected data after the top-level object")
    return others, seen


# --------------------------------------------------------------------------------------------------------
# Annotation index: what a loader needs from one JSON file, in compact arrays
# --------------------------------------------------------------------------------------------------------
class AnnotationIndex:
    """One annotation file reduced to arrays, rows in the JSON's annotation order.

    Row ``r``: image ``image_pos[r]`` (position in the file's ``images`` list) with category
    ``category_id[r]``. Image ``i``: ``image_id[i]`` and its ``file_name`` = ``dirs[dir_index[i]]`` + "/" +
    the ``i``-th name in ``name_blob`` (``name_end`` holds the end offsets). ``categories`` is the file's
    ``categories`` list as is; ``info`` its ``info`` object.
    """

    ARRAYS = ("image_id", "dir_index", "name_end", "name_blob", "image_pos", "category_id")

    def __init__(self, path, arrays, dirs, categories, info):
        self.path = path
        for key in self.ARRAYS:
            setattr(self, key, arrays[key])
        self.dirs, self.categories, self.info = dirs, categories, info

    def __len__(self):
        return len(self.image_pos)

    def file_name(self, row):
        image = int(self.image_pos[row])
        start = int(self.name_end[image - 1]) if image else 0
        name = bytes(self.name_blob[start:int(self.name_end[image])]).decode("utf-8")
        folder = self.dirs[int(self.dir_index[image])]
        return f"{folder}/{name}" if folder else name

    def row_image_id(self, row):
        return int(self.image_id[int(self.image_pos[row])])

    def top_folders(self):
        return sorted({d.split("/", 1)[0] for d in self.dirs})


def _examples(items, limit=5):
    items = list(items)
    shown = "; ".join(str(x) for x in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def parse_annotation_file(path):
    """Stream-parse an iNaturalist annotation JSON into an :class:`AnnotationIndex`, checking it."""
    image_id, dir_index, name_end, blob = array.array("q"), array.array("i"), array.array("q"), bytearray()
    ann_image, ann_category = array.array("q"), array.array("q")
    dirs, categories = {}, []

    def read_images(elements):
        index = -1
        try:
            for index, image in enumerate(elements):
                folder, _, name = image["file_name"].rpartition("/")
                code = dirs.get(folder)
                if code is None:
                    code = dirs[folder] = len(dirs)
                image_id.append(image["id"])
                dir_index.append(code)
                blob.extend(name.encode("utf-8"))
                name_end.append(len(blob))
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise DataError(f'"{path}": images[{index}] is not an image record with an integer "id" and a string '
                            f'"file_name" ({type(exc).__name__}: {exc})') from None

    def read_annotations(elements):
        index = -1
        try:
            for index, annotation in enumerate(elements):
                ann_image.append(annotation["image_id"])
                ann_category.append(annotation["category_id"])
        except (KeyError, TypeError, OverflowError) as exc:
            raise DataError(f'"{path}": annotations[{index}] is not an annotation with integer "image_id" and '
                            f'"category_id" ({type(exc).__name__}: {exc})') from None

    others, seen = _stream_document(path, {"images": read_images, "annotations": read_annotations,
                                           "categories": categories.extend})
    if "annotations" not in seen:
        raise DataError(
            f'"{path}" has no "annotations": it is a test file (the competitions do not publish test labels). '
            "The labelled files are the train and val JSONs (train.json / train_mini.json / val.json in 2021, "
            "train<year>.json / val<year>.json before)."
        )
    missing = [k for k in ("images", "categories") if k not in seen]
    if missing:
        raise DataError(f'"{path}" has no {missing}: expected an iNaturalist annotation file with "images", '
                        '"annotations" and "categories" lists')
    arrays = _check_and_join(path, image_id, dir_index, name_end, blob, ann_image, ann_category, dirs, categories)
    info = others.get("info") if isinstance(others.get("info"), dict) else {}
    return AnnotationIndex(path, arrays, list(dirs), categories, info)


def _category_ids(path, categories):
    ids = []
    for index, category in enumerate(categories):
        cid = category.get("id") if isinstance(category, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f'"{path}": categories[{index}] has no integer "id": {category!r:.200}')
        ids.append(cid)
    duplicated = [cid for cid, count in Counter(ids).items() if count > 1]
    if duplicated:
        raise DataError(f'"{path}": category id(s) listed more than once in "categories": {_examples(duplicated)}')
    return np.asarray(ids, dtype=np.int64)


def _check_and_join(path, image_id, dir_index, name_end, blob, ann_image, ann_category, dirs, categories):
    # Views on the parse buffers (no copies): the arrays are complete at this point.
    image_id = np.frombuffer(image_id, dtype=np.int64) if len(image_id) else np.zeros(0, np.int64)
    ann_image = np.frombuffer(ann_image, dtype=np.int64) if len(ann_image) else np.zeros(0, np.int64)
    ann_category = np.frombuffer(ann_category, dtype=np.int64) if len(ann_category) else np.zeros(0, np.int64)
    names = list(dirs)

    def file_name(i):
        start = name_end[i - 1] if i else 0
        folder = names[dir_index[i]]
        return f"{folder}/{bytes(blob[start:name_end[i]]).decode('utf-8')}"

    order = np.argsort(image_id, kind="stable")
    sorted_ids = image_id[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        raise DataError(f'"{path}": image id(s) listed more than once in "images": '
                        f"{_examples(int(sorted_ids[d]) for d in dup)}")
    where = np.searchsorted(sorted_ids, ann_image)
    where[where >= len(sorted_ids)] = 0
    known = sorted_ids[where] == ann_image if len(sorted_ids) else np.zeros(len(ann_image), bool)
    if not known.all():
        bad = np.flatnonzero(~known)
        raise DataError(f'"{path}": {bad.size} annotation(s) refer to an image_id that is not in "images", e.g. '
                        + _examples(f"annotations[{i}] -> image_id {int(ann_image[i])}" for i in bad[:5]))
    image_pos = order[where]
    counts = np.bincount(image_pos, minlength=len(image_id))
    if (counts > 1).any():
        bad = np.flatnonzero(counts > 1)
        raise DataError(f'"{path}": {bad.size} image(s) have more than one annotation (one label per image is '
                        "expected), e.g. " + _examples(f'"{file_name(i)}" (id {int(image_id[i])})' for i in bad[:5]))
    if (counts == 0).any():
        bad = np.flatnonzero(counts == 0)
        raise DataError(f'"{path}": {bad.size} image(s) have no annotation (every image of a train/val file needs '
                        "one label), e.g. " + _examples(f'"{file_name(i)}" (id {int(image_id[i])})' for i in bad[:5]))
    category_ids = _category_ids(path, categories)
    absent = ~np.isin(ann_category, category_ids)
    if absent.any():
        bad = np.flatnonzero(absent)
        raise DataError(f'"{path}": {bad.size} annotation(s) refer to a category_id that is not in "categories", '
                        "e.g. " + _examples(f"annotations[{i}] -> category_id {int(ann_category[i])}" for i in bad[:5]))
    return {
        "image_id": image_id, "dir_index": np.asarray(dir_index, dtype=np.int32),
        "name_end": np.asarray(name_end, dtype=np.int64),
        "name_blob": np.frombuffer(blob, dtype=np.uint8) if blob else np.zeros(0, np.uint8),
        "image_pos": image_pos.astype(np.int64), "category_id": ann_category,
    }


# --------------------------------------------------------------------------------------------------------
# Index cache (npz next to the data, keyed by the JSON's size, mtime and head/tail hash)
# --------------------------------------------------------------------------------------------------------
def json_fingerprint(path):
    """``{"size", "mtime_ns", "sha1_head_tail"}`` of a file: cheap (reads 2 MiB at most) and catches any
    edit (mtime), replacement by a same-size file with a preserved mtime (hash) and truncation (size)."""
    stat = os.stat(path)
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if stat.st_size > 2 * _FINGERPRINT_BYTES:
            f.seek(stat.st_size - _FINGERPRINT_BYTES)
        digest.update(f.read(_FINGERPRINT_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha1_head_tail": digest.hexdigest()}


def _read_index_cache(cache_path, fingerprint):
    """The cached index, or None (with the reason printed) when absent, stale or unreadable."""
    if not os.path.isfile(cache_path):
        return None, "no index cache yet"
    try:
        with np.load(cache_path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            if meta.get("format") != INDEX_FORMAT:
                return None, f"index cache format {meta.get('format')} != {INDEX_FORMAT}"
            if meta.get("fingerprint") != fingerprint:
                return None, "the JSON changed since the index was cached (size, mtime or content)"
            arrays = {key: z[key] for key in AnnotationIndex.ARRAYS}
    except Exception as exc:  # truncated or foreign file: rebuild it
        return None, f"index cache unreadable ({type(exc).__name__}: {exc})"
    return (arrays, meta), ""


def load_index(json_path, cache_path=None):
    """The :class:`AnnotationIndex` of ``json_path``, from ``cache_path`` (an ``.npz``) when it is current,
    else parsed and (if ``cache_path``) cached. Prints what it did and how long it took."""
    if not os.path.isfile(json_path):
        raise DataError(f'Annotation file not found: "{json_path}"')
    start = time.perf_counter()
    fingerprint = json_fingerprint(json_path)
    reason = "no cache requested"
    if cache_path:
        cached, reason = _read_index_cache(cache_path, fingerprint)
        if cached is not None:
            arrays, meta = cached
            index = AnnotationIndex(json_path, arrays, meta["dirs"], meta["categories"], meta["info"])
            print(f'Loaded the index of "{json_path}" from "{cache_path}" ({len(index):,} images, '
                  f"{time.perf_counter() - start:.1f}s)")
            return index
    print(f'Indexing "{json_path}" ({fingerprint["size"] / 2**20:,.0f} MiB; {reason}) ...')
    index = parse_annotation_file(json_path)
    parsed = time.perf_counter() - start
    if cache_path:
        meta = {"format": INDEX_FORMAT, "fingerprint": fingerprint, "json": os.path.basename(json_path),
                "dirs": index.dirs, "categories": index.categories, "info": index.info}
        arrays = {key: getattr(index, key) for key in AnnotationIndex.ARRAYS}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        tmp_path = f"{cache_path}.tmp{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(cache_path), exist_ok=True)
            with open(tmp_path, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp_path, cache_path)
        except OSError as exc:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
            raise DataError(f'Cannot write the index cache "{cache_path}" ({exc.strerror or exc}); make its folder '
                            "writable or set DATASET.INATURALIST.CACHE_DIR to a writable folder") from None
        print(f'Indexed {len(index):,} images in {parsed:.1f}s; cached the index in "{cache_path}"')
    else:
        print(f"Indexed {len(index):,} images in {parsed:.1f}s")
    return index


# --------------------------------------------------------------------------------------------------------
# Releases on disk
# --------------------------------------------------------------------------------------------------------
def _first_existing(folder, candidates):
    for relpath in candidates:
        if os.path.isfile(os.path.join(folder, relpath)):
            return os.path.join(folder, relpath)
    return None


def _present_versions(folder):
    """Releases whose train and val JSONs are both in ``folder``."""
    return [v for v, rel in RELEASES.items()
            if _first_existing(folder, rel.train_json) and _first_existing(folder, rel.val_json)]


def expected_layout(release):
    rel = release
    jsons = [rel.train_json[0], rel.val_json[0]] + ([rel.categories_json] if rel.categories_json else [])
    folders = sorted({rel.train_images, rel.val_images})
    return (f"inaturalist/{rel.folder}/ holding {', '.join(jsons)} and the image folder(s) "
            f"{', '.join(f + '/' for f in folders)} (from {rel.image_archives} and {rel.annotation_archives})")


def _missing_file_message(release, folder, kind, candidates):
    wanted = os.path.join(folder, candidates[0])
    hints = []
    for relpath in candidates:
        for suffix in (".tar.gz", ".tgz", ".gz", ".zip"):
            archive = os.path.join(folder, relpath + suffix)
            if os.path.isfile(archive):
                hints.append(f'found "{archive}": extract it into "{folder}"')
    if release.version == "2017" and os.path.isfile(os.path.join(folder, "train_val2017.zip")):
        hints.append(f'found "{os.path.join(folder, "train_val2017.zip")}": unzip it in "{folder}"')
    others = [v for v in _present_versions(folder) if v != release.version]
    if others:
        hints.append(f"the folder holds the {', '.join(others)} release files instead: set "
                     "DATASET.INATURALIST.VERSION accordingly or put the files in their own year folder")
    hint = (" " + "; ".join(hints) + ".") if hints else ""
    return (f'iNaturalist {release.version}: the {kind} annotation file "{wanted}" is missing. Expected '
            f"{expected_layout(release)}.{hint}")


def resolve_release(root, version="auto"):
    """``(release, dataset_dir)`` for ``version`` under ``root`` (``DATASET.ROOT``); ``auto`` detects it.

    The release folder is ``root/inaturalist/<year>/``; a single release put directly in
    ``root/inaturalist/`` is accepted too.
    """
    base = os.path.join(root, "inaturalist")
    if version != "auto":
        release = RELEASES[version]
        folder = os.path.join(base, release.folder)
        if not os.path.isdir(folder) and version in _present_versions(base):
            folder = base
        if not os.path.isdir(folder):
            raise DataError(_not_found_message(root, base, f"iNaturalist {version} folder not found: "
                                                           f'"{folder}" does not exist.'))
        return release, folder
    found = []
    for name in ("2017", "2018", "2019", "2021"):
        folder = os.path.join(base, name)
        if os.path.isdir(folder):
            found += [(v, folder) for v in _present_versions(folder)]
    if os.path.isdir(base):
        found += [(v, base) for v in _present_versions(base)]
    if "2021" in {v for v, _ in found}:  # both train.json and train_mini.json: the full train set
        found = [(v, f) for v, f in found if v != "2021_mini"]
    if not found:
        raise DataError(_not_found_message(root, base, f'No iNaturalist release found under "{base}".'))
    if len(found) > 1:
        listed = ", ".join(f'{v} ("{f}")' for v, f in found)
        raise ConfigError(f"Several iNaturalist releases were found: {listed}. Set DATASET.INATURALIST.VERSION "
                          f"to one of {list(VERSIONS)}, e.g. with the opt {version_opt(found[0][0])}.")
    version, folder = found[0]
    print(f'DATASET.INATURALIST.VERSION auto: detected the {version} release in "{folder}"')
    return RELEASES[version], folder


def _not_found_message(root, base, first):
    layouts = "; ".join(expected_layout(RELEASES[v]) for v in VERSIONS)
    hint = ""
    if _present_versions(root):
        hint = f' "{root}" itself looks like a release folder: put it at <ROOT>/inaturalist/<year>/ and pass <ROOT>.'
    elif any(_present_versions(os.path.join(root, year)) for year in ("2017", "2018", "2019", "2021")):
        hint = f' "{root}" looks like the inaturalist/ folder itself: pass its parent folder as --root.'
    return (f"{first} DATASET.ROOT (--root) must be the folder that contains inaturalist/.{hint} Expected one of: "
            f"{layouts}.")


# --------------------------------------------------------------------------------------------------------
# Categories, names, taxonomy
# --------------------------------------------------------------------------------------------------------
def _text(value):
    if value is None or (isinstance(value, float) and value != value):
        return None
    value = str(value).strip()
    return value or None


def category_metadata(category, version, supercategory_from_folder=None):
    """A category record -> the metadata dict (keys ``METADATA_KEYS``; None where the release lacks it)."""
    meta = {key: None for key in METADATA_KEYS}
    meta["category_id"] = int(category["id"])
    meta["name"] = _text(category.get("name"))
    meta["common_name"] = _text(category.get("common_name"))
    meta["supercategory"] = _text(category.get("supercategory")) or supercategory_from_folder
    for rank in TAXONOMY_RANKS:
        meta[rank] = _text(category.get(rank))
    meta["specific_epithet"] = _text(category.get("specific_epithet"))
    name = meta["name"] or ""
    words = name.split()
    if version == "2017":  # names are mostly binomials, sometimes a higher taxon: only binomials get ranks
        if len(words) >= 2 and words[0][:1].isupper() and words[1][:1].islower():
            meta["genus"], meta["species"] = words[0], name
    else:
        meta["species"] = name or None
        if meta["specific_epithet"] is None and len(words) >= 2:
            meta["specific_epithet"] = words[-1] if len(words) == 2 else " ".join(words[1:])
    return meta


def class_names(metadata, name_type):
    """Class name of each metadata dict under ``name_type``, with collisions disambiguated.

    Returns ``(names, notes)``: ``notes`` lists what was changed (for the log). A common name shared by
    several species becomes ``"common (scientific)"``; any name still shared gets `` [id N]`` appended.
    """
    notes = []
    names = []
    fallback = 0
    for meta in metadata:
        scientific = meta["name"] or f"category {meta['category_id']}"
        common = meta["common_name"]
        if name_type == "scientific":
            names.append(scientific)
        elif common is None:
            fallback += 1
            names.append(scientific)
        elif name_type == "common":
            names.append(common)
        else:
            names.append(common if common.lower() == scientific.lower() else f"{common} ({scientific})")
    if name_type != "scientific" and fallback:
        notes.append(f"{fallback} of {len(metadata)} classes have no common name and use the scientific name")
    for step in ("scientific", "id"):
        counts = Counter(n.lower() for n in names)
        clashes = [i for i, n in enumerate(names) if counts[n.lower()] > 1]
        if not clashes:
            break
        for i in clashes:
            meta = metadata[i]
            before = names[i]
            if step == "scientific" and meta["name"] and meta["name"].lower() not in before.lower():
                names[i] = f"{before} ({meta['name']})"
            elif step == "id":
                names[i] = f"{before} [id {meta['category_id']}]"
        notes.append(f"{len(clashes)} class names were shared and got their "
                     f"{'scientific name' if step == 'scientific' else 'category id'} appended, e.g. "
                     + _examples((f'"{names[i]}"' for i in clashes), 3))
    return names, notes


def _supercategory_folders(index, top_folder):
    """Category id -> the supercategory folder its images are in (2017-2019 trees: top/Super/class/x.jpg)."""
    codes, first = np.unique(index.dir_index[index.image_pos], return_index=True)
    result = {}
    for code, cid in zip(codes.tolist(), index.category_id[first].tolist()):
        parts = index.dirs[code].split("/")
        if len(parts) >= 3 and parts[0] == top_folder:
            result.setdefault(cid, parts[1])
    return result


# --------------------------------------------------------------------------------------------------------
# Held-out val carve
# --------------------------------------------------------------------------------------------------------
def heldout_count(n, val_per_class):
    """Images of a class with ``n`` training images that go to the held-out val: ``min(V, n // 2)``."""
    return min(val_per_class, n // 2)


def rows_by_category(index):
    """``{category_id: rows in JSON order}`` (numpy int64 arrays)."""
    order = np.argsort(index.category_id, kind="stable")
    cats = index.category_id[order]
    bounds = np.flatnonzero(np.diff(cats)) + 1
    return {int(group[0]): rows for group, rows in
            zip(np.split(cats, bounds), np.split(order, bounds)) if len(group)}


def carve_heldout(index, groups, val_per_class, split_seed):
    """``{category_id: held-out image ids}``, drawn per class with ``random.Random("<seed>-<id>")``."""
    heldout = {}
    for cid in sorted(groups):
        rows = groups[cid]
        k = heldout_count(len(rows), val_per_class)
        picks = sorted(random.Random(f"inat-heldout-{split_seed}-{cid}").sample(range(len(rows)), k)) if k else []
        heldout[cid] = index.image_id[index.image_pos[rows[picks]]].tolist()
    return heldout


def load_or_carve_heldout(index, groups, val_per_class, split_seed, path):
    """The held-out carve from ``path`` when it matches the index, else carved and saved there."""
    if os.path.isfile(path):
        try:
            with open(path, "r", encoding="utf-8") as f:
                saved = json.load(f)
            heldout = {int(k): [int(x) for x in v] for k, v in saved["heldout"].items()}
            problem = _check_heldout(index, groups, heldout, val_per_class)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        if not problem:
            print(f'Reading the held-out val split from "{path}"')
            return heldout
        print(f'The held-out val split "{path}" does not match "{index.path}" ({problem}); carving it again')
    heldout = carve_heldout(index, groups, val_per_class, split_seed)
    payload = {"train_json": os.path.basename(index.path), "val_per_class": val_per_class, "split_seed": split_seed,
               "rule": "per category: min(VAL_PER_CLASS, n // 2) image ids drawn with "
                       "random.Random(f'inat-heldout-{SPLIT_SEED}-{category_id}').sample(range(n), k) over the "
                       "category's images in JSON order",
               "heldout": {str(k): v for k, v in heldout.items()}}
    _write_atomic(path, json.dumps(payload).encode("utf-8"), "held-out val split")
    print(f'Carved a held-out val split ({sum(len(v) for v in heldout.values()):,} images, at most '
          f'{val_per_class} per class) and saved it to "{path}"')
    return heldout


def _check_heldout(index, groups, heldout, val_per_class):
    if set(heldout) != set(groups):
        return "its categories differ"
    for cid, chosen in heldout.items():
        if len(chosen) != heldout_count(len(groups[cid]), val_per_class) or len(set(chosen)) != len(chosen):
            return f"category {cid} has {len(chosen)} image ids"
    ids = np.fromiter((i for v in heldout.values() for i in v), dtype=np.int64)
    claimed = np.fromiter((cid for cid, v in heldout.items() for _ in v), dtype=np.int64)
    order = np.argsort(index.image_id)
    where = np.searchsorted(index.image_id, ids, sorter=order)
    where[where >= len(order)] = 0
    images = order[where] if len(order) else where
    if len(ids) and not (index.image_id[images] == ids).all():
        return "it lists image ids that are not in the file"
    category_of_image = np.empty(len(index.image_id), dtype=np.int64)
    category_of_image[index.image_pos] = index.category_id
    if len(ids) and not (category_of_image[images] == claimed).all():
        return "it lists images under the wrong category"
    return ""


# --------------------------------------------------------------------------------------------------------
# Class selection
# --------------------------------------------------------------------------------------------------------
def read_class_file(path, metadata):
    """Category ids listed in a class file (ids, scientific or common names; ``#`` comments)."""
    if not os.path.isfile(path):
        raise ConfigError(f'DATASET.INATURALIST.SUBSET_CLASS_FILE: "{path}" does not exist; expected a text file '
                          "with one category id, scientific name or common name per line")
    by_id = {m["category_id"]: m["category_id"] for m in metadata}
    by_name = {}
    for m in metadata:
        for key in ("name", "common_name"):
            if m[key]:
                by_name.setdefault(m[key].lower(), set()).add(m["category_id"])
    chosen, problems = [], []
    with open(path, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            if re.fullmatch(r"\d+", entry):
                if int(entry) in by_id:
                    chosen.append(int(entry))
                else:
                    problems.append(f"line {number}: no category with id {entry}")
                continue
            matches = by_name.get(entry.lower(), set())
            if len(matches) == 1:
                chosen.extend(matches)
            elif matches:
                problems.append(f'line {number}: "{entry}" names several categories (ids {sorted(matches)}); '
                                "use an id")
            else:
                close = difflib.get_close_matches(entry.lower(), list(by_name), n=3)
                problems.append(f'line {number}: no category named "{entry}"'
                                + (f" (close: {', '.join(close)})" if close else ""))
    if problems:
        raise DataError(f'Class file "{path}" (DATASET.INATURALIST.SUBSET_CLASS_FILE): {_examples(problems)}')
    if not chosen:
        raise DataError(f'Class file "{path}" (DATASET.INATURALIST.SUBSET_CLASS_FILE) lists no class')
    return set(chosen)


def _match_taxa(metadata, terms, version):
    available = {rank for m in metadata for rank in SUBSET_RANKS if m.get(rank)}
    for rank, _ in terms:
        if rank not in available:
            raise ConfigError(f'DATASET.INATURALIST.SUBSET_TAXA: the {version} categories have no "{rank}"; '
                              f"available ranks: {sorted(available)}")
    return {m["category_id"] for m in metadata
            if any((m.get(rank) or "").lower() == value for rank, value in terms)}


def _empty_subset(what, terms, metadata):
    hint = ""
    for rank, _ in terms[:2]:
        values = Counter(m.get(rank) for m in metadata if m.get(rank))
        hint += f' Values of "{rank}" in this release: ' + ", ".join(v for v, _ in values.most_common(15)) + (
            " ..." if len(values) > 15 else "") + "."
    return DataError(f"The class subset is empty after {what}.{hint}")


# --------------------------------------------------------------------------------------------------------
# Light few-shot sampling, identical to Dassl's generate_fewshot_dataset on the same items
# --------------------------------------------------------------------------------------------------------
def sample_fewshot(rows, labels, num_shots):
    """Positions into ``rows`` chosen the way Dassl's ``generate_fewshot_dataset`` chooses items.

    Items are grouped by label in order of first appearance, each group in list order; a group with at least
    ``num_shots`` items gets ``random.sample(group, num_shots)`` (global RNG, picks kept in draw order), a
    smaller one is kept whole. ``random.sample`` picks by position only, so sampling positions gives Dassl's
    picks without building one Datum per pool image.
    """
    print(f"Creating a {num_shots}-shot dataset")
    labels = np.asarray(labels)
    if not len(labels):
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # positions grouped by label, each group in list order
    ranked = labels[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(order)]
    chosen = []
    for g in np.argsort(order[starts]).tolist():  # groups in order of first appearance
        group = order[starts[g]:ends[g]]
        if len(group) >= num_shots:
            chosen.append(group[random.sample(range(len(group)), num_shots)])
        else:
            chosen.append(group)
    return np.concatenate(chosen).astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------
def _counts(ids):
    values, counts = np.unique(ids, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def _slug(text, limit=48):
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-")[:limit]


@DATASET_REGISTRY.register()
class INaturalist(DatasetBase):
    """An iNaturalist competition release; see the module docstring for the layout and protocol.

    Attributes beyond DatasetBase's: ``version``, ``dataset_dir``, ``category_ids`` (original id per label),
    ``class_metadata`` (taxonomy per label), ``label_mapping`` (the rows written to ``inaturalist_classes.json``).
    """

    dataset_dir = "inaturalist"

    def __init__(self, cfg):
        node = _inat_node(cfg)
        version = normalize_version(node.VERSION)
        name_type = _check_choice("NAME_TYPE", node.NAME_TYPE, NAME_TYPES)
        policy = _check_choice("FEWER_THAN_SHOTS", node.FEWER_THAN_SHOTS, FEWER_THAN_SHOTS_CHOICES)
        terms = parse_taxa(node.SUBSET_TAXA)
        for key in ("VAL_PER_CLASS", "SUBSET_TOP_N"):
            if node[key] < 0:
                raise ConfigError(f"DATASET.INATURALIST.{key}: must be >= 0, got {node[key]}")
        num_shots = cfg.DATASET.NUM_SHOTS
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        release, self.dataset_dir = resolve_release(root, version)
        self.version = release.version
        cache_root = self.dataset_dir
        if node.CACHE_DIR:
            cache_root = os.path.join(os.path.abspath(os.path.expanduser(node.CACHE_DIR)), "inaturalist",
                                      release.folder)
        self.cache_root = cache_root
        self._check_writable(cache_root)

        train_json = _first_existing(self.dataset_dir, release.train_json)
        val_json = _first_existing(self.dataset_dir, release.val_json)
        for kind, found, candidates in (("train", train_json, release.train_json),
                                        ("val", val_json, release.val_json)):
            if found is None:
                raise DataError(_missing_file_message(release, self.dataset_dir, kind, candidates))
        train_index = self._index(train_json, release.train_images, release)
        val_index = self._index(val_json, release.val_images, release)
        metadata = self._categories(release, train_index, val_index)
        names, notes = class_names(list(metadata.values()), name_type)
        cname = dict(zip(metadata, names))
        print(f"Class names: {name_type}" + "".join(f"; {n}" for n in notes))

        groups = rows_by_category(train_index)
        stem = os.path.splitext(os.path.basename(train_json))[0]
        val_per_class = int(node.VAL_PER_CLASS)
        heldout_path = os.path.join(cache_root, HELDOUT_DIR, f"{stem}_val{val_per_class}-s{node.SPLIT_SEED}.json")
        heldout = load_or_carve_heldout(train_index, groups, val_per_class, node.SPLIT_SEED, heldout_path)

        kept, subset_tag = self._select(node, terms, metadata, groups, val_per_class, num_shots, policy)
        self.category_ids = sorted(kept)
        label_of = {cid: label for label, cid in enumerate(self.category_ids)}

        # Pools in JSON order: train pool (not held out), held-out val, test (official val).
        heldout_ids = np.fromiter((i for cid in kept for i in heldout[cid]), dtype=np.int64)
        row_image_ids = train_index.image_id[train_index.image_pos]
        in_kept = np.isin(train_index.category_id, np.asarray(self.category_ids, dtype=np.int64))
        held = np.isin(row_image_ids, heldout_ids)
        train_rows = np.flatnonzero(in_kept & ~held)
        val_rows = np.flatnonzero(in_kept & held)
        test_rows = np.flatnonzero(np.isin(val_index.category_id, np.asarray(self.category_ids, dtype=np.int64)))
        kept_ids = np.asarray(self.category_ids, dtype=np.int64)

        def labels_of(index, rows):  # dense label = rank of the category id among the kept ids
            return np.searchsorted(kept_ids, index.category_id[rows]).astype(np.int64)

        fewshot_key = f"{self.version}_{stem}_val{val_per_class}-s{node.SPLIT_SEED}_{subset_tag}"
        self.split_fewshot_dir = os.path.join(cache_root, FEWSHOT_DIR, fewshot_key)
        classnames = [cname[cid] for cid in self.category_ids]
        if num_shots >= 1:
            train, val = self._fewshot(train_index, train_rows, labels_of(train_index, train_rows), val_rows,
                                       labels_of(train_index, val_rows), num_shots, cfg.SEED, classnames)
        else:
            train = self._datums(train_index, train_rows, labels_of(train_index, train_rows), classnames)
            val = self._datums(train_index, val_rows, labels_of(train_index, val_rows), classnames)
        test = self._datums(val_index, test_rows, labels_of(val_index, test_rows), classnames)
        self._log_counts(val_index, train_rows, val_rows, test_rows, label_of, classnames)

        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        selected = list(range(len(self.category_ids)))
        if subsample != "all":
            half = (len(selected) + 1) // 2
            selected = selected[:half] if subsample == "base" else selected[half:]
        super().__init__(train_x=train, val=val, test=test)
        self.shots_per_class = count_shots(self.train_x, num_shots)
        self.category_ids = [self.category_ids[i] for i in selected]
        self.class_metadata = [dict(metadata[cid]) for cid in self.category_ids]
        counts = {"train_pool": _counts(train_index.category_id[train_rows]),
                  "heldout_val": _counts(train_index.category_id[val_rows]),
                  "test": _counts(val_index.category_id[test_rows])}
        used = Counter(d.label for d in self.train_x)
        self.label_mapping = [
            {"label": label, "category_id": cid, "classname": cname[cid],
             **{k: v for k, v in metadata[cid].items() if k != "category_id"},
             **{f"n_{k}": counts[k].get(cid, 0) for k in counts}, "n_train_x": used[label]}
            for label, cid in enumerate(self.category_ids)
        ]
        self._write_mapping(cfg, node, train_json, val_json, name_type, subset_tag)

    # -- pieces ---------------------------------------------------------------------------------------
    def _check_writable(self, cache_root):
        try:
            os.makedirs(cache_root, exist_ok=True)
            writable = os.access(cache_root, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            raise DataError(f'The cache folder "{cache_root}" cannot be written (index, held-out split and few-shot '
                            "caches go there). Set DATASET.INATURALIST.CACHE_DIR to a writable folder.")

    def _index(self, json_path, top_folder, release):
        relpath = os.path.relpath(json_path, self.dataset_dir)
        cache_path = os.path.join(self.cache_root, INDEX_DIR, relpath.replace(os.sep, "__") + ".npz")
        index = load_index(json_path, cache_path)
        tops = index.top_folders()
        if tops != [top_folder]:
            wrong = [t for t in tops if t != top_folder]
            looks = _KNOWN_TOP_FOLDERS.get(wrong[0], "an unknown layout") if wrong else "nothing"
            year = index.info.get("year")
            raise DataError(
                f'"{json_path}" is not the iNaturalist {release.version} file it should be: its images are under '
                f'{", ".join(t + "/" for t in tops)}, which is {looks}' + (f" (info.year {year})" if year else "")
                + f"; expected every file_name to start with {top_folder}/. Put the {release.version} annotation "
                f"files in \"{self.dataset_dir}\" (expected {expected_layout(release)}), or set "
                "DATASET.INATURALIST.VERSION to the release you have."
            )
        folder = os.path.join(self.dataset_dir, top_folder)
        if not os.path.isdir(folder):
            renamed = _TORCHVISION_FOLDERS.get(top_folder)
            hint = ""
            if renamed and os.path.isdir(os.path.join(self.dataset_dir, renamed)):
                hint = (f' Found "{os.path.join(self.dataset_dir, renamed)}": torchvision renames {top_folder}/ to '
                        f"{renamed}/ when it downloads; rename it back (or symlink it) to {top_folder}/.")
            raise DataError(f'The image folder "{folder}" is missing: "{json_path}" lists its images under '
                            f"{top_folder}/. Extract {release.image_archives} in \"{self.dataset_dir}\".{hint}")
        return index

    def _categories(self, release, train_index, val_index):
        """``{category_id: metadata}`` in id order, after the categories.json replacement (2018/2019)."""
        train_ids = _category_ids(train_index.path, train_index.categories)
        val_ids = _category_ids(val_index.path, val_index.categories)
        if set(train_ids.tolist()) != set(val_ids.tolist()):
            raise DataError(
                f'"{val_index.path}" and "{train_index.path}" list different categories ({len(val_ids)} vs '
                f"{len(train_ids)}): they are not from the same release. Expected the train and val files of "
                f"iNaturalist {release.version}."
            )
        categories = train_index.categories
        if release.categories_json:
            path = os.path.join(self.dataset_dir, release.categories_json)
            if not os.path.isfile(path):
                raise DataError(
                    f'iNaturalist {release.version}: "{path}" is missing. The names in '
                    f"{os.path.basename(train_index.path)} are obfuscated; the real ones are in categories.json "
                    f"(from categories.json.tar.gz of the "
                    f"{release.version} release), which must be next to it."
                )
            try:
                with open(path, "r", encoding="utf-8") as f:
                    categories = json.load(f)
            except (OSError, ValueError) as exc:
                raise DataError(f'Cannot read "{path}" as JSON ({exc}); expected the list of categories of the '
                                f"{release.version} release") from None
            if isinstance(categories, dict) and isinstance(categories.get("categories"), list):
                categories = categories["categories"]
            if not isinstance(categories, list):
                raise DataError(f'"{path}": expected a JSON list of categories, got {type(categories).__name__}')
            real_ids = _category_ids(path, categories)
            if set(real_ids.tolist()) != set(train_ids.tolist()):
                raise DataError(
                    f'"{path}" lists {len(real_ids)} categories whose ids differ from the {len(train_ids)} of '
                    f'"{train_index.path}": it is not the categories.json of the {release.version} release'
                )
        folders = _supercategory_folders(train_index, release.train_images) if release.folder != "2021" else {}
        metadata = {}
        for category in sorted(categories, key=lambda c: c["id"]):
            meta = category_metadata(category, release.version, folders.get(category["id"]))
            if meta["name"] is None:
                raise DataError(f'"{train_index.path}": category {meta["category_id"]} has no "name"')
            metadata[meta["category_id"]] = meta
        return metadata

    def _select(self, node, terms, metadata, groups, val_per_class, num_shots, policy):
        """Kept category ids and the subset tag used in cache folder names."""
        all_meta = list(metadata.values())
        kept = set(groups)  # categories with at least one training image
        no_images = [cid for cid in metadata if cid not in groups]
        if no_images:
            listed = _examples(f'{cid} "{metadata[cid]["name"]}"' for cid in no_images)
            print(f"Note: {len(no_images)} categories have no training image and cannot be classes: {listed}")
        tags = []
        if terms:
            kept &= _match_taxa(all_meta, terms, self.version)
            tags.append("taxa-" + "+".join(f"{r}={v}" for r, v in terms))
            if not kept:
                raise _empty_subset(f'DATASET.INATURALIST.SUBSET_TAXA "{node.SUBSET_TAXA}"', terms, all_meta)
        if node.SUBSET_CLASS_FILE:
            path = os.path.abspath(os.path.expanduser(node.SUBSET_CLASS_FILE))
            listed = read_class_file(path, all_meta)
            kept &= listed
            tags.append("file-" + os.path.splitext(os.path.basename(path))[0])
            if not kept:
                raise DataError(f'The class subset is empty: none of the {len(listed)} classes of "{path}" '
                                "(DATASET.INATURALIST.SUBSET_CLASS_FILE) is left after the other filters"
                                + (f' (SUBSET_TAXA "{node.SUBSET_TAXA}")' if terms else ""))
        pool = {cid: len(groups[cid]) - heldout_count(len(groups[cid]), val_per_class) for cid in kept}
        short = sorted(cid for cid in kept if num_shots >= 1 and pool[cid] < num_shots)
        if short:
            listed = _examples(f'{cid} "{metadata[cid]["name"]}" ({pool[cid]})' for cid in short)
            if policy == "error":
                raise DataError(
                    f"{len(short)} class(es) have fewer than NUM_SHOTS={num_shots} training images after the "
                    f"held-out val carve: {listed}. Lower DATASET.NUM_SHOTS, or set DATASET.INATURALIST."
                    "FEWER_THAN_SHOTS to keep (use all their images) or drop (remove those classes)."
                )
            if policy == "drop":
                kept -= set(short)
                tags.append(f"min{num_shots}")
                print(f"FEWER_THAN_SHOTS drop: removed {len(short)} class(es) with fewer than {num_shots} "
                      f"training images: {listed}")
                if not kept:
                    raise DataError(f"The class subset is empty: every class has fewer than NUM_SHOTS={num_shots} "
                                    "training images (DATASET.INATURALIST.FEWER_THAN_SHOTS drop)")
            else:
                print(f"Note: {len(short)} class(es) have fewer than NUM_SHOTS={num_shots} training images and keep "
                      f"all of them (Dassl's behaviour; FEWER_THAN_SHOTS keep): {listed}")
        if node.SUBSET_TOP_N and node.SUBSET_TOP_N < len(kept):
            ranked = sorted(kept, key=lambda cid: (-len(groups[cid]), cid))
            kept = set(ranked[:node.SUBSET_TOP_N])
            tags.append(f"top{node.SUBSET_TOP_N}")
        ids = sorted(kept)
        digest = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:10]
        tag = f"{_slug('_'.join(tags))}_{len(ids)}cls-{digest}" if tags else f"all_{len(ids)}cls-{digest}"
        described = "; ".join(tags) if tags else "all classes"
        print(f"Classes: {len(ids):,} of {len(metadata):,} ({described})")
        return kept, tag

    def _datums(self, index, rows, labels, classnames):
        """Datum per row, after checking that the images exist (first few missing ones named)."""
        paths = [os.path.join(self.dataset_dir, index.file_name(r)) for r in rows.tolist()]
        missing = [(p, index.row_image_id(r)) for p, r in zip(paths, rows.tolist()) if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f'"{index.path}" lists {len(missing)} image(s) that do not exist, e.g. '
                + _examples(f'"{p}" (image id {i})' for p, i in missing[:5])
                + f'. Expected the images extracted in "{self.dataset_dir}" so that each file_name resolves there.'
            )
        return [Datum(impath=p, label=int(y), classname=classnames[y]) for p, y in zip(paths, labels.tolist())]

    def _fewshot(self, index, train_rows, train_labels, val_rows, val_labels, num_shots, seed, classnames):
        path = os.path.join(self.split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.pkl")
        if os.path.isfile(path):
            print(f"Loading preprocessed few-shot data from {path}")
            train, val = load_fewshot_cache(path, self.dataset_dir)
            for key, items in (("train", train), ("val", val)):
                bad = [d for d in items if not 0 <= d.label < len(classnames)]
                if bad:
                    raise DataError(f'The few-shot cache "{path}" has {key} labels outside 0..{len(classnames) - 1} '
                                    f"(e.g. {bad[0]!r}); delete it, it is regenerated on the next run")
            # Names follow the current NAME_TYPE (the draw does not depend on it).
            return tuple([Datum(impath=d.impath, label=d.label, domain=d.domain, classname=classnames[d.label])
                          for d in items] for items in (train, val))
        train_pick = sample_fewshot(train_rows, train_labels, num_shots)
        val_pick = sample_fewshot(val_rows, val_labels, min(num_shots, 4))
        train = self._datums(index, train_rows[train_pick], train_labels[train_pick], classnames)
        val = self._datums(index, val_rows[val_pick], val_labels[val_pick], classnames)
        save_fewshot_cache(path, train, val, self.dataset_dir)
        return train, val

    def _log_counts(self, val_index, train_rows, val_rows, test_rows, label_of, classnames):
        dropped = len(val_index) - len(test_rows)
        print(f"iNaturalist {self.version}: {len(label_of):,} classes; train pool {len(train_rows):,}, held-out val "
              f"{len(val_rows):,}, test {len(test_rows):,} images (official val"
              + (f"; {dropped:,} images of other classes left out)" if dropped else ")"))
        no_test = sorted(set(label_of) - set(val_index.category_id[test_rows].tolist()))
        if no_test:
            print(f"Note: {len(no_test)} class(es) have no test image in \"{val_index.path}\": "
                  + _examples(f'{cid} "{classnames[label_of[cid]]}"' for cid in no_test))

    def _write_mapping(self, cfg, node, train_json, val_json, name_type, subset_tag):
        out = cfg.OUTPUT_DIR
        if not out:
            return
        payload = {
            "dataset": "INaturalist", "version": self.version, "dataset_dir": self.dataset_dir,
            "train_json": train_json, "val_json": val_json, "name_type": name_type,
            "subset": {"taxa": node.SUBSET_TAXA, "class_file": node.SUBSET_CLASS_FILE, "top_n": node.SUBSET_TOP_N,
                       "fewer_than_shots": node.FEWER_THAN_SHOTS, "subsample_classes":
                           cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"), "tag": subset_tag},
            "val_per_class": node.VAL_PER_CLASS, "split_seed": node.SPLIT_SEED,
            "num_classes": len(self.label_mapping), "classes": self.label_mapping,
        }
        path = os.path.join(out, MAPPING_FILE)
        _write_atomic(path, json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8"), "class mapping")
        print(f'Wrote the label -> category mapping to "{path}"')
