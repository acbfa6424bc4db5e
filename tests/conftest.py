"""Shared fixtures: a tiny seeded CLIP, generated Stanford Cars data, configs built like train.py's."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network for weights in tests
# Tiny models: one thread per process is faster than torch's default on a shared 2-core machine (a
# 12-epoch tiny run took 77 s with the default and 10 s with 1 thread under load); subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fake_data_module():
    return _load_script("make_fake_dataset")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from trainers.clip import save_tiny_clip

    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pt"
    save_tiny_clip(path, seed=0, arch="vit")
    return str(path)


@pytest.fixture(scope="session")
def cars_root(tmp_path_factory, fake_data_module):
    """A generated Stanford Cars root (original release format, 4 classes, 6 train / 3 test per class)."""
    root = tmp_path_factory.mktemp("data")
    fake_data_module.write_fake_stanford_cars(root, classes=4, train_per_class=6, test_per_class=3, seed=0,
                                              image_size=32)
    return str(root)


def train_args(trainer, root, output_dir, weights, config="configs/trainers/CoOp/vit_b16_ep50.yaml",
               seed=1, extra=(), opts=()):
    """The argv of a short CPU run of ``train.py`` on generated data with the tiny CLIP."""
    return [
        "--root", root, "--trainer", trainer, "--seed", str(seed),
        "--dataset-config-file", str(REPO_ROOT / "configs/datasets/stanford_cars.yaml"),
        "--config-file", str(REPO_ROOT / config), "--output-dir", output_dir, *extra,
        "MODEL.BACKBONE.NAME", weights, "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "2",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16",
        "TRAIN.PRINT_FREQ", "100", *opts,
    ]


@pytest.fixture
def build_trainer_for(tiny_clip, cars_root, tmp_path):
    """Build a trainer in-process exactly as train.py would (seeded), returning it."""
    def build(trainer, opts=(), config="configs/trainers/CoOp/vit_b16_ep50.yaml", root=None):
        import train
        from engine import build_trainer, set_random_seed

        args = train.build_parser().parse_args(
            train_args(trainer, root or cars_root, str(tmp_path / "out"), tiny_clip, config=config, opts=opts))
        cfg = train.setup_cfg(args)
        set_random_seed(cfg.SEED)
        return build_trainer(cfg)
    return build


@pytest.fixture(scope="session")
def world_clip(tmp_path_factory):
    """The tiny CLIP pretrained on the generated world with the quick recipe (about a minute), once."""
    from trainers.clip.pretrain import pretrain_tiny_clip, recipe_for

    path = tmp_path_factory.mktemp("world_weights") / "world_clip_quick.pt"
    pretrain_tiny_clip(path, recipe_for(quick=True), progress=False, threads=1)
    return str(path)
