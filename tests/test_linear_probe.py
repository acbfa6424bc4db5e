"""Linear-probe CLIP: the logistic regression and its C search on generated features (no CLIP), then
train.py, --eval-only, the script and the comparison table on generated Stanford Cars with the tiny CLIP."""
import json
import os
import re
import subprocess

import pytest
import torch
import yaml

from conftest import REPO_ROOT, bash, final_accuracy, run_train, skip_line, train_args, warm_python

from trainers.linear_probe import evaluate_head, fit_logistic, search_c, stratified_folds

ACCURACY = re.compile(r"\* accuracy: ([\d.]+)%")
CONFIG = "configs/trainers/LinearProbeCLIP/vit_b16.yaml"


def blobs(n_per_class, seed, classes=5, dim=16):
    """Well separated Gaussian clusters, L2-normalised like CLIP features."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + 0.3 * torch.randn(len(y), dim, generator=g)
    return torch.nn.functional.normalize(x, dim=-1), y


def nuisance(n, seed):
    """Two classes told apart only by x2 - x1: a shared high-variance nuisance hides the mean difference, so
    a strongly regularised fit (weights ~ class-mean direction) is near chance and a weak one is perfect."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 2, (n,), generator=g)
    noise = torch.randn(n, generator=g) * 3
    extra = torch.randn(n, 6, generator=g)
    x = torch.stack([noise, noise + 0.2 * (2 * s - 1).float()], dim=1)
    return torch.cat([x, extra], dim=1), s


def test_separable_features_are_classified_perfectly():
    x, y = blobs(8, seed=1)
    xv, yv = blobs(4, seed=2)
    xt, yt = blobs(20, seed=3)
    c, val_acc, history = search_c(lambda c: evaluate_head(fit_logistic(x, y, 5, c), xv, yv), -6, 6, 7, 3,
                                   log=lambda *_: None)
    assert val_acc == 100.0 and len(history) >= 7
    head = fit_logistic(x, y, 5, c)
    assert evaluate_head(head, x, y)[0] == 100.0
    assert evaluate_head(head, xt, yt)[0] == 100.0
    again = fit_logistic(x, y, 5, c)  # deterministic
    assert torch.equal(head.weight, again.weight) and torch.equal(head.bias, again.bias)


def test_search_prefers_weak_regularisation_when_it_helps():
    x, y = nuisance(200, seed=1)
    xv, yv = nuisance(100, seed=2)
    xt, yt = nuisance(400, seed=3)
    lines = []
    c, val_acc, history = search_c(lambda c: evaluate_head(fit_logistic(x, y, 2, c), xv, yv), -6, 6, 7, 4,
                                   log=lines.append)
    strong = evaluate_head(fit_logistic(x, y, 2, 1e-6), xt, yt)[0]
    assert strong < 75  # the data make strong regularisation fail ...
    assert c >= 1 and val_acc >= 98  # ... so the search must move to weak regularisation
    assert evaluate_head(fit_logistic(x, y, 2, c), xt, yt)[0] >= 98
    assert len(lines) == len(history) and all("val accuracy" in line for line in lines)
    assert [h[0] for h in history[:7]] == pytest.approx([10.0 ** e for e in (-6, -4, -2, 0, 2, 4, 6)])


def test_stratified_folds_spread_each_class():
    y = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    assert stratified_folds(y, 3).tolist() == [0, 1, 2, 0, 1, 2, 0, 0]


@pytest.mark.parametrize("key,value", [("COARSE_STEPS", "1"), ("C_MIN_LOG10", "7.0"), ("FOLDS", "1")])
def test_bad_settings_name_the_key(build_trainer_for, key, value):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=f"TRAINER.LINEAR_PROBE.{key}"):
        build_trainer_for("LinearProbeCLIP", opts=[f"TRAINER.LINEAR_PROBE.{key}", value], config=CONFIG)


def test_train_logs_the_search_and_eval_only_reproduces_it(tiny_clip, cars_root, tmp_path):
    out = str(tmp_path / "lp")
    run_train(train_args("LinearProbeCLIP", cars_root, out, tiny_clip, config=CONFIG,
                         opts=["TRAINER.LINEAR_PROBE.REFINE_STEPS", "2"]))
    log = open(os.path.join(out, "log.txt")).read()
    assert len(re.findall(r"\[linear probe\] coarse C=\S+ .*: val accuracy [\d.]+%", log)) == 7
    assert "[linear probe] refine 2/2" in log and "refitting on the train split only" in log
    assert "Computing frozen image features of the train split (16 images)" in log  # 4 shots x 4 classes
    assert log.count("Computing frozen image features of the test split") == 1  # cached, encoded once
    assert "Finish training" in log and "=> result" in log.split("Finish training")[1]
    accuracy = final_accuracy(log)
    ckpt = torch.load(os.path.join(out, "linear_head", "model.pth.tar-1"), weights_only=True)
    assert set(ckpt["state_dict"]) == {"weight", "bias", "mean", "std"}
    assert os.path.isfile(os.path.join(out, "linear_head", "model-best.pth.tar"))

    for extra in ([], ["--load-epoch", "1"]):
        proc = run_train(train_args("LinearProbeCLIP", cars_root, str(tmp_path / f"eval{len(extra)}"), tiny_clip,
                                    config=CONFIG, extra=["--eval-only", "--model-dir", out, *extra]))
        assert f'Loading weights to linear_head from "{out}/linear_head/' in proc.stdout
        assert "[linear probe]" not in proc.stdout  # nothing refitted
        assert float(ACCURACY.findall(proc.stdout)[-1]) == accuracy


def test_script_runs_skips_and_the_table_lists_the_probe(cars_root, tiny_clip, tmp_path):
    out = tmp_path / "output"
    env = {"DATA": cars_root, "OUTPUT": str(out), "SHOTS": "4", "SEEDS": "1 2"}
    opts = ["MODEL.BACKBONE.NAME", tiny_clip, "DATALOADER.NUM_WORKERS", "0", "TRAINER.LINEAR_PROBE.REFINE_STEPS", "1"]
    proc = bash(["scripts/linear_probe/main.sh", "stanford_cars"], opts, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'SHOTS=4 SEEDS="1 2" CFG=vit_b16' in proc.stdout
    runs = [out / "stanford_cars" / "LinearProbeCLIP" / "vit_b16_4shots" / f"seed{s}" for s in (1, 2)]
    for seed, run in enumerate(runs, start=1):
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["TRAINER"]["NAME"] == "LinearProbeCLIP" and config["SEED"] == seed
        assert config["TRAINER"]["LINEAR_PROBE"]["REFINE_STEPS"] == 1  # extra opts reach train.py
    again = bash(["scripts/linear_probe/main.sh", "stanford_cars"], opts, **env)
    assert again.returncode == 0 and all(skip_line(run) in again.stdout for run in runs)
    refused = bash(["scripts/linear_probe/main.sh", "stanford_cars"], ["DATASET.NUM_SHOTS", "2"], **env)
    assert refused.returncode == 2 and "SHOTS=" in refused.stderr

    zs = bash(["scripts/zsclip/zeroshot.sh", "stanford_cars"], ["MODEL.BACKBONE.NAME", tiny_clip,
                                                                 "DATALOADER.NUM_WORKERS", "0"], **env)
    assert zs.returncode == 0, zs.stderr[-3000:]
    table = subprocess.run([warm_python(), "scripts/parse_results.py", str(out), "--format", "json"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    groups = {g["method"]: g for g in json.loads(table)}
    assert set(groups) == {"ZeroshotCLIP", "LinearProbeCLIP"}
    probe = groups["LinearProbeCLIP"]
    assert (probe["dataset"], probe["shots"], probe["config"], probe["seeds"]) == ("StanfordCars", 4, "vit_b16", [1, 2])
    assert probe["mean"] == pytest.approx(sum(final_accuracy((r / "log.txt").read_text()) for r in runs) / 2)
    text = subprocess.run([warm_python(), "scripts/parse_results.py", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert "LinearProbeCLIP" in text and "ZeroshotCLIP" in text
