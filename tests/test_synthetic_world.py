"""The generated world, the pretrained tiny CLIP (quick recipe, once per session) and the SyntheticWorld dataset."""
import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import world
from engine.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------
# World


def test_held_out_compositions_keep_every_colour_and_shape_in_pretraining():
    held, seen = world.held_out_compositions(), world.seen_compositions()
    assert len(held) == 20 and len(seen) == 80 and not set(held) & set(seen)
    assert Counter(c for c, _ in seen) == {c: 8 for c in world.COLOURS}
    assert Counter(s for _, s in seen) == {s: 8 for s in world.SHAPES}
    assert len(world.COLOURS) >= 8 and len(world.SHAPES) >= 8 and len(world.BACKGROUNDS) >= 4


def test_render_is_seeded_and_depends_on_the_scene():
    scene = world.Scene("red", "star", "large", "left", "striped")
    a = world.render(scene, 32, np.random.default_rng(5))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, world.render(scene, 32, np.random.default_rng(5)))
    other = world.render(replace(scene, shape="circle"), 32, np.random.default_rng(5))
    assert np.abs(a.astype(int) - other).sum() > 0
    # the object is drawn in its colour: the left half holds far more strongly red pixels than the right
    red = (a[..., 0] > 150) & (a[..., 1] < 100) & (a[..., 2] < 100)
    assert red[:, :16].sum() > 20 and red[:, :16].sum() > 3 * red[:, 16:].sum()


def test_captions_name_a_subset_of_the_scene_and_nothing_else():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = world.sample_scene(rng, world.seen_compositions())
        words = set(world.caption(scene, rng).rstrip(".").split())
        assert words & {scene.colour, scene.shape, scene.size, scene.background, "left", "right", "top",
                        "bottom", "center", "middle"}
        assert not words & (set(world.COLOURS) - {scene.colour})
        assert not words & (set(world.SHAPES) - {scene.shape})


# ---------------------------------------------------------------------------------------------------------
# Pretraining


def test_quick_checkpoint_has_exactly_openai_keys_and_strict_loads(world_clip):
    from open_clip.model import build_model_from_openai_state_dict

    state_dict = torch.load(world_clip, map_location="cpu", weights_only=True)
    assert not [k for k in state_dict if k.startswith("_")]  # no marker key: provenance is in the sidecar
    model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True, cast_dtype=None).float()
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    expected = {k for k in model.state_dict() if k not in ("attn_mask", "logit_bias")}
    assert set(state_dict) == expected
    assert model.visual.image_size in (32, (32, 32)) and state_dict["positional_embedding"].shape[0] == 77
    assert state_dict["token_embedding.weight"].shape[0] == 49408


def test_loader_says_it_is_synthetic_and_zero_shot_beats_chance(world_clip, capsys):
    from trainers.clip import load_clip
    from trainers.clip.pretrain import zero_shot_accuracy

    loaded = load_clip(world_clip)
    out = capsys.readouterr().out
    assert "synthetic pretrained tiny CLIP (not OpenAI CLIP)" in out and "RANDOM WEIGHTS" not in out
    assert loaded.random_weights is False and loaded.input_resolution == 32
    info = loaded.provenance
    assert info["recipe"]["steps"] == 100 and len(info["held_out_compositions"]) == 20
    # quick recipe: far above chance (1/80 and 1/20) already
    assert info["zero_shot"]["seen_80_classes"] > 3 * 100 / 80
    assert info["zero_shot"]["held_out_20_classes"] > 3 * 100 / 20
    # the loaded model gives the sidecar's figure again
    acc = zero_shot_accuracy(loaded.model, world.held_out_compositions(), 32)
    assert acc == pytest.approx(info["zero_shot"]["held_out_20_classes"], abs=1e-6)


def test_cached_file_is_not_rebuilt_and_a_changed_file_loses_its_sidecar(world_clip, tmp_path):
    from trainers.clip.pretrain import is_cached, pretrain_tiny_clip, recipe_for
    from trainers.clip.provenance import read_provenance, sidecar_path

    stamp = os.stat(world_clip).st_mtime_ns
    path, info = pretrain_tiny_clip(world_clip, recipe_for(quick=True), progress=False)
    assert os.stat(world_clip).st_mtime_ns == stamp and info == read_provenance(world_clip)
    assert not is_cached(world_clip, recipe_for(quick=True, seed=1))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(world_clip).read_bytes() + b"\0")
    sidecar_path(copy).write_text(sidecar_path(world_clip).read_text())
    assert read_provenance(copy) is None and not is_cached(copy, recipe_for(quick=True))


def test_pretraining_is_deterministic_for_a_seed():
    from trainers.clip.pretrain import openai_state_dict, recipe_for, train

    tiny = replace(recipe_for(quick=True), steps=2, batch_size=8, layers=1, width=64)
    a, b = (openai_state_dict(train(tiny, progress=False)) for _ in range(2))
    c = openai_state_dict(train(replace(tiny, seed=1), progress=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_cli_reports_a_cached_file(world_clip, capsys):
    from conftest import _load_script

    assert _load_script("pretrain_tiny_clip").main([world_clip, "--quick"]) == 0
    assert "up to date" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# Dataset


def _cfg(root, seed=1, **knobs):
    import datasets
    from engine.config import get_cfg_default

    cfg = get_cfg_default()
    datasets.extend_cfg(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs/datasets/synthetic_world.yaml"))
    cfg.DATASET.ROOT, cfg.SEED = str(root), seed
    small = {"TRAIN_PER_CLASS": 8, "VAL_PER_CLASS": 2, "TEST_PER_CLASS": 4, **knobs}
    cfg.merge_from_list([item for k, v in small.items() for item in (f"DATASET.SYNTHETIC_WORLD.{k}", v)])
    return cfg


def test_dataset_classes_are_compositions_and_new_classes_compose_base_attributes(tmp_path):
    from datasets.synthetic_world import SyntheticWorld, dataset_folder, load_index

    ds = SyntheticWorld(_cfg(tmp_path, NUM_CLASSES=20))
    assert ds.num_classes == 20 and len(ds.train_x) == 160 and len(ds.test) == 80 and len(ds.val) == 40
    pairs = [tuple(name.split()) for name in ds.classnames]
    assert all(p in world.seen_compositions() for p in pairs) and len(set(pairs)) == 20
    base, new = pairs[:10], pairs[10:]
    assert all(c in {b[0] for b in base} and s in {b[1] for b in base} for c, s in new)
    assert not set(base) & set(new)
    folder = dataset_folder(_cfg(tmp_path, NUM_CLASSES=20))
    assert os.path.isfile(os.path.join(folder, "split_synthetic_world.json"))
    images = load_index(folder)["images"]
    assert {info["colour"] + " " + info["shape"] for info in images.values()} == set(ds.classnames)


def test_dataset_modes_are_fixed_hidden_looks_stored_per_image(tmp_path):
    from datasets.synthetic_world import SyntheticWorld, dataset_folder, load_index, mode_of

    cfg = _cfg(tmp_path, NUM_CLASSES=4, NUM_MODES=4, COMPOSITIONS="held_out")
    ds = SyntheticWorld(cfg)
    assert all(world.is_held_out(*name.split()) for name in ds.classnames)
    folder = dataset_folder(cfg)
    index, modes = load_index(folder), mode_of(folder)
    assert Counter(modes[item.impath] for item in ds.train_x) == {m: 8 for m in range(4)}
    for rel, info in index["images"].items():
        look = index["modes"][index["classnames"].index(f"{info['colour']} {info['shape']}")][info["mode"]]
        assert look == [info["size"], info["position"], info["background"]]
    for looks in index["modes"]:
        assert len({look[2] for look in looks}) == 4  # four modes, four different backgrounds


def test_dataset_few_shot_and_base_to_new(tmp_path):
    from datasets.synthetic_world import SyntheticWorld

    cfg = _cfg(tmp_path, NUM_CLASSES=6)
    cfg.DATASET.NUM_SHOTS = 2
    cfg.DATASET.SUBSAMPLE_CLASSES = "new"
    ds = SyntheticWorld(cfg)
    full = SyntheticWorld(_cfg(tmp_path, NUM_CLASSES=6))
    assert ds.classnames == full.classnames[3:] and len(ds.train_x) == 6
    assert Counter(item.label for item in ds.train_x) == {0: 2, 1: 2, 2: 2}


@pytest.mark.parametrize("knob,value,message", [
    ("COMPOSITIONS", "unseen", "DATASET.SYNTHETIC_WORLD.COMPOSITIONS"),
    ("NUM_CLASSES", 21, "DATASET.SYNTHETIC_WORLD.NUM_CLASSES: must be in [2, 20]"),
    ("NUM_MODES", 16, "DATASET.SYNTHETIC_WORLD.NUM_MODES"),
])
def test_dataset_knobs_are_validated_by_name(tmp_path, knob, value, message):
    from datasets.synthetic_world import SyntheticWorld

    knobs = {"COMPOSITIONS": "held_out", knob: value}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SyntheticWorld(_cfg(tmp_path, **knobs))


def test_index_records_settings_and_held_out_flags(tmp_path):
    from datasets.synthetic_world import SyntheticWorld, dataset_folder

    cfg = _cfg(tmp_path, NUM_CLASSES=20, COMPOSITIONS="all", SEED=3)
    SyntheticWorld(cfg)
    with open(os.path.join(dataset_folder(cfg), "index.json")) as f:
        index = json.load(f)
    assert index["settings"]["SEED"] == 3
    assert index["held_out"] == [world.is_held_out(*n.split()) for n in index["classnames"]]
