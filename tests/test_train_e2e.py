"""train.py end to end, as users run it: CoOp and ZeroshotCLIP on generated Stanford Cars, tiny CLIP."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ACCURACY, REPO_ROOT, final_accuracy, run_train, train_args

def newest_log(out):
    return max(glob.glob(os.path.join(out, "log.txt*")), key=os.path.getmtime)


def test_coop_trains_logs_checkpoints_and_evaluates(tiny_clip, cars_root, tmp_path):
    out = str(tmp_path / "coop")
    run_train(train_args("CoOp", cars_root, out, tiny_clip))
    log = open(os.path.join(out, "log.txt")).read()
    assert "Finish training" in log and ACCURACY.search(log.split("Finish training")[-1])
    assert "WARNING: RANDOM WEIGHTS" in log
    assert os.path.isfile(os.path.join(out, "prompt_learner", "model.pth.tar-2"))
    assert open(os.path.join(out, "prompt_learner", "checkpoint")).read().strip() == "model.pth.tar-2"
    assert glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    ckpt = torch.load(os.path.join(out, "prompt_learner", "model.pth.tar-2"), weights_only=True)
    assert set(ckpt["state_dict"]) == {"ctx"}  # fixed token buffers are not saved

    eval_out = str(tmp_path / "coop_eval")
    proc = run_train(train_args("CoOp", cars_root, eval_out, tiny_clip,
                                extra=["--eval-only", "--model-dir", out, "--load-epoch", "2"]))
    assert f'Loading weights to prompt_learner from "{out}/prompt_learner/model.pth.tar-2"' in proc.stdout
    assert float(ACCURACY.findall(proc.stdout)[-1]) == final_accuracy(log)


def test_interrupted_then_resumed_run_ends_like_an_uninterrupted_one(tiny_clip, cars_root, tmp_path):
    opts = ["OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "1"]
    full = str(tmp_path / "full")
    run_train(train_args("CoOp", cars_root, full, tiny_clip, opts=opts))

    cut = str(tmp_path / "cut")
    env = dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "train.py", *train_args("CoOp", cars_root, cut, tiny_clip, opts=opts)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(cut, "prompt_learner", "model.pth.tar-1")
    deadline = time.time() + 240
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = sorted(os.listdir(os.path.join(cut, "prompt_learner")))
    assert "model.pth.tar-4" not in killed_at, "the run finished before it could be interrupted"

    resumed = run_train(train_args("CoOp", cars_root, cut, tiny_clip, opts=opts))
    assert "Found checkpoint at" in resumed.stdout and "Previous epoch:" in resumed.stdout
    assert final_accuracy(resumed.stdout) == final_accuracy(open(os.path.join(full, "log.txt")).read())
    a = torch.load(os.path.join(full, "prompt_learner", "model.pth.tar-4"), weights_only=True)["state_dict"]
    b = torch.load(os.path.join(cut, "prompt_learner", "model.pth.tar-4"), weights_only=True)["state_dict"]
    assert torch.equal(a["ctx"], b["ctx"])


def test_a_run_killed_before_its_first_checkpoint_trains_from_scratch(tiny_clip, cars_root, tmp_path):
    out = tmp_path / "killed"
    (out / "prompt_learner").mkdir(parents=True)  # the model folder exists, no checkpoint was written yet
    proc = run_train(train_args("CoOp", cars_root, str(out), tiny_clip, opts=["OPTIM.MAX_EPOCH", "1"]))
    assert "No checkpoint found, train from scratch" in proc.stdout and "Finish training" in proc.stdout


def test_zeroshot_clip_eval_only_and_train(tiny_clip, cars_root, tmp_path):
    proc = run_train(train_args("ZeroshotCLIP", cars_root, str(tmp_path / "zs"), tiny_clip, extra=["--eval-only"]))
    assert "Prompts: ['a photo of a 2000 AM General Hummer SUV.'" in proc.stdout
    assert ACCURACY.search(proc.stdout)
    proc = run_train(train_args("ZeroshotCLIP", cars_root, str(tmp_path / "zs2"), tiny_clip))
    assert "Finish training" in proc.stdout and ACCURACY.search(proc.stdout.split("Finish training")[-1])


def _looks_finished(out):
    logs = glob.glob(os.path.join(out, "log.txt*"))
    return any("Finish training" in open(p).read() or "* accuracy" in open(p).read() for p in logs) or \
        glob.glob(os.path.join(out, "*", "model*.pth.tar*"))


def _corrupt_split(root):
    path = os.path.join(root, "stanford_cars", "split_zhou_StanfordCars.json")
    with open(path, "w") as f:
        f.write('{"train": [["cars_train/00001.jpg", 0, "x"]')
    return "split_zhou_StanfordCars.json"


def _split_with_missing_image(root):
    import json
    path = os.path.join(root, "stanford_cars", "split_zhou_StanfordCars.json")
    split = json.load(open(path))
    split["test"][0][0] = "cars_test/99999.jpg"
    json.dump(split, open(path, "w"))
    return "99999.jpg"


@pytest.mark.parametrize("case", ["missing_dataset", "corrupt_split", "missing_image", "unknown_backbone",
                                  "missing_weights", "unknown_key", "wrong_type"])
def test_bad_input_is_one_paragraph_naming_the_culprit(case, tiny_clip, cars_root, tmp_path, fake_data_module):
    root, weights, opts = cars_root, tiny_clip, []
    if case in ("corrupt_split", "missing_image"):
        root = str(tmp_path / "data")
        fake_data_module.write_fake_stanford_cars(root, classes=3, train_per_class=4, test_per_class=2,
                                                  image_size=16, with_split=True)
        culprit = _corrupt_split(root) if case == "corrupt_split" else _split_with_missing_image(root)
    elif case == "missing_dataset":
        root = str(tmp_path / "nowhere")
        culprit = os.path.join(root, "stanford_cars")
    elif case == "unknown_backbone":
        weights, culprit = "ViT-Q/99", "ViT-Q/99"
    elif case == "missing_weights":
        weights = culprit = str(tmp_path / "no_such_weights.pt")
    elif case == "unknown_key":
        opts, culprit = ["TRAINER.COOP.N_CTXX", "4"], "TRAINER.COOP.N_CTXX"
    else:
        opts, culprit = ["OPTIM.LR", "1"], "OPTIM.LR"
    out = str(tmp_path / "out")
    proc = run_train(train_args("CoOp", root, out, weights, opts=opts), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(error) == 1 and culprit in error[0], proc.stderr[-2000:]
    assert not _looks_finished(out)
