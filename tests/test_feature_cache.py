"""Image-feature cache (FEATURE_CACHE_*) and the non-finite-loss stop: exactness and behaviour, no timings."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, train_args

MP = "configs/trainers/MixPrompt/vit_b16.yaml"
COOP = "configs/trainers/CoOp/vit_b16_ep50.yaml"


def _eval_outputs(trainer):
    outputs = []
    original = trainer.evaluator.process
    trainer.evaluator.process = lambda output, label: outputs.append(output.clone()) or original(output, label)
    accuracy = trainer.test()
    trainer.evaluator.process = original
    return accuracy, torch.cat(outputs)


@pytest.mark.parametrize("trainer_name, config, node", [("MixPrompt", MP, "MIXPROMPT"), ("CoOp", COOP, "COOP")])
def test_cached_evaluation_is_the_default_and_equals_uncached_bit_for_bit(build_trainer_for, trainer_name, config, node):
    plain_trainer = build_trainer_for(trainer_name, config=config, opts=[f"TRAINER.{node}.FEATURE_CACHE_EVAL", "False"])
    assert plain_trainer.feature_cache is None
    plain = _eval_outputs(plain_trainer)
    cached_trainer = build_trainer_for(trainer_name, config=config)  # FEATURE_CACHE_EVAL True by default
    first = _eval_outputs(cached_trainer)
    encoder_calls = []
    cached_trainer.model.encode_image = lambda image: encoder_calls.append(1)
    second = _eval_outputs(cached_trainer)  # the test images are not encoded again
    assert not encoder_calls
    assert plain[0] == first[0] == second[0]
    assert torch.equal(first[1], plain[1]) and torch.equal(first[1], second[1])


def test_eval_cache_memory_bound(build_trainer_for, capsys):
    """A split over FEATURE_CACHE_EVAL_MAX_MB is not kept: evaluation encodes its images again, same results."""
    trainer = build_trainer_for("CoOp", config=COOP, opts=["TRAINER.COOP.FEATURE_CACHE_EVAL_MAX_MB", "1"])
    trainer.feature_cache.eval_max_bytes = 1  # the tiny test split's features are far below 1 MiB
    first = _eval_outputs(trainer)
    assert "bound TRAINER.COOP.FEATURE_CACHE_EVAL_MAX_MB" in capsys.readouterr().out
    encoder = trainer.model.encode_image
    encoder_calls = []
    trainer.model.encode_image = lambda image: encoder_calls.append(1) or encoder(image)
    second = _eval_outputs(trainer)
    assert encoder_calls and first[0] == second[0] and torch.equal(first[1], second[1])


def test_training_views_loader_matches_the_image_loader(build_trainer_for):
    image_trainer = build_trainer_for("MixPrompt", config=MP)
    trainer = build_trainer_for("MixPrompt", config=MP, opts=["TRAINER.MIXPROMPT.FEATURE_CACHE_VIEWS", "3"])
    loader = trainer.train_loader_x
    assert len(loader) == len(image_trainer.train_loader_x)
    assert loader.features.shape[:2] == (len(trainer.dm.dataset.train_x), 3)
    # three different augmentations per image, each L2-normalised
    assert not torch.allclose(loader.features[:, 0], loader.features[:, 1])
    torch.testing.assert_close(loader.features.norm(dim=-1), torch.ones(loader.features.shape[:2]))
    seen, views = [], set()
    for batch in loader:
        assert batch["features"].shape == (4, loader.features.shape[-1])
        assert torch.equal(batch["label"], loader.labels[batch["index"]])
        for row, index in zip(batch["features"], batch["index"].tolist()):
            views.add(next(v for v in range(3) if torch.equal(loader.features[index, v], row)))
        seen += batch["index"].tolist()
    assert len(seen) == len(set(seen)) == len(loader) * 4  # each image at most once per epoch
    assert views == {0, 1, 2}


def test_feature_cache_folder_is_reused_and_keyed(build_trainer_for, tmp_path, capsys):
    folder = str(tmp_path / "cache")
    opts = ["TRAINER.MIXPROMPT.FEATURE_CACHE_VIEWS", "2", "TRAINER.MIXPROMPT.FEATURE_CACHE_EVAL", "True",
            "TRAINER.MIXPROMPT.FEATURE_CACHE_DIR", folder]
    first = build_trainer_for("MixPrompt", config=MP, opts=opts)
    first.test()
    files = sorted(os.listdir(folder))
    assert len(files) == 3  # training views, training images (test transform), test images
    capsys.readouterr()
    second = build_trainer_for("MixPrompt", config=MP, opts=opts + ["TRAINER.MIXPROMPT.K", "3"])
    second.test()
    out = capsys.readouterr().out
    assert out.count("loaded from the cache") == 3 and "encoding once" not in out
    assert torch.equal(first.train_loader_x.features, second.train_loader_x.features)
    assert sorted(os.listdir(folder)) == files
    # other views or another seed make other training views; the evaluation features are shared
    build_trainer_for("MixPrompt", config=MP, opts=opts[:1] + ["3"] + opts[2:])
    assert len(os.listdir(folder)) == 4


@pytest.mark.parametrize("opts, key", [
    (["TRAINER.COOP.FEATURE_CACHE_VIEWS", "-1"], r"TRAINER\.COOP\.FEATURE_CACHE_VIEWS"),
    (["TRAINER.COOP.FEATURE_CACHE_DIR", "/tmp/features", "TRAINER.COOP.FEATURE_CACHE_EVAL", "False"],
     r"TRAINER\.COOP\.FEATURE_CACHE_DIR is set but nothing"),
    (["TRAINER.COOP.FEATURE_CACHE_EVAL_MAX_MB", "0"], r"TRAINER\.COOP\.FEATURE_CACHE_EVAL_MAX_MB: must be"),
])
def test_bad_cache_settings_are_refused_naming_the_key(build_trainer_for, opts, key):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        build_trainer_for("CoOp", config=COOP, opts=opts)


def _train(args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True)


def test_train_py_with_cached_training_views(tiny_clip, cars_root, tmp_path):
    out = str(tmp_path / "run")
    result = _train(train_args("MixPrompt", cars_root, out, tiny_clip, config=MP, opts=[
        "TRAINER.MIXPROMPT.K", "3", "TRAINER.MIXPROMPT.FEATURE_CACHE_VIEWS", "2",
        "TRAINER.MIXPROMPT.FEATURE_CACHE_EVAL", "True"]))
    assert result.returncode == 0, result.stderr[-2000:]
    log = open(os.path.join(out, "log.txt")).read()
    assert "2 augmented views of 16 training images" in log
    assert "* accuracy:" in log and os.path.isfile(os.path.join(out, "prompt_learner", "model.pth.tar-2"))


def test_non_finite_loss_stops_naming_step_terms_and_causes(tiny_clip, cars_root, tmp_path):
    out = str(tmp_path / "run")
    result = _train(train_args("MixPrompt", cars_root, out, tiny_clip, config=MP, opts=[
        "TRAINER.MIXPROMPT.SIM_SCALE", "1e38", "TRAINER.MIXPROMPT.INIT", "random",
        "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002"]))  # SGD's step grows with the gradient (Adam's would not)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert "at epoch 1, batch" in error[0] and "loss_cls" in error[0] and "SIM_SCALE" in error[0]
    assert "OPTIM.LR" in error[0]


def test_encoding_features_leaves_the_global_rng_alone(build_trainer_for):
    """A run's batch order must not depend on whether its features were encoded or read from a cache: the
    encoding draws nothing from the global RNG (it did: the DataLoader's worker seed, even unshuffled)."""
    from trainers.features import compute_image_features

    trainer = build_trainer_for("CoOp")
    torch.manual_seed(123)
    compute_image_features(trainer.model, trainer.dm.dataset.test, trainer.cfg, trainer.device)
    after_encoding = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_encoding)
