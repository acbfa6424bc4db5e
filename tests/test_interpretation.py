"""What did each sub-prompt learn: scripts/subprompt_gallery.py and scripts/interpret_prompt.py through their
command lines, on MixPrompt runs trained with train.py (generated SyntheticModes data, tiny CLIP) and on a
CoOp run folder whose class-specific context is made of known words; the run-folder loader they share
(trainers/run_folder.py) through collapse_report.py's heatmap rebuild; the one-line errors a user gets
for a missing checkpoint, an unknown class, moved data and a feature-space MixPrompt run."""
import json
import os
import shutil
import subprocess

import pytest
import torch

from conftest import REPO_ROOT, _load_script, warm_python

SYNTHETIC = ["DATASET.SYNTHETIC.NUM_CLASSES", "3", "DATASET.SYNTHETIC.NUM_MODES", "2",
             "DATASET.SYNTHETIC.IMAGES_PER_MODE", "4", "DATASET.SYNTHETIC.TEST_PER_MODE", "1"]


def run_script(name, *args):
    return subprocess.run([warm_python(), f"scripts/{name}", *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env=script_env())


def script_env():
    return dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")


def ok(proc):
    assert proc.returncode == 0, f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def user_error(proc):
    """Exit status 2 and one ERROR line on stderr, no traceback; returns that line."""
    assert proc.returncode == 2, f"{proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def run_main(capsys, name, *args):
    """A script's ``main(argv)`` in this process (same command line, no interpreter start-up):
    (exit status, stdout, stderr)."""
    capsys.readouterr()  # what the test itself printed before
    status = _load_script(name).main(list(map(str, args)))
    out = capsys.readouterr()
    return status, out.out, out.err


def error_line(status, stdout, stderr):
    assert status == 2 and not stdout and stderr.startswith("ERROR: ") and stderr.count("\n") == 1, stderr
    return stderr.strip()


def train(out, data, weights, epochs, opts=()):
    argv = ["train.py", "--root", data, "--trainer", "MixPrompt", "--seed", "1",
            "--dataset-config-file", REPO_ROOT / "configs/datasets/synthetic_modes.yaml",
            "--config-file", REPO_ROOT / "configs/trainers/MixPrompt/vit_b16.yaml", "--output-dir", out,
            "MODEL.BACKBONE.NAME", weights, "OPTIM.MAX_EPOCH", str(epochs), "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAIN.PRINT_FREQ", "100", "TRAINER.MIXPROMPT.K", "2",
            *SYNTHETIC, *opts]
    ok(subprocess.run([warm_python(), *map(str, argv)], cwd=REPO_ROOT, capture_output=True, text=True,
                      timeout=300, env=script_env()))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip):
    base = tmp_path_factory.mktemp("interpretation")
    data = base / "data"
    feature = train(base / "feature", data, tiny_clip, epochs=3)  # the fixed defaults: feature space
    token = train(base / "token", data, tiny_clip, epochs=1,
                  opts=["TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.INIT", "random",
                        "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002", "OPTIM.WARMUP_EPOCH", "1"])  # CoOp's recipe
    return {"base": base, "data": data, "feature": feature, "token": token}


# ------------------------------------------------------------------------------------------ gallery
def test_gallery_groups_each_image_under_the_subprompt_training_assigned_it(runs):
    run, out = runs["feature"], runs["base"] / "gallery"
    proc = ok(run_script("subprompt_gallery.py", run, "--out", out, "--top", "3"))
    gallery = json.loads((out / "gallery.json").read_text())
    summary = json.loads((run / "diagnostics_summary.json").read_text())
    # the trainer's own end-of-training assignment of every training image (arg-max responsibility)
    trained = {p: (label, k) for p, label, k in zip(*(summary["assignments"][key]
                                                      for key in ("impath", "label", "subprompt")))}
    assert gallery["epoch"] == 3 and gallery["split"] == "train"
    assert [c["label"] for c in gallery["classes"]] == [0, 1, 2]  # 3 classes: all shown by default
    index = json.loads(next((runs["data"] / "synthetic_modes").glob("*/index.json")).read_text())
    true_mode = {rel.split("/")[-1]: mode for rel, _, mode in index["train"]}
    for c in gallery["classes"]:
        usage = summary["per_class"]["usage_hard"][c["label"]]
        assert c["usage"] == pytest.approx(usage)
        assert c["n_images"] == 8 and c["eff_k"] == pytest.approx(summary["per_class"]["eff_k"][c["label"]], abs=1e-4)
        for row in c["subprompts"]:
            assert [trained[im["impath"]] for im in row["images"]] == [(c["label"], row["subprompt"])] * row["count"]
            cosines = [im["cos"] for im in row["images"]]
            assert cosines == sorted(cosines, reverse=True)  # best-scoring first
            assert all(im["mode"] == true_mode[im["impath"].split("/")[-1]] for im in row["images"])
        assert flat(c["subprompt_cos"]) == pytest.approx(flat(summary["per_class"]["subprompt_cos"][c["label"]]),
                                                         abs=1e-3)
        assert (out / c["png"]).is_file() and f'src="{c["png"]}"' in (out / "index.html").read_text()
        check_png(out / c["png"])
    assert "shape 0" in proc.stdout and "index.html" in proc.stdout


def flat(matrix):
    return [value for row in matrix for value in row]


def check_png(path):
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 150
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50, f"{path} looks blank"


def copy_run(run, dest, old_root=None, new_root=None):
    shutil.copytree(run, dest)
    if old_root is not None:
        config = dest / "config.yaml"
        config.write_text(config.read_text().replace(str(old_root), str(new_root)))
    return dest


def test_gallery_of_a_moved_run_chooses_classes_by_name_and_collapse(runs):
    """The data moved: a one-line error naming the missing path and --root; with --root, the chosen classes."""
    base, run = runs["base"], runs["feature"]
    moved = copy_run(run, base / "moved", runs["data"], base / "gone")
    line = user_error(run_script("subprompt_gallery.py", moved, "--out", base / "g1"))
    assert str(base / "gone") in line and "pass --root" in line

    per_class = json.loads((run / "diagnostics_summary.json").read_text())["per_class"]
    most = min(per_class["labels"], key=lambda c: (per_class["eff_k"][c], -per_class["feature_cos"][c], c))
    out = base / "chosen"
    ok(run_script("subprompt_gallery.py", moved, "--root", runs["data"], "--out", out, "--classes", "shape 2",
                  "--most-collapsed", "1", "--split", "test"))
    gallery = json.loads((out / "gallery.json").read_text())
    assert [c["label"] for c in gallery["classes"]] == list(dict.fromkeys([2, most]))
    assert gallery["split"] == "test" and all(c["n_images"] == 2 for c in gallery["classes"])  # 2 modes x 1
    assert sorted(p.name for p in out.glob("*.png")) == sorted(c["png"] for c in gallery["classes"])


def test_gallery_errors_are_one_line_and_name_the_fix(runs, capsys):
    run, out = runs["feature"], runs["base"] / "errors"
    line = error_line(*run_main(capsys, "subprompt_gallery", run, "--out", out, "--classes", "shape 9"))
    assert '"shape 9" not found' in line and "'shape 0'" in line and "--class-index" in line
    line = error_line(*run_main(capsys, "subprompt_gallery", run, "--out", out, "--class-index", "7"))
    assert "out of range" in line and "3 classes" in line
    line = error_line(*run_main(capsys, "subprompt_gallery", run, "--load-epoch", "7", "--out", out))
    assert "model.pth.tar-7" in line and "saved epochs: 3" in line
    line = error_line(*run_main(capsys, "subprompt_gallery", runs["base"] / "nowhere"))
    assert "is not a folder" in line
    assert not out.exists()


def test_missing_checkpoint_is_a_one_line_error(runs, capsys):
    bare = copy_run(runs["token"], runs["base"] / "no_checkpoint")
    shutil.rmtree(bare / "prompt_learner")
    line = user_error(run_script("interpret_prompt.py", bare))
    assert "no checkpoint" in line and "prompt_learner" in line
    line = error_line(*run_main(capsys, "subprompt_gallery", bare))
    assert "no checkpoint" in line and "prompt_learner" in line


def test_collapse_report_rebuilds_heatmaps_through_the_run_folder(runs):
    report = _load_script("collapse_report")
    run_dir = runs["feature"]
    run = report.load_diagnostic_run(str(run_dir), str(runs["base"]))
    saved = run["summary"]["per_class"].pop("subprompt_cos")  # as for a run written before they were saved
    matrices, names, source = report.subprompt_cos(run)
    assert source == "rebuilt from the checkpoint of epoch 3"
    assert names == ["shape 0", "shape 1", "shape 2"]
    for label, matrix in enumerate(saved):
        assert flat(matrices[label]) == pytest.approx(flat(matrix), abs=1e-3)
    run["dir"] = str(runs["base"] / "nowhere")
    matrices, _, source = report.subprompt_cos(run)
    assert matrices is None and "not a folder" in source


def test_runs_started_from_features_or_tuned_kmeans_reload_without_their_initialisation(runs, tiny_clip):
    """The run-folder loader replaces the initialisation by the checkpoint: a run started from INIT features
    reloads after its file is gone, one with KMEANS_RESTARTS, CLUSTERING and SINKHORN_SHARES clusters set reloads
    too (keys of an INIT choice the loader does not use)."""
    from trainers.run_folder import load_trained

    n_cls, n_sub, dim = load_trained(runs["feature"], root=runs["data"]).model.prompt_learner.offsets.shape
    start = runs["base"] / "start.pt"
    torch.save(torch.randn(n_cls, n_sub, dim, generator=torch.Generator().manual_seed(0)), start)
    started = train(runs["base"] / "from_features", runs["data"], tiny_clip, epochs=1,
                    opts=["TRAINER.MIXPROMPT.INIT", "features", "TRAINER.MIXPROMPT.INIT_FEATURES_FILE", start])
    start.unlink()
    tuned = train(runs["base"] / "kmeans_restarts", runs["data"], tiny_clip, epochs=1,
                  opts=["TRAINER.MIXPROMPT.KMEANS_RESTARTS", "2", "TRAINER.MIXPROMPT.CLUSTERING", "kmeans",
                        "TRAINER.MIXPROMPT.SINKHORN_SHARES", "clusters"])
    for run_dir in (started, tuned):
        trainer = load_trained(run_dir, root=runs["data"])
        assert trainer.loaded_epoch == 1


def saved_before(run_dir, copy, *keys):
    """A copy of ``run_dir`` whose saved configs lack the TRAINER.MIXPROMPT ``keys``, as a run written before the
    keys existed."""
    from trainers.run_folder import CONFIG_NAMES

    shutil.copytree(run_dir, copy)
    for name in CONFIG_NAMES:
        if (copy / name).is_file():
            lines = (copy / name).read_text().splitlines(keepends=True)
            assert all(any(line.strip().startswith(f"{key}:") for line in lines) for key in keys)
            (copy / name).write_text("".join(line for line in lines
                                             if not any(line.strip().startswith(f"{key}:") for key in keys)))
    return copy


def saved_before_zeroshot_weight(run_dir, copy):
    return saved_before(run_dir, copy, "ZEROSHOT_WEIGHT")


@pytest.mark.parametrize("space", ["feature", "token"])
def test_a_run_saved_before_a_key_existed_reloads_as_it_was_trained(runs, tmp_path, space):
    """A run whose saved config predates a key that changes evaluation (MixPrompt's ZEROSHOT_WEIGHT) is rebuilt
    with the value it was trained with (keys_added_later: no residual), not with today's default."""
    from trainers.run_folder import load_trained

    old = saved_before_zeroshot_weight(runs[space], tmp_path / "old_run")
    assert load_trained(runs[space], root=runs["data"]).model.zeroshot_weight == 0.5
    assert load_trained(old, root=runs["data"]).model.zeroshot_weight == 0.0


def test_eval_only_of_a_model_saved_before_a_key_existed_uses_the_value_it_was_trained_with(runs, tmp_path):
    """train.py --eval-only --model-dir reads the model folder's saved config: a key added since is set to the
    value the model was trained with, and said so; a key given on the command line wins."""
    import yaml

    old = saved_before_zeroshot_weight(runs["feature"], tmp_path / "old_run")

    def evaluate(out, *opts):
        ok(subprocess.run([warm_python(), "train.py", "--config-file", old / "config.yaml", "--root", runs["data"],
                           "--eval-only", "--model-dir", old, "--load-epoch", "3", "--output-dir", out, *opts],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=script_env()))
        return yaml.safe_load((out / "config.yaml").read_text())["TRAINER"]["MIXPROMPT"]["ZEROSHOT_WEIGHT"]

    assert evaluate(tmp_path / "eval") == 0.0
    assert "trained before TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT = 0.0 existed" in (tmp_path / "eval" / "log.txt").read_text()
    assert evaluate(tmp_path / "eval_given", "TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT", "0.25") == 0.25


def test_eval_only_of_a_token_space_model_saved_before_the_clustering_keys_runs(runs, tmp_path):
    """A token-space model saved before CLUSTERING and SINKHORN_SHARES existed is evaluated with the values it
    behaved as (kmeans, equal), which its space never reads: accepted, not refused as keys of another mode."""
    import yaml

    old = saved_before(runs["token"], tmp_path / "old_token", "CLUSTERING", "SINKHORN_SHARES", "ZEROSHOT_WEIGHT")
    out = tmp_path / "eval"
    ok(subprocess.run([warm_python(), "train.py", "--config-file", old / "config.yaml", "--root", runs["data"],
                       "--eval-only", "--model-dir", old, "--load-epoch", "1", "--output-dir", out],
                      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=script_env()))
    saved = yaml.safe_load((out / "config.yaml").read_text())["TRAINER"]["MIXPROMPT"]
    assert (saved["CLUSTERING"], saved["SINKHORN_SHARES"], saved["ZEROSHOT_WEIGHT"]) == ("kmeans", "equal", 0.0)


# ------------------------------------------------------------------------------------------ nearest tokens
def test_interpret_reads_mixprompt_token_context_and_subprompts(runs, capsys):
    proc = ok(run_script("interpret_prompt.py", runs["token"], "--json", "--topk", "3", "--class-index", "1", "2"))
    result = json.loads(proc.stdout)
    ctx, *subprompts = result["prompts"]
    # CTX_INIT "a photo of a", one epoch of CoOp's constant warm-up (lr 1e-5): still next to its words
    assert ctx["reads_as"] == "a photo of a" and [p["position"] for p in ctx["positions"]] == [1, 2, 3, 4]
    assert ctx["positions"][1]["nearest"][0]["token"] == "photo</w>"
    assert all(len(p["nearest"]) == 3 for p in ctx["positions"])
    assert ctx["positions"][0]["nearest"][0]["euclidean"] < 0.05 < ctx["positions"][0]["nearest"][1]["euclidean"]
    assert [(p["class"], p["subprompt"]) for p in subprompts] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(p["classname"] == f"shape {p['class']}" and p["offset_norm"] > 0 for p in subprompts)
    status, table, _ = run_main(capsys, "interpret_prompt", runs["token"])
    assert status == 0
    assert "reads as: 'a photo of a'" in table and "'shape 0' (class 0), sub-prompt 2" in table
    assert "'shape 1'" not in table  # default: the first class only


def test_interpret_decodes_known_words_of_a_class_specific_coop_context(runs, tiny_clip, capsys):
    from yacs.config import CfgNode

    from trainers.clip import TextEncoder, load_clip
    from trainers.clip.text import _bpe

    run = runs["base"] / "coop_csc"
    (run / "prompt_learner").mkdir(parents=True)
    cfg = CfgNode.load_cfg((runs["feature"] / "config.yaml").read_text())
    cfg.TRAINER.NAME, cfg.TRAINER.COOP.CSC = "CoOp", True
    (run / "config.yaml").write_text(cfg.dump())
    bpe = _bpe()
    words = ["red car", "blue sky", "green tree"]  # the context of class 0, 1, 2
    ids = torch.tensor([bpe.encode(w) for w in words])  # (C, M)
    embedding = TextEncoder(load_clip(tiny_clip).model).token_embedding.weight.detach()  # (V, W)
    torch.save({"state_dict": {"ctx": embedding[ids] + 1e-4}, "epoch": 2}, run / "prompt_learner" / "model.pth.tar-2")
    (run / "prompt_learner" / "checkpoint").write_text("model.pth.tar-2\n")

    result = json.loads(ok(run_script("interpret_prompt.py", run, "--json", "--classes", "Shape 2", "--metric",
                                      "cosine")).stdout)
    (prompt,) = result["prompts"]
    assert prompt["class"] == 2 and prompt["classname"] == "shape 2" and prompt["reads_as"] == "green tree"
    assert [p["nearest"][0]["token"] for p in prompt["positions"]] == ["green</w>", "tree</w>"]
    assert prompt["positions"][0]["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert result["trainer"] == "CoOp" and result["epoch"] == 2 and result["metric"] == "cosine"
    line = error_line(*run_main(capsys, "interpret_prompt", run, "--classes", "truck"))
    assert '"truck" not found' in line and "'shape 1'" in line


def test_interpret_refuses_feature_space_mixprompt(runs):
    line = user_error(run_script("interpret_prompt.py", runs["feature"]))
    assert "feature space" in line and "no context vectors" in line and "subprompt_gallery.py" in line
