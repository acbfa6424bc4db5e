"""Shared fixtures: a tiny seeded CLIP, generated Stanford Cars data, configs built like train.py's."""
import importlib.util
import json
import os
import re
import subprocess
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
    """``scripts/<name>.py`` as a module (its ``main`` can then run in the test's process)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fake_data_module():
    """The fake-data generators (``datasets/fake.py``) and their command line (``main``)."""
    import datasets.fake

    return datasets.fake


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
        from engine import build_trainer, set_random_seed
        from trainers.cli import build_parser, setup_cfg

        args = build_parser().parse_args(
            train_args(trainer, root or cars_root, str(tmp_path / "out"), tiny_clip, config=config, opts=opts))
        cfg = setup_cfg(args)
        set_random_seed(cfg.SEED)
        return build_trainer(cfg)
    return build


def shared_tmp_dir(tmp_path_factory, name):
    """A folder shared by every pytest-xdist worker of this run (the per-run base folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker's base folder lies in the run's
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def world_clip(tmp_path_factory):
    """The tiny CLIP pretrained on the generated world with the quick recipe (about a minute), once per run:
    the first worker to ask trains it, the others wait on the lock and load the file."""
    from filelock import FileLock

    from trainers.clip.pretrain import pretrain_tiny_clip, recipe_for

    path = shared_tmp_dir(tmp_path_factory, "world_weights") / "world_clip_quick.pt"
    with FileLock(f"{path}.lock"):
        pretrain_tiny_clip(path, recipe_for(quick=True), progress=False, threads=1)  # a no-op when present
    return str(path)


# ------------------------------------------------------------------------------------------ shared helpers
ACCURACY = re.compile(r"\* accuracy: ([\d.]+)%")


_WARM_PYTHON = {}


def warm_python():
    """The interpreter the tests hand to this repository's scripts: ``tests/warm_python.py``'s client, which
    runs them in a fork of a server that has imported torch and the trainers already (started on first use,
    one per test process); the real interpreter where that server cannot start."""
    if "client" in _WARM_PYTHON:
        return _WARM_PYTHON["client"]
    import atexit
    import shutil
    import tempfile

    import warm_python as warm

    folder = Path(tempfile.mkdtemp(prefix="warm_python_"))
    env = dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, warm.__file__, "--serve", str(folder / "socket"), str(REPO_ROOT)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    atexit.register(lambda: (shutil.rmtree(folder, ignore_errors=True), server.kill()))
    if server.stdout.readline().strip() != "ready":
        _WARM_PYTHON["client"] = sys.executable
        return sys.executable
    client = folder / "python"
    client.write_text(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {str(Path(warm.__file__).parent)!r})\n"
                      "from warm_python import client\nclient(sys.argv[1:])\n")
    client.chmod(0o755)
    os.environ.update({warm.SOCKET_ENV: str(folder / "socket"), warm.REAL_ENV: sys.executable,
                       warm.ROOT_ENV: str(REPO_ROOT)})
    _WARM_PYTHON["client"] = str(client)
    return str(client)


def run_train(args, timeout=300, check=True):
    env = dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1")
    proc = subprocess.run([warm_python(), "train.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def final_accuracy(text):
    after = text.split("Finish training")[-1]
    return float(ACCURACY.findall(after)[-1])


def bash(script_args, opts=(), timeout=300, **env):
    full_env = dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                    PYTHON=warm_python(), **env)
    return subprocess.run(["bash", *script_args, *opts], cwd=REPO_ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def skip_line(run_dir):
    return f"Oops! The results exist at {run_dir} (so skip this job)"


FAKE_WANDB = '''
import json, os

def _record(event, **data):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(), **data}) + "\\n")

class Run:
    def __init__(self, run_id):
        self.id = run_id

    def define_metric(self, name, step_metric=None):
        _record("define_metric", name=name, step_metric=step_metric)

    def log(self, row):
        _record("log", row=row)

    def finish(self):
        _record("finish")

def init(**kwargs):
    _record("init", kwargs=kwargs)
    return Run(kwargs.get("id") or "generated")
'''


def fake_wandb_env(tmp_path, log_path):
    """Environment variables that make ``import wandb`` load the recorder in a subprocess."""
    folder = tmp_path / "fake_wandb"
    folder.mkdir(exist_ok=True)
    (folder / "wandb.py").write_text(FAKE_WANDB)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "FAKE_WANDB_LOG": str(log_path)}


def wandb_events(log_path):
    with open(log_path) as f:
        return [json.loads(line) for line in f]
