"""A new trainer is one file and one config folder: docs/extending.md's example, installed into a copy of the
repository with no other file edited, runs through train.py, sweep.py, parse_results.py and bench.py."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

ROOT_ONLY = {"data", "weights", "output", "demo"}  # the user's folders at the top (engine/data is code)


def copy_ignored(folder, names):
    ignored = {n for n in names if n in (".git", "__pycache__") or n.startswith(".venv") or n.endswith(".egg-info")}
    if Path(folder).resolve() == REPO_ROOT.resolve():
        ignored |= {n for n in names if n in ROOT_ONLY}
    return ignored


def example_code():
    """The Python block of docs/extending.md (the example trainer)."""
    text = (REPO_ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/extending.md should hold exactly one python block: the example trainer"
    return blocks[0]


@pytest.fixture(scope="module")
def repo_with_myprompt(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "mixprompt"
    shutil.copytree(REPO_ROOT, repo, ignore=copy_ignored)
    (repo / "trainers" / "myprompt.py").write_text(example_code())
    (repo / "configs" / "trainers" / "MyPrompt").mkdir()
    shutil.copy(repo / "configs" / "trainers" / "CoOp" / "vit_b16_ep50.yaml",
                repo / "configs" / "trainers" / "MyPrompt" / "vit_b16.yaml")
    return repo


def run(repo, *argv, timeout=600):
    proc = subprocess.run([sys.executable, *map(str, argv)], cwd=repo, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_new_trainer_needs_one_file_and_one_config_folder(repo_with_myprompt, cars_root, tiny_clip, tmp_path):
    repo, out = repo_with_myprompt, tmp_path / "output"
    opts = ["MODEL.BACKBONE.NAME", tiny_clip, "OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16"]
    # the sweep plans it, with a flag from its variant key and its own layout
    plan = run(repo, "scripts/sweep.py", "--trainers", "MyPrompt", "--datasets", "stanford_cars", "--shots", "4",
               "--seeds", "1", "--shared", "False", "True", "--data", cars_root, "--output", out, "--dry-run",
               "--opts", *opts)
    assert "stanford_cars/MyPrompt/vit_b16_4shots/per_class/seed1" in plan
    assert "stanford_cars/MyPrompt/vit_b16_4shots/shared/seed1" in plan
    # the sweep runs it (train.py): each run leaves its record
    run(repo, "scripts/sweep.py", "--trainers", "MyPrompt", "--datasets", "stanford_cars", "--shots", "4",
        "--seeds", "1", "--shared", "False", "True", "--data", cars_root, "--output", out, "--opts", *opts)
    for variant in ("per_class", "shared"):
        record = json.loads((out / f"stanford_cars/MyPrompt/vit_b16_4shots/{variant}/seed1/result.json").read_text())
        assert record["trainer"] == "MyPrompt" and record["shots"] == 4 and 0 <= record["results"]["test"]["accuracy"]
    again = run(repo, "scripts/sweep.py", "--trainers", "MyPrompt", "--datasets", "stanford_cars", "--shots", "4",
                "--seeds", "1", "--shared", "False", "True", "--data", cars_root, "--output", out, "--opts", *opts)
    assert "nothing to run, every run is finished" in again
    # the report groups it by its variant
    groups = json.loads(run(repo, "scripts/parse_results.py", out, "--format", "json"))
    assert sorted((g["method"], g["variant"], g["n"]) for g in groups) == [("MyPrompt", "per_class", 1),
                                                                         ("MyPrompt", "shared", 1)]
    # the benchmark measures it
    bench = run(repo, "scripts/bench.py", "--methods", "MyPrompt", "--sections", "methods", "--classes", "4",
                "--batch", "4", "--n-ctx", "4", "--reps", "1", "--warmup", "0", "--threads", "1")
    assert re.search(r"^\s*MyPrompt\s", bench, re.M), bench
