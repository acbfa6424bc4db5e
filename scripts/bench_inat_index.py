#!/usr/bin/env python
"""Benchmark the iNaturalist annotation index: parse time and peak memory, first run vs cached run.

    nice python scripts/bench_inat_index.py [--images 2686843] [--classes 10000] [--workdir DIR]
        [--json-load] [--ijson] [--keep]

Generates a train JSON with the 2021 schema and size (2,686,843 images and annotations, 10,000 categories
with every 2021 field; about 1 GB) under ``WORKDIR/inaturalist/2021/train.json`` (reused when it already
has the requested size), then measures, each in a fresh process so that peak RSS is that step's own:

- ``first``: ``datasets.inaturalist.load_index`` with no cache (stream-parse, check, write the .npz cache);
- ``cached``: the same call once the cache exists, plus what a run then does on the whole index (group the
  rows by category, carve the held-out val, draw a 16-shot subset of all classes);
- ``json.load`` (with ``--json-load``): the plain-stdlib reference, ``json.load`` of the whole document
  reduced to (file_name, category_id) pairs, for comparison;
- ``ijson`` (with ``--ijson``, needs the ijson package): the same index built with ijson's ``items`` (one
  pass per key, yajl2_c backend where available) instead of the hand-written reader, checked to give the same
  arrays. yajl rejects ``NaN``, so with ``--ijson`` the generated file writes ``null`` where the 2021 schema
  has NaN coordinates.

Prints one line per step (wall seconds, peak RSS in MiB, the process's RSS before the step) and the ratios.
No image files are written: the index does not need them.
"""
import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

KINGDOMS = ("Animalia", "Plantae", "Fungi")
SUPERCATEGORIES = ("Plants", "Insects", "Birds", "Fungi", "Reptiles", "Mammals", "Ray-finned Fishes", "Amphibians",
                   "Mollusks", "Arachnids", "Animalia")


def peak_rss_mib():
    """Peak RSS of this process in MiB: VmHWM (reset by exec) where /proc exists, else ru_maxrss, which on
    Linux also counts the parent's peak before exec (a child started by a big parent would look big)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _categories(num_classes, rng):
    categories = []
    for cid in range(num_classes):
        genus, epithet = f"Genus{cid // 7}", f"epithet{cid}"
        ranks = [KINGDOMS[cid % 3], f"Phylum{cid % 11}", f"Class{cid % 53}", f"Order{cid % 211}",
                 f"Family{cid % 1103}", genus, epithet]
        categories.append({
            "id": cid, "name": f"{genus} {epithet}", "common_name": f"Common Thing {cid}",
            "supercategory": SUPERCATEGORIES[cid % len(SUPERCATEGORIES)], "kingdom": ranks[0], "phylum": ranks[1],
            "class": ranks[2], "order": ranks[3], "family": ranks[4], "genus": genus, "specific_epithet": epithet,
            "image_dir_name": "_".join([f"{cid:05d}"] + ranks),
        })
    return categories


def _class_counts(num_images, num_classes, rng):
    """Between 152 and 300 images per class (the 2021 train range), summing to ``num_images``."""
    base = num_images // num_classes
    counts = [base] * num_classes
    for k in range(0, num_classes - 1, 2):  # move images between pairs: keeps the total
        shift = rng.randint(0, max(0, min(base - 152, 300 - base)))
        counts[k] += shift
        counts[k + 1] -= shift
    for k in range(num_images - base * num_classes):
        counts[k % num_classes] += 1
    return counts


def generate(path, num_images, num_classes, seed=0, nan="NaN"):
    """Write a train JSON with the 2021 schema: images, categories, annotations, in the real key order.
    ``nan`` is written for missing coordinates (``null`` for parsers that reject NaN)."""
    rng = random.Random(seed)
    categories = _categories(num_classes, rng)
    labels = [cid for cid, n in enumerate(_class_counts(num_images, num_classes, rng)) for _ in range(n)]
    rng.shuffle(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    start = time.perf_counter()
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('{"info": {"year": 2021, "version": "bench", "description": "synthetic iNat 2021 train", '
                '"contributor": "bench_inat_index.py", "url": "", "date_created": "2021-03-01 00:00:00"}, ')
        f.write('"images": [')
        chunk, first = [], True
        for i, cid in enumerate(labels):
            bits = rng.getrandbits(128)
            u = f"{bits:032x}"
            name = f"{u[:8]}-{u[8:12]}-4{u[13:16]}-a{u[17:20]}-{u[20:32]}.jpg"
            lat = nan if i % 97 == 0 else f"{rng.uniform(-60, 70):.5f}"
            lon = nan if i % 97 == 0 else f"{rng.uniform(-180, 180):.5f}"
            unc = "null" if i % 97 == 0 else str(rng.randint(1, 9000))
            chunk.append(
                f'{{"id": {i}, "width": 500, "height": {rng.randint(200, 500)}, "file_name": '
                f'"train/{categories[cid]["image_dir_name"]}/{name}", "license": {1 + i % 6}, '
                f'"rights_holder": "Observer {rng.randint(0, 99999)}", "date": "2019-0{1 + i % 9}-1{i % 10} '
                f'10:11:00+00:00", "latitude": {lat}, "longitude": {lon}, "location_uncertainty": {unc}}}'
            )
            if len(chunk) == 100000 or i == len(labels) - 1:
                f.write(("" if first else ", ") + ", ".join(chunk))
                chunk, first = [], False
        f.write('], "categories": ')
        f.write(json.dumps(categories))
        f.write(', "annotations": [')
        f.write(", ".join(f'{{"id": {i}, "image_id": {i}, "category_id": {cid}}}' for i, cid in enumerate(labels)))
        f.write('], "licenses": [{"id": 1, "name": "CC BY-NC", '
                '"url": "http://creativecommons.org/licenses/by-nc/4.0/"}]}')
    os.replace(tmp, path)
    print(f"Generated {path} ({path.stat().st_size / 2**30:.2f} GiB, {num_images:,} images, {num_classes:,} "
          f"classes) in {time.perf_counter() - start:.0f}s")


# --------------------------------------------------------------------------------------------------------
# Measured steps (each runs in its own process)
# --------------------------------------------------------------------------------------------------------
def step_first(json_path, cache_path):
    from datasets.inaturalist import load_index
    if os.path.exists(cache_path):
        os.remove(cache_path)
    before = peak_rss_mib()
    start = time.perf_counter()
    index = load_index(str(json_path), str(cache_path))
    return {"seconds": time.perf_counter() - start, "rows": len(index), "rss_before": before,
            "cache_mib": os.path.getsize(cache_path) / 2**20}


def step_cached(json_path, cache_path):
    from datasets.inaturalist import carve_heldout, load_index, rows_by_category, sample_fewshot
    import numpy as np
    before = peak_rss_mib()
    start = time.perf_counter()
    index = load_index(str(json_path), str(cache_path))
    loaded = time.perf_counter() - start
    groups = rows_by_category(index)
    heldout = carve_heldout(index, groups, 4, 1)
    ids = np.fromiter((i for v in heldout.values() for i in v), dtype=np.int64)
    held = np.isin(index.image_id[index.image_pos], ids)
    rows = np.flatnonzero(~held)
    random.seed(1)
    picks = sample_fewshot(rows, index.category_id[rows], 16)
    paths = [index.file_name(r) for r in rows[picks].tolist()]
    return {"seconds": time.perf_counter() - start, "load_seconds": loaded, "rows": len(index),
            "rss_before": before, "shots": len(paths)}


def step_json_load(json_path, cache_path):
    before = peak_rss_mib()
    start = time.perf_counter()
    with open(json_path, "r", encoding="utf-8") as f:
        document = json.load(f)
    names = {image["id"]: image["file_name"] for image in document["images"]}
    pairs = [(names[a["image_id"]], a["category_id"]) for a in document["annotations"]]
    del document, names
    return {"seconds": time.perf_counter() - start, "rows": len(pairs), "rss_before": before}


def parse_with_ijson(path):
    """``parse_annotation_file``'s parsing step with ijson (one ``items`` pass per key), for comparison."""
    import array
    import ijson
    from datasets.inaturalist import AnnotationIndex, _check_and_join
    image_id, dir_index, name_end, blob = array.array("q"), array.array("i"), array.array("q"), bytearray()
    ann_image, ann_category, dirs = array.array("q"), array.array("q"), {}

    def items(prefix):
        with open(path, "rb") as f:
            yield from ijson.items(f, prefix, use_float=True, buf_size=1 << 22)

    for image in items("images.item"):
        folder, _, name = image["file_name"].rpartition("/")
        code = dirs.get(folder)
        if code is None:
            code = dirs[folder] = len(dirs)
        image_id.append(image["id"])
        dir_index.append(code)
        blob.extend(name.encode("utf-8"))
        name_end.append(len(blob))
    for annotation in items("annotations.item"):
        ann_image.append(annotation["image_id"])
        ann_category.append(annotation["category_id"])
    categories = list(items("categories.item"))
    info = next(items("info"), {})
    arrays = _check_and_join(path, image_id, dir_index, name_end, blob, ann_image, ann_category, dirs, categories)
    return AnnotationIndex(path, arrays, list(dirs), categories, info), ijson.backend


def step_ijson(json_path, cache_path):
    import numpy as np
    from datasets.inaturalist import parse_annotation_file
    before = peak_rss_mib()
    start = time.perf_counter()
    index, backend = parse_with_ijson(str(json_path))
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    ours = parse_annotation_file(str(json_path))  # after the measurement: equivalence only
    same = all(np.array_equal(getattr(index, k), getattr(ours, k)) for k in index.ARRAYS) and \
        (index.dirs, index.categories, index.info) == (ours.dirs, ours.categories, ours.info)
    return {"seconds": seconds, "rows": len(index), "rss_before": before, "peak_rss_mib": peak,
            "backend": backend, "same_arrays": same}


def step_parse(json_path, cache_path):
    """The hand-written reader alone (``parse_annotation_file``, no cache write): ``ijson``'s counterpart."""
    from datasets.inaturalist import parse_annotation_file
    before = peak_rss_mib()
    start = time.perf_counter()
    index = parse_annotation_file(str(json_path))
    return {"seconds": time.perf_counter() - start, "rows": len(index), "rss_before": before}


STEPS = {"first": step_first, "cached": step_cached, "json.load": step_json_load, "parse": step_parse,
         "ijson": step_ijson}


def run_step(name, json_path, cache_path):
    """Run one step in a fresh interpreter; returns its result dict plus its peak RSS."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import importlib.util as u; "
            "s = u.spec_from_file_location('bench', sys.argv[2]); m = u.module_from_spec(s); s.loader.exec_module(m); "
            "r = m.STEPS[sys.argv[3]](sys.argv[4], sys.argv[5]); r.setdefault('peak_rss_mib', m.peak_rss_mib()); "
            "print('RESULT ' + json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), __file__, name, str(json_path), str(cache_path)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    if proc.returncode != 0:
        raise SystemExit(f"step {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2_686_843)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--workdir", default="", help="where to write the JSON (default: a temporary folder)")
    parser.add_argument("--json-load", action="store_true", help="also measure plain json.load for reference")
    parser.add_argument("--ijson", action="store_true",
                        help="also measure the hand-written parse alone and ijson's (file written with null for NaN)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_inat_"))
    json_path = workdir / "inaturalist" / "2021" / "train.json"
    cache_path = workdir / "inaturalist" / "2021" / "index_cache" / "train.json.npz"
    marker = json_path.with_suffix(".json.params")
    nan = "null" if args.ijson else "NaN"
    params = f"{args.images} {args.classes}" + (" null" if args.ijson else "")
    if not (json_path.is_file() and marker.is_file() and marker.read_text() == params):
        generate(json_path, args.images, args.classes, nan=nan)
        marker.write_text(params)
    size = json_path.stat().st_size
    print(f"JSON: {json_path} ({size / 2**20:,.0f} MiB, {args.images:,} images, {args.classes:,} classes)")
    results = {}
    for name in ["first", "cached"] + (["json.load"] if args.json_load else []) + \
            (["parse", "ijson"] if args.ijson else []):
        results[name] = r = run_step(name, json_path, cache_path)
        extra = f", cache file {r['cache_mib']:.0f} MiB" if "cache_mib" in r else ""
        extra += f" (index load {r['load_seconds']:.2f}s)" if "load_seconds" in r else ""
        extra += f" (backend {r['backend']}, same arrays: {r['same_arrays']})" if "backend" in r else ""
        r["own_mib"] = r["peak_rss_mib"] - r["rss_before"]
        print(f"{name:>10}: {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:7,.0f} MiB = "
              f"{r['rss_before']:5,.0f} MiB before the step (interpreter + imports) + {r['own_mib']:7,.0f} MiB for "
              f"the step{extra}")
    first, cached = results["first"], results["cached"]
    print(f"cached vs first: {first['seconds'] / cached['seconds']:.1f}x faster, "
          f"{first['own_mib'] / max(cached['own_mib'], 1):.1f}x less memory for the step")
    if "json.load" in results:
        ref = results["json.load"]
        print(f"first (streaming) vs json.load: {ref['seconds'] / first['seconds']:.2f}x the speed, "
              f"{ref['own_mib'] / max(first['own_mib'], 1):.1f}x less memory for the step")
    if "ijson" in results:
        ref, ours = results["ijson"], results["parse"]
        print(f"ijson vs parse (hand-written): {ref['seconds'] / ours['seconds']:.2f}x the time, "
              f"{ref['own_mib'] / max(ours['own_mib'], 1):.2f}x the memory for the step")
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
