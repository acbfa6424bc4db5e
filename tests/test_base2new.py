"""Base-to-new through the real shell scripts: CoOp, CoCoOp and MixPrompt (shared scope) train on the base
classes of generated Stanford Cars and are evaluated on the new ones from the same checkpoint; finished runs
are skipped, unfinished ones are not; the results tool reports base, new and H as the logs say, with H the
harmonic mean of the mean accuracies over seeds."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, warm_python

# trainer: (script folder, run folder under <trainer>/)
METHODS = {
    "CoOp": ("coop", "vit_b16_ctxv1"),
    "CoCoOp": ("cocoop", "vit_b16_c4_ep10_batch1_ctxv1"),
    "MixPrompt": ("mixprompt", "vit_b16_shared_k2"),
}
ACCURACY = re.compile(r"^\* accuracy: ([\d.]+)%", re.M)


def run_script(folder, step, args, env, check=True):
    proc = subprocess.run(["bash", f"scripts/{folder}/base2new_{step}.sh", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{folder}/base2new_{step}.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def run_dir(out, side, trainer, seed=1):
    return os.path.join(out, "base2new", side, "stanford_cars", "shots_4", trainer, METHODS[trainer][1], f"seed{seed}")


def accuracy_after(text, signal):
    return float(ACCURACY.findall(text.split(signal, 1)[1])[-1])


def read(path):
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def b2n(tmp_path_factory, tiny_clip, cars_root):
    """Every method trained on base and tested on new, seed 1, through the scripts (tiny sizes)."""
    out = str(tmp_path_factory.mktemp("b2n") / "output")
    env = dict(os.environ, DATA=cars_root, OUTPUT=out, SHOTS="4", K="2", PYTHON=warm_python(),
               MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1")
    opts = ["MODEL.BACKBONE.NAME", tiny_clip, "OPTIM.MAX_EPOCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", "TRAIN.PRINT_FREQ", "100"]
    procs = {}
    for trainer, (folder, _) in METHODS.items():
        procs[trainer] = {step: run_script(folder, step, ["stanford_cars", "1", *opts], env)
                          for step in ("train", "test")}
    return {"out": out, "env": env, "opts": opts, "procs": procs, "data": cars_root}


@pytest.mark.parametrize("trainer", list(METHODS))
def test_trains_on_base_classes_and_evaluates_on_new_ones(b2n, trainer):
    out, procs = b2n["out"], b2n["procs"][trainer]
    train_dir, test_dir = run_dir(out, "train_base", trainer), run_dir(out, "test_new", trainer)
    assert f"DATA={b2n['data']} OUTPUT={out}" in procs["train"].stdout  # the settings are printed first
    assert f"TRAINER={trainer} CFG=" in procs["train"].stdout
    train_log, test_log = read(os.path.join(train_dir, "log.txt")), read(os.path.join(test_dir, "log.txt"))
    assert "SUBSAMPLE BASE CLASSES!" in train_log and "# classes  2" in train_log
    assert "SUBSAMPLE NEW CLASSES!" in test_log and "# classes  2" in test_log
    accuracy_after(train_log, "Finish training")
    accuracy_after(test_log, "=> result")
    # LOADEP is the training run's last epoch (its OPTIM.MAX_EPOCH, 2 here, although the config says more)
    assert "LOADEP=2" in procs["test"].stdout
    assert f'Loading weights to prompt_learner from "{train_dir}/prompt_learner/model.pth.tar-2"' in test_log
    if trainer == "MixPrompt":
        for log in (train_log, test_log):
            assert "SCOPE: shared" in log and re.search(r"^    K: 2$", log, re.M)


def test_finished_runs_are_skipped_unfinished_ones_are_not(b2n, tmp_path):
    out, env, opts = b2n["out"], b2n["env"], b2n["opts"]
    train_dir, test_dir = run_dir(out, "train_base", "CoCoOp"), run_dir(out, "test_new", "CoCoOp")
    logs_before = sorted(os.listdir(train_dir)), sorted(os.listdir(test_dir))
    for step, folder in (("train", train_dir), ("test", test_dir)):
        proc = run_script("cocoop", step, ["stanford_cars", "1", *opts], env)
        assert f"Oops! The results exist at {folder} (so skip this job)" in proc.stdout
    assert (sorted(os.listdir(train_dir)), sorted(os.listdir(test_dir))) == logs_before

    # a folder holding an interrupted run (no final result) is run again; PYTHON=echo shows the command
    seed2 = run_dir(out, "train_base", "CoCoOp", seed=2)
    os.makedirs(seed2)
    with open(os.path.join(seed2, "log.txt"), "w") as f:
        f.write("epoch [1/2] batch [1/4] ...\n* accuracy: 50.0%\n")  # a val result is not a final one
    echo = dict(env, PYTHON=echo_python(tmp_path))
    proc = run_script("cocoop", "train", ["stanford_cars", "2", "OPTIM.MAX_EPOCH", "2"], echo)
    assert f"Unfinished run at {seed2}" in proc.stdout
    command = proc.stdout.strip().splitlines()[-1].split()
    assert command[0] == os.path.join(str(REPO_ROOT), "train.py")
    assert command[command.index("--output-dir") + 1] == seed2
    assert command[-6:] == ["DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "2"]
    # ... and the new-class evaluation refuses to start from it
    proc = run_script("cocoop", "test", ["stanford_cars", "2"], echo, check=False)
    assert proc.returncode == 2 and f"no finished training run at {seed2}" in proc.stderr


@pytest.mark.parametrize("folder, args, message", [
    ("cocoop", ["DATASET.NUM_SHOTS", "8"], "set the shots with SHOTS=8, not DATASET.NUM_SHOTS"),
    ("coop", ["DATASET.SUBSAMPLE_CLASSES", "all"], "DATASET.SUBSAMPLE_CLASSES is set by the script"),
    ("mixprompt", ["TRAINER.MIXPROMPT.K", "4"], "set K=4 in the environment, not TRAINER.MIXPROMPT.K"),
    ("mixprompt", ["TRAINER.MIXPROMPT.SCOPE", "class"], "TRAINER.MIXPROMPT.SCOPE is shared in base-to-new"),
    ("cocoop", ["OPTIM.MAX_EPOCH"], "extra arguments must be KEY VALUE pairs"),
])
def test_options_that_would_break_the_protocol_are_refused(tmp_path, folder, args, message):
    env = dict(os.environ, OUTPUT=str(tmp_path), PYTHON="false")
    for step in ("train", "test"):
        proc = run_script(folder, step, ["stanford_cars", "1", *args], env, check=False)
        assert proc.returncode == 2 and f"ERROR: {message}" in proc.stderr, proc.stderr
    assert not os.listdir(tmp_path)


def results_rows(stdout):
    """{(trainer, config): (seeds, base, new, H)} from the tool's github-format table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"\d+", cells[4] or ""):
            rows[(cells[2], cells[3])] = (int(cells[4]), float(cells[5]), float(cells[6]), float(cells[7]))
    return rows


def run_results(root):
    proc = subprocess.run([warm_python(), "scripts/base2new_results.py", root], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_results_tool_reports_the_logged_accuracies(b2n):
    stdout = run_results(b2n["out"])  # the parent of base2new/ is accepted too
    rows = results_rows(stdout)
    assert set(rows) == {(trainer, config) for trainer, (_, config) in METHODS.items()}
    for trainer, (_, config) in METHODS.items():
        train_log = read(os.path.join(run_dir(b2n["out"], "train_base", trainer), "log.txt"))
        base = accuracy_after(train_log, "Finish training")
        new = accuracy_after(read(os.path.join(run_dir(b2n["out"], "test_new", trainer), "log.txt")), "=> result")
        seeds, got_base, got_new, got_h = rows[(trainer, config)]
        assert seeds == 1  # seed 2 of CoCoOp (another test) is unfinished: left out
        # the table shows the record's full-precision accuracies; the log rounds them to 0.1
        assert (got_base, got_new) == (pytest.approx(base, abs=0.06), pytest.approx(new, abs=0.06))
        assert got_h == pytest.approx(2 * base * new / (base + new) if base + new else 0.0, abs=0.06)


def echo_python(folder):
    """An interpreter that prints the train.py command it is given instead of running it (the scripts' own
    tools, such as scripts/is_finished.py, still run)."""
    path = folder / "echo_python"
    path.write_text(f"#!{sys.executable}\nimport os, sys\nif not sys.argv[1].endswith('train.py'):\n"
                    "    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\nprint(' '.join(sys.argv[1:]))\n")
    path.chmod(0o755)
    return str(path)


def fake_run(root, side, trainer, config, seed, accuracy, dataset="stanford_cars", name="log.txt", final=True):
    folder = os.path.join(root, side, dataset, "shots_16", trainer, config, f"seed{seed}")
    os.makedirs(folder, exist_ok=True)
    signal = "Finish training" if side == "train_base" else "=> result"
    lines = ["epoch [1/1] ...", "* accuracy: 1.0%"]  # a result before the signal never counts
    if final:
        lines += [signal, "=> result" if side == "train_base" else "* total: 10", f"* accuracy: {accuracy}%"]
    with open(os.path.join(folder, name), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(folder, name)


def test_h_is_the_harmonic_mean_of_the_mean_accuracies(tmp_path):
    root = str(tmp_path / "base2new")
    # seed 1: base 80, new 40 (H 53.33); seed 2: base 60, new 60 (H 60). Mean base 70, mean new 50:
    # H = 2 * 70 * 50 / 120 = 58.33, not the mean of per-seed H (56.67).
    for seed, base, new in ((1, 80.0, 40.0), (2, 60.0, 60.0)):
        fake_run(root, "train_base", "CoCoOp", "c4", seed, base)
        fake_run(root, "test_new", "CoCoOp", "c4", seed, new)
    old = fake_run(root, "test_new", "CoCoOp", "c4", 1, 10.0, name="log.txt-old")  # an older re-run log
    os.utime(old, (1, 1))
    fake_run(root, "train_base", "CoCoOp", "c4", 3, 90.0)  # no new result: left out, with a note
    fake_run(root, "train_base", "CoCoOp", "c4", 4, 90.0)
    fake_run(root, "test_new", "CoCoOp", "c4", 4, 90.0, final=False)  # unfinished evaluation: left out
    stdout = run_results(root)
    assert results_rows(stdout) == {("CoCoOp", "c4"): (2, 70.0, 50.0, 58.33)}
    assert "56.67" not in stdout
    assert "CoCoOp/c4/seed3: no finished new result, left out" in stdout
    assert "CoCoOp/c4/seed4: no finished new result, left out" in stdout

    # two datasets: an average row with the H of the averaged base and new accuracies
    fake_run(root, "train_base", "CoCoOp", "c4", 1, 50.0, dataset="inaturalist")
    fake_run(root, "test_new", "CoCoOp", "c4", 1, 30.0, dataset="inaturalist")
    stdout = run_results(root)
    average = [line for line in stdout.splitlines() if "average (2 datasets)" in line]
    assert len(average) == 1
    assert [float(c) for c in average[0].strip("| ").split("|")[-3:]] == [60.0, 40.0, 48.0]
