"""Optional Weights & Biases logging (WANDB.*, docs/distributed.md): off by default, validated with the key in
every message, and when on, every TensorBoard scalar also goes to W&B with the resolved config.

``wandb`` is not a dependency: a recorder module named ``wandb`` (``FAKE_WANDB``) is put on the path and
writes each call as one JSON line to the file named by FAKE_WANDB_LOG.
"""
import glob
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, fake_wandb_env, train_args, wandb_events
from engine.config import get_cfg_default
from engine.errors import ConfigError
from engine.utils import WandbLogger, check_wandb_cfg, start_wandb



def run_train_with(args, env_extra):
    env = dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", **env_extra)
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch):
    """The recorder imported as ``wandb`` in this process; returns the path of its event log."""
    log_path = tmp_path / "wandb_events.jsonl"
    for key, value in fake_wandb_env(tmp_path, log_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path / "fake_wandb"))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    return log_path


def _cfg(**wandb):
    cfg = get_cfg_default()
    for key, value in wandb.items():
        cfg.WANDB[key] = value
    return cfg


def test_off_by_default_and_nothing_is_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail
    cfg = get_cfg_default()
    assert cfg.WANDB.ENABLED is False and cfg.WANDB.MODE == "online"
    check_wandb_cfg(cfg)
    assert start_wandb(cfg) is None


@pytest.mark.parametrize("settings, message", [
    ({"MODE": "cloud"}, 'WANDB.MODE: "cloud" is not one of'),
    ({"ENABLED": True, "PROJECT": " "}, "WANDB.PROJECT: empty"),
    ({"TAGS": ("ok", "")}, "WANDB.TAGS: must be a list of non-empty strings"),
    ({"ENTITY": 3}, "WANDB.ENTITY: must be a string"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        check_wandb_cfg(_cfg(**settings))


def test_enabled_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"WANDB.ENABLED is True but the wandb package cannot be imported .*"
                                          r"pip install wandb"):
        check_wandb_cfg(_cfg(ENABLED=True))


def test_each_tag_prefix_gets_its_own_step_axis(fake_wandb, tmp_path):
    cfg = _cfg(ENABLED=True, MODE="offline", TAGS=("a",))
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    logger = start_wandb(cfg)
    assert isinstance(logger, WandbLogger)
    logger.log_scalar("train/loss", 1.5, 0)
    logger.log_scalar("train/lr", 0.1, 1)
    logger.log_scalar("test/accuracy", 50.0, 1)
    logger.finish()
    events = wandb_events(fake_wandb)
    init = events[0]["kwargs"]
    assert init["mode"] == "offline" and init["tags"] == ["a"] and init["dir"] == cfg.OUTPUT_DIR
    assert init["resume"] == "allow" and init["id"] == open(tmp_path / "run" / "wandb_run_id").read().strip()
    assert [(e["name"], e["step_metric"]) for e in events if e["event"] == "define_metric"] == [
        ("train/step", None), ("train/*", "train/step"), ("test/step", None), ("test/*", "test/step")]
    assert [e["row"] for e in events if e["event"] == "log"] == [
        {"train/loss": 1.5, "train/step": 0}, {"train/lr": 0.1, "train/step": 1},
        {"test/accuracy": 50.0, "test/step": 1}]
    assert events[-1]["event"] == "finish"
    assert start_wandb(cfg).run.id == init["id"]  # a resumed run continues the same W&B run


def _tensorboard_scalars(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))[0])
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_py_sends_every_tensorboard_scalar_and_the_resolved_config(tiny_clip, cars_root, tmp_path):
    log_path = tmp_path / "events.jsonl"
    out = str(tmp_path / "run")
    opts = ["WANDB.ENABLED", "True", "WANDB.MODE", "offline", "WANDB.PROJECT", "cars", "WANDB.TAGS", "['coop']"]
    run_train_with(train_args("CoOp", cars_root, out, tiny_clip, opts=opts), fake_wandb_env(tmp_path, log_path))
    events = wandb_events(log_path)
    init = events[0]
    assert init["event"] == "init" and [e["event"] for e in events].count("init") == 1
    kwargs = init["kwargs"]
    assert (kwargs["project"], kwargs["mode"], kwargs["tags"], kwargs["name"]) == ("cars", "offline", ["coop"], out)
    assert kwargs["config"]["OPTIM"]["MAX_EPOCH"] == 2 and kwargs["config"]["TRAINER"]["NAME"] == "CoOp"
    assert kwargs["config"]["WANDB"]["ENABLED"] is True
    assert events[-1]["event"] == "finish"

    logged = {}
    for e in events:
        if e["event"] == "log":
            (tag, value), = [(k, v) for k, v in e["row"].items() if not k.endswith("/step")]
            step = e["row"][tag.split("/")[0] + "/step"]
            logged.setdefault(tag, []).append((step, value))
    board = _tensorboard_scalars(out)
    assert logged.keys() == board.keys() and {"train/loss", "test/accuracy"} <= set(logged)
    for tag, points in board.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points]
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6)
