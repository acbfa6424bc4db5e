"""The report tools and the demo through their real command lines: scripts/demo.sh at a reduced size
(zero-shot CLIP, CoOp, MixPrompt original and fixed through the real scripts), then parse_results.py and
collapse_report.py checked against the runs' own logs and diagnostics; CoOp-written logs fabricated in
CoOp's exact format; PNG figures written and valid."""
import csv
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, warm_python
from trainers.runs import result_settings, write_record

ACCURACY = re.compile(r"\* accuracy: ([\d.]+)%")
DEMO_SIZE = {"DEMO_CLASSES": "3", "DEMO_MODES": "2", "DEMO_TRAIN_PER_CLASS": "6", "DEMO_TEST_PER_CLASS": "3",
             "DEMO_IMAGE_SIZE": "16", "DEMO_SHOTS": "4", "DEMO_K": "2", "DEMO_EPOCHS": "2", "DEMO_BATCH": "4",
             "DEMO_SEEDS": "1", "DEMO_NCTX": "4"}


def script_env(**extra):
    return dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                PYTHON=warm_python(), **extra)


def run_tool(name, *args, check=True):
    proc = subprocess.run([warm_python(), str(REPO_ROOT / "scripts" / name), *map(str, args)], cwd=REPO_ROOT,
                          env=script_env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def markdown_rows(text):
    """Rows of the first GitHub-style table in ``text`` as dicts keyed by its header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], [row for row in cells[2:]]
    return [dict(zip(header, row)) for row in body]


def final_accuracy(run_dir):
    """What CoOp's parse_test_res.py would read: the last accuracy after the end signal, newest log first."""
    logs = sorted((n for n in os.listdir(run_dir) if n.startswith("log.txt")), key=lambda n: (n != "log.txt", n))
    for name in reversed(logs):
        text = open(os.path.join(run_dir, name)).read()
        signal = "Finish training" if "Finish training" in text else "=> result"
        found = ACCURACY.findall(text.split(signal, 1)[-1]) if signal in text else []
        if found:
            return float(found[-1])
    return None


# ------------------------------------------------------------------------------------------ the demo
@pytest.fixture(scope="module")
def demo(tmp_path_factory, world_clip):
    work = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "demo.sh")], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600,
                          env=script_env(WORK=str(work), DEMO_WORLD_CLIP=world_clip, **DEMO_SIZE))
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return work, proc.stdout


def mixprompt_runs(output):
    base = output / "synthetic_world_modes" / "MixPrompt"
    return {cfg: [base / f"{cfg}_4shots" / "k2" / "seed1"] for cfg in ("original", "vit_b16")}


def test_demo_runs_every_method_and_prints_the_tables(demo):
    work, stdout = demo
    assert "pretrained on a generated world" in stdout and stdout.count("!! The CLIP used here") == 2
    for step in ("1/6", "2/6 zero-shot CLIP", "3/6 CoOp", "4/6 MixPrompt, original", "5/6 MixPrompt, fixed",
                 "6/6 reports"):
        assert step in stdout
    assert re.search(r"epoch 2/2: train loss [\d.]+ acc [\d.]+% \| feature_cos", stdout)  # progress
    output = work / "output"
    zs = output / "ZeroshotCLIP" / "vit_b16" / "synthetic_world_modes"
    coop = [output / "synthetic_world_modes" / "CoOp" / "vit_b16_ep50_4shots" / "nctx4_cscFalse_ctpend" / "seed1"]
    runs = {("ZeroshotCLIP", "vit_b16"): [zs], ("CoOp", "vit_b16_ep50"): coop,
            **{("MixPrompt", cfg): dirs for cfg, dirs in mixprompt_runs(output).items()}}
    comparison = stdout.split("== Comparison")[1].split("== Collapse")[0]
    rows = {(r["method"], r["config"]): r for r in markdown_rows(comparison)}
    assert set(rows) == set(runs)
    for key, dirs in runs.items():
        values = [final_accuracy(d) for d in dirs]
        assert None not in values, key
        row = rows[key]
        assert row["n"] == str(len(values)) and row["dataset"] == "SyntheticWorld"
        assert float(row["mean"]) == pytest.approx(sum(values) / len(values), abs=0.06)  # the log rounds to 0.1
        assert row["shots"] == ("0" if key[0] == "ZeroshotCLIP" else "4")
        assert row["variant"] == {"MixPrompt": "k2", "CoOp": "nctx4_cscFalse_ctpend"}.get(key[0], "-")
        assert row["seeds"] == ("-" if key[0] == "ZeroshotCLIP" else "1")
        assert row["std"] == "-" and row["note"] == ("" if key[0] == "ZeroshotCLIP" else "1 seed")
    # the pretrained world CLIP knows the class names: zero-shot well above chance (3 classes), which a random
    # CLIP does not reach
    assert float(rows[("ZeroshotCLIP", "vit_b16")]["mean"]) >= 1.5 * 100 / 3
    collapse = markdown_rows(stdout.split("== Collapse")[1])
    assert sorted(r["run"] for r in collapse) == sorted(
        os.path.relpath(d, output) for dirs in mixprompt_runs(output).values() for d in dirs)
    assert "collapsed: class collapsed if" in stdout


def test_parse_results_formats_agree_with_the_logs(demo):
    work, _ = demo
    output = work / "output"
    groups = json.loads(run_tool("parse_results.py", output, "--format", "json").stdout)
    assert {(g["method"], g["config"]) for g in groups} == {
        ("ZeroshotCLIP", "vit_b16"), ("CoOp", "vit_b16_ep50"), ("MixPrompt", "original"), ("MixPrompt", "vit_b16")}
    for g in groups:
        assert g["complete"] and g["issues"] == []
        for run in g["runs"]:
            record = json.loads((Path(run["dir"]) / "result.json").read_text())
            assert run["result"] == record["results"]["test"]["accuracy"] and run["meta_source"] == "result.json"
            assert run["result"] == pytest.approx(final_accuracy(run["dir"]), abs=0.05)  # what the log says
        values = [r["result"] for r in g["runs"]]
        assert g["mean"] == pytest.approx(sum(values) / len(values))
        assert g["n"] == 1 and g["std"] is None and g["ci95"] is None  # one seed: no spread (see test_scripts)
    rows = list(csv.DictReader(io.StringIO(run_tool("parse_results.py", output, "--format", "csv").stdout)))
    by_key = {(r["method"], r["config"]): r for r in rows}
    for g in groups:
        assert float(by_key[(g["method"], g["config"])]["mean"]) == pytest.approx(g["mean"], abs=1e-4)
    listed = run_tool("parse_results.py", output, "--runs").stdout
    assert listed.count("| finished") == 4


def test_collapse_report_matches_the_last_epoch_of_each_run(demo):
    work, _ = demo
    output = work / "output"
    rows = json.loads(run_tool("collapse_report.py", output, "--format", "json").stdout)
    assert len(rows) == 2
    for row in rows:
        with open(os.path.join(row["dir"], "diagnostics.jsonl")) as f:
            last = [json.loads(line) for line in f][-1]
        assert last["epoch"] == row["epoch"] == row["max_epoch"] == 2
        for key in ("offset_cos", "feature_cos", "eff_k", "top1_share", "dead"):
            assert row[key] == pytest.approx(last[key])
        assert row["K"] == 2 and row["dataset"] == "SyntheticWorld" and row["collapsed"] == last["collapsed"]
    table = markdown_rows(run_tool("collapse_report.py", output).stdout)
    for row, md in zip(sorted(rows, key=lambda r: r["run"]), sorted(table, key=lambda r: r["run"])):
        assert md["run"] == row["run"] and md["K"] == "2" and md["epoch"] == "2/2"
        assert md["feature_cos"] == f"{row['feature_cos']:.4f}" and md["eff_k"] == f"{row['eff_k']:.3f}"
        assert md["collapsed"].startswith("yes" if row["collapsed"] else "no")


def check_png(path, min_size=(300, 200)):
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1], path
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20, f"{path} looks blank"


def test_demo_writes_valid_figures_for_every_run(demo):
    work, stdout = demo
    plots = work / "plots"
    for dirs in mixprompt_runs(work / "output").values():
        for run_dir in dirs:
            stem = os.path.relpath(run_dir, work / "output").replace(os.sep, "__")
            for kind in ("diagnostics", "subprompt_cos", "usage"):
                check_png(plots / f"{stem}_{kind}.png")
    check_png(plots / "overview.png")
    assert "overview.png" in stdout


# ------------------------------------------------------------------------------------------ CoOp-written logs
COOP_CONFIG = """DATALOADER:
  NUM_WORKERS: 8
  TEST:
    BATCH_SIZE: 100
    SAMPLER: SequentialSampler
  TRAIN_X:
    BATCH_SIZE: 4
    SAMPLER: RandomSampler
DATASET:
  NAME: DescribableTextures
  NUM_LABELED: -1
  NUM_SHOTS: 2
  ROOT: /data
  SOURCE_DOMAINS: ()
  SUBSAMPLE_CLASSES: all
  TARGET_DOMAINS: ()
  VAL_PERCENT: 0.1
INPUT:
  SIZE: (224, 224)
  TRANSFORMS: ('random_resized_crop', 'random_flip', 'normalize')
MODEL:
  BACKBONE:
    NAME: RN50
    PRETRAINED: True
  INIT_WEIGHTS: 
OPTIM:
  LR: 0.002
  MAX_EPOCH: 3
  NAME: sgd
OUTPUT_DIR: {out}
RESUME: 
SEED: {seed}
TEST:
  FINAL_MODEL: {final}
TRAINER:
  COOP:
    CLASS_TOKEN_POSITION: end
    CSC: False
    CTX_INIT: 
    N_CTX: 4
    PREC: fp32
  NAME: CoOp
USE_CUDA: True
VERBOSE: True
VERSION: 1
"""

RESULT = """=> result
* total: 12
* correct: {correct}
* accuracy: {acc:.1f}%
* error: {err:.1f}%
* macro_f1: 10.0%
"""


def coop_log(out, seed, acc, header=True, best_val=False, eval_only=False, stop_at_epoch=None):
    """A log.txt as CoOp on Dassl writes it (reference appendix: 4-class DTD, 2 shots, 3 epochs)."""
    lines = []
    if header:
        opts = ("['TRAINER.COOP.N_CTX', '4', 'TRAINER.COOP.CSC', 'False', 'TRAINER.COOP.CLASS_TOKEN_POSITION', "
                "'end', 'DATASET.NUM_SHOTS', '2']")
        args = {"backbone": "", "config_file": "configs/trainers/CoOp/rn50.yaml",
                "dataset_config_file": "configs/datasets/dtd.yaml", "eval_only": str(eval_only), "head": "",
                "load_epoch": "3" if eval_only else "None", "model_dir": "", "no_train": "False", "opts": opts,
                "output_dir": out, "resume": "", "root": "/data", "seed": str(seed), "source_domains": "None",
                "target_domains": "None", "trainer": "CoOp", "transforms": "None"}
        lines += ["*" * 15, "** Arguments **", "*" * 15] + [f"{k}: {v}" for k, v in args.items()]
        lines += ["*" * 12, "** Config **", "*" * 12]
        lines += COOP_CONFIG.format(out=out, seed=seed, final="best_val" if best_val else "last_step").splitlines()
        lines += ["Collecting env info ...", "** System info **", "PyTorch version: 1.9.0+cu111", ""]
    lines += ["Loading trainer: CoOp", "Loading dataset: DescribableTextures",
              "Splitting into 50% train, 20% val, and 30% test", "Creating a 2-shot dataset",
              "Building transform_train", "+ resize to 224x224", "Loading evaluator: Classification"]
    result = RESULT.format(correct=round(acc * 12 / 100), acc=acc, err=100 - acc).splitlines()
    if eval_only:
        lines += [f'Loading weights to prompt_learner from "{out}/prompt_learner/model.pth.tar-3" (epoch = 3)',
                  "Evaluate on the *test* set", *result]
        return "\n".join(lines) + "\n"
    lines += ["No checkpoint found, train from scratch", f"Initialize tensorboard (log_dir={out}/tensorboard)"]
    for epoch in range(1, 4):
        for batch in (1, 2):
            lines.append(f"epoch [{epoch}/3] batch [{batch}/2] time 0.048 (0.048) data 0.014 (0.014) loss 1.7499 "
                         f"(1.7499) acc 50.0000 (50.0000) lr 1.0000e-05 eta 0:00:00")
            if stop_at_epoch == epoch:
                return "\n".join(lines) + "\n"
        if best_val:  # per-epoch validation blocks, before "Finish training": never the result
            lines += ["Evaluate on the *val* set", *RESULT.format(correct=12, acc=99.0, err=1.0).splitlines()]
    lines += [f"Checkpoint saved to {out}/prompt_learner/model.pth.tar-3", "Finish training"]
    lines += ["Deploy the model with the best val performance",
              f'Loading weights to prompt_learner from "{out}/prompt_learner/model-best.pth.tar" (epoch = 2)'] \
        if best_val else ["Deploy the last-epoch model"]
    lines += ["Evaluate on the *test* set", *result, "Elapsed: 0:00:00"]
    return "\n".join(lines) + "\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_parse_results_reads_logs_written_by_coop(tmp_path):
    out = tmp_path / "output"
    exp = out / "dtd" / "CoOp" / "rn50_2shots" / "nctx4_cscFalse_ctpend"
    # TEST.FINAL_MODEL best_val: per-epoch val results before "Finish training" must be ignored
    write(exp / "seed1" / "log.txt", coop_log(str(exp / "seed1"), 1, 25.0, best_val=True))
    write(exp / "seed2" / "log.txt", coop_log(str(exp / "seed2"), 2, 50.0, best_val=True))
    # interrupted in epoch 2: flagged, not averaged
    write(exp / "seed3" / "log.txt", coop_log(str(exp / "seed3"), 3, 0.0, best_val=True, stop_at_epoch=2))
    # an unfinished first log, then the log of the re-run that finished (Dassl's log.txt-<time>)
    pets = out / "oxford_pets" / "CoOp" / "rn50_ep50_1shots" / "nctx16_cscFalse_ctpend" / "seed1"
    write(pets / "log.txt", coop_log(str(pets), 1, 0.0, header=False, stop_at_epoch=1))
    write(pets / "log.txt-2024-05-01-10-00-00", coop_log(str(pets), 1, 75.0, header=False))
    # eval-only (cross-dataset evaluation layout): the result follows "=> result", there is no "Finish training"
    evaluation = out / "evaluation" / "CoOp" / "rn50_2shots" / "nctx4_cscFalse_ctpend" / "dtd" / "seed1"
    write(evaluation / "log.txt", coop_log(str(evaluation), 1, 41.7, eval_only=True))

    groups = json.loads(run_tool("parse_results.py", out, "--format", "json").stdout)
    by_key = {(g["dataset"], g["config"]): g for g in groups}
    assert set(by_key) == {("DescribableTextures", "rn50"), ("DescribableTextures", "rn50 (eval)"),
                           ("OxfordPets", "rn50_ep50")}
    dtd = by_key[("DescribableTextures", "rn50")]
    assert dtd["method"] == "CoOp" and dtd["shots"] == 2 and dtd["variant"] == "nctx4_cscFalse_ctpend"  # log header
    assert dtd["n"] == 2 and dtd["seeds"] == [1, 2] and dtd["mean"] == pytest.approx(37.5)
    assert [r["result"] for r in dtd["runs"]] == [25.0, 50.0, None]  # the val blocks (99.0%) are ignored
    assert {r["meta_source"] for r in dtd["runs"]} == {"log header"}
    assert not dtd["complete"] and dtd["issues"] == ["seed 3 unfinished (epoch 2/3)"]
    pets_group = by_key[("OxfordPets", "rn50_ep50")]  # no header: everything from CoOp's path layout
    assert pets_group["shots"] == 1 and pets_group["seeds"] == [1] and pets_group["mean"] == 75.0
    assert pets_group["runs"][0]["meta_source"] == "path"
    assert pets_group["runs"][0]["log"].endswith("log.txt-2024-05-01-10-00-00")
    assert pets_group["issues"] == ["missing seed 2 3 (run elsewhere)"]
    assert by_key[("DescribableTextures", "rn50 (eval)")]["mean"] == pytest.approx(41.7)

    coop_stats = json.loads(run_tool("parse_results.py", out, "--format", "json", "--coop-stats").stdout)
    dtd = next(g for g in coop_stats if g["config"] == "rn50")
    assert dtd["std"] == pytest.approx(12.5)  # CoOp's parse_test_res.py: "* accuracy: 37.50% +- 12.50%"
    assert dtd["ci95"] == pytest.approx(1.96 * 12.5 / 2 ** 0.5)

    table = markdown_rows(run_tool("parse_results.py", out).stdout)
    row = next(r for r in table if r["config"] == "rn50")
    assert (row["mean"], row["std"], row["n"]) == ("37.50", "17.68", "2")  # sample std: 12.5 * sqrt(2)
    assert row["note"] == "INCOMPLETE: seed 3 unfinished (epoch 2/3)"


def test_parse_results_splits_runs_whose_settings_differ(tmp_path):
    """Same config file, different resolved settings (another OPTIM.MAX_EPOCH): two rows naming the key;
    a TAG variant folder (<CFG>_<TAG>_<N>shots) is a row of its own."""
    out = tmp_path / "output"
    for root, epochs, folder in (("a", 3, "rn50_2shots"), ("b", 5, "rn50_2shots"), ("c", 5, "rn50_long_2shots")):
        run = out / root / "dtd" / "CoOp" / folder / "nctx4_cscFalse_ctpend" / "seed1"
        write(run / "log.txt", coop_log(str(run), 1, 25.0 if epochs == 3 else 50.0))
        config = COOP_CONFIG.format(out=run, seed=1, final="last_step").replace("MAX_EPOCH: 3", f"MAX_EPOCH: {epochs}")
        (run / "config.yaml").write_text(config)
        write_record(run, {"trainer": "CoOp", "config": "rn50", "eval_only": False, "seed": 1,
                           "results": {"test": {"accuracy": 25.0 if epochs == 3 else 50.0}},
                           "settings": result_settings(yaml.safe_load(config))})
    rows = markdown_rows(run_tool("parse_results.py", out).stdout)
    assert sorted((r["config"], r["mean"]) for r in rows) == [  # the scripts' TAG folder <CFG>_<TAG> is its own row
        ("rn50 [OPTIM.MAX_EPOCH=3]", "25.00"), ("rn50 [OPTIM.MAX_EPOCH=5]", "50.00"), ("rn50_long", "50.00")]


def test_report_tools_say_when_nothing_is_found(tmp_path):
    for tool in ("parse_results.py", "collapse_report.py"):
        proc = run_tool(tool, tmp_path, check=False)
        assert proc.returncode == 1 and "Nothing found" in proc.stderr


def test_collapse_report_uses_saved_subprompt_similarities(tmp_path):
    """A run whose summary carries per-class sub-prompt cosines: table values and heatmap without rebuilding."""
    run = tmp_path / "runs" / "stanford_cars" / "MixPrompt" / "original_16shots" / "k2" / "seed1"
    run.mkdir(parents=True)
    epochs = [{"K": 2, "epoch": e, "num_classes": 2, "offset_cos": 0.1 * e, "feature_cos": 0.9 + 0.03 * e,
               "eff_k": 2.0 - 0.5 * e, "top1_share": 0.5 + 0.25 * e, "dead": 0.5 * e, "collapsed_frac": 0.5 * e,
               "collapsed": e == 2, "tau": 1.0 / e, "rule": "class collapsed if feature_cos >= 0.98 or top1_share "
               ">= 0.9; run collapsed if >= 50% of classes are",
               "per_class": {"usage_hard": [[1.0, 0.0], [0.5, 0.5]], "labels": [0, 1]}} for e in (1, 2)]
    (run / "diagnostics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in epochs))
    summary = dict(epochs[-1], classnames=["Acura RL Sedan 2012", "AM General Hummer SUV 2000"])
    summary["per_class"] = dict(summary["per_class"], subprompt_cos=[[[1.0, 0.99], [0.99, 1.0]],
                                                                     [[1.0, 0.2], [0.2, 1.0]]])
    (run / "diagnostics_summary.json").write_text(json.dumps(summary))
    proc = run_tool("collapse_report.py", tmp_path / "runs", "--plot", tmp_path / "plots")
    (row,) = markdown_rows(proc.stdout)
    assert row == {"run": "stanford_cars/MixPrompt/original_16shots/k2/seed1", "dataset": "StanfordCars",
                   "K": "2", "epoch": "2", "offset_cos": "0.2000", "feature_cos": "0.9600", "eff_k": "1.000",
                   "top1_share": "1.000", "dead": "1.00", "collapsed": "yes (2/2 classes)"}
    assert "no sub-prompt heatmap" not in proc.stderr
    stem = "stanford_cars__MixPrompt__original_16shots__k2__seed1"
    for kind in ("diagnostics", "subprompt_cos", "usage"):
        check_png(tmp_path / "plots" / f"{stem}_{kind}.png")


def test_parse_results_says_when_fewer_shots_were_used_than_asked(tmp_path):
    """A run asked for 100 shots of a dataset with 6 images per class: the record says what was used, the
    table's note shows it."""
    out = tmp_path / "output"
    for seed in (1, 2):
        run = out / "stanford_cars" / "CoOp" / "vit_b16_ep50_100shots" / "nctx16_cscFalse_ctpend" / f"seed{seed}"
        run.mkdir(parents=True)
        write_record(run, {"trainer": "CoOp", "dataset": "StanfordCars", "config": "vit_b16_ep50", "shots": 100,
                           "seed": seed, "eval_only": False, "results": {"test": {"accuracy": 40.0 + seed}},
                           "shots_used": {"min": 6, "max": 6, "requested": 100}, "settings": {}})
    (group,) = json.loads(run_tool("parse_results.py", out, "--format", "json").stdout)
    assert group["shots"] == 100 and group["n"] == 2 and group["mean"] == pytest.approx(41.5)
    assert group["complete"] and group["shots_note"] == "used 6 training images per class, not 100"
    assert "used 6 training images per class, not 100" in run_tool("parse_results.py", out).stdout


def test_feature_cache_settings_do_not_split_an_experiment():
    """The caches hold the encoder's own features: runs that differ only in FEATURE_CACHE_EVAL, its memory
    bound or its folder are seeds of one experiment; FEATURE_CACHE_VIEWS (augmented views) is not."""
    from trainers.cli import build_parser, setup_cfg
    from trainers.runs import result_settings

    def settings(*opts):
        config = str(REPO_ROOT / "configs/trainers/CoOp/vit_b16_ep50.yaml")
        args = build_parser().parse_args(["--trainer", "CoOp", "--config-file", config, *opts])
        return result_settings(setup_cfg(args))

    plain = settings()
    assert settings("TRAINER.COOP.FEATURE_CACHE_EVAL", "False", "TRAINER.COOP.FEATURE_CACHE_EVAL_MAX_MB", "64",
                    "TRAINER.COOP.FEATURE_CACHE_DIR", "/tmp/cache") == plain
    assert settings("TRAINER.COOP.FEATURE_CACHE_VIEWS", "4") != plain


def test_settings_written_before_a_key_existed_read_as_the_value_they_ran_with():
    """A MixPrompt record written before SINKHORN_POWER existed ran the balanced E-step (power 1): it reads
    as today's defaults, not as other settings; an undeclared missing key stays missing, and a record's own
    value is never overwritten."""
    from trainers.cli import build_parser, setup_cfg
    from trainers.runs import complete_settings

    config = str(REPO_ROOT / "configs/trainers/MixPrompt/vit_b16.yaml")
    today = result_settings(setup_cfg(build_parser().parse_args(["--trainer", "MixPrompt", "--config-file", config])))
    older = {k: v for k, v in today.items()
             if k not in ("TRAINER.MIXPROMPT.SINKHORN_POWER", "TRAINER.MIXPROMPT.INIT_FEATURES_FILE")}
    assert complete_settings(older, "MixPrompt") == today
    assert complete_settings({**older, "TRAINER.MIXPROMPT.SINKHORN_POWER": 0.5}, "MixPrompt")[
        "TRAINER.MIXPROMPT.SINKHORN_POWER"] == 0.5
    undeclared = {k: v for k, v in today.items() if k != "TRAINER.MIXPROMPT.TAU_END"}
    assert "TRAINER.MIXPROMPT.TAU_END" not in complete_settings(undeclared, "MixPrompt")
    assert complete_settings(None, "MixPrompt") is None
    # another trainer's runs: MixPrompt's keys are not theirs to fill (CoOp's record predates TRAIN_FEATURES,
    # whose earlier value, augmented, is not today's default)
    assert complete_settings(older, "CoOp") == older
    assert complete_settings({"A": 1}, None) == {"A": 1} == complete_settings({"A": 1}, "NoSuchTrainer")


def test_parse_results_groups_runs_recorded_before_a_key_existed(tmp_path):
    """MixPrompt seed 1 recorded before TRAINER.MIXPROMPT.SINKHORN_POWER existed, seed 2 with today's 1.0:
    seeds of one experiment; a run with 0.5 is a row of its own, and so is an unfinished run (config only)
    with 0.5."""
    out = tmp_path / "output"
    power = "TRAINER.MIXPROMPT.SINKHORN_POWER"
    for root, seed, value, finished in (("a", 1, None, True), ("a", 2, 1.0, True), ("b", 1, 0.5, True),
                                        ("b", 2, 0.5, False)):
        run = out / root / "dtd" / "MixPrompt" / "rn50_2shots" / "k8" / f"seed{seed}"
        mixprompt = "  NAME: MixPrompt\n  MIXPROMPT:\n    K: 8\n" + (f"    SINKHORN_POWER: {value}\n" if value else "")
        config = COOP_CONFIG.format(out=run, seed=seed, final="last_step").replace("\nTRAINER:\n",
                                                                                  "\nTRAINER:\n" + mixprompt, 1)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(config)
        if finished:
            write(run / "log.txt", coop_log(str(run), seed, 40.0 + seed))
            settings = result_settings(yaml.safe_load(config))
            assert (power in settings) == (value is not None)
            write_record(run, {"trainer": "MixPrompt", "config": "rn50", "eval_only": False, "seed": seed,
                               "results": {"test": {"accuracy": 40.0 + seed}}, "settings": settings})
    rows = markdown_rows(run_tool("parse_results.py", out).stdout)
    assert sorted((r["config"], r["n"]) for r in rows) == [(f"rn50 [{power}=0.5]", "1"), (f"rn50 [{power}=1.0]", "2")]
