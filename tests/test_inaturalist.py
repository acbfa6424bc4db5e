"""iNaturalist: every release format loads, few-shot draws are Dassl's and cached, held-out val, class names,
subsets, the index cache, the streaming parser, bad input, and train.py end to end on a generated subset."""
import json
import os
import random
import shutil
import subprocess

import numpy as np
import pytest

import datasets.inaturalist as inat
import engine
from datasets.common import _CacheUnpickler
import trainers
from conftest import ACCURACY, REPO_ROOT, train_args, warm_python
from datasets.inaturalist import INaturalist, add_inaturalist_config, parse_annotation_file
from engine.errors import ConfigError, DataError, UserError

VERSIONS = ("2017", "2018", "2019", "2021", "2021_mini")
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 8, 3  # class k has 8 + k % 2 train images
# Ids follow the taxonomy (sorted taxa of datasets.fake.INAT_TAXA[:6]):
SCIENTIFIC = ["Anas platyrhynchos", "Corvus corax", "Corvus corone", "Lacerta agilis", "Bellis perennis",
              "Tanacetum parthenium"]
COMMON = ["Mallard", "Common Raven", "Carrion Crow", "Sand Lizard", "Common Daisy (Bellis perennis)",
          "Common Daisy (Tanacetum parthenium)"]
BIRDS = [0, 1, 2]


# --------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def templates(tmp_path_factory, fake_data_module):
    """One generated release per version (generating images is the slow part); tests copy them."""
    base = tmp_path_factory.mktemp("inat_templates")
    for version in VERSIONS:
        fake_data_module.write_fake_inaturalist(base / version, version, CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS,
                                                seed=0, image_size=16)
    return base


@pytest.fixture
def make_root(templates, tmp_path):
    made = []

    def make(version="2021"):
        made.append(version)
        target = tmp_path / f"data_{version}_{len(made)}"
        shutil.copytree(templates / version, target)
        return target
    return make


def release_dir(root, version):
    return root / "inaturalist" / ("2021" if version.startswith("2021") else version)


def make_cfg(root, shots=-1, seed=1, out=None, subsample="all", **inat_keys):
    cfg = engine.get_cfg_default()
    trainers.extend_cfg(cfg)
    add_inaturalist_config(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "INaturalist"
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.OUTPUT_DIR = str(out) if out else ""
    for key, value in inat_keys.items():
        cfg.DATASET.INATURALIST[key.upper()] = value
    cfg.freeze()
    return cfg


def build(root, shots=-1, seed=1, **kwargs):
    """Construct the dataset after seeding the global RNG as engine.set_random_seed does."""
    random.seed(seed)
    return INaturalist(make_cfg(root, shots, seed, **kwargs))


def items(data):
    return [(d.impath, d.label, d.classname) for d in data]


def expect(error, root, *fragments, **kwargs):
    with pytest.raises(error) as info:
        build(root, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dump_json(path, document):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f)


# --------------------------------------------------------------------------------------------------------
# Every release loads
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_every_release_loads(version, templates, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(templates / version, root)
    ds = build(root, out=tmp_path / "out")
    out = capsys.readouterr().out
    assert f"auto: detected the {version} release" in out
    assert ds.version == version and ds.num_classes == CLASSES
    assert ds.category_ids == list(range(CLASSES))
    n_train = [TRAIN_PER_CLASS + k % 2 for k in range(CLASSES)]
    if version == "2021":
        assert ds.train_x[0].impath.startswith(str(release_dir(root, version) / "train") + os.sep)
    held = [min(4, n // 2) for n in n_train]
    assert len(ds.val) == sum(held) and len(ds.train_x) == sum(n_train) - sum(held)
    assert len(ds.test) == CLASSES * VAL_PER_CLASS
    assert {d.impath for d in ds.train_x}.isdisjoint(d.impath for d in ds.val)
    expected_names = COMMON if version.startswith("2021") else SCIENTIFIC  # no common names before 2021
    assert ds.classnames == expected_names
    meta = ds.class_metadata[1]
    assert meta["category_id"] == 1 and meta["name"] == "Corvus corax" and meta["genus"] == "Corvus"
    assert meta["species"] == "Corvus corax"
    super_names = {"2017": "Aves", "2018": "Aves", "2019": "Birds"}
    assert meta["supercategory"] == super_names.get(version, "Birds")
    if version == "2017":  # names and supercategory only
        assert meta["family"] is None and meta["order"] is None
    else:  # 2018/2019: the real taxonomy from categories.json, not the obfuscated one in the JSONs
        assert (meta["order"], meta["family"], meta["class"]) == ("Passeriformes", "Corvidae", "Aves")
    assert meta["common_name"] == ("Common Raven" if version.startswith("2021") else None)
    assert set(meta) == set(inat.METADATA_KEYS)
    mapping = load_json(tmp_path / "out" / inat.MAPPING_FILE)
    assert mapping["version"] == version and mapping["num_classes"] == CLASSES
    assert [(c["label"], c["category_id"]) for c in mapping["classes"]] == [(k, k) for k in range(CLASSES)]
    assert [c["n_test"] for c in mapping["classes"]] == [VAL_PER_CLASS] * CLASSES


def test_version_set_by_config_and_2021_mini(make_root, capsys):
    root = make_root("2021")  # train.json and train_mini.json side by side
    full = build(root, version="2021")
    mini = build(root, version="2021-mini")
    assert "detected" not in capsys.readouterr().out
    assert mini.version == "2021_mini"
    assert all(f"{os.sep}train_mini{os.sep}" in d.impath for d in mini.train_x + mini.val)
    assert len(mini.train_x) + len(mini.val) < len(full.train_x) + len(full.val)
    assert items(mini.test) == items(full.test)
    auto = build(root)
    assert auto.version == "2021"  # auto prefers the full train set when both are present


# --------------------------------------------------------------------------------------------------------
# Few-shot: Dassl's draw, cached per (shots, seed) in a folder naming everything that changes the draw
# --------------------------------------------------------------------------------------------------------
def test_fewshot_is_dassls_draw_and_is_cached(make_root, capsys):
    root = make_root("2021")
    full = build(root)
    first = build(root, shots=3, seed=5)
    out = capsys.readouterr().out
    folder = release_dir(root, "2021") / "split_fewshot"
    [key] = os.listdir(folder)
    assert key.startswith("2021_train_val4-s1_all_6cls-")
    cache = folder / key / "shot_3-seed_5.pkl"
    assert f"Saving preprocessed few-shot data to {cache}" in out
    assert len(first.train_x) == CLASSES * 3 and len(first.val) == CLASSES * 3  # min(3, 4) val shots
    assert items(first.test) == items(full.test)

    random.seed(5)  # what Dassl's generate_fewshot_dataset picks from the same pools, train then val
    expected_train = full.generate_fewshot_dataset(full.train_x, num_shots=3)
    expected_val = full.generate_fewshot_dataset(full.val, num_shots=3)
    assert items(first.train_x) == items(expected_train) and items(first.val) == items(expected_val)

    again = build(root, shots=3, seed=5)
    assert f"Loading preprocessed few-shot data from {cache}" in capsys.readouterr().out
    assert items(again.train_x) == items(first.train_x) and items(again.val) == items(first.val)
    with open(cache, "rb") as f:  # pickled for CoOp on Dassl: read with the Dassl-free unpickler
        saved = _CacheUnpickler(f).load()
    assert [d.impath for d in saved["train"]] == [d.impath for d in first.train_x]
    cache.unlink()
    assert items(build(root, shots=3, seed=5).train_x) == items(first.train_x)
    assert items(build(root, shots=3, seed=6).train_x) != items(first.train_x)
    # the class names follow NAME_TYPE even when read from a cache written under another one
    scientific = build(root, shots=3, seed=5, name_type="scientific")
    assert [d.classname for d in scientific.train_x] == [SCIENTIFIC[d.label] for d in first.train_x]
    assert [d.impath for d in scientific.train_x] == [d.impath for d in first.train_x]


def test_cache_folders_encode_release_train_file_carve_and_subset(make_root):
    root = make_root("2021")
    build(root, shots=2)
    build(root, shots=2, version="2021_mini")
    build(root, shots=2, subset_taxa="class=Aves")
    build(root, shots=2, val_per_class=2)
    build(root, shots=2, split_seed=7)
    keys = sorted(os.listdir(release_dir(root, "2021") / "split_fewshot"))
    assert len(keys) == 5, keys
    assert any(k.startswith("2021_mini_train_mini_val4-s1_all_") for k in keys)
    assert any(k.startswith("2021_train_val4-s1_taxa-class=aves_3cls-") for k in keys)
    assert any(k.startswith("2021_train_val2-s1_all_") for k in keys)
    assert any(k.startswith("2021_train_val4-s7_all_") for k in keys)


# --------------------------------------------------------------------------------------------------------
# Held-out val
# --------------------------------------------------------------------------------------------------------
def test_heldout_val_is_fixed_cached_and_independent_of_seed_and_subset(make_root, capsys):
    root = make_root("2018")
    a = build(root, seed=1)
    path = release_dir(root, "2018") / "split_heldout" / "train2018_val4-s1.json"
    assert f'saved it to "{path}"' in capsys.readouterr().out
    saved = load_json(path)
    assert saved["val_per_class"] == 4 and len(saved["heldout"]) == CLASSES
    b = build(root, seed=2)
    assert f'Reading the held-out val split from "{path}"' in capsys.readouterr().out
    assert items(a.val) == items(b.val)
    birds = build(root, subset_taxa="genus=Corvus")
    assert {d.impath for d in birds.val} == {d.impath for d in a.val if d.label in (1, 2)}
    other = build(root, split_seed=2)
    assert {d.impath for d in other.val} != {d.impath for d in a.val}
    assert build(root, val_per_class=0).val == []
    # a carve that no longer fits the JSON is redone, and said so
    saved["heldout"]["0"] = [123456789]
    dump_json(path, saved)
    again = build(root)
    assert "does not match" in capsys.readouterr().out and items(again.val) == items(a.val)


# --------------------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------------------
def test_name_types(make_root, capsys):
    root = make_root("2021")
    assert build(root, name_type="scientific").classnames == SCIENTIFIC
    assert build(root, name_type="common").classnames == COMMON
    out = capsys.readouterr().out
    assert "2 class names were shared and got their scientific name appended" in out
    both = build(root, name_type="both").classnames
    assert both[:2] == ["Mallard (Anas platyrhynchos)", "Common Raven (Corvus corax)"]
    assert both[4] == "Common Daisy (Bellis perennis)"
    # a subset keeps the release-wide disambiguation: the name never depends on the subset
    assert build(root, subset_taxa="genus=Bellis").classnames == ["Common Daisy (Bellis perennis)"]
    capsys.readouterr()
    old = build(make_root("2019"), name_type="common")
    assert old.classnames == SCIENTIFIC
    assert "6 of 6 classes have no common name and use the scientific name" in capsys.readouterr().out
    expect(ConfigError, root, "DATASET.INATURALIST.NAME_TYPE", "latin", name_type="latin")


def test_class_names_helper_disambiguates_by_id_when_names_are_identical():
    meta = [{"category_id": i, "name": "Same name", "common_name": None} for i in (3, 4)]
    names, notes = inat.class_names(meta, "scientific")
    assert names == ["Same name [id 3]", "Same name [id 4]"] and notes


# --------------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------------
def test_subsets_relabel_densely_and_write_the_mapping(make_root, tmp_path):
    root = make_root("2021")
    full = build(root)
    birds = build(root, out=tmp_path / "birds", subset_taxa="supercategory=Birds")
    assert birds.category_ids == BIRDS and birds.classnames == COMMON[:3]
    assert sorted({d.label for d in birds.train_x}) == [0, 1, 2]
    assert len(birds.test) == 3 * VAL_PER_CLASS
    assert {d.impath for d in birds.test} == {d.impath for d in full.test if d.label in BIRDS}
    mapping = load_json(tmp_path / "birds" / inat.MAPPING_FILE)
    assert [(c["label"], c["category_id"], c["classname"]) for c in mapping["classes"]] == \
        [(k, k, COMMON[k]) for k in BIRDS]
    assert mapping["subset"]["taxa"] == "supercategory=Birds" and mapping["classes"][1]["genus"] == "Corvus"

    assert build(root, subset_taxa="class=aves").category_ids == BIRDS  # any rank, case-insensitive
    assert build(root, subset_taxa="genus=Corvus, family=Lacertidae").category_ids == [1, 2, 3]  # union
    plants = build(root, subset_taxa="kingdom=Plantae")
    assert plants.category_ids == [4, 5] and [m["genus"] for m in plants.class_metadata] == ["Bellis", "Tanacetum"]
    assert [d.label for d in plants.test if d.impath == [t for t in full.test if t.label == 5][0].impath] == [1]

    class_file = tmp_path / "classes.txt"
    class_file.write_text("# my classes\n5\nCorvus corone   # scientific\n\nsand lizard\n")
    listed = build(root, subset_class_file=str(class_file))
    assert listed.category_ids == [2, 3, 5]  # label order = category id order, not file order
    both = build(root, subset_class_file=str(class_file), subset_taxa="class=Aves")  # filters intersect
    assert both.category_ids == [2]
    top = build(root, subset_top_n=2)  # odd ids have 9 training images, even ones 8; ties -> smaller id
    assert top.category_ids == [1, 3]
    assert build(root, subset_top_n=2, subset_taxa="kingdom=Plantae").category_ids == [4, 5]


def test_2017_and_2019_subsets_by_supercategory(make_root):
    assert build(make_root("2017"), subset_taxa="supercategory=Aves").category_ids == BIRDS
    assert build(make_root("2019"), subset_taxa="supercategory=Birds").category_ids == BIRDS  # from folders
    assert build(make_root("2019"), subset_taxa="order=Passeriformes").category_ids == [1, 2]


def test_base_and_new_follow_the_subset(make_root, tmp_path):
    root = make_root("2021")
    new = build(root, out=tmp_path / "new", subsample="new", subset_taxa="class=Aves")
    assert new.classnames == [COMMON[2]] and new.category_ids == [2]
    assert [m["name"] for m in new.class_metadata] == ["Corvus corone"]
    mapping = load_json(tmp_path / "new" / inat.MAPPING_FILE)
    assert [(c["label"], c["category_id"]) for c in mapping["classes"]] == [(0, 2)]


@pytest.mark.parametrize("kwargs, error, fragments", [
    ({"subset_taxa": "class=Mammalia"}, DataError, ["empty", "SUBSET_TAXA", "Aves", "Reptilia"]),
    ({"subset_taxa": "tribe=Corvini"}, ConfigError, ["SUBSET_TAXA", "tribe", "genus"]),
    ({"subset_taxa": "Aves"}, ConfigError, ["SUBSET_TAXA", "rank=value"]),
    ({"subset_top_n": -1}, ConfigError, ["SUBSET_TOP_N", ">= 0"]),
    ({"version": "2020"}, ConfigError, ["DATASET.INATURALIST.VERSION", "2020", "2021_mini"]),
    ({"fewer_than_shots": "skip"}, ConfigError, ["FEWER_THAN_SHOTS", "skip"]),
])
def test_bad_subset_and_config_values(make_root, kwargs, error, fragments):
    expect(error, make_root("2021"), *fragments, **kwargs)


def test_rank_missing_from_the_release(make_root):
    expect(ConfigError, make_root("2017"), 'the 2017 categories have no "family"', "supercategory",
           subset_taxa="family=Corvidae")


def test_bad_class_files(make_root, tmp_path):
    root = make_root("2021")
    missing = tmp_path / "nope.txt"
    expect(ConfigError, root, "SUBSET_CLASS_FILE", str(missing), "does not exist", subset_class_file=str(missing))
    bad = tmp_path / "bad.txt"
    bad.write_text("Corvus corax\nCorvus coronae\n999\nCommon Daisy\n")
    message = expect(DataError, root, str(bad), "line 2", 'no category named "Corvus coronae"', "corvus corone",
                     "line 3: no category with id 999", subset_class_file=str(bad))
    assert "line 4" in message and "several categories" in message
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    expect(DataError, root, str(empty), "lists no class", subset_class_file=str(empty))
    reptiles = tmp_path / "reptiles.txt"
    reptiles.write_text("Lacerta agilis\n")
    expect(DataError, root, "empty", str(reptiles), "SUBSET_TAXA", subset_class_file=str(reptiles),
           subset_taxa="class=Aves")


# --------------------------------------------------------------------------------------------------------
# Classes with fewer images than NUM_SHOTS
# --------------------------------------------------------------------------------------------------------
def test_fewer_than_shots_policies(make_root, capsys):
    root = make_root("2021")  # train pools after the carve: 4 images (even ids), 5 (odd ids)
    kept = build(root, shots=5)
    out = capsys.readouterr().out
    assert "3 class(es) have fewer than NUM_SHOTS=5 training images and keep all of them" in out
    counts = np.bincount([d.label for d in kept.train_x])
    assert counts.tolist() == [4, 5, 4, 5, 4, 5]
    dropped = build(root, shots=5, fewer_than_shots="drop")
    assert dropped.category_ids == [1, 3, 5] and len(dropped.train_x) == 15
    assert "removed 3 class(es)" in capsys.readouterr().out
    expect(DataError, root, "3 class(es) have fewer than NUM_SHOTS=5", '0 "Anas platyrhynchos" (4)',
           "FEWER_THAN_SHOTS", shots=5, fewer_than_shots="error")
    expect(DataError, root, "empty", "every class has fewer than NUM_SHOTS=50", shots=50, fewer_than_shots="drop")


# --------------------------------------------------------------------------------------------------------
# Index cache and streaming parser
# --------------------------------------------------------------------------------------------------------
def test_index_cache_is_reused_and_invalidated_when_the_json_changes(make_root, capsys):
    root = make_root("2021")
    folder = release_dir(root, "2021")
    first = build(root)
    out = capsys.readouterr().out
    cache = folder / "index_cache" / "train.json.npz"
    assert f'cached the index in "{cache}"' in out and "no index cache yet" in out
    again = build(root)
    assert f'from "{cache}"' in capsys.readouterr().out
    assert items(again.train_x) == items(first.train_x)

    document = load_json(folder / "train.json")
    document["annotations"][0]["category_id"] = (document["annotations"][0]["category_id"] + 1) % CLASSES
    dump_json(folder / "train.json", document)
    changed = build(root)
    assert "the JSON changed since the index was cached" in capsys.readouterr().out
    assert items(changed.train_x) != items(first.train_x)

    cache.write_bytes(b"garbage")
    build(root)
    assert "index cache unreadable" in capsys.readouterr().out


def test_cache_dir_for_read_only_data(make_root, tmp_path):
    root = make_root("2021")
    cache_dir = tmp_path / "caches"
    ds = build(root, shots=2, cache_dir=str(cache_dir))
    assert (cache_dir / "inaturalist" / "2021" / "index_cache" / "train.json.npz").is_file()
    assert (cache_dir / "inaturalist" / "2021" / "split_fewshot").is_dir()
    assert not (release_dir(root, "2021") / "index_cache").exists()
    assert ds.num_classes == CLASSES


def _reference_pairs(document):
    names = {image["id"]: image["file_name"] for image in document["images"]}
    return [(names[a["image_id"]], a["category_id"]) for a in document["annotations"]]


def test_streaming_parser_matches_json_load_on_awkward_files(tmp_path, monkeypatch):
    images = [{"id": 10 + i, "file_name": f"train/d{i % 3}/ü{i}}}],{{\"x\": [1]}}.jpg", "width": 5,
               "meta": {"nested": {"a": [1, {"b": "}"}]}}, "latitude": float("nan") if i % 2 else 1.5}
              for i in range(40)]
    document = {"annotations": [{"id": i, "image_id": 10 + (i * 7) % 40, "category_id": i % 4} for i in range(40)],
                "info": {"year": 2021, "note": "} ] { ["},
                "categories": [{"id": c, "name": f"Genus species{c}"} for c in range(4)],
                "images": images, "licenses": []}
    path = tmp_path / "awkward.json"
    for indent in (None, 3):
        path.write_text(json.dumps(document, indent=indent))
        for chunk in (7, 64, 1 << 22):  # chunk boundaries everywhere, or none
            monkeypatch.setattr(inat, "_CHUNK_CHARS", chunk)
            index = parse_annotation_file(str(path))
            pairs = [(index.file_name(r), int(index.category_id[r])) for r in range(len(index))]
            assert pairs == _reference_pairs(document), (indent, chunk)
            assert [index.row_image_id(r) for r in range(len(index))] == \
                [a["image_id"] for a in document["annotations"]]
            assert index.info["note"] == "} ] { ["


@pytest.mark.parametrize("text, fragment", [
    ("", "expected a JSON object"),
    ("[1, 2]", "expected a JSON object"),
    ('{"images": [{"id": 1, "file_name": "a/b.jpg"}], "annotations": [', "truncated"),
    ('{"images": [], "annotations": [], "categories": []} trailing', "unexpected data"),
    ('{"images": {}, "annotations": [], "categories": []}', '"images" must be a list'),
    ('{"images": [{"id": "1", "file_name": "a/b.jpg"}], "annotations": [], "categories": []}', "images[0]"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "images[0]"),
    ('{"images": [], "annotations": [{"image_id": 1}], "categories": []}', "annotations[0]"),
    ('{"images": [], "categories": []}', "test file"),
    ('{"images": [], "annotations": []}', "categories"),
    ('{"images": [{"id": 1, "file_name": "a/b.jpg"}, {"id": 1, "file_name": "a/c.jpg"}], '
     '"annotations": [], "categories": []}', "more than once"),
])
def test_malformed_annotation_files(tmp_path, text, fragment):
    path = tmp_path / "train.json"
    path.write_bytes(text.encode())
    with pytest.raises(DataError) as info:
        parse_annotation_file(str(path))
    assert fragment in str(info.value) and str(path) in str(info.value)


# --------------------------------------------------------------------------------------------------------
# Bad input in a release folder: each names the file and says what was expected
# --------------------------------------------------------------------------------------------------------
def _missing_train_json(folder):
    os.remove(folder / "train2018.json")
    return ["train2018.json", "is missing", "train_val2018/", "categories.json"]


def _archived_train_json(folder):
    os.rename(folder / "train2018.json", folder / "train2018.json.tar.gz")
    return ["train2018.json.tar.gz", "extract it"]


def _missing_categories(folder):
    os.remove(folder / "categories.json")
    return ["categories.json", "obfuscated", "categories.json.tar.gz"]


def _wrong_release_json(folder):  # a 2021 file under the 2018 name
    document = load_json(folder / "train2018.json")
    for image in document["images"]:
        image["file_name"] = "train/" + image["file_name"].split("/", 1)[1]
    dump_json(folder / "train2018.json", document)
    return ["train2018.json", "not the iNaturalist 2018 file", "the 2021 train split", "train_val2018/"]


def _test_json_as_val(folder):
    shutil.copyfile(folder / "test2018.json", folder / "val2018.json")
    return ["val2018.json", 'no "annotations"', "test file"]


def _missing_test_image(folder):
    document = load_json(folder / "val2018.json")
    victim = document["images"][4]
    os.remove(folder / victim["file_name"])
    return ["val2018.json", "1 image(s) that do not exist", victim["file_name"], f"image id {victim['id']}"]


def _unknown_category(folder):
    document = load_json(folder / "train2018.json")
    document["annotations"][3]["category_id"] = 4242
    dump_json(folder / "train2018.json", document)
    return ["train2018.json", "annotations[3] -> category_id 4242", 'not in "categories"']


def _unannotated_image(folder):
    document = load_json(folder / "train2018.json")
    lost = document["images"][2]
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != lost["id"]]
    dump_json(folder / "train2018.json", document)
    return ["train2018.json", "no annotation", lost["file_name"]]


def _unknown_image(folder):
    document = load_json(folder / "train2018.json")
    document["annotations"][1]["image_id"] = 7
    dump_json(folder / "train2018.json", document)
    return ["train2018.json", "annotations[1] -> image_id 7", 'not in "images"']


def _val_from_another_release(folder):
    document = load_json(folder / "val2018.json")
    document["categories"] = document["categories"][:-1]
    document["annotations"] = [a for a in document["annotations"] if a["category_id"] != CLASSES - 1]
    keep = {a["image_id"] for a in document["annotations"]}
    document["images"] = [i for i in document["images"] if i["id"] in keep]
    dump_json(folder / "val2018.json", document)
    return ["val2018.json", "train2018.json", "different categories", "same release"]


def _foreign_categories_json(folder):
    categories = load_json(folder / "categories.json")
    dump_json(folder / "categories.json", categories + [{"id": 99, "name": "Extra extra"}])
    return ["categories.json", "not the categories.json of the 2018 release"]


def _torchvision_folder_names(folder):
    os.rename(folder / "train_val2018", folder / "2018")
    return ["train_val2018", "is missing", "torchvision renames", "train_val2018.tar.gz"]


def _truncated_json(folder):
    data = (folder / "train2018.json").read_bytes()
    (folder / "train2018.json").write_bytes(data[: len(data) // 2])
    return ["train2018.json", "truncated"]


@pytest.mark.parametrize("breaker", [
    _missing_train_json, _archived_train_json, _missing_categories, _wrong_release_json, _test_json_as_val,
    _missing_test_image, _unknown_category, _unannotated_image, _unknown_image, _val_from_another_release,
    _foreign_categories_json, _torchvision_folder_names, _truncated_json,
])
def test_bad_release_files(make_root, breaker):
    root = make_root("2018")
    fragments = breaker(release_dir(root, "2018"))
    expect(DataError, root, *fragments, version="2018")


def test_missing_train_image_is_named(make_root):
    root = make_root("2021")
    folder = release_dir(root, "2021")
    victim = load_json(folder / "train.json")["images"][0]["file_name"]
    os.remove(folder / victim)
    expect(DataError, root, "train.json", victim, "do not exist", "extracted")


def test_missing_or_ambiguous_release_folders(make_root, tmp_path, templates):
    expect(DataError, tmp_path / "nowhere", "No iNaturalist release found", "inaturalist/2021/ holding train.json")
    root = make_root("2021")
    expect(DataError, root, "iNaturalist 2018 folder not found", version="2018")
    shutil.copytree(templates / "2019" / "inaturalist" / "2019", root / "inaturalist" / "2019")
    expect(ConfigError, root, "Several iNaturalist releases", "2019", "2021", "DATASET.INATURALIST.VERSION")
    assert build(root, version="2019").version == "2019"
    expect(DataError, release_dir(root, "2021"), "looks like a release folder")
    expect(DataError, root / "inaturalist", "looks like the inaturalist/ folder", "pass its parent")


# --------------------------------------------------------------------------------------------------------
# Config and the fake-data CLI
# --------------------------------------------------------------------------------------------------------
def test_config_defaults_and_yaml_files():
    cfg = engine.get_cfg_default()
    add_inaturalist_config(cfg)
    add_inaturalist_config(cfg)  # idempotent
    node = cfg.DATASET.INATURALIST
    assert (node.VERSION, node.NAME_TYPE, node.VAL_PER_CLASS, node.SPLIT_SEED, node.FEWER_THAN_SHOTS) == \
        ("auto", "common", 4, 1, "keep")
    for name in ("inaturalist.yaml", "inaturalist_birds.yaml"):
        copy = cfg.clone()
        copy.merge_from_file(str(REPO_ROOT / "configs" / "datasets" / name))
        assert copy.DATASET.NAME == "INaturalist"
    assert copy.DATASET.INATURALIST.SUBSET_TAXA == "class=Aves"


def test_fake_dataset_cli(tmp_path, fake_data_module, capsys):
    assert fake_data_module.main(["inaturalist", str(tmp_path), "--version", "2021-mini", "--classes", "2",
                                  "--train-per-class", "2", "--val-per-class", "1", "--image-size", "8"]) == 0
    folder = tmp_path / "inaturalist" / "2021"
    assert sorted(p.name for p in folder.iterdir()) == ["public_test", "public_test.json", "train_mini",
                                                        "train_mini.json", "val", "val.json"]
    names = sorted(os.listdir(folder / "train_mini"))
    assert names == ["00000_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
                     "00001_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corone"]
    assert "annotations" not in load_json(folder / "public_test.json")
    assert fake_data_module.main(["inaturalist", str(tmp_path), "--version", "2021_mini"]) == 2
    assert "--force" in capsys.readouterr().err
    with pytest.raises(UserError):
        fake_data_module.write_fake_inaturalist(tmp_path, "2020")


# --------------------------------------------------------------------------------------------------------
# train.py end to end on a generated subset, tiny CLIP
# --------------------------------------------------------------------------------------------------------
def run_inat_train(args):
    env = dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1")
    proc = subprocess.run([warm_python(), "train.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def inat_train_args(trainer, root, out, weights, extra=(), opts=()):
    args = train_args(trainer, str(root), str(out), weights, extra=extra, opts=opts)
    at = args.index("--dataset-config-file") + 1
    args[at] = str(REPO_ROOT / "configs" / "datasets" / "inaturalist_birds.yaml")
    return args


def test_train_py_coop_and_zeroshot_on_a_generated_subset(templates, tmp_path, tiny_clip):
    root = tmp_path / "data"
    shutil.copytree(templates / "2021", root)
    out = tmp_path / "coop"
    run_inat_train(inat_train_args("CoOp", root, out, tiny_clip, opts=["OPTIM.MAX_EPOCH", "1"]))
    log = (out / "log.txt").read_text()
    assert "Finish training" in log and ACCURACY.search(log.split("Finish training")[-1])
    assert "Classes: 3 of 6 (taxa-class=aves)" in log
    mapping = load_json(out / inat.MAPPING_FILE)
    assert [c["category_id"] for c in mapping["classes"]] == BIRDS
    assert (out / "prompt_learner" / "model.pth.tar-1").is_file()

    proc = run_inat_train(inat_train_args("ZeroshotCLIP", root, tmp_path / "zs", tiny_clip, extra=["--eval-only"],
                                          opts=["DATASET.INATURALIST.NAME_TYPE", "both"]))
    assert "Prompts: ['a photo of a Mallard (Anas platyrhynchos), a type of organism.'" in proc.stdout
    assert ACCURACY.search(proc.stdout)
    assert "Loaded the index of" in proc.stdout  # the CoOp run cached it
