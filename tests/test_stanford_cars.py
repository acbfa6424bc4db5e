"""Stanford Cars: split building/reading, few-shot cache, subsampling, class-name parsing, bad input."""
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.io

import engine
from datasets.common import actual_shots_summary, load_or_create_fewshot, split_trainval, subsample_classes
from datasets.stanford_cars import SPLIT_FILE, StanfordCars, parse_car_classname
from engine import Datum
from engine.errors import DataError, UserError

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 8, 4


# --------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory, fake_data_module):
    """One fake original release, copied for each test (generating images is the slow part)."""
    root = tmp_path_factory.mktemp("cars_template")
    fake_data_module.write_fake_stanford_cars(root, CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, 0, 32, False)
    return root


@pytest.fixture
def root(template, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(template, target)
    return target


def cars_dir(root):
    return root / "stanford_cars"


def make_cfg(root, shots=-1, seed=1, subsample="all"):
    cfg = engine.get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "StanfordCars"
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.freeze()
    return cfg


def build(root, shots=-1, seed=1, subsample="all"):
    """Construct the dataset after seeding the global RNG as engine.set_random_seed does."""
    random.seed(seed)
    return StanfordCars(make_cfg(root, shots, seed, subsample))


def items(data):
    return [(d.impath, d.label, d.classname) for d in data]


def expect_error(root, *fragments, **kwargs):
    with pytest.raises(DataError) as info:
        build(root, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def read_records(path):
    return scipy.io.loadmat(str(path), simplify_cells=True)["annotations"]


# --------------------------------------------------------------------------------------------------------
# Building and reading the split
# --------------------------------------------------------------------------------------------------------
def test_builds_split_from_original_release_then_reads_it(root, capsys):
    ds = build(root)
    out = capsys.readouterr().out
    split_path = cars_dir(root) / SPLIT_FILE
    assert split_path.is_file()
    assert "Splitting trainval into 80% train and 20% val" in out
    n_val = CLASSES * round(TRAIN_PER_CLASS * 0.2)
    assert len(ds.val) == n_val
    assert len(ds.train_x) == CLASSES * TRAIN_PER_CLASS - n_val
    assert len(ds.test) == CLASSES * TEST_PER_CLASS
    assert f"{len(ds.train_x)} train, {n_val} val, {len(ds.test)} test, {CLASSES} classes" in out
    assert ds.num_classes == CLASSES
    assert ds.classnames[0] == "2000 AM General Hummer SUV"
    assert ds.classnames[2] == "2012 Ram C/V Cargo Van Minivan"
    assert ds.class_metadata[2] == {"make": "Ram", "model": "C/V Cargo Van", "type": "Minivan", "year": "2012"}

    # Same file name in both folders, kept apart by the folder.
    train_names = {os.path.basename(d.impath): d.impath for d in ds.train_x + ds.val}
    shared = [d for d in ds.test if os.path.basename(d.impath) in train_names]
    assert shared
    for d in shared:
        assert d.impath != train_names[os.path.basename(d.impath)]
        assert os.path.basename(os.path.dirname(d.impath)) == "cars_test"
    assert all(os.path.basename(os.path.dirname(d.impath)) == "cars_train" for d in ds.train_x + ds.val)

    saved = json.loads(split_path.read_text())
    assert set(saved) == {"train", "val", "test"}
    assert saved["test"][0][0].startswith("cars_test/") and not os.path.isabs(saved["test"][0][0])

    again = build(root, seed=99)
    out = capsys.readouterr().out
    assert f"Reading split from {split_path}" in out and "Splitting" not in out
    assert items(again.train_x) == items(ds.train_x)
    assert items(again.val) == items(ds.val) and items(again.test) == items(ds.test)


def test_script_writes_split_json_and_refuses_to_overwrite(tmp_path, fake_data_module):
    target = fake_data_module.write_fake_stanford_cars(tmp_path, 3, 5, 2, 0, 16, True)
    assert (target / SPLIT_FILE).is_file()
    ds = build(tmp_path)
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 6)
    with pytest.raises(UserError, match="--force"):
        fake_data_module.write_fake_stanford_cars(tmp_path, 3, 5, 2, 0, 16, False)
    fake_data_module.write_fake_stanford_cars(tmp_path, 2, 3, 1, 0, 16, False, force=True)
    assert not (target / SPLIT_FILE).exists()
    assert fake_data_module.main(["stanford_cars", str(tmp_path)]) == 2


def test_one_image_annotation_file(tmp_path, fake_data_module):
    fake_data_module.write_fake_stanford_cars(tmp_path, 1, 3, 1, 0, 16, False)
    ds = build(tmp_path)
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (2, 1, 1)


def test_combined_release_is_supported(root, fake_data_module):
    folder = cars_dir(root)
    (folder / "car_ims").mkdir()
    records = []
    for is_test, (sub, annos) in enumerate([("cars_train", "devkit/cars_train_annos.mat"),
                                            ("cars_test", "cars_test_annos_withlabels.mat")]):
        for r in read_records(folder / annos):
            name = f"car_ims/{len(records) + 1:06d}.jpg"
            shutil.move(folder / sub / r["fname"], folder / name)
            records.append({"relative_im_path": name, "class": r["class"], "test": is_test})
    for path in ("cars_train", "cars_test", "devkit", "cars_test_annos_withlabels.mat"):
        shutil.rmtree(folder / path) if (folder / path).is_dir() else os.remove(folder / path)
    annos = np.zeros((1, len(records)), dtype=[(f, object) for f in ("relative_im_path", "class", "test")])
    for i, r in enumerate(records):
        annos[0, i]["relative_im_path"] = r["relative_im_path"]
        annos[0, i]["class"] = np.array([[r["class"]]], dtype=np.uint8)
        annos[0, i]["test"] = np.array([[r["test"]]], dtype=np.uint8)
    names = np.empty((1, CLASSES), dtype=object)
    names[0, :] = fake_data_module.fake_car_names(CLASSES)
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": annos, "class_names": names})

    ds = build(root)
    assert len(ds.train_x) + len(ds.val) == CLASSES * TRAIN_PER_CLASS
    assert len(ds.test) == CLASSES * TEST_PER_CLASS
    assert all("/car_ims/" in d.impath for d in ds.test)
    assert ds.classnames[0] == "2000 AM General Hummer SUV"


# --------------------------------------------------------------------------------------------------------
# Few-shot cache
# --------------------------------------------------------------------------------------------------------
def test_fewshot_cache_written_reread_and_seeded(root, capsys):
    build(root)  # the split JSON first: building it draws from the global RNG too (as in CoOp)
    first = build(root, shots=2, seed=1)
    cache = cars_dir(root) / "split_fewshot" / "shot_2-seed_1.pkl"
    assert cache.is_file()
    assert f"Saving preprocessed few-shot data to {cache}" in capsys.readouterr().out
    assert len(first.train_x) == CLASSES * 2 and len(first.val) == CLASSES * 2
    assert len(first.test) == CLASSES * TEST_PER_CLASS

    again = build(root, shots=2, seed=1)
    assert f"Loading preprocessed few-shot data from {cache}" in capsys.readouterr().out
    assert items(again.train_x) == items(first.train_x) and items(again.val) == items(first.val)

    cache.unlink()
    regenerated = build(root, shots=2, seed=1)
    assert items(regenerated.train_x) == items(first.train_x) and items(regenerated.val) == items(first.val)
    other = build(root, shots=2, seed=2)
    assert (cars_dir(root) / "split_fewshot" / "shot_2-seed_2.pkl").is_file()
    assert items(other.train_x) != items(first.train_x)
    assert not [p for p in os.listdir(cars_dir(root) / "split_fewshot") if ".tmp" in p]


def test_val_gets_at_most_four_shots_drawn_after_train(tmp_path, fake_data_module):
    fake_data_module.write_fake_stanford_cars(tmp_path, 2, 30, 1, 0, 16, True)  # 6 val images per class
    full = build(tmp_path)
    ds = build(tmp_path, shots=5, seed=3)
    assert len(ds.train_x) == 2 * 5 and len(ds.val) == 2 * 4
    random.seed(3)  # Dassl's order: train drawn first, then val with min(K, 4) shots
    expected_train = full.generate_fewshot_dataset(full.train_x, num_shots=5)
    expected_val = full.generate_fewshot_dataset(full.val, num_shots=4)
    assert items(ds.train_x) == items(expected_train) and items(ds.val) == items(expected_val)


def _fake_dassl_datum_class(monkeypatch):
    """A class pickled as dassl.data.datasets.base_dataset.Datum, with modules that exist only for now."""
    path = "dassl.data.datasets.base_dataset"
    for depth in range(1, 5):
        name = ".".join(path.split(".")[:depth])
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class FakeDatum:
        pass

    FakeDatum.__module__, FakeDatum.__name__, FakeDatum.__qualname__ = path, "Datum", "Datum"
    sys.modules[path].Datum = FakeDatum
    return FakeDatum


def test_reads_coop_pickle_written_on_dassl(root, monkeypatch, capsys):
    ds = build(root)
    had_dassl = "dassl" in sys.modules
    fake_cls = _fake_dassl_datum_class(monkeypatch)

    def dassl_datum(d):
        obj = fake_cls()
        obj._impath, obj._label, obj._domain, obj._classname = d.impath, d.label, 0, d.classname
        return obj

    train, val = ds.train_x[::3], ds.val[::2]
    payload = pickle.dumps({"train": [dassl_datum(d) for d in train], "val": [dassl_datum(d) for d in val]},
                           protocol=pickle.HIGHEST_PROTOCOL)
    monkeypatch.undo()
    assert b"dassl.data.datasets.base_dataset" in payload
    assert had_dassl or "dassl.data.datasets.base_dataset" not in sys.modules
    cache = cars_dir(root) / "split_fewshot" / "shot_3-seed_7.pkl"
    cache.parent.mkdir()
    cache.write_bytes(payload)

    loaded = build(root, shots=3, seed=7)
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    assert all(type(d) is Datum for d in loaded.train_x + loaded.val)
    assert items(loaded.train_x) == items(train) and items(loaded.val) == items(val)


FAKE_DASSL_DATUM = """
class Datum:  # Dassl's Datum keeps its fields in _impath, _label, _domain, _classname
    pass
"""

READ_LIKE_DASSL = """
import pickle, sys
try:
    import engine
except ImportError:
    pass
else:
    sys.exit("engine must not be importable here")
with open(sys.argv[1], "rb") as f:
    data = pickle.load(f)  # what Dassl's DatasetBase does with split_fewshot/*.pkl
for key in ("train", "val"):
    for d in data[key]:
        print(key, type(d).__module__, d._impath, d._label, d._classname, sep="|")
"""


def test_cache_written_here_is_read_by_coop_on_dassl(root, tmp_path):
    """Issue: our caches named engine.data.datasets.Datum; CoOp on Dassl failed with "No module named
    'engine'". Read back by plain pickle in a process where only a Dassl package is importable."""
    ds = build(root, shots=3, seed=1)
    cache = cars_dir(root) / "split_fewshot" / "shot_3-seed_1.pkl"
    assert b"engine" not in cache.read_bytes()
    package = tmp_path / "site" / "dassl" / "data" / "datasets"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "base_dataset.py").write_text(FAKE_DASSL_DATUM)
    proc = subprocess.run([sys.executable, "-c", READ_LIKE_DASSL, str(cache)], cwd=tmp_path, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")), timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = [f"{key}|dassl.data.datasets.base_dataset|{d.impath}|{d.label}|{d.classname}"
                for key, data in (("train", ds.train_x), ("val", ds.val)) for d in data]
    assert proc.stdout.splitlines() == expected


def test_cache_of_a_copied_or_moved_folder_reads_the_copy(root, tmp_path, capsys):
    """A copied data folder brings its split_fewshot/*.pkl, whose absolute paths point into the original:
    the copy's own images are read (a corrupt image in the copy must not be hidden by the original)."""
    ds = build(root, shots=2, seed=1)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    capsys.readouterr()
    copied = build(copy, shots=2, seed=1)
    out = capsys.readouterr().out
    assert "Loading preprocessed few-shot data" in out and f'reading the same images from "{cars_dir(copy)}"' in out
    assert [d.impath for d in copied.train_x + copied.val] == [
        d.impath.replace(str(cars_dir(root)), str(cars_dir(copy))) for d in ds.train_x + ds.val]
    assert all(d.impath.startswith(str(cars_dir(copy)) + os.sep) for d in copied.train_x + copied.val + copied.test)

    moved = tmp_path / "moved"  # moved: the original is gone
    moved.mkdir()
    shutil.move(cars_dir(root), moved / "stanford_cars")
    assert items(build(moved, shots=2, seed=1).train_x) == [
        (p.replace(str(cars_dir(copy)), str(cars_dir(moved))), y, c) for p, y, c in items(copied.train_x)]


def test_dassl_cache_of_a_copied_folder_is_rerooted_too(root, tmp_path):
    """Caches written by Dassl record no data folder: it is inferred from the paths."""
    ds = build(root, shots=2, seed=1)
    cache = cars_dir(root) / "split_fewshot" / "shot_2-seed_1.pkl"
    cache.write_bytes(pickle.dumps({"train": ds.train_x, "val": ds.val}))  # no "dataset_dir" key
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    copied = build(copy, shots=2, seed=1)
    assert all(d.impath.startswith(str(cars_dir(copy)) + os.sep) for d in copied.train_x + copied.val)
    assert [os.path.relpath(d.impath, cars_dir(copy)) for d in copied.train_x] == [
        os.path.relpath(d.impath, cars_dir(root)) for d in ds.train_x]


def test_cache_naming_images_outside_the_data_folder_is_refused(root, tmp_path):
    ds = build(root, shots=2, seed=1)
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(b"")
    stray = Datum(impath=str(elsewhere), label=0, classname=ds.classnames[0])
    cache = cars_dir(root) / "split_fewshot" / "shot_2-seed_1.pkl"
    cache.write_bytes(pickle.dumps({"train": [stray], "val": []}))
    expect_error(root, cache, "not in the data folder", "Delete", shots=2, seed=1)


def test_corrupt_cache(root):
    build(root)
    cache = cars_dir(root) / "split_fewshot" / "shot_2-seed_1.pkl"
    cache.parent.mkdir()
    cache.write_bytes(b"\x80\x05not a pickle")
    expect_error(root, cache, "cannot be read", shots=2, seed=1)


def test_unexpected_class_in_cache_is_refused(root, tmp_path):
    ds = build(root)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "shot_1-seed_1.pkl").write_bytes(pickle.dumps({"train": [ValueError("x")], "val": []}))
    with pytest.raises(DataError, match="shot_1-seed_1.pkl"):
        load_or_create_fewshot(ds, ds.train_x, ds.val, 1, 1, str(cache_dir))
    assert load_or_create_fewshot(ds, ds.train_x, ds.val, 0, 1, str(cache_dir)) == (ds.train_x, ds.val)


# --------------------------------------------------------------------------------------------------------
# Base/new subsampling, train/val split, class names
# --------------------------------------------------------------------------------------------------------
def test_base_and_new_subsampling_relabels(root, capsys):
    full = build(root)
    base = build(root, subsample="base")
    assert "SUBSAMPLE BASE CLASSES!" in capsys.readouterr().out
    new = build(root, subsample="new")
    assert "SUBSAMPLE NEW CLASSES!" in capsys.readouterr().out
    half = CLASSES // 2
    assert base.classnames == full.classnames[:half] and new.classnames == full.classnames[half:]
    assert sorted({d.label for d in new.test}) == list(range(half))
    assert len(new.test) == half * TEST_PER_CLASS
    first_new = [d for d in full.test if d.label == half][0]
    assert [d.label for d in new.test if d.impath == first_new.impath] == [0]
    assert [m["make"] for m in new.class_metadata] == [parse_car_classname(n)["make"] for n in new.classnames]


def test_subsample_odd_count_and_unknown_mode(tmp_path):
    img = tmp_path / "x.jpg"
    img.write_bytes(b"")
    data = [Datum(impath=str(img), label=k, classname=f"c{k}") for k in range(5)]
    base, = subsample_classes(data, subsample="base")
    new, = subsample_classes(data, subsample="new")
    assert [d.classname for d in base] == ["c0", "c1", "c2"] and [d.label for d in new] == [0, 1]
    with pytest.raises(DataError, match="DATASET.SUBSAMPLE_CLASSES"):
        subsample_classes(data, subsample="novel")


def test_split_trainval_follows_coop_with_its_own_seed(tmp_path):
    """CoOp's per-class split, but drawn from a fixed split seed: neither the global RNG's state before it
    (what ran earlier in the process, the run's --seed) changes it, nor does it move the global RNG."""
    img = tmp_path / "x.jpg"
    img.write_bytes(b"")
    data = [Datum(impath=str(img), label=k % 3, classname=f"c{k % 3}") for k in range(30)]
    random.seed(0)
    train, val = split_trainval(data, p_val=0.2)
    after = random.random()
    assert len(val) == 6 and len(train) == 24
    assert [d.label for d in val] == [0, 0, 1, 1, 2, 2]
    random.seed(0)
    assert random.random() == after  # the global generator was not drawn from
    random.seed(12345)
    random.random()
    assert split_trainval(data, p_val=0.2) == (train, val)
    assert split_trainval(data, p_val=0.2, seed=2) != (train, val)


def test_split_file_is_the_same_whatever_ran_before(template, tmp_path):
    """Issue: the split built from the release depended on the global RNG (the run's seed and whatever drew
    before), so two fresh runs, or CoOp vs MixPrompt, built different split files."""
    files = []
    for seed, draws in ((1, 0), (2, 7)):
        root = tmp_path / f"data{seed}"
        shutil.copytree(template, root)
        random.seed(seed)
        for _ in range(draws):
            random.random()
        StanfordCars(make_cfg(root, shots=2, seed=seed))
        files.append((cars_dir(root) / SPLIT_FILE).read_bytes())
    assert files[0] == files[1]


def test_shots_per_class_counts_what_is_used(root, capsys):
    """Issue: NUM_SHOTS 100 with 6 images per class said "Creating a 100-shot dataset" and nothing else."""
    full = build(root)
    per_class = TRAIN_PER_CLASS - round(TRAIN_PER_CLASS * 0.2)
    assert full.shots_per_class == {name: per_class for name in full.classnames}
    assert list(full.shots_per_class) == full.classnames
    capsys.readouterr()
    few = build(root, shots=2)
    assert few.shots_per_class == {name: 2 for name in full.classnames}
    assert "DATASET.NUM_SHOTS" not in capsys.readouterr().out
    many = build(root, shots=100)
    out = capsys.readouterr().out
    assert many.shots_per_class == full.shots_per_class
    assert (f'DATASET.NUM_SHOTS is 100 but class "{full.classnames[0]}" has only {per_class} training images: '
            f"using {per_class} for {CLASSES} of {CLASSES} classes") in out
    assert actual_shots_summary(many.shots_per_class, 100) == {"min": per_class, "max": per_class, "requested": 100}
    assert actual_shots_summary({}, 4) == {"min": None, "max": None, "requested": 4}


@pytest.mark.parametrize("name, expected", [
    ("AM General Hummer SUV 2000", ("AM General", "Hummer", "SUV", "2000")),
    ("2012 Acura RL Sedan", ("Acura", "RL", "Sedan", "2012")),
    ("Acura TL Type-S 2008", ("Acura", "TL Type-S", "", "2008")),
    ("Aston Martin V8 Vantage Convertible 2012", ("Aston Martin", "V8 Vantage", "Convertible", "2012")),
    ("Land Rover Range Rover SUV 2012", ("Land Rover", "Range Rover", "SUV", "2012")),
    ("Rolls-Royce Phantom Drophead Coupe Convertible 2012",
     ("Rolls-Royce", "Phantom Drophead Coupe", "Convertible", "2012")),
    ("Mercedes-Benz Sprinter Van 2012", ("Mercedes-Benz", "Sprinter", "Van", "2012")),
    ("McLaren MP4-12C Coupe 2012", ("McLaren", "MP4-12C", "Coupe", "2012")),
    ("smart fortwo Convertible 2012", ("smart", "fortwo", "Convertible", "2012")),
    ("Ram C/V Cargo Van Minivan 2012", ("Ram", "C/V Cargo Van", "Minivan", "2012")),
    ("Chevrolet Express Cargo Van 2007", ("Chevrolet", "Express", "Cargo Van", "2007")),
    ("Nissan NV Passenger Van 2012", ("Nissan", "NV", "Passenger Van", "2012")),
    ("Dodge Ram Pickup 3500 Quad Cab 2009", ("Dodge", "Ram Pickup 3500", "Quad Cab", "2009")),
    ("Chevrolet Silverado 1500 Classic Extended Cab 2007",
     ("Chevrolet", "Silverado 1500 Classic", "Extended Cab", "2007")),
    ("Dodge Charger SRT-8 2009", ("Dodge", "Charger SRT-8", "", "2009")),
    ("FIAT 500 Abarth 2012", ("FIAT", "500 Abarth", "", "2012")),
    ("Eagle Talon Hatchback 1998", ("Eagle", "Talon", "Hatchback", "1998")),
    ("Geo Metro Convertible 1993", ("Geo", "Metro", "Convertible", "1993")),
    ("Ford Ranger SuperCab 2011", ("Ford", "Ranger", "SuperCab", "2011")),
    ("Audi 100 Wagon 1994", ("Audi", "100", "Wagon", "1994")),
])
def test_parse_car_classname_real_names(name, expected):
    parsed = parse_car_classname(name)
    assert (parsed["make"], parsed["model"], parsed["type"], parsed["year"]) == expected


@pytest.mark.parametrize("name", ["", "Sedan", "2012", "Foo Bar", "  odd   spacing  SUV ", None, 42])
def test_parse_car_classname_never_raises(name):
    parsed = parse_car_classname(name)
    assert set(parsed) == {"make", "model", "type", "year"}
    assert all(isinstance(v, str) for v in parsed.values())


# --------------------------------------------------------------------------------------------------------
# Bad input: every case names the file and says what was expected
# --------------------------------------------------------------------------------------------------------
def test_missing_dataset_folder(tmp_path):
    message = expect_error(tmp_path, tmp_path / "stanford_cars", "--root", "cars_train/", SPLIT_FILE)
    assert "devkit/cars_meta.mat" in message


def test_root_pointing_at_the_dataset_folder_is_explained(root):
    expect_error(cars_dir(root), "pass its parent folder as --root")


def _write_split(root, data):
    path = cars_dir(root) / SPLIT_FILE
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _valid_split():
    return {
        "train": [["cars_train/00001.jpg", 0, "2000 A"], ["cars_train/00002.jpg", 1, "2012 B"]],
        "val": [["cars_train/00003.jpg", 0, "2000 A"]],
        "test": [["cars_test/00001.jpg", 1, "2012 B"]],
    }


def _mutated(split, key, index, entry):
    split[key][index] = entry
    return split


@pytest.mark.parametrize("content, fragments", [
    ("{not json", ["not valid JSON"]),
    ([1, 2], ['keys "train", "val" and "test"']),
    ({"train": [], "val": []}, ['keys "train", "val" and "test"']),
    (_mutated(_valid_split(), "train", 1, ["cars_train/00002.jpg", 1]), ["train[1]", "3-element list"]),
    (_mutated(_valid_split(), "val", 0, ["cars_train/00003.jpg", "0", "2000 A"]), ["val[0]", "integer"]),
    (_mutated(_valid_split(), "val", 0, ["cars_train/00003.jpg", True, "2000 A"]), ["val[0]", "integer"]),
    (_mutated(_valid_split(), "test", 0, ["/abs/00001.jpg", 1, "2012 B"]), ["test[0]", "absolute"]),
    (_mutated(_valid_split(), "test", 0, ["cars_test/99999.jpg", 1, "2012 B"]),
     ["test[0]", "not found", "cars_test/99999.jpg"]),
    (_mutated(_valid_split(), "test", 0, ["cars_test/00001.jpg", 1, "2012 C"]), ["test[0]", "label 1", "train[1]"]),
    (_mutated(_valid_split(), "test", 0, ["cars_test/00001.jpg", 3, "2012 D"]), ["contiguous", "2"]),
])
def test_bad_split_file(root, content, fragments):
    path = _write_split(root, content)
    expect_error(root, path, *fragments)


def test_valid_handwritten_split_is_accepted(root):
    _write_split(root, _valid_split())
    ds = build(root)
    assert ds.classnames == ["2000 A", "2012 B"]


def test_class_with_too_few_images(tmp_path, fake_data_module):
    fake_data_module.write_fake_stanford_cars(tmp_path, 2, 2, 1, 0, 16, False)
    expect_error(tmp_path, "at least 3", '"2000 AM General Hummer SUV" has 2 image(s)')


@pytest.mark.parametrize("bad_class", [0, CLASSES + 1])
def test_class_id_out_of_range(root, fake_data_module, bad_class):
    path = cars_dir(root) / "devkit" / "cars_train_annos.mat"
    records = read_records(path)
    records[4]["class"] = bad_class
    fake_data_module.save_cars_annotations(path, records)
    expect_error(root, path, "annotation 4", f"class id {bad_class}", f"1..{CLASSES}")


def test_annotated_image_missing(root):
    os.remove(cars_dir(root) / "cars_train" / "00003.jpg")
    expect_error(root, cars_dir(root) / "devkit" / "cars_train_annos.mat", cars_dir(root) / "cars_train" / "00003.jpg")


def test_annotations_variable_missing(root):
    path = cars_dir(root) / "devkit" / "cars_train_annos.mat"
    scipy.io.savemat(path, {"annos": np.zeros((1, 1))})
    expect_error(root, path, '"annotations"', "annos")


def test_unreadable_mat(root):
    path = cars_dir(root) / "devkit" / "cars_meta.mat"
    path.write_bytes(os.urandom(256))
    expect_error(root, path, "MATLAB")


def test_nested_kaggle_folder_detected(root):
    folder = cars_dir(root)
    os.rename(folder / "cars_train", folder / "tmp_train")
    (folder / "cars_train").mkdir()
    os.rename(folder / "tmp_train", folder / "cars_train" / "cars_train")
    expect_error(root, folder / "cars_train" / "cars_train", "one level too deep", "mv cars_train_nested/cars_train")


def test_labelless_test_annotations_detected(root):
    folder = cars_dir(root)
    os.remove(folder / "cars_test_annos_withlabels.mat")
    expect_error(root, folder / "devkit" / "cars_test_annos.mat", "no class labels",
                 folder / "cars_test_annos_withlabels.mat")


def test_labelless_file_under_the_labelled_name_detected(root):
    folder = cars_dir(root)
    shutil.copy(folder / "devkit" / "cars_test_annos.mat", folder / "cars_test_annos_withlabels.mat")
    expect_error(root, folder / "cars_test_annos_withlabels.mat", 'no "class" field')


def test_mat_files_at_top_level_detected(root):
    folder = cars_dir(root)
    shutil.move(folder / "devkit" / "cars_meta.mat", folder / "cars_meta.mat")
    shutil.move(folder / "cars_test_annos_withlabels.mat", folder / "devkit" / "cars_test_annos_withlabels.mat")
    expect_error(root, f'move it to "{folder / "devkit" / "cars_meta.mat"}"',
                 f'move it to "{folder / "cars_test_annos_withlabels.mat"}"')


def test_kaggle_combined_annotations_without_car_ims_explained(root):
    folder = cars_dir(root)
    shutil.rmtree(folder / "devkit")
    shutil.copy(folder / "cars_test_annos_withlabels.mat", folder / "cars_annos.mat")
    expect_error(root, folder / "cars_annos.mat", "car_ims/", "car_devkit.tgz")
