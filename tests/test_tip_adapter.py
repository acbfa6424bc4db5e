"""Tip-Adapter and Tip-Adapter-F: the published logits, what is learnt, and the run through every tool."""
import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, bash, final_accuracy, skip_line, warm_python

CONFIG = "configs/trainers/TipAdapter/vit_b16.yaml"


def _published_logits(f, w, keys, labels, num_classes, alpha, beta):
    """Tip-Adapter's equation, in float64 numpy: 100 f W^T + alpha exp(-beta (1 - f K^T)) L."""
    f, w, keys = (np.asarray(t, dtype=np.float64) for t in (f, w, keys))
    values = np.eye(num_classes)[np.asarray(labels)]
    return 100.0 * f @ w.T + alpha * np.exp(-beta * (1.0 - f @ keys.T)) @ values


def test_logits_are_the_published_formula_on_the_cache_of_the_training_images(build_trainer_for):
    from engine.data.manager import read_image
    from engine.data.transforms import build_transform

    trainer = build_trainer_for("TipAdapter", config=CONFIG, opts=[
        "TRAINER.TIPADAPTER.AUGMENT_VIEWS", "0", "TRAINER.TIPADAPTER.ALPHA", "1.7",
        "TRAINER.TIPADAPTER.BETA", "3.5"])
    model = trainer.model
    transform = build_transform(trainer.cfg, is_train=False, verbose=False)

    def encode(items):
        with torch.no_grad():
            return model.encode_image(torch.stack([transform(read_image(d.impath)) for d in items])).float()

    train_x = trainer.dm.dataset.train_x
    keys = encode(train_x)  # the cache built independently: every training image, test transform
    assert torch.allclose(model.adapter.keys, keys, atol=1e-5)
    assert not model.adapter.keys.requires_grad and trainer.get_model_names() == []  # nothing to train

    test = trainer.dm.dataset.test[:8]
    images = torch.stack([transform(read_image(d.impath)) for d in test])
    with torch.no_grad():
        got = trainer.model_inference(images).double().numpy()
        text = model.text_features()
    want = _published_logits(encode(test), text, keys, [d.label for d in train_x], trainer.num_classes, 1.7, 3.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    cache_part = want - 100.0 * encode(test).double().numpy() @ text.double().numpy().T
    assert np.abs(cache_part).max() > 0.1  # the cache term really contributes


def test_tip_adapter_f_learns_the_cache_keys_only(build_trainer_for):
    trainer = build_trainer_for("TipAdapter", config=CONFIG, opts=[
        "TRAINER.TIPADAPTER.FINETUNE", "True", "TRAINER.TIPADAPTER.AUGMENT_VIEWS", "2"])
    learnable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert learnable == ["prompt_learner.keys"] and trainer.get_model_names() == ["prompt_learner"]
    before = {k: v.clone() for k, v in trainer.model.prompt_learner.state_dict().items()}
    batch = next(iter(trainer.train_loader_x))
    trainer.batch_idx, trainer.num_batches, trainer.epoch = 0, len(trainer.train_loader_x), 0
    trainer.forward_backward(batch)
    after = trainer.model.prompt_learner.state_dict()
    assert not torch.equal(before["keys"], after["keys"])
    assert all(torch.equal(before[k], after[k]) for k in ("values", "alpha", "beta"))


@pytest.mark.parametrize("key, value", [("ALPHA", "-1.0"), ("AUGMENT_VIEWS", "-2"), ("SEARCH_STEPS", "(0, 3)"),
                                        ("SEARCH_SCALE", "(7.0,)")])
def test_bad_settings_name_the_key(build_trainer_for, key, value):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=f"TRAINER.TIPADAPTER.{key}"):
        build_trainer_for("TipAdapter", config=CONFIG, opts=[f"TRAINER.TIPADAPTER.{key}", value])


def test_search_grid_is_the_published_one():
    from trainers.tip_adapter import search_grid

    assert search_grid(3.0, 4) == pytest.approx([0.1, 0.825, 1.55, 2.275])


def test_script_sweep_and_parse_results_run_both_variants(cars_root, tiny_clip, tmp_path):
    out = tmp_path / "output"
    env = {"DATA": cars_root, "OUTPUT": str(out), "SHOTS": "4", "SEEDS": "1"}
    opts = ["MODEL.BACKBONE.NAME", tiny_clip, "DATALOADER.NUM_WORKERS", "0", "TRAINER.TIPADAPTER.AUGMENT_VIEWS", "2",
            "TRAINER.TIPADAPTER.SEARCH_STEPS", "(4, 4)", "OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8"]
    base = out / "stanford_cars" / "TipAdapter" / "vit_b16_4shots"
    runs = {}
    for finetune, folder in (("False", "tip"), ("True", "tip_f")):
        proc = bash(["scripts/tip_adapter/main.sh", "stanford_cars"], opts, FINETUNE=finetune, **env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"FINETUNE={finetune}" in proc.stdout
        runs[folder] = base / folder / "seed1"
        log = (runs[folder] / "log.txt").read_text()
        assert "Tip-Adapter cache: 16 keys" in log and final_accuracy(log) is not None
        assert ("epoch [2/2]" in log) == (finetune == "True")  # only Tip-Adapter-F trains
    again = bash(["scripts/tip_adapter/main.sh", "stanford_cars"], opts, FINETUNE="True", **env)
    assert again.returncode == 0 and skip_line(runs["tip_f"]) in again.stdout
    refused = bash(["scripts/tip_adapter/main.sh", "stanford_cars"], ["TRAINER.TIPADAPTER.FINETUNE", "True"], **env)
    assert refused.returncode == 2 and "FINETUNE=" in refused.stderr
    table = subprocess.run([warm_python(), "scripts/parse_results.py", str(out), "--format", "json"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    groups = [g for g in json.loads(table) if g["method"] == "TipAdapter"]
    assert len(groups) == 2 and {g["shots"] for g in groups} == {4}
    means = sorted(g["mean"] for g in groups)
    logged = sorted(final_accuracy((r / "log.txt").read_text()) for r in runs.values())  # printed to 0.1
    assert means == pytest.approx(logged, abs=0.05)
