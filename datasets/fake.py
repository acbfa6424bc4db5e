"""Tiny fake datasets in the real on-disk formats, to smoke-test an install or a training run; the tests and
``scripts/make_fake_dataset.py`` (the command line below) use them.

    python scripts/make_fake_dataset.py stanford_cars ROOT [--classes 6] [--train-per-class 8]
        [--test-per-class 4] [--seed 0] [--image-size 64] [--with-split] [--force]

writes ROOT/stanford_cars/ in the original release format.

    python scripts/make_fake_dataset.py inaturalist ROOT --version {2017,2018,2019,2021,2021_mini}
        [--classes 6] [--train-per-class 8] [--val-per-class 3] [--seed 0] [--image-size 32] [--force]

writes ROOT/inaturalist/<year>/ in that competition release's real format (JSONs + image folders, as
docs/inaturalist.md describes). Images are learnable: each class has its own colours and stripe/check/ring
pattern, with small per-image jitter. Each dataset is one ``write_fake_<name>`` function plus one subcommand.
"""
import argparse
import colorsys
import hashlib
import json
import random
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from engine.errors import UserError

from .inaturalist import version_opt

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
# iNaturalist
# --------------------------------------------------------------------------------------------------------
INAT_VERSIONS = ("2017", "2018", "2019", "2021", "2021_mini")
INAT_VERSION_ALIASES = {"2021-mini": "2021_mini"}

# Real taxa (kingdom, phylum, class, order, family, genus, specific epithet, common name, 2021 supercategory),
# chosen to cover several supercategories, a genus with two species (Corvus) and two species sharing a
# common name (the "Common Daisy" of Tanacetum is invented on purpose, to exercise disambiguation).
INAT_TAXA = (
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax", "Common Raven", "Birds"),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corone", "Carrion Crow", "Birds"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Asterales", "Asteraceae", "Bellis", "perennis", "Common Daisy",
     "Plants"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Asterales", "Asteraceae", "Tanacetum", "parthenium",
     "Common Daisy", "Plants"),
    ("Animalia", "Chordata", "Reptilia", "Squamata", "Lacertidae", "Lacerta", "agilis", "Sand Lizard", "Reptiles"),
    ("Animalia", "Chordata", "Aves", "Anseriformes", "Anatidae", "Anas", "platyrhynchos", "Mallard", "Birds"),
    ("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "muscaria", "Fly Agaric",
     "Fungi"),
    ("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Vanessa", "atalanta", "Red Admiral",
     "Insects"),
    ("Animalia", "Annelida", "Clitellata", "Haplotaxida", "Lumbricidae", "Lumbricus", "terrestris",
     "Common Earthworm", "Animalia"),
    ("Animalia", "Chordata", "Amphibia", "Anura", "Ranidae", "Rana", "temporaria", "Common Frog", "Amphibians"),
)
# Supercategory names of the releases before 2021 (Latin-ish in 2017/2018, English folder names in 2019).
INAT_LATIN_SUPERCATEGORY = {"Birds": "Aves", "Plants": "Plantae", "Reptiles": "Reptilia", "Fungi": "Fungi",
                            "Insects": "Insecta", "Animalia": "Animalia", "Amphibians": "Amphibia"}
INAT_FILES = {
    "2017": {"folder": "2017", "images": "train_val_images", "train": "train_val2017/train2017.json",
             "val": "train_val2017/val2017.json", "test": "test2017.json", "test_images": "test2017"},
    "2018": {"folder": "2018", "images": "train_val2018", "train": "train2018.json", "val": "val2018.json",
             "test": "test2018.json", "test_images": "test2018"},
    "2019": {"folder": "2019", "images": "train_val2019", "train": "train2019.json", "val": "val2019.json",
             "test": "test2019.json", "test_images": "test2019"},
}


def fake_inat_taxa(num_classes):
    """``num_classes`` taxon tuples: the real ones above, then invented ones ("Fakegenus<n> species<n>")."""
    taxa = list(INAT_TAXA[:num_classes])
    for n in range(len(taxa), num_classes):
        taxa.append(("Animalia", "Arthropoda", "Insecta", "Coleoptera", f"Fakeidae{n % 3}", f"Fakegenus{n}",
                     f"species{n}", f"Fake Beetle {n}", "Insects"))
    return sorted(taxa)  # ids follow the taxonomy, as in the real releases


def _inat_2021_category(cid, taxon):
    kingdom, phylum, klass, order, family, genus, epithet, common, supercategory = taxon
    dir_name = "_".join([f"{cid:05d}", kingdom, phylum, klass, order, family, genus, epithet])
    return {"id": cid, "name": f"{genus} {epithet}", "common_name": common, "supercategory": supercategory,
            "kingdom": kingdom, "phylum": phylum, "class": klass, "order": order, "family": family, "genus": genus,
            "specific_epithet": epithet, "image_dir_name": dir_name}


def _obfuscate(text):
    return hashlib.md5(text.encode()).hexdigest()[:12]


def _inat_categories(version, taxa):
    """``(categories as in the main JSONs, real categories for categories.json or None, supercategory folder
    of each id)``."""
    real, folders = [], []
    for cid, taxon in enumerate(taxa):
        full = _inat_2021_category(cid, taxon)
        if version.startswith("2021"):
            real.append(full)
            folders.append(None)
            continue
        latin = INAT_LATIN_SUPERCATEGORY[full["supercategory"]]
        if version == "2017":
            real.append({"id": cid, "name": full["name"], "supercategory": latin})
        else:
            record = {"id": cid, "name": full["name"]}
            if version == "2018":
                record["supercategory"] = latin
            record.update({k: full[k] for k in ("kingdom", "phylum", "class", "order", "family", "genus")})
            real.append(record)
        folders.append(full["supercategory"] if version == "2019" else latin)
    if version in ("2018", "2019"):
        main = [{**c, **{k: _obfuscate(str(v)) for k, v in c.items() if k not in ("id", "supercategory")}}
                for c in real]
        return main, real, folders
    if version == "2017":  # 2017: check ids rather than assume them sorted (the list is not in id order)
        real = real[1::2] + real[0::2]
    return real, None, folders


def _inat_image_record(image_id, file_name, pixels, version, rng):
    height, width = pixels.shape[:2]
    record = {"id": image_id, "width": width, "height": height, "file_name": file_name, "license": 1,
              "rights_holder": "Jos\u00e9 Observer"}
    if version.startswith("2021"):
        missing = image_id % 7 == 3  # the real files have NaN locations when the observation had none
        record.update({"date": f"2019-05-{1 + image_id % 28:02d} 10:11:00+00:00",
                       "latitude": float("nan") if missing else round(float(rng.uniform(-60, 70)), 4),
                       "longitude": float("nan") if missing else round(float(rng.uniform(-180, 180)), 4),
                       "location_uncertainty": None if missing else int(rng.integers(-80, 5000))})
    return record


def _inat_document(version, images, categories, annotations):
    year = int(version[:4])
    return {"info": {"year": year, "version": f"{year} (fake)", "description": "fake iNaturalist release for tests",
                     "contributor": "MixPrompt make_fake_dataset.py", "url": "https://github.com/visipedia/inat_comp",
                     "date_created": f"{year}-03-01 00:00:00"},
            "images": images, "categories": categories, **({"annotations": annotations} if annotations is not None
                                                           else {}),
            "licenses": [{"id": 1, "name": "Attribution-NonCommercial License",
                          "url": "http://creativecommons.org/licenses/by-nc/4.0/"}]}


def _write_json(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f)  # NaN locations are written as NaN, as in the real 2021 files


def write_fake_inaturalist(root, version="2021", classes=6, train_per_class=8, val_per_class=3, seed=0,
                           image_size=32, force=False):
    """Write ``root/inaturalist/<year>/`` in the format of the ``version`` release; returns that folder.

    2017-2019: one ``train_val*`` image tree (``<Super>/<species name or id>/<hash>.jpg``) shared by the train
    and val JSONs (2018/2019 with obfuscated names in the JSONs and the real ones in ``categories.json``;
    2017 with its JSONs in ``train_val2017/`` as unzipped). 2021: ``train/``, ``train_mini/`` (the first half
    of each class's train images, at least one) and ``val/`` with ``<image_dir_name>/<uuid>.jpg`` plus
    ``train.json``, ``train_mini.json`` and ``val.json``; ``2021_mini`` writes train_mini and val only. Every
    release also gets a small test JSON without annotations. Train images of class ``k``: ``train_per_class
    + k % 2`` (classes differ in size); val: ``val_per_class``.
    """
    version = INAT_VERSION_ALIASES.get(version, version)
    if version not in INAT_VERSIONS:
        raise UserError(f'unknown iNaturalist version "{version}"; expected one of {list(INAT_VERSIONS)}')
    if classes < 1 or train_per_class < 1 or val_per_class < 1 or image_size < 8:
        raise UserError("need classes >= 1, train/val images per class >= 1 and image size >= 8")
    target = Path(root).expanduser().resolve() / "inaturalist" / ("2021" if version.startswith("2021") else version)
    _prepare_target(target, force)
    rng = np.random.default_rng(seed)
    id_rng = random.Random(seed)
    taxa = fake_inat_taxa(classes)
    main_categories, real_categories, super_folders = _inat_categories(version, taxa)
    by_id = {c["id"]: c for c in (real_categories or main_categories)}
    next_image_id = iter(range(100, 10**9, 3))  # sparse ids, unique over the whole release

    def new_name():
        if version.startswith("2021"):
            return f"{uuid.UUID(int=id_rng.getrandbits(128), version=4)}.jpg"
        return f"{id_rng.getrandbits(128):032x}.jpg"

    def class_folder(cid, top):
        if version.startswith("2021"):
            return f"{top}/{_inat_2021_category(cid, taxa[cid])['image_dir_name']}"
        leaf = by_id[cid]["name"] if version == "2017" else str(cid)
        return f"{top}/{super_folders[cid]}/{leaf}"

    def write_split(top, counts):
        """Images for each class (counts[cid] of them), interleaved over classes as in the real files."""
        images, annotations, per_class = [], [], {}
        order = [cid for cid, n in enumerate(counts) for _ in range(n)]
        id_rng.shuffle(order)
        for cid in order:
            image_id = next(next_image_id)
            file_name = f"{class_folder(cid, top)}/{new_name()}"
            pixels = render_class_image(cid, classes, image_size, rng, mode=0)
            (target / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target / file_name, quality=90)
            images.append(_inat_image_record(image_id, file_name, pixels, version, rng))
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": cid})
            per_class.setdefault(cid, []).append(images[-1])
        return images, annotations, per_class

    train_counts = [train_per_class + cid % 2 for cid in range(classes)]
    val_counts = [val_per_class] * classes
    written = []
    if version.startswith("2021"):
        if version == "2021":
            images, annotations, per_class = write_split("train", train_counts)
            _write_json(target / "train.json", _inat_document(version, images, main_categories, annotations))
            # train_mini: a subset of train (same image names), in its own folder
            mini_images, mini_annotations = [], []
            for image, annotation in zip(images, annotations):
                cid = annotation["category_id"]
                if image in per_class[cid][:max(1, len(per_class[cid]) // 2)]:
                    name = "train_mini/" + image["file_name"].split("/", 1)[1]
                    (target / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(target / image["file_name"], target / name)
                    mini_images.append({**image, "file_name": name})
                    mini_annotations.append({**annotation, "id": len(mini_annotations)})
            _write_json(target / "train_mini.json",
                        _inat_document(version, mini_images, main_categories, mini_annotations))
            written += [f"train/ + train.json ({len(images)})", f"train_mini/ + train_mini.json ({len(mini_images)})"]
        else:
            images, annotations, _ = write_split("train_mini", train_counts)
            _write_json(target / "train_mini.json", _inat_document(version, images, main_categories, annotations))
            written.append(f"train_mini/ + train_mini.json ({len(images)})")
        images, annotations, _ = write_split("val", val_counts)
        _write_json(target / "val.json", _inat_document(version, images, main_categories, annotations))
        written.append(f"val/ + val.json ({len(images)})")
        test_top, test_json = "public_test", "public_test.json"
    else:
        files = INAT_FILES[version]
        for split, counts in (("train", train_counts), ("val", val_counts)):
            images, annotations, _ = write_split(files["images"], counts)
            _write_json(target / files[split], _inat_document(version, images, main_categories, annotations))
            written.append(f"{files[split]} ({len(images)})")
        written.insert(0, f"{files['images']}/")
        if real_categories is not None:
            _write_json(target / "categories.json", real_categories)
            written.append("categories.json (real names; the JSONs have obfuscated ones)")
        test_top, test_json = files["test_images"], files["test"]
    test_images = []
    for _ in range(2):  # test files: images without annotations
        name = f"{test_top}/{new_name()}"
        pixels = render_class_image(0, classes, image_size, rng)
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target / name, quality=90)
        test_images.append(_inat_image_record(next(next_image_id), name, pixels, version, rng))
    _write_json(target / test_json, _inat_document(version, test_images, main_categories, None))
    written.append(f"{test_json} (no annotations)")
    print(
        f"Wrote a fake iNaturalist {version} release to {target}: {classes} classes.\n"
        f"  Files: {', '.join(written)}\n"
        f"  Use it with --root {target.parent.parent} {version_opt(version)}"
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


def _add_inaturalist(subparsers):
    p = subparsers.add_parser("inaturalist", help="an iNaturalist competition release (JSON + image folders)")
    p.add_argument("root", help="dataset root (the folder that will contain inaturalist/<year>/)")
    p.add_argument("--version", default="2021", type=lambda v: INAT_VERSION_ALIASES.get(v, v),
                   choices=INAT_VERSIONS, help="release to imitate (2021_mini: train_mini.json and val.json only)")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train-per-class", type=int, default=8)
    p.add_argument("--val-per-class", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--force", action="store_true", help="replace an existing ROOT/inaturalist/<year>")
    p.set_defaults(run=lambda a: write_fake_inaturalist(
        a.root, a.version, a.classes, a.train_per_class, a.val_per_class, a.seed, a.image_size, a.force
    ))


def main(argv=None):
    """``python scripts/make_fake_dataset.py DATASET ROOT ...``; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="dataset", required=True, metavar="dataset")
    _add_stanford_cars(subparsers)
    _add_inaturalist(subparsers)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
