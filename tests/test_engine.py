"""Built-in engine behaviour users rely on: schedules, registries, metrics, few-shot draws, checkpoints."""
import math
import os
import random

import pytest
import torch

from engine.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from engine.config import get_cfg_default
from engine.data.datasets import DatasetBase, Datum
from engine.errors import ConfigError
from engine.evaluation import macro_f1
from engine.optim import build_lr_scheduler, build_optimizer
from engine.registry import Registry


def _optim_cfg(**overrides):
    cfg = get_cfg_default().OPTIM
    cfg.NAME = "sgd"
    cfg.LR = 0.002
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _lrs(optim_cfg, epochs):
    param = torch.nn.Parameter(torch.zeros(1))
    optim = build_optimizer([param], optim_cfg)
    sched = build_lr_scheduler(optim, optim_cfg)
    values = []
    for _ in range(epochs):
        values.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    return values


def test_coop_recipe_schedule_matches_dassl():
    # CoOp: cosine, 1 constant warmup epoch at 1e-5; epoch k>=2 runs at cos(pi*(k-2)/E) (reference §4.2)
    cfg = _optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=50, WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    lrs = _lrs(cfg, 50)
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[1] == pytest.approx(0.002)
    assert lrs[2] == pytest.approx(0.0019980, abs=1e-7)
    assert lrs[49] == pytest.approx(0.5 * 0.002 * (1 + math.cos(math.pi * 48 / 50)))


@pytest.mark.parametrize("warmup_type, expected", [
    ("constant", [1e-5, 1e-5, 0.002, 0.001809, 0.001309]),
    ("linear", [1e-5, 0.001, 0.002, 0.001809, 0.001309]),
])
def test_warmup_sequences_match_observed_dassl(warmup_type, expected):
    cfg = _optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=2, WARMUP_TYPE=warmup_type)
    assert _lrs(cfg, 5) == pytest.approx(expected, abs=1e-6)


def test_step_schedulers():
    assert _lrs(_optim_cfg(LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5), 5) == pytest.approx(
        [0.002, 0.002, 0.001, 0.001, 0.0005])
    assert _lrs(_optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=(1, 3), GAMMA=0.1), 4) == pytest.approx(
        [0.002, 0.0002, 0.0002, 0.00002])


def test_scheduler_resumes_exactly_from_a_weights_only_checkpoint(tmp_path):
    cfg = _optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=6, WARMUP_EPOCH=1, WARMUP_TYPE="linear")
    reference = _lrs(cfg, 6)
    param = torch.nn.Parameter(torch.zeros(1))
    optim = build_optimizer([param], cfg)
    sched = build_lr_scheduler(optim, cfg)
    for _ in range(3):
        optim.step()
        sched.step()
    path = tmp_path / "ckpt.pth"
    torch.save({"scheduler": sched.state_dict(), "optimizer": optim.state_dict()}, path)
    state = torch.load(path, weights_only=True)  # plain data only: loads on torch >= 2.6
    param2 = torch.nn.Parameter(torch.zeros(1))
    optim2 = build_optimizer([param2], cfg)
    sched2 = build_lr_scheduler(optim2, cfg)
    optim2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    resumed = []
    for _ in range(3):
        resumed.append(optim2.param_groups[0]["lr"])
        optim2.step()
        sched2.step()
    assert resumed == pytest.approx(reference[3:])


def test_resuming_with_more_epochs_follows_the_new_schedule():
    short = _optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=2)
    param = torch.nn.Parameter(torch.zeros(1))
    optim = build_optimizer([param], short)
    sched = build_lr_scheduler(optim, short)
    optim.step()
    sched.step()
    longer = _optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=4)
    optim2 = build_optimizer([param], longer)
    sched2 = build_lr_scheduler(optim2, longer)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 1 and sched2.max_epoch == 4.0
    assert optim2.param_groups[0]["lr"] == pytest.approx(_lrs(longer, 2)[1])


def test_bad_scheduler_settings_name_the_key():
    with pytest.raises(ConfigError, match="OPTIM.LR_SCHEDULER"):
        _lrs(_optim_cfg(LR_SCHEDULER="poly"), 1)
    with pytest.raises(ConfigError, match="OPTIM.STEPSIZE"):
        _lrs(_optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=(-1.5,)), 1)
    with pytest.raises(ConfigError, match="OPTIM.NAME"):
        _lrs(_optim_cfg(NAME="lion"), 1)


def test_registry_rejects_duplicates_and_unknown_names():
    reg = Registry("TEST")

    @reg.register()
    class Foo:
        pass

    assert reg.get("Foo") is Foo
    with pytest.raises(KeyError, match="already registered"):
        reg.register(type("Foo", (), {}))
    with pytest.raises(KeyError, match="does not exist"):
        reg.get("Bar")


def test_macro_f1_over_labels_present():
    # label 0: tp=1 fp=0 fn=1 -> 2/3; label 1: tp=1 -> 1.0; label 2 is only predicted: not averaged
    assert macro_f1([0, 0, 1], [0, 2, 1]) == pytest.approx(5 / 6)
    assert macro_f1([0, 0, 1], [1, 1, 0]) == 0.0


def _items(tmp_path, labels):
    img = tmp_path / "x.jpg"
    img.write_bytes(b"x")
    return [Datum(impath=str(img), label=lab, classname=f"c{lab}") for lab in labels]


def test_fewshot_draw_is_dassls_algorithm(tmp_path):
    items = _items(tmp_path, [1, 0, 1, 0, 1, 2, 0, 1])
    base = DatasetBase(train_x=items, val=items, test=items)
    random.seed(3)
    drawn = base.generate_fewshot_dataset(items, num_shots=2)
    # Dassl: classes in first-appearance order (1, 0, 2); random.sample when enough, else keep all
    random.seed(3)
    by_label = {1: [i for i in items if i.label == 1], 0: [i for i in items if i.label == 0],
                2: [i for i in items if i.label == 2]}
    expected = random.sample(by_label[1], 2) + random.sample(by_label[0], 2) + by_label[2]
    assert [id(x) for x in drawn] == [id(x) for x in expected]
    random.seed(3)
    assert [id(x) for x in base.generate_fewshot_dataset(items, num_shots=2)] == [id(x) for x in drawn]
    assert base.generate_fewshot_dataset(items, num_shots=-1) is items


def test_checkpoints_are_atomic_and_keep_dassl_layout(tmp_path):
    save_checkpoint({"state_dict": {"module.ctx": torch.ones(2)}, "epoch": 3, "optimizer": None,
                     "scheduler": None, "val_result": None}, str(tmp_path / "prompt_learner"))
    folder = tmp_path / "prompt_learner"
    assert (folder / "checkpoint").read_text() == "model.pth.tar-3\n"
    ckpt = load_checkpoint(str(folder / "model.pth.tar-3"))
    assert list(ckpt["state_dict"]) == ["ctx"]  # "module." stripped like Dassl

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"x": Boom()}, str(folder / "model.pth.tar-4"))
    assert sorted(os.listdir(folder)) == ["checkpoint", "model.pth.tar-3"]


def test_a_run_killed_before_its_checkpoint_pointer_still_resumes(tmp_path):
    """Killed between writing model.pth.tar-N and the ``checkpoint`` pointer: resume from the newest file
    (it was written atomically); a model folder with no checkpoint yet means train from scratch."""
    from engine.checkpoint import latest_checkpoint

    folder = tmp_path / "prompt_learner"
    folder.mkdir()
    assert latest_checkpoint(str(folder)) is None
    for epoch in (2, 10):
        atomic_torch_save({"epoch": epoch}, str(folder / f"model.pth.tar-{epoch}"))
    (folder / "model-best.pth.tar").write_bytes(b"")
    assert latest_checkpoint(str(folder)) == str(folder / "model.pth.tar-10")
    (folder / "checkpoint").write_text("model.pth.tar-2\n")
    assert latest_checkpoint(str(folder)) == str(folder / "model.pth.tar-2")  # the pointer wins when present


def test_classification_evaluator_prints_coop_lines_and_per_class_results(capsys):
    from engine.evaluation import Classification

    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    evaluator = Classification(cfg, lab2cname={0: "cat", 1: "dog"})
    evaluator.process(torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 0, 1, 1]))
    results = evaluator.evaluate()
    out = capsys.readouterr().out
    assert results["accuracy"] == 50.0 and results["perclass_accuracy"] == 50.0
    assert "* accuracy: 50.0%" in out and "* error: 50.0%" in out and "* macro_f1: 50.0%" in out
    assert "* class: 0 (cat)\ttotal: 2\tcorrect: 1\tacc: 50.0%" in out and "* average: 50.0%" in out


def test_env_info_for_the_log_starts_no_process(monkeypatch):
    """Every run logs its system info; reading it must not shell out (pip, nvidia-smi: ~2 s per start)."""
    import subprocess

    from engine.utils import collect_env_info

    def no_process(*args, **kwargs):
        raise AssertionError(f"collect_env_info started a process: {args}")
    monkeypatch.setattr(subprocess, "Popen", no_process)
    info = collect_env_info()
    assert f"PyTorch version: {torch.__version__}" in info and "Is CUDA available: " in info
    assert "pillow " in info and "open_clip_torch " in info
