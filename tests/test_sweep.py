"""scripts/sweep.py as users run it: the same train.py commands and output folders as the shell scripts
(compared with what the scripts really ran), finished runs skipped and unfinished ones run again, the
dry-run plan, failures reported, bad input refused with one ERROR line; a small grid of real tiny runs
locally and through submitit's local executor; the SLURM job array that submitit would submit (a fake
sbatch records it, and its array tasks are then run the way a node runs them)."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO_ROOT, _load_script, warm_python

ACCURACY = re.compile(r"\* accuracy: ([\d.]+)%")
TINY = ["OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "16"]
FAKE_TRAIN = """#!{python}
# Stands in for the interpreter: records the train.py command line, then finishes the run like train.py would.
import json, os, sys
argv = sys.argv[1:]
if argv and argv[0].endswith("sweep.py"):  # the run scripts start the sweep itself with $PYTHON: the real one
    os.execv(sys.executable, [sys.executable, *argv])
with open(os.environ["FAKE_TRAIN_RECORD"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
if os.environ.get("FAKE_TRAIN_FAIL") and os.environ["FAKE_TRAIN_FAIL"] in " ".join(argv):
    print("ERROR: fake failure", file=sys.stderr)
    sys.exit(3)
out = argv[argv.index("--output-dir") + 1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "log.txt"), "a") as f:
    f.write(("=> result" if "--eval-only" in argv else "Finish training") + "\\n* accuracy: 50.00%\\n")
"""


def environment(**env):
    return dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env)


def sweep(*args, timeout=300, **env):
    return subprocess.run([warm_python(), "scripts/sweep.py", *args], cwd=REPO_ROOT, env=environment(**env),
                          capture_output=True, text=True, timeout=timeout)


def bash(script, *args, **env):
    return subprocess.run(["bash", script, *args], cwd=REPO_ROOT, env=environment(**env), capture_output=True,
                          text=True, timeout=120)


def skip_line(run_dir):
    return f"Oops! The results exist at {run_dir} (so skip this job)"


def finished_accuracy(run_dir, signal="Finish training"):
    text = (run_dir / "log.txt").read_text()
    return float(ACCURACY.findall(text.split(signal)[1])[-1])


@pytest.fixture
def sweep_main(monkeypatch):
    """scripts/sweep.py's ``main`` run in this process (from the repository root, like the command), for the
    checks that stop before anything runs: no interpreter to start, so each costs milliseconds, not seconds."""
    monkeypatch.chdir(REPO_ROOT)
    return _load_script("sweep").main


@pytest.fixture
def fake_train(tmp_path):
    """An interpreter that records train.py's argv (one JSON list per line) and writes a finished log."""
    path = tmp_path / "fake_python"
    path.write_text(FAKE_TRAIN.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "record.jsonl"

    def recorded():
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return str(path), {"FAKE_TRAIN_RECORD": str(record)}, recorded


def relative(argvs, output):
    """The commands with the output root replaced, so that two roots compare."""
    return sorted([arg.replace(str(output), "OUTPUT") for arg in argv] for argv in argvs)


def run_folders(output):
    return sorted(str(p.parent.relative_to(output)) for p in output.rglob("log.txt"))


def test_sweep_runs_the_commands_the_shell_scripts_run_into_the_same_folders(fake_train, tmp_path):
    python, env, recorded = fake_train
    shell_out, sweep_out = tmp_path / "shell", tmp_path / "sweep"
    opts = ["MODEL.BACKBONE.NAME", "weights/clip.pt", "OPTIM.MAX_EPOCH", "1"]
    common = {"PYTHON": python, "DATA": "rel_data", "OUTPUT": str(shell_out), "SHOTS": "1", "SEEDS": "1 2",
              "TAG": "abl", **env}
    # every script once (they hand their runs to the sweep, so one call each shows the flags they pass)
    calls = [("scripts/mixprompt/main.sh", ["2"], {"CFG": "original"}),
             ("scripts/coop/main.sh", [], {"NCTX": "4", "CSC": "True"}), ("scripts/cocoop/main.sh", [], {}),
             ("scripts/linear_probe/main.sh", [], {}), ("scripts/zsclip/zeroshot.sh", [], {"ENSEMBLE": "True"})]
    for script, positional, settings in calls:
        proc = bash(script, "stanford_cars", *positional, *opts, **{**common, **settings})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    shell_commands = recorded()
    assert len(shell_commands) == 4 * 2 + 1

    grid = ["--trainers", "mixprompt", "CoOp", "CoCoOp", "LinearProbeCLIP", "zsclip", "--datasets", "stanford_cars",
            "--shots", "1", "--seeds", "1", "2", "--K", "2", "--cfg", "MixPrompt=original",
            "--tag", "abl", "--nctx", "4", "--csc", "True", "--ensemble", "True", "--data", "rel_data",
            "--python", python, "--no-check"]
    proc = sweep(*grid, "--output", str(sweep_out), "--opts", *opts, **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[9/9]" in proc.stdout and "9 run(s) done, 0 failed, 0 skipped" in proc.stdout
    assert f"--root {REPO_ROOT}/rel_data" in " ".join(recorded()[-1])  # relative paths from the current folder
    assert relative(recorded()[len(shell_commands):], sweep_out) == relative(shell_commands, shell_out)
    assert run_folders(sweep_out) == run_folders(shell_out)
    assert "stanford_cars/MixPrompt/original_abl_1shots/k2/seed2" in run_folders(sweep_out)
    assert "ZeroshotCLIP/vit_b16_ensemble_abl/stanford_cars" in run_folders(sweep_out)

    # the runs the scripts finished are finished for the sweep too: nothing runs
    again = sweep(*grid, "--output", str(shell_out), "--opts", *opts, **env)
    assert again.returncode == 0 and "nothing to run, every run is finished" in again.stdout
    assert skip_line(shell_out / "ZeroshotCLIP" / "vit_b16_ensemble_abl" / "stanford_cars") in again.stdout
    assert len(recorded()) == 2 * len(shell_commands)


def test_dry_run_shows_each_runs_status_and_command_and_runs_nothing(fake_train, tmp_path):
    python, env, recorded = fake_train
    out = tmp_path / "output"
    parent = out / "stanford_cars" / "MixPrompt" / "vit_b16_4shots" / "k2"
    (parent / "seed1").mkdir(parents=True)  # finished by a re-run: the result is in log.txt-<time>
    (parent / "seed1" / "log.txt").write_text("epoch [1/2] batch [1/1]\n")
    (parent / "seed1" / "log.txt-2024-01-01-00-00-00").write_text("Finish training\n* accuracy: 75.00%\n")
    (parent / "seed2").mkdir()  # interrupted: only a validation result, before "Finish training"
    (parent / "seed2" / "log.txt").write_text("* accuracy: 40.00%\nepoch [1/2] batch [1/1]\n")
    args = ["--trainers", "MixPrompt", "--datasets", "stanford_cars", "--shots", "4", "--seeds", "1", "2", "3",
            "--K", "2", "--output", str(out), "--python", python, "--no-check"]
    proc = sweep(*args, "--dry-run", **env)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[2]: line.split() for line in proc.stdout.splitlines() if "/seed" in line}
    assert {run: row[1] for run, row in rows.items()} == {
        "stanford_cars/MixPrompt/vit_b16_4shots/k2/seed1": "finished",
        "stanford_cars/MixPrompt/vit_b16_4shots/k2/seed2": "partial",
        "stanford_cars/MixPrompt/vit_b16_4shots/k2/seed3": "pending"}
    seed3 = rows["stanford_cars/MixPrompt/vit_b16_4shots/k2/seed3"]
    assert seed3[3:] == [python, f"{REPO_ROOT}/train.py", "--root", f"{REPO_ROOT}/data", "--seed", "3",
                         "--trainer", "MixPrompt", "--dataset-config-file",
                         f"{REPO_ROOT}/configs/datasets/stanford_cars.yaml", "--config-file",
                         f"{REPO_ROOT}/configs/trainers/MixPrompt/vit_b16.yaml", "--output-dir",
                         str(parent / "seed3"), "DATASET.NUM_SHOTS", "4", "TRAINER.MIXPROMPT.K", "2"]
    assert "1 finished (skipped), 1 partial (run again, resuming), 1 pending" in proc.stdout
    assert recorded() == [] and not (parent / "seed3").exists()

    # for real: the finished run is skipped, the partial one runs again into its folder, then the pending one
    proc = sweep(*args, **env)
    assert proc.returncode == 0, proc.stderr
    assert skip_line(parent / "seed1") in proc.stdout
    label = "MixPrompt stanford_cars vit_b16 4shots K=2"
    assert f"[1/2] {label} seed 2: unfinished run at {parent / 'seed2'}, running it again" in proc.stdout
    assert f"[2/2] {label} seed 3 -> {parent / 'seed3'}" in proc.stdout
    assert [argv[argv.index("--seed") + 1] for argv in recorded()] == ["2", "3"]


def test_a_failing_run_is_reported_and_the_sweep_goes_on_unless_asked_to_stop(fake_train, tmp_path):
    python, env, recorded = fake_train
    args = ["--trainers", "CoCoOp", "--datasets", "stanford_cars", "--seeds", "1", "2", "3", "--python", python,
            "--no-check"]
    out = tmp_path / "output"
    proc = sweep(*args, "--output", str(out), FAKE_TRAIN_FAIL="--seed 2", **env)
    assert proc.returncode == 3  # the failing train.py's status
    assert "failed (train.py exit status 3)" in proc.stderr and "[3/3]" in proc.stdout
    assert "2 run(s) done, 1 failed" in proc.stdout and "FAILED CoCoOp stanford_cars" in proc.stdout
    assert [argv[argv.index("--seed") + 1] for argv in recorded()] == ["1", "2", "3"]

    stopped = sweep(*args, "--output", str(tmp_path / "other"), "--stop-on-failure", FAKE_TRAIN_FAIL="--seed 2",
                    **env)
    assert stopped.returncode == 3 and "the 1 later run(s) were not started" in stopped.stderr
    assert "[3/3]" not in stopped.stdout and len(recorded()) == 5


def test_submitit_local_runs_waves_of_array_parallelism_jobs_and_reports_failures(fake_train, tmp_path):
    python, env, recorded = fake_train
    logs = tmp_path / "logs"
    args = ["--trainers", "LinearProbeCLIP", "--datasets", "stanford_cars", "--seeds", "1", "2", "3", "--python",
            python, "--no-check", "--executor", "submitit-local", "--array-parallelism", "2"]
    proc = sweep(*args, "--output", str(tmp_path / "output"), "--logs", f"{logs}/%j", FAKE_TRAIN_FAIL="--seed 1",
                 **env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [line.split()[2] for line in proc.stdout.splitlines() if "submitit job(s)" in line] == ["2", "1"]
    assert "seed 1 failed: RuntimeError: train.py exit status 3" in proc.stderr and f"log: {logs}/" in proc.stderr
    assert "2 run(s) done, 1 failed" in proc.stdout and len(recorded()) == 3

    stopped = sweep(*args, "--output", str(tmp_path / "other"), "--stop-on-failure", FAKE_TRAIN_FAIL="--seed 1",
                    **env)
    assert stopped.returncode == 1 and "1 later run(s) were not started" in stopped.stderr
    assert len(recorded()) == 5  # the first wave only


@pytest.mark.parametrize("args, message", [
    (["--trainers", "CoOpp"], "unknown trainer 'CoOpp'"),
    (["--trainers", "MixPrompt"], "MixPrompt needs --K"),
    (["--trainers", "MixPrompt", "--K", "0"], "--K must be positive integers"),
    (["--trainers", "CoOp", "--cfg", "nope"], "configs/trainers/CoOp/nope.yaml does not exist"),
    (["--trainers", "CoOp", "CoCoOp", "--cfg", "vit_b16_ep50"], "CoCoOp (give it per trainer as TRAINER=vit_b16_ep50)"),
    (["--trainers", "CoOp", "--cfg", "CoCoOp=vit_b16_c4_ep10_batch1"], "CoCoOp is not in --trainers"),
    (["--trainers", "CoOp", "--datasets", "imagenet"], "configs/datasets/imagenet.yaml does not exist"),
    (["--trainers", "CoOp", "--shots", "16", "08"], "--shots must be positive integers, got '08'"),
    (["--trainers", "CoOp", "--seeds", "1", "x"], "--seeds must be non-negative integers, got 'x'"),
    (["--trainers", "CoOp", "--tag", "a/b"], "--tag may hold letters, digits"),
    (["--trainers", "CoOp", "--csc", "yes"], "--csc must be True or False"),
    (["--trainers", "CoOp", "--opts", "OPTIM.MAX_EPOCH"], "KEY VALUE pairs; got an odd number"),
    (["--trainers", "MixPrompt", "--K", "4", "--opts", "TRAINER.MIXPROMPT.K", "8"], "TRAINER.MIXPROMPT.K with --K"),
    (["--trainers", "CoOp", "--opts", "DATASET.NUM_SHOTS", "8"], "DATASET.NUM_SHOTS with --shots"),
    (["--trainers", "zsclip", "--opts", "TRAINER.ZSCLIP.ENSEMBLE", "True"], "with --ensemble"),
    (["--trainers", "CoOp", "--opts", "SEED", "4"], "SEED with --seeds"),
    (["--trainers", "CoOp", "--executor", "slurm", "--slurm-extra", "account"], "--slurm-extra takes KEY=VALUE"),
    (["--trainers", "CoOp", "--gpus", "1"], "unrecognized arguments: --gpus"),
])
def test_bad_input_is_refused_with_one_error_line_before_anything_runs(args, message, tmp_path, sweep_main,
                                                                      capsys):
    if "--datasets" not in args:
        args = ["--datasets", "stanford_cars", *args]
    out = tmp_path / "output"
    with pytest.raises(SystemExit) as exited:  # sweep.py's main in this process: the command line is tested above
        sweep_main([*args, "--output", str(out)])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2
    assert stderr.startswith("ERROR: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr
    assert not out.exists()


def test_an_unknown_config_key_stops_the_sweep_before_the_first_run(fake_train, tmp_path, sweep_main, capsys,
                                                                     monkeypatch):
    python, env, recorded = fake_train
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        sweep_main(["--trainers", "CoOp", "--datasets", "stanford_cars", "--output", str(tmp_path / "output"),
                    "--python", python, "--opts", "OPTIM.MAX_EPOCHS", "1"])
    assert exited.value.code == 2 and "Unknown config key OPTIM.MAX_EPOCHS" in capsys.readouterr().err
    assert recorded() == [] and not (tmp_path / "output").exists()


def test_without_submitit_its_executors_say_how_to_install_it(tmp_path, sweep_main, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what "import submitit" meets where it is not installed
    with pytest.raises(SystemExit) as exited:
        sweep_main(["--trainers", "CoOp", "--datasets", "stanford_cars", "--output", str(tmp_path), "--executor",
                    "submitit-local", "--no-check"])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and "ERROR: the submitit executors need submitit: pip install submitit" in stderr


def test_a_small_grid_of_tiny_runs_locally_then_skipped(cars_root, tiny_clip, tmp_path):
    out = tmp_path / "output"
    args = ["--trainers", "MixPrompt", "CoOp", "ZeroshotCLIP", "--datasets", "stanford_cars", "--shots", "2",
            "--seeds", "1", "--K", "2", "--nctx", "4", "--data", cars_root, "--output", str(out),
            "--opts", "MODEL.BACKBONE.NAME", tiny_clip, *TINY]
    proc = sweep(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[1/3] MixPrompt" in proc.stdout and "[3/3] ZeroshotCLIP" in proc.stdout
    assert "3 run(s) done, 0 failed, 0 skipped" in proc.stdout
    mixprompt = out / "stanford_cars" / "MixPrompt" / "vit_b16_2shots" / "k2" / "seed1"
    coop = out / "stanford_cars" / "CoOp" / "vit_b16_ep50_2shots" / "nctx4_cscFalse_ctpend" / "seed1"
    zero_shot = out / "ZeroshotCLIP" / "vit_b16" / "stanford_cars"
    for run in (mixprompt, coop):
        assert finished_accuracy(run) >= 0
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["SEED"] == 1 and config["DATASET"]["NUM_SHOTS"] == 2 and config["OPTIM"]["MAX_EPOCH"] == 1
    assert yaml.safe_load((mixprompt / "config.yaml").read_text())["TRAINER"]["MIXPROMPT"]["K"] == 2
    assert yaml.safe_load((coop / "config.yaml").read_text())["TRAINER"]["COOP"]["N_CTX"] == 4
    assert finished_accuracy(zero_shot, "=> result") >= 0

    again = sweep(*args)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert all(skip_line(run) in again.stdout for run in (mixprompt, coop, zero_shot))
    assert not any(name.startswith("log.txt-") for run in (mixprompt, coop, zero_shot) for name in os.listdir(run))


def test_a_small_grid_through_submitits_local_executor(cars_root, tiny_clip, tmp_path):
    out, logs = tmp_path / "output", tmp_path / "logs"
    args = ["--trainers", "CoOp", "--datasets", "stanford_cars", "--shots", "2", "--seeds", "1", "2",
            "--nctx", "4", "--data", cars_root, "--output", str(out), "--executor", "submitit-local",
            "--array-parallelism", "2", "--logs", f"{logs}/%j", "--no-check",
            "--opts", "MODEL.BACKBONE.NAME", tiny_clip, *TINY]
    proc = sweep(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted 2 submitit job(s)" in proc.stdout and "2 run(s) done, 0 failed" in proc.stdout
    runs = [out / "stanford_cars" / "CoOp" / "vit_b16_ep50_2shots" / "nctx4_cscFalse_ctpend" / f"seed{s}"
            for s in (1, 2)]
    assert [yaml.safe_load((run / "config.yaml").read_text())["SEED"] for run in runs] == [1, 2]
    assert all(finished_accuracy(run) >= 0 for run in runs)
    job_logs = sorted(logs.glob("*/*_log.out"))
    assert len(job_logs) == 2 and all("Finish training" in log.read_text() for log in job_logs)

    again = sweep(*args)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert all(skip_line(run) in again.stdout for run in runs)
    assert len(sorted(logs.glob("*/*_log.out"))) == 2  # nothing submitted


FAKE_SBATCH = """#!{python}
# Stands in for sbatch: keeps a copy of the batch file, answers with a job id, then (detached, like a cluster
# with free nodes) runs each array task's command as srun would, with SLURM's variables and log files.
import os, re, shlex, shutil, subprocess, sys
batches = {batches!r}
number = len(os.listdir(batches))
shutil.copy(sys.argv[1], os.path.join(batches, f"{{number}}.sh"))
text = open(sys.argv[1]).read()
job = str(4242 + number)
print(f"Submitted batch job {{job}}", flush=True)
if os.fork():
    sys.exit(0)
os.setsid()
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
array = re.search(r"^#SBATCH --array=0-(\\d+)", text, re.M)
srun = shlex.split(text.strip().splitlines()[-1])
command = srun[srun.index("-m") - 2:]
flags = {{srun[i]: srun[i + 1] for i in range(len(srun) - 1) if srun[i] in ("--output", "--error")}}
for task in range(int(array.group(1)) + 1 if array else 1):
    env = dict(os.environ, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=str(int(job) + 100 + task), SLURM_PROCID="0",
               SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1")
    if array:
        env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(task))
    logs = [flags[flag].replace("%A", job).replace("%a", str(task)).replace("%t", "0").replace("%j", job)
            for flag in ("--output", "--error")]
    os.makedirs(os.path.dirname(logs[0]), exist_ok=True)
    with open(logs[0], "a") as out, open(logs[1], "a") as err:
        subprocess.run(command, env=env, stdout=out, stderr=err)
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """srun, sacct and sbatch on PATH; sbatch records each batch file and runs its tasks in the background."""
    bin_dir, batches = tmp_path / "slurm_bin", tmp_path / "batches"
    bin_dir.mkdir()
    batches.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "sacct").write_text("#!/bin/sh\nexit 0\n")  # no state: submitit waits for the results
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable, batches=str(batches)))
    for name in ("srun", "sacct", "sbatch"):
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, batches


def wait_for_results(logs, n, timeout=90):
    deadline = time.time() + timeout
    while len(list(logs.glob("*/*_result.pkl"))) < n and time.time() < deadline:
        time.sleep(0.2)
    return len(list(logs.glob("*/*_result.pkl")))


def run_array_task(batch_text, task, tmp_path, env):
    """Run array task TASK of job 4242 by hand, as a node runs the batch file's command (without srun)."""
    command = batch_text.strip().splitlines()[-1]
    python_part = command[command.index(sys.executable):]
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": str(5000 + task), "SLURM_ARRAY_JOB_ID": "4242",
             "SLURM_ARRAY_TASK_ID": str(task), "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1"}
    return subprocess.run(python_part, shell=True, cwd=tmp_path, env=environment(**env, **slurm),
                          capture_output=True, text=True, timeout=120)


def test_slurm_gets_one_job_array_with_the_requested_resources_running_the_same_commands(
        fake_train, fake_slurm, tmp_path):
    python, env, recorded = fake_train
    path, batches = fake_slurm
    logs = tmp_path / "logs"
    grid = ["--trainers", "MixPrompt", "CoOp", "--datasets", "stanford_cars", "--shots", "1", "--seeds", "1", "2",
            "--K", "2", "--python", python, "--no-check", "--opts", "MODEL.BACKBONE.NAME", "weights/clip.pt"]
    out, local_out = tmp_path / "output", tmp_path / "local"
    finished = out / "stanford_cars" / "CoOp" / "vit_b16_ep50_1shots" / "nctx16_cscFalse_ctpend" / "seed2"
    for root in (out, local_out):
        run = root / finished.relative_to(out)
        run.mkdir(parents=True)
        (run / "log.txt").write_text("Finish training\n* accuracy: 50.00%\n")
    resources = ["--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "4", "--mem-gb", "16",
                 "--timeout-min", "90", "--array-parallelism", "2", "--slurm-extra", "account=proj", "qos=high",
                 "--slurm-setup", "source .venv/bin/activate", "--logs", f"{logs}/%j", "--job-name", "mp"]
    proc = sweep("--output", str(out), *resources, *grid, **path, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted 3 run(s) to SLURM as job 4242" in proc.stdout and skip_line(finished) in proc.stdout
    assert f"4242_2  {out}/stanford_cars/CoOp/vit_b16_ep50_1shots/nctx16_cscFalse_ctpend/seed1" in proc.stdout
    (batch,) = sorted(batches.iterdir())
    text = batch.read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB", "#SBATCH --time=90", "#SBATCH --account=proj",
                 "#SBATCH --qos=high", "#SBATCH --job-name=mp", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 f"#SBATCH --output={logs}/%A_%a/%A_%a_0_log.out", "source .venv/bin/activate"):
        assert line in text.splitlines(), text

    # the "cluster" ran the three array tasks: the same train.py commands as the local executor's
    assert wait_for_results(logs, 3) == 3
    assert sweep("--output", str(local_out), *grid, **env).returncode == 0
    assert relative(recorded()[:3], out) == relative(recorded()[3:], local_out)
    assert run_folders(out) == run_folders(local_out)

    # a task that starts after its run has finished does not run it again; a new call submits nothing
    late = run_array_task(text, 0, tmp_path, env)
    assert late.returncode == 0 and "so skip this job" in late.stdout and len(recorded()) == 6
    again = sweep("--output", str(out), *resources, *grid, **path, **env)
    assert again.returncode == 0 and "nothing to run" in again.stdout and len(list(batches.iterdir())) == 1


def test_slurm_with_wait_reports_each_job_and_the_failures(fake_train, fake_slurm, tmp_path):
    python, env, recorded = fake_train
    path, batches = fake_slurm
    out, logs = tmp_path / "output", tmp_path / "logs"
    proc = sweep("--trainers", "CoCoOp", "--datasets", "stanford_cars", "--seeds", "1", "2", "--output", str(out),
                 "--python", python, "--no-check", "--executor", "slurm", "--gpus-per-node", "0", "--wait",
                 "--poll-s", "0.5", "--logs", f"{logs}/%j", FAKE_TRAIN_FAIL="--seed 2", **path, **env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "done: CoCoOp stanford_cars vit_b16_c4_ep10_batch1_ctxv1 16shots seed 1 (job 4242_0)" in proc.stdout
    assert "seed 2 failed: RuntimeError: train.py exit status 3" in proc.stderr
    assert f"log: {logs}/4242_1/4242_1_0_log.out" in proc.stderr
    assert "1 run(s) done, 1 failed" in proc.stdout
    assert "--gpus-per-node" not in (batches / "0.sh").read_text()  # 0 GPUs: no GPU request


@pytest.mark.skipif(shutil.which("srun") is not None, reason="SLURM is installed here")
def test_slurm_without_slurm_says_so(tmp_path, sweep_main, capsys):
    with pytest.raises(SystemExit) as exited:
        sweep_main(["--trainers", "CoOp", "--datasets", "stanford_cars", "--output", str(tmp_path), "--executor",
                    "slurm", "--no-check"])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and "ERROR: --executor slurm needs SLURM (srun and sbatch on PATH)" in stderr


def test_the_sweep_and_the_reports_start_without_loading_clips_libraries():
    """Every run script starts the sweep, and the report tools read trainer declarations: importing the
    trainers must not pull open_clip, torchvision and torch._dynamo (about 5 s of CPU per process)."""
    code = ("import sys, trainers, trainers.run_index; "
            "print(sorted(m for m in ('open_clip', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
