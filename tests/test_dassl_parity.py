"""The engine seam (engine/__init__.py): train.py gives the same results on real Dassl as on the built-in engine.

Runs ``train.py`` in subprocesses with ``MIXPROMPT_ENGINE=dassl`` and ``MIXPROMPT_ENGINE=builtin`` (same
interpreter), each engine on its own copy of one generated Stanford Cars root, so that each builds its own
split JSON and few-shot cache from the same seed. The whole module is skipped where Dassl cannot be imported
(the project's own venv has no Dassl).
"""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch

dassl = pytest.importorskip("dassl", reason="Dassl.pytorch is not importable here; parity needs both engines")

from conftest import REPO_ROOT, train_args  # noqa: E402

RESULT = re.compile(r"=> result\n((?:\* [a-z_0-9]+: .*\n)+)")
ACCURACY = re.compile(r"\* accuracy: ([\d.]+)%")
FEWSHOT = os.path.join("stanford_cars", "split_fewshot", "shot_4-seed_1.pkl")
SPLIT = os.path.join("stanford_cars", "split_zhou_StanfordCars.json")
CKPT = os.path.join("prompt_learner", "model.pth.tar-{}")


def run_train(engine, args, check=True):
    env = dict(os.environ, MIXPROMPT_ENGINE=engine, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py ({engine}) failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def final_result(text):
    """The last evaluation block (total, correct, accuracy, error, macro_f1) as text."""
    blocks = RESULT.findall(text)
    assert blocks, f"no evaluation result in:\n{text[-2000:]}"
    return blocks[-1]


def ctx_at(out, epoch):
    return torch.load(os.path.join(out, CKPT.format(epoch)), weights_only=True)["state_dict"]["ctx"]


class _AnyDatum:
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Reads a few-shot cache whichever engine's Datum class it names, into plain attribute bags."""

    def find_class(self, module, name):
        if name == "Datum":
            return _AnyDatum
        return super().find_class(module, name)


def fewshot_subsets(root):
    """{"train"/"val": [(path relative to the dataset folder, label, domain, classname), ...]} in order."""
    with open(os.path.join(root, FEWSHOT), "rb") as f:
        data = _PlainUnpickler(f).load()
    prefix = os.path.join(os.path.abspath(root), "stanford_cars") + os.sep
    out = {}
    for split, items in data.items():
        rows = []
        for item in items:
            d = item.__dict__
            assert d["_impath"].startswith(prefix), d["_impath"]
            rows.append((d["_impath"][len(prefix):], d["_label"], d["_domain"], d["_classname"]))
        out[split] = rows
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fake_data_module, tiny_clip):
    """One short seeded CoOp run per engine (checkpoint every epoch), each on its own copy of the data."""
    base = tmp_path_factory.mktemp("parity")
    pristine = base / "pristine"
    fake_data_module.write_fake_stanford_cars(pristine, classes=4, train_per_class=6, test_per_class=3, seed=0,
                                              image_size=32)
    result = {"base": base, "weights": tiny_clip}
    for engine in ("builtin", "dassl"):
        root = str(base / f"data_{engine}")
        shutil.copytree(pristine, root)
        out = str(base / f"coop_{engine}")
        proc = run_train(engine, train_args("CoOp", root, out, tiny_clip, opts=["TRAIN.CHECKPOINT_FREQ", "1"]))
        result[engine] = {"root": root, "out": out, "stdout": proc.stdout}
    return result


def test_each_engine_is_the_one_requested(runs):
    assert "Engine: builtin" in runs["builtin"]["stdout"]
    assert "Engine: dassl" in runs["dassl"]["stdout"]
    # Dassl pickles its own Datum class into the cache: the Dassl run really used Dassl's DatasetBase
    with open(os.path.join(runs["dassl"]["root"], FEWSHOT), "rb") as f:
        assert b"dassl.data.datasets.base_dataset" in f.read()


def test_split_and_fewshot_subsets_are_identical_for_the_same_seed(runs):
    b, d = runs["builtin"], runs["dassl"]
    with open(os.path.join(b["root"], SPLIT)) as fb, open(os.path.join(d["root"], SPLIT)) as fd:
        assert json.load(fb) == json.load(fd)  # paths in split files are relative to the dataset folder
    subsets_b, subsets_d = fewshot_subsets(b["root"]), fewshot_subsets(d["root"])
    assert set(subsets_b) == {"train", "val"}
    assert [len(v) for v in subsets_b.values()] == [16, 4]  # 4 classes x 4 shots; val min(4, 1 per class)
    assert subsets_b == subsets_d


def test_coop_run_is_identical_on_both_engines(runs):
    b, d = runs["builtin"], runs["dassl"]
    log_b, log_d = b["stdout"], d["stdout"]
    assert "Finish training" in log_d
    train_lines = [[re.sub(r"time \S+ \(\S+\) data \S+ \(\S+\) ", "", line).rsplit(" eta ", 1)[0]
                    for line in log.splitlines() if line.startswith("epoch [")] for log in (log_b, log_d)]
    assert train_lines[0] and train_lines[0] == train_lines[1]  # same losses, accuracies and lr per batch
    assert final_result(log_b) == final_result(log_d)
    for epoch in (1, 2):
        assert torch.equal(ctx_at(b["out"], epoch), ctx_at(d["out"], epoch))


def test_eval_only_on_dassl_reproduces_the_final_test(runs):
    d = runs["dassl"]
    proc = run_train("dassl", train_args("CoOp", d["root"], str(runs["base"] / "eval_dassl"), runs["weights"],
                                         extra=["--eval-only", "--model-dir", d["out"], "--load-epoch", "2"]))
    assert f'Loading weights to prompt_learner from "{d["out"]}/prompt_learner/model.pth.tar-2"' in proc.stdout
    assert final_result(proc.stdout) == final_result(d["stdout"])


def test_builtin_reads_dassl_cache_and_checkpoints(runs):
    """The built-in engine loads a cache pickled with Dassl's Datum and a checkpoint saved under Dassl."""
    d = runs["dassl"]
    proc = run_train("builtin", train_args("CoOp", d["root"], str(runs["base"] / "eval_cross"), runs["weights"],
                                           extra=["--eval-only", "--model-dir", d["out"], "--load-epoch", "2"]))
    assert "Loading preprocessed few-shot data from" in proc.stdout
    assert final_result(proc.stdout) == final_result(d["stdout"])


def test_dassl_resume_after_an_interruption_ends_like_the_uninterrupted_run(runs):
    """Emulate a run killed after epoch 1 (latest checkpoint epoch 1), then re-run into the same folder."""
    d = runs["dassl"]
    out = str(runs["base"] / "resume_dassl")
    shutil.copytree(d["out"], out, ignore=shutil.ignore_patterns("log.txt*", "tensorboard"))
    os.remove(os.path.join(out, CKPT.format(2)))
    with open(os.path.join(out, "prompt_learner", "checkpoint"), "w") as f:
        f.write("model.pth.tar-1\n")
    proc = run_train("dassl", train_args("CoOp", d["root"], out, runs["weights"], opts=["TRAIN.CHECKPOINT_FREQ", "1"]))
    assert "Found checkpoint at" in proc.stdout and "Previous epoch: 1" in proc.stdout
    assert "epoch [1/2]" not in proc.stdout and "epoch [2/2]" in proc.stdout
    assert torch.equal(ctx_at(out, 2), ctx_at(d["out"], 2))
    assert final_result(proc.stdout) == final_result(d["stdout"])


def test_misspelt_trainer_is_a_one_paragraph_error_on_dassl(runs, tmp_path):
    proc = run_train("dassl", train_args("CoOpp", runs["dassl"]["root"], str(tmp_path / "bad"), runs["weights"]),
                     check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'ERROR: TRAINER.NAME: "CoOpp" is not one of' in proc.stderr and "Traceback" not in proc.stderr
