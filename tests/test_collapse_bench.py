"""The collapse benchmark: a dataset with known modes, mode-recovery metrics, and the CLI's verdict."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, _load_script


@pytest.fixture(scope="module")
def bench():
    return _load_script("collapse_bench")


def test_nmi_and_purity():
    from trainers.mixprompt_diagnostics import nmi, purity

    truth = [0, 0, 1, 1, 2, 2]
    assert nmi(truth, [5, 5, 3, 3, 9, 9]) == pytest.approx(1.0)  # a relabelled perfect recovery
    assert nmi(truth, [0] * 6) == pytest.approx(0.0)  # collapse: one sub-prompt takes everything
    assert purity(truth, [0] * 6) == pytest.approx(1 / 3)
    assert purity(truth, list(range(6))) == pytest.approx(1.0)  # over-splitting is pure...
    assert nmi(truth, list(range(6))) < 0.8  # ...but NMI sees it


def _dataset(tmp_path, **knobs):
    from engine import set_random_seed
    from trainers.cli import build_parser, setup_cfg

    opts = ["MODEL.BACKBONE.NAME", "unused"]
    for key, value in knobs.items():
        opts += [f"DATASET.SYNTHETIC.{key}", str(value)]
    args = build_parser().parse_args([
        "--root", str(tmp_path), "--trainer", "CoOp", "--seed", "1",
        "--dataset-config-file", str(REPO_ROOT / "configs/datasets/synthetic_modes.yaml"), *opts])
    cfg = setup_cfg(args)
    set_random_seed(1)
    from datasets.synthetic_modes import SyntheticModes
    return SyntheticModes(cfg)


def test_synthetic_dataset_has_known_modes_imbalance_and_separation(tmp_path):
    from datasets.synthetic_modes import mode_of

    data = _dataset(tmp_path, NUM_CLASSES=3, NUM_MODES=3, IMAGES_PER_MODE=4, IMBALANCE=0.25, IMAGE_SIZE=16)
    modes = mode_of(data.dataset_dir)
    per_class_mode = {}
    for item in data.train_x:
        key = (item.label, modes[item.impath])
        per_class_mode[key] = per_class_mode.get(key, 0) + 1
    assert [per_class_mode[(0, m)] for m in range(3)] == [4, 2, 1]  # 4 * 0.25 ** (m / 2)
    assert data.num_classes == 3 and len(data.test) == 3 * 3 * 4 and not data.val
    again = _dataset(tmp_path, NUM_CLASSES=3, NUM_MODES=3, IMAGES_PER_MODE=4, IMBALANCE=0.25, IMAGE_SIZE=16)
    assert [d.impath for d in again.train_x] == [d.impath for d in data.train_x]  # generated once, reused

    def mode_gap(separation, folder):
        d = _dataset(folder, NUM_CLASSES=1, NUM_MODES=2, IMAGES_PER_MODE=1, MODE_SEPARATION=separation)
        m = mode_of(d.dataset_dir)
        imgs = {m[x.impath]: np.asarray(Image.open(x.impath), dtype=float) for x in d.train_x}
        return np.abs(imgs[0] - imgs[1]).mean()

    assert mode_gap(0.0, tmp_path / "a") < 15 < mode_gap(1.0, tmp_path / "b")  # noise only vs distinct looks


def test_bench_cli_original_collapses_fixed_recovers_modes(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "scripts/collapse_bench.py", "--K", "4", "--seeds", "1", "--settings", "original", "fixed",
         "--classes", "3", "--modes", "3", "--images-per-mode", "6", "--test-per-mode", "2", "--epochs", "8",
         "--batch-size", "8", "--out", str(out), "--json", str(out / "bench.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| setting" in proc.stdout and "NMI" in proc.stdout
    rows = {r["setting"]: r for r in json.load(open(out / "bench.json"))["table"]}
    original, fixed = rows["original"], rows["fixed"]
    assert original["collapsed"] == 1.0 and original["eff_k"] < 1.3 and original["nmi"] < 0.2
    assert fixed["collapsed"] == 0.0 and fixed["eff_k"] > 2.0 and fixed["nmi"] > original["nmi"] + 0.3
    # a second call reuses the finished runs instead of training again
    again = subprocess.run(
        [sys.executable, "scripts/collapse_bench.py", "--K", "4", "--seeds", "1", "--settings", "original",
         "--classes", "3", "--modes", "3", "--images-per-mode", "6", "--test-per-mode", "2", "--epochs", "8",
         "--batch-size", "8", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert "(reused)" in again.stdout
