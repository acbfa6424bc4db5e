"""Distributed data-parallel training (docs/distributed.md): torchrun with 2 CPU processes (gloo) trains like
one process with the same seed and global batch size, and the pieces that make it so.

Exact comparisons use deterministic training transforms (resize + normalize): random augmentation draws differ
between one process and two by design (ranks > 0 draw their own), see docs/distributed.md.
"""
import glob
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from conftest import REPO_ROOT, fake_wandb_env, final_accuracy, run_train, train_args, wandb_events
from engine.distributed import GlobalBatchSampler, check_distributed_support
from engine.errors import ConfigError, UserError

DETERMINISTIC = ["INPUT.TRANSFORMS", "['normalize']"]
MP = "configs/trainers/MixPrompt/vit_b16.yaml"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(args, nproc=2, check=True, env_extra=None):
    env = dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), "train.py", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def state_at(out, epoch):
    path = os.path.join(out, "prompt_learner", f"model.pth.tar-{epoch}")
    return torch.load(path, weights_only=True)["state_dict"]


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def logged_figures(text):
    """The numbers of the training log lines (epoch, batch, loss, acc, lr; not timings or eta), in order."""
    lines = [re.sub(r"time \S+ \(\S+\) data \S+ \(\S+\) |eta \S+", "", line) for line in text.splitlines()
             if line.startswith("epoch [") and " batch [" in line]
    return [float(x) for line in lines for x in re.findall(r"\d+\.?\d*(?:e[-+]\d+)?", line)]


# ----------------------------------------------------------------------------------------- sampler
def _loader_batches(loader, epochs):
    return [[batch.tolist() for batch in loader] for _ in range(epochs)]


@pytest.mark.parametrize("num_items, batch_size, drop_last, shuffle", [
    (16, 8, True, True), (21, 4, True, True), (6, 8, False, True), (13, 4, True, False)])
def test_sampler_gives_each_rank_its_slice_of_the_single_process_batches(num_items, batch_size, drop_last, shuffle):
    dataset = list(range(num_items))
    sampler = torch.utils.data.RandomSampler(dataset) if shuffle else torch.utils.data.SequentialSampler(dataset)
    torch.manual_seed(7)
    single = _loader_batches(DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last), 2)
    rng_after = torch.get_rng_state()
    for world_size in (1, 2):
        per_rank = []
        for rank in range(world_size):
            torch.manual_seed(7)
            batch_sampler = GlobalBatchSampler(num_items, batch_size, drop_last, rank, world_size, shuffle=shuffle)
            loader = DataLoader(dataset, batch_sampler=batch_sampler)
            assert len(loader) == len(single[0])
            per_rank.append(_loader_batches(loader, 2))
            assert torch.equal(torch.get_rng_state(), rng_after)  # the global RNG is consumed alike
        for epoch in range(2):
            for i, batch in enumerate(single[epoch]):
                slices = [per_rank[r][epoch][i] for r in range(world_size)]
                assert sum(slices, []) == batch
                assert len({len(s) for s in slices}) == 1


def test_sampler_refuses_global_batches_that_do_not_split_evenly():
    key = "DATALOADER.TRAIN_X.BATCH_SIZE"
    with pytest.raises(ConfigError, match=f"{key}: 6 images per global batch cannot be split evenly over 4"):
        GlobalBatchSampler(32, 6, True, rank=0, world_size=4, key=key)
    with pytest.raises(ConfigError, match=f"{key}: the training set has 5 images"):
        GlobalBatchSampler(5, 8, False, rank=0, world_size=2, key=key)
    assert len(GlobalBatchSampler(6, 8, False, rank=1, world_size=2, key=key)) == 1


def test_dassl_engine_refuses_more_than_one_process():
    check_distributed_support("dassl", 1)
    check_distributed_support("builtin", 4)
    with pytest.raises(UserError, match="MIXPROMPT_ENGINE=builtin"):
        check_distributed_support("dassl", 2)


# ----------------------------------------------------------------------------------------- collectives
def _collectives_worker(rank, world_size, port, results):
    import torch.distributed as dist

    from engine.distributed import all_reduce_class_mean, all_reduce_gradients, seed_rank_stream, shared_random_seed
    from engine.trainer import TrainerBase

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        rows = torch.arange(12, dtype=torch.float32).reshape(6, 2) + 10 * rank  # (B, K) per rank
        labels = torch.tensor([0, 2, 2, 0, 3, 3]) if rank == 0 else torch.tensor([2, 2, 1, 1, 1, 0])
        means, classes = all_reduce_class_mean(rows, labels, num_classes=5)

        a, b, unused = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
        a.grad = torch.full((3,), float(rank + 1))  # ranks 1 and 2 -> mean 1.5
        b.grad = torch.ones(3) if rank == 0 else None  # only rank 0 -> (1 + 0) / 2
        all_reduce_gradients([a, b, unused])

        trainer = TrainerBase()
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        optim = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer.register_model("head", model, optim)
        model(torch.full((1, 2), rank + 1.0)).sum().backward()  # each rank its own batch
        try:
            optim.step()
            unsynced = "stepped"
        except RuntimeError as exc:
            unsynced = str(exc)
        trainer.model_update()  # sync_gradients, then the step

        torch.manual_seed(100 + rank)
        seed = shared_random_seed()  # rank 0's draw everywhere
        draws = []
        for epoch in (0, 1, 0):
            torch.manual_seed(5)
            seed_rank_stream(5, epoch)
            draws.append(torch.rand(3))
        results[rank] = {"means": means, "classes": classes, "a": a.grad, "b": b.grad, "unused": unused.grad,
                         "unsynced": unsynced, "weight": model.weight.detach().clone(), "seed": seed, "draws": draws}
    finally:
        dist.destroy_process_group()


def test_reductions_across_two_processes_equal_one_process_figures():
    results = mp.Manager().dict()
    mp.start_processes(_collectives_worker, args=(2, free_port(), results), nprocs=2, join=True, start_method="fork")
    rows = torch.cat([torch.arange(12, dtype=torch.float32).reshape(6, 2) + 10 * r for r in range(2)])
    labels = torch.tensor([0, 2, 2, 0, 3, 3, 2, 2, 1, 1, 1, 0])
    expected_classes = torch.unique(labels)
    expected = torch.stack([rows[labels == c].mean(0) for c in expected_classes])
    for rank in range(2):
        r = results[rank]
        assert torch.equal(r["classes"], expected_classes)
        assert torch.allclose(r["means"], expected)
        assert torch.equal(r["a"], torch.full((3,), 1.5)) and torch.equal(r["b"], torch.full((3,), 0.5))
        assert r["unused"] is None  # no gradient on any rank: the optimizer still skips it
        assert "sync_gradients()" in r["unsynced"]
    assert torch.equal(results[0]["weight"], results[1]["weight"])  # the step of the mean gradient, everywhere

    torch.manual_seed(100)
    assert results[0]["seed"] == results[1]["seed"] == int(torch.empty((), dtype=torch.int64).random_())
    torch.manual_seed(5)
    single = torch.rand(3)
    rank0, rank1 = results[0]["draws"], results[1]["draws"]
    assert all(torch.equal(d, single) for d in rank0)  # rank 0 keeps the single-process stream
    assert not torch.equal(rank1[0], single) and not torch.equal(rank1[0], rank1[1])  # own stream per epoch
    assert torch.equal(rank1[0], rank1[2])  # a function of (seed, epoch, rank): the same after a resume


# ----------------------------------------------------------------------------------------- torchrun
SHUTDOWN_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from engine.distributed import barrier, destroy_distributed, init_distributed_from_env
init_distributed_from_env(use_cuda=False)
import open_clip  # what train.py does next: loading the CLIP imports open_clip, and with it torch.distributed.nn
import torch.distributed.nn  # (itself, in case a later open_clip no longer imports it)
barrier()
destroy_distributed()
with open(os.path.join(sys.argv[2], "threads-" + os.environ["RANK"]), "w") as f:
    f.write(" ".join(open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names are read from Linux's /proc")
def test_leaving_the_process_group_stops_its_threads(tmp_path):
    """A library imported after the group was joined (open_clip imports torch.distributed.nn, whose functions
    bind the default group as default arguments) must not keep the group alive past destroy_distributed:
    its gloo threads would die at interpreter exit, and a rank of a finished run with SIGABRT."""
    script = tmp_path / "leave.py"
    script.write_text(SHUTDOWN_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), str(REPO_ROOT), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        threads = (tmp_path / f"threads-{rank}").read_text().split()
        assert not [name for name in threads if "gloo" in name], threads


def _coop_args(root, out, weights):
    return train_args("CoOp", root, out, weights, opts=[
        "OPTIM.MAX_EPOCH", "3", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TRAIN.CHECKPOINT_FREQ", "1", *DETERMINISTIC])


def test_two_process_coop_matches_one_process_logs_once_and_resumes(tiny_clip, cars_root, tmp_path):
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    run_train(_coop_args(cars_root, single, tiny_clip))
    wandb_log = tmp_path / "wandb_events.jsonl"
    proc = run_torchrun(_coop_args(cars_root, ddp, tiny_clip) + ["WANDB.ENABLED", "True", "WANDB.MODE", "offline"],
                        env_extra=fake_wandb_env(tmp_path, wandb_log))
    single_log, ddp_log = open(os.path.join(single, "log.txt")).read(), open(os.path.join(ddp, "log.txt")).read()
    assert "Distributed: 2 processes (gloo backend)" in ddp_log
    assert final_accuracy(ddp_log) == final_accuracy(single_log)
    figures = logged_figures(single_log)  # the logged loss and accuracy are the global batch's (rank mean)
    assert len(figures) > 20 and logged_figures(ddp_log) == pytest.approx(figures, abs=2e-4)
    assert max_difference(state_at(single, 3), state_at(ddp, 3)) < 1e-6
    # rank 0 alone writes the run folder, the console and W&B
    assert sorted(os.listdir(ddp)) == ["config.yaml", "log.txt", "prompt_learner", "result.json", "tensorboard",
                                       "wandb_run_id"]
    assert len(glob.glob(os.path.join(ddp, "tensorboard", "events.out.tfevents.*"))) == 1
    assert proc.stdout.count("* accuracy:") == 1 and proc.stdout.count("Finish training") == 1
    events = wandb_events(wandb_log)
    assert len({e["pid"] for e in events}) == 1 and [e["event"] for e in events].count("init") == 1

    # resume: rewind the run to epoch 2; every rank loads it and the last epoch is redone identically
    uninterrupted = state_at(ddp, 3)
    os.remove(os.path.join(ddp, "prompt_learner", "model.pth.tar-3"))
    with open(os.path.join(ddp, "prompt_learner", "checkpoint"), "w") as f:
        f.write("model.pth.tar-2\n")
    resumed = run_torchrun(_coop_args(cars_root, ddp, tiny_clip))
    assert resumed.stdout.count("Previous epoch: 2") == 1  # printed by rank 0 only
    assert torch.equal(state_at(ddp, 3)["ctx"], uninterrupted["ctx"])
    assert final_accuracy(resumed.stdout) == final_accuracy(single_log)


@pytest.mark.parametrize("extra", [[], ["TRAINER.MIXPROMPT.FEATURE_CACHE_VIEWS", "2"]], ids=["images", "feature-cache"])
def test_two_process_mixprompt_matches_one_process(tiny_clip, cars_root, tmp_path, extra):
    """Also with cached training views: each rank takes its slice of the same batches and the same views."""
    def args(out):
        return train_args("MixPrompt", cars_root, out, tiny_clip, config=MP, opts=[
            "OPTIM.MAX_EPOCH", "3", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TRAINER.MIXPROMPT.K", "2", *DETERMINISTIC,
            *extra])

    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    run_train(args(single))
    run_torchrun(args(ddp))
    single_log, ddp_log = open(os.path.join(single, "log.txt")).read(), open(os.path.join(ddp, "log.txt")).read()
    assert final_accuracy(ddp_log) == final_accuracy(single_log)
    assert max_difference(state_at(single, 3), state_at(ddp, 3)) < 1e-6
    # the Sinkhorn E-step and the diagnostics see every training image on every rank: same figures
    with open(os.path.join(single, "diagnostics.jsonl")) as f1, open(os.path.join(ddp, "diagnostics.jsonl")) as f2:
        one, two = [[json.loads(line) for line in f] for f in (f1, f2)]
    assert [d["epoch"] for d in two] == [1, 2, 3]  # written once per epoch, by rank 0
    for a, b in zip(one, two):
        assert a["eff_k"] == pytest.approx(b["eff_k"], abs=1e-5)
        assert a["feature_cos"] == pytest.approx(b["feature_cos"], abs=1e-5)


def test_bad_global_batch_size_stops_every_rank_with_the_key(tiny_clip, cars_root, tmp_path):
    proc = run_torchrun(train_args("CoOp", cars_root, str(tmp_path / "bad"), tiny_clip,
                                   opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "3"]), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors and all("DATALOADER.TRAIN_X.BATCH_SIZE: 3 images per global batch" in e for e in errors)
    assert not glob.glob(str(tmp_path / "bad" / "prompt_learner" / "*"))
