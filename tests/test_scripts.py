"""The few-shot shell scripts through bash, as users run them: settings printed, CoOp's output layout
(with K for MixPrompt), extra KEY VALUE options reaching train.py, finished runs skipped with CoOp's
message, unfinished ones resumed, a failing run stopping the script with a nonzero status; then the
report tools on the runs the script made."""
import json
import os
import subprocess

import pytest
import yaml

from conftest import ACCURACY, REPO_ROOT, bash, final_accuracy, skip_line, warm_python

SCRIPTS = {"mixprompt": ["scripts/mixprompt/main.sh", "stanford_cars", "2"],
           "coop": ["scripts/coop/main.sh", "stanford_cars"],
           "cocoop": ["scripts/cocoop/main.sh", "stanford_cars"],
           "zsclip": ["scripts/zsclip/zeroshot.sh", "stanford_cars"]}


def tiny_opts(weights, epochs="2"):
    return ["MODEL.BACKBONE.NAME", weights, "OPTIM.MAX_EPOCH", epochs, "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.TEST.BATCH_SIZE", "16", "TRAIN.CHECKPOINT_FREQ", "1"]


def logs(run_dir):
    return sorted(n for n in os.listdir(run_dir) if n.startswith("log.txt"))


def test_mixprompt_script_runs_each_seed_skips_finished_runs_and_resumes_unfinished_ones(
        cars_root, tiny_clip, tmp_path):
    out = tmp_path / "output"
    env = {"DATA": cars_root, "OUTPUT": str(out), "SHOTS": "4", "SEEDS": "1 2"}
    script = SCRIPTS["mixprompt"]
    proc = bash(script, tiny_opts(tiny_clip), **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MixPrompt few-shot: DATASET=stanford_cars K=2" in proc.stdout
    assert f"  DATA={cars_root}" in proc.stdout and f"  OUTPUT={out}" in proc.stdout
    assert 'SHOTS=4 SEEDS="1 2" CFG=vit_b16' in proc.stdout  # the defaults (CFG) and the overrides
    runs = [out / "stanford_cars" / "MixPrompt" / "vit_b16_4shots" / "k2" / f"seed{s}" for s in (1, 2)]
    accuracies = []
    for seed, run in enumerate(runs, start=1):
        log = (run / "log.txt").read_text()
        accuracies.append(final_accuracy(log))
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["SEED"] == seed and config["DATASET"]["NUM_SHOTS"] == 4
        assert config["TRAINER"]["NAME"] == "MixPrompt" and config["TRAINER"]["MIXPROMPT"]["K"] == 2
        assert config["MODEL"]["BACKBONE"]["NAME"] == tiny_clip and config["OPTIM"]["MAX_EPOCH"] == 2  # extra opts
        assert len((run / "diagnostics.jsonl").read_text().splitlines()) == 2

    # second call: both skipped with CoOp's message, nothing run, nothing written
    again = bash(script, tiny_opts(tiny_clip), **env)
    assert again.returncode == 0
    assert all(skip_line(run) in again.stdout for run in runs) and "==> [" not in again.stdout
    assert [logs(run) for run in runs] == [["log.txt"], ["log.txt"]]

    # seed 2 as if killed during epoch 2: no record, the epoch-2 checkpoint and the end of its log are gone
    (runs[1] / "result.json").unlink()
    learner = runs[1] / "prompt_learner"
    (learner / "model.pth.tar-2").unlink()
    (learner / "checkpoint").write_text("model.pth.tar-1\n")
    text = (runs[1] / "log.txt").read_text()
    (runs[1] / "log.txt").write_text(text[:text.index("epoch [2/2]")])
    resumed = bash(script, tiny_opts(tiny_clip), **env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert skip_line(runs[0]) in resumed.stdout
    assert f"seed 2: unfinished run at {runs[1]}, running it again" in resumed.stdout
    assert "Found checkpoint at" in resumed.stdout and "Previous epoch: 1" in resumed.stdout
    new_logs = [n for n in logs(runs[1]) if n != "log.txt"]
    assert len(new_logs) == 1  # Dassl's log.txt-<time> of the re-run
    # checkpoints carry the RNG states: the resumed run ends exactly where the uninterrupted one did
    assert final_accuracy((runs[1] / new_logs[0]).read_text()) == accuracies[1]
    third = bash(script, tiny_opts(tiny_clip), **env)
    assert all(skip_line(run) in third.stdout for run in runs) and "==> [" not in third.stdout

    # the report tools show the two seeds
    table = subprocess.run([warm_python(), "scripts/parse_results.py", str(out), "--format", "json"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    (group,) = json.loads(table)
    assert (group["method"], group["dataset"], group["shots"], group["variant"], group["config"]) == (
        "MixPrompt", "StanfordCars", 4, "k2", "vit_b16")
    assert group["seeds"] == [1, 2] and group["complete"]
    # the table reads the runs' records (full precision; the logs print one decimal)
    recorded = [json.loads((run / "result.json").read_text())["results"]["test"]["accuracy"] for run in runs]
    assert recorded == pytest.approx(accuracies, abs=0.05)
    assert group["mean"] == pytest.approx(sum(recorded) / 2)
    assert group["std"] == pytest.approx(abs(recorded[0] - recorded[1]) / 2 ** 0.5)  # sample std, n = 2
    assert group["ci95"] == pytest.approx(12.7062 * group["std"] / 2 ** 0.5, rel=1e-4)  # t(0.975, 1)
    report = subprocess.run([warm_python(), "scripts/collapse_report.py", str(out), "--format", "json"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert [r["run"] for r in json.loads(report)] == [f"stanford_cars/MixPrompt/vit_b16_4shots/k2/seed{s}"
                                                      for s in (1, 2)]


def test_coop_and_zero_shot_scripts_follow_coops_layout(cars_root, tiny_clip, tmp_path):
    out = tmp_path / "output"
    env = {"DATA": cars_root, "OUTPUT": str(out), "SHOTS": "4", "SEEDS": "1"}
    proc = bash(SCRIPTS["coop"], tiny_opts(tiny_clip, epochs="1"), NCTX="4", **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'SHOTS=4 SEEDS="1" CFG=vit_b16_ep50 TAG= NCTX=4 CSC=False CTP=end' in proc.stdout
    run = out / "stanford_cars" / "CoOp" / "vit_b16_ep50_4shots" / "nctx4_cscFalse_ctpend" / "seed1"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["TRAINER"]["COOP"]["N_CTX"] == 4 and config["DATASET"]["NUM_SHOTS"] == 4
    assert final_accuracy((run / "log.txt").read_text()) >= 0

    zs = bash(SCRIPTS["zsclip"], ["MODEL.BACKBONE.NAME", tiny_clip, "DATALOADER.NUM_WORKERS", "0"], **env)
    assert zs.returncode == 0, zs.stdout[-3000:] + zs.stderr[-3000:]
    assert "CFG=vit_b16 ENSEMBLE=False" in zs.stdout and "SHOTS and SEEDS are not used" in zs.stdout
    zs_run = out / "ZeroshotCLIP" / "vit_b16" / "stanford_cars"
    log = (zs_run / "log.txt").read_text()
    assert "eval_only: True" in log and ACCURACY.search(log.split("=> result")[1])
    again = bash(SCRIPTS["zsclip"], ["MODEL.BACKBONE.NAME", tiny_clip], **env)
    assert again.returncode == 0 and skip_line(zs_run) in again.stdout and logs(zs_run) == ["log.txt"]


def test_cocoop_script(cars_root, tiny_clip, tmp_path):
    out = tmp_path / "output"
    opts = ["MODEL.BACKBONE.NAME", tiny_clip, "OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TEST.BATCH_SIZE", "16"]
    proc = bash(SCRIPTS["cocoop"], opts, DATA=cars_root, OUTPUT=str(out), SHOTS="1", SEEDS="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CFG=vit_b16_c4_ep10_batch1_ctxv1" in proc.stdout
    run = out / "stanford_cars" / "CoCoOp" / "vit_b16_c4_ep10_batch1_ctxv1_1shots" / "seed1"
    assert final_accuracy((run / "log.txt").read_text()) >= 0
    again = bash(SCRIPTS["cocoop"], ["MODEL.BACKBONE.NAME", tiny_clip], DATA=cars_root, OUTPUT=str(out), SHOTS="1",
                 SEEDS="1")
    assert skip_line(run) in again.stdout


def test_a_failing_run_stops_the_script_with_a_nonzero_status(tiny_clip, tmp_path):
    out = tmp_path / "output"
    proc = bash(SCRIPTS["mixprompt"], ["MODEL.BACKBONE.NAME", tiny_clip], DATA=str(tmp_path / "no_data"),
                OUTPUT=str(out), SEEDS="1 2", TAG="abl")
    assert proc.returncode == 2  # train.py's status for bad input
    assert f"seed 1 -> {out}/stanford_cars/MixPrompt/vit_b16_abl_16shots/k2/seed1" in proc.stdout  # TAG, SHOTS 16
    assert "ERROR:" in proc.stderr and "stanford_cars" in proc.stderr  # train.py names the missing folder
    assert "MixPrompt stanford_cars vit_b16_abl 16shots K=2 seed 1 failed (train.py exit status 2)" in proc.stderr
    assert "==> [1/2]" in proc.stdout and "==> [2/2]" not in proc.stdout  # later seeds are not run


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bad_arguments_are_refused_before_any_run(name, tmp_path):
    script = SCRIPTS[name]
    env = {"DATA": str(tmp_path), "OUTPUT": str(tmp_path / "output")}
    usage = bash(script[:1], **env)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    odd = bash(script, ["MODEL.BACKBONE.NAME"], **env)
    assert odd.returncode == 2 and "KEY VALUE pairs" in odd.stderr
    reserved = {"mixprompt": ("TRAINER.MIXPROMPT.K", "second argument"), "coop": ("TRAINER.COOP.N_CTX", "NCTX="),
                "cocoop": ("DATASET.NUM_SHOTS", "SHOTS="), "zsclip": ("TRAINER.ZSCLIP.ENSEMBLE", "ENSEMBLE=")}[name]
    refused = bash(script, [reserved[0], "4"], **env)
    assert refused.returncode == 2 and reserved[1] in refused.stderr and "output folder" in refused.stderr
    if name != "zsclip":
        bad_seeds = bash(script, SEEDS="1 x", **env)
        assert bad_seeds.returncode == 2 and "SEEDS" in bad_seeds.stderr
    bad_tag = bash(script, TAG="a/b", **env)
    assert bad_tag.returncode == 2 and "TAG" in bad_tag.stderr
    assert not (tmp_path / "output").exists()
