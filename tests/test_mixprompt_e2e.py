"""MixPrompt through train.py: the original settings collapse on data with several modes per class, the
fixed defaults do not; diagnostics are logged per epoch and summarised; every variant trains."""
import json
import os

import pytest

from conftest import ACCURACY, run_train, train_args

MP, ORIGINAL = "configs/trainers/MixPrompt/vit_b16.yaml", "configs/trainers/MixPrompt/original.yaml"


@pytest.fixture(scope="module")
def modes_root(tmp_path_factory, fake_data_module):
    """4 classes, each drawn in 4 distinct looks (swapped colours, grey quadrant)."""
    root = tmp_path_factory.mktemp("modes")
    fake_data_module.write_fake_stanford_cars(root, classes=4, train_per_class=20, test_per_class=4, seed=0,
                                              image_size=32, modes=4)
    return str(root)


def _run(config, root, out, weights, epochs="12", opts=()):
    args = train_args("MixPrompt", root, out, weights, config=config, opts=[
        "DATASET.NUM_SHOTS", "16", "OPTIM.MAX_EPOCH", epochs, "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
        "TRAINER.MIXPROMPT.K", "4", *opts])
    return run_train(args)


def _epochs(out):
    with open(os.path.join(out, "diagnostics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_original_settings_collapse_and_fixed_defaults_do_not(modes_root, tiny_clip, tmp_path):
    original, fixed = str(tmp_path / "original"), str(tmp_path / "fixed")
    _run(ORIGINAL, modes_root, original, tiny_clip)
    _run(MP, modes_root, fixed, tiny_clip)
    orig_epochs, fixed_epochs = _epochs(original), _epochs(fixed)
    assert [d["epoch"] for d in orig_epochs] == list(range(1, 13))  # one object per epoch
    last_orig, last_fixed = orig_epochs[-1], fixed_epochs[-1]
    # the collapse signature: one sub-prompt takes a class's images, the others are dead
    assert last_orig["collapsed"] and last_orig["top1_share"] > 0.9 and last_orig["eff_k"] < 1.3
    assert not last_fixed["collapsed"] and last_fixed["eff_k"] > 2.0 and last_fixed["top1_share"] < 0.75
    summary = json.load(open(os.path.join(fixed, "diagnostics_summary.json")))
    assert summary["eff_k"] == pytest.approx(last_fixed["eff_k"])
    log = open(os.path.join(fixed, "log.txt")).read()
    assert "=> collapse diagnostics (training images)" in log
    assert "epoch [12/12] collapse K 4" in log

    proc = run_train(train_args("MixPrompt", modes_root, str(tmp_path / "eval"), tiny_clip, config=MP, extra=[
        "--eval-only", "--model-dir", fixed, "--load-epoch", "12"], opts=["TRAINER.MIXPROMPT.K", "4", "DATASET.NUM_SHOTS", "16"]))
    assert float(ACCURACY.findall(proc.stdout)[-1]) == float(ACCURACY.findall(log.split("Finish training")[-1])[-1])
    assert "=> collapse diagnostics (training images)" in proc.stdout
    assert f"eff_k {last_fixed['eff_k']:.3f}" in proc.stdout


@pytest.mark.parametrize("opts", [
    ["TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.INIT", "random"],
    ["TRAINER.MIXPROMPT.SCOPE", "shared"],
    ["TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.INIT", "random", "TRAINER.MIXPROMPT.SCOPE",
     "shared", "TRAINER.MIXPROMPT.BALANCE", "marginal_entropy"],
], ids=["token-class", "feature-shared", "token-shared"])
def test_offset_spaces_and_scopes_train_and_evaluate(opts, cars_root, tiny_clip, tmp_path):
    out = str(tmp_path / "run")
    proc = run_train(train_args("MixPrompt", cars_root, out, tiny_clip, config=MP,
                                opts=["TRAINER.MIXPROMPT.K", "3", *opts]))
    assert ACCURACY.search(proc.stdout.split("Finish training")[-1])
    assert len(_epochs(out)) == 2
    assert os.path.isfile(os.path.join(out, "prompt_learner", "model.pth.tar-2"))


def test_shared_scope_trained_on_base_classes_evaluates_on_new_ones(cars_root, tiny_clip, tmp_path):
    base = str(tmp_path / "base")
    shared = ["TRAINER.MIXPROMPT.K", "2", "TRAINER.MIXPROMPT.SCOPE", "shared", "TRAINER.MIXPROMPT.BALANCE",
              "marginal_entropy"]
    run_train(train_args("MixPrompt", cars_root, base, tiny_clip, config=MP,
                         opts=shared + ["DATASET.SUBSAMPLE_CLASSES", "base"]))
    proc = run_train(train_args("MixPrompt", cars_root, str(tmp_path / "new"), tiny_clip, config=MP, extra=[
        "--eval-only", "--model-dir", base, "--load-epoch", "2"], opts=shared + ["DATASET.SUBSAMPLE_CLASSES", "new"]))
    assert "SUBSAMPLE NEW CLASSES!" in proc.stdout
    assert ACCURACY.search(proc.stdout)
