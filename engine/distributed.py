"""Data-parallel training on the built-in engine: process group, samplers, synchronisation (docs/distributed.md).

``torchrun --nproc_per_node N train.py ...`` starts N processes and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``init_distributed_from_env`` joins the process group from them (nccl on CUDA,
gloo on CPU). Every helper here is the identity or a no-op in a single process, so single-process runs are
unchanged.

The model is not wrapped in DistributedDataParallel: the learnable parts are tiny (prompt vectors) and the
trainers call ``model.text_features()`` outside any module's forward. Instead every rank holds the whole
model and the engine keeps the replicas identical:
- data: ``GlobalBatchSampler`` draws the permutation the single-process loader draws, cuts it into the same
  global batches and gives rank r its contiguous slice of each;
- gradients: ``all_reduce_gradients`` (sum over ranks / world size) after backward, before the step, so each
  rank's mean-loss gradient becomes the gradient of the global batch's mean loss;
- learned state: broadcast from rank 0 when training starts (``broadcast_tensors_``) and compared across
  ranks after every epoch (``ranks_disagree_on``).
"""
import datetime
import importlib
import os

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError, UserError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "MIXPROMPT_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 60  # rank 0 evaluates the whole test set while the other ranks wait at a barrier


# ----------------------------------------------------------------------------------------- process group
def is_distributed():
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank():
    """This process's index on its node (torchrun's LOCAL_RANK); 0 outside a process group."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main_process():
    return get_rank() == 0


def requested_world_size():
    """WORLD_SIZE as set by torchrun (or srun wrappers), 1 when unset."""
    value = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        return int(value)
    except ValueError:
        raise UserError(f'WORLD_SIZE="{value}" is not an integer: it is set by torchrun (or your launcher) to the '
                        "total number of processes") from None


def check_distributed_support(engine_name, world_size):
    """Distributed training exists on the built-in engine only: Dassl's trainer has no sampler, gradient
    synchronisation or rank-0 logging of ours."""
    if world_size > 1 and engine_name != "builtin":
        raise UserError(f"WORLD_SIZE={world_size}: distributed training (torchrun) is supported on the built-in "
                        f"engine only, and this run uses {engine_name}. Set MIXPROMPT_ENGINE=builtin (same config "
                        "keys, results and checkpoints), or run a single process.")


def _timeout():
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_MIN))
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise UserError(f'{TIMEOUT_ENV}="{value}": must be a positive number of minutes (how long a rank waits '
                        f"for the others, e.g. while rank 0 evaluates; default {DEFAULT_TIMEOUT_MIN})")
    return datetime.timedelta(minutes=minutes)


def init_distributed_from_env(use_cuda=True):
    """Join the process group described by torchrun's environment; returns True when one was joined
    (WORLD_SIZE > 1). Backend nccl with device cuda:LOCAL_RANK when CUDA is used, else gloo on CPU."""
    world_size = requested_world_size()
    if world_size <= 1 or is_distributed():
        return is_distributed()
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world_size} but {missing} are not set: start the run with torchrun "
                        "(python -m torch.distributed.run), or export all of "
                        f"{list(ENV_VARS)} in your launcher (docs/distributed.md)")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if use_cuda and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible on "
                            "this node: start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    # torch.distributed.nn (imported by open_clip's loss module when the CLIP is loaded) binds the default
    # group into its functions' default arguments at import. Imported after the group exists, it keeps the
    # group alive past destroy_process_group: gloo's threads then die at interpreter exit, and a rank can end
    # with SIGABRT ("terminate called without an active exception") after a finished run. Imported first, the
    # defaults hold no group.
    importlib.import_module("torch.distributed.nn")

    dist.init_process_group(backend=backend, timeout=_timeout())
    return True


def describe_distributed():
    """One log line about the process group, or None in a single process."""
    if not is_distributed():
        return None
    return (f"Distributed: {get_world_size()} processes ({dist.get_backend()} backend); rank 0 logs, saves checkpoints "
            "and evaluates; DATALOADER.TRAIN_X.BATCH_SIZE is the global batch size")


def destroy_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_device(use_cuda):
    """The device this process computes on: cuda:LOCAL_RANK in a distributed CUDA run, else Dassl's choice."""
    if not (use_cuda and torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device(f"cuda:{get_local_rank()}") if is_distributed() else torch.device("cuda")


# ----------------------------------------------------------------------------------------- collectives
def _comm_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier():
    """Wait for every rank; a no-op in a single process."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _collective(tensor, op):
    """``op(buffer)`` on a copy of ``tensor`` on the communication device; the result on its device."""
    buf = tensor.detach().to(_comm_device(), copy=True)
    op(buf)
    return buf.to(tensor.device)


def all_reduce_sum(tensor):
    """The element-wise sum of ``tensor`` over ranks, as a new tensor on its device (the tensor itself in a
    single process)."""
    if not is_distributed():
        return tensor
    return _collective(tensor, lambda buf: dist.all_reduce(buf, op=dist.ReduceOp.SUM))


def all_reduce_max(tensor):
    """The element-wise maximum over ranks (the tensor itself in a single process)."""
    if not is_distributed():
        return tensor
    return _collective(tensor, lambda buf: dist.all_reduce(buf, op=dist.ReduceOp.MAX))


def broadcast_from_main(tensor):
    """Rank 0's values of ``tensor``, as a new tensor on its device (the tensor itself in a single process)."""
    if not is_distributed():
        return tensor
    return _collective(tensor, lambda buf: dist.broadcast(buf, src=0))


def broadcast_tensors_(tensors):
    """Overwrite each tensor in place with rank 0's values (e.g. a module's state-dict tensors)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in tensors:
            tensor.copy_(broadcast_from_main(tensor))


def shared_random_seed():
    """A seed drawn from the global torch RNG exactly as ``RandomSampler(generator=None)`` draws it, then
    rank 0's value on every rank. In a single process this is the draw a plain RandomSampler makes."""
    seed = torch.empty((), dtype=torch.int64).random_()
    return int(broadcast_from_main(seed).item())


def average_over_ranks(values):
    """{name: mean over ranks} of a dict of numbers with the same keys on every rank (the dict itself in a
    single process). Used for the logged loss summary, so it describes the global batch."""
    if not is_distributed() or not values:
        return values
    stacked = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    mean = all_reduce_sum(stacked) / get_world_size()
    return dict(zip(values.keys(), mean.tolist()))


def all_reduce_gradients(params):
    """Replace each parameter's gradient with the mean of that gradient over ranks, in one collective.

    A rank whose parameter has no gradient contributes zeros; a parameter that has none on every rank keeps
    ``grad = None`` (so the optimizer skips it, as a single process would)."""
    if not is_distributed():
        return
    params = list(params)
    if not params:
        return
    dtype, device = torch.float32, params[0].device
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    parts = [p.grad.detach().reshape(-1).to(dtype) if p.grad is not None else
             torch.zeros(p.numel(), dtype=dtype, device=device) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=device)
    total = all_reduce_sum(torch.cat(parts + [present]))  # (sum of numel + P,)
    counts = total[-len(params):].tolist()
    offset = 0
    world_size = get_world_size()
    for p, count in zip(params, counts):
        n = p.numel()
        if count > 0:
            mean = (total[offset:offset + n] / world_size).view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = mean
            else:
                p.grad.copy_(mean)
        offset += n


def all_reduce_class_mean(rows, labels, num_classes):
    """Per-class mean of ``rows`` (B, K) over the images of every rank: (means (C_g, K), classes (C_g,)),
    classes present on any rank in ascending order (``torch.unique``'s order)."""
    sums = rows.new_zeros(num_classes, rows.shape[1]).index_add(0, labels, rows)  # (C, K)
    counts = torch.bincount(labels, minlength=num_classes).to(rows.dtype).unsqueeze(1)  # (C, 1)
    total = all_reduce_sum(torch.cat([sums, counts], dim=1))  # (C, K + 1)
    classes = torch.nonzero(total[:, -1] > 0).flatten()
    return total[classes, :-1] / total[classes, -1:], classes


def ranks_disagree_on(named_tensors):
    """Names of the tensors whose values are not identical on every rank (compared by float64 sum and sum of
    squares); empty in a single process."""
    if not is_distributed() or not named_tensors:
        return []
    names = list(named_tensors)
    stats = torch.stack([torch.stack([t.double().sum(), t.double().pow(2).sum()]).cpu()
                         for t in named_tensors.values()])  # (T, 2)
    extremes = all_reduce_max(torch.cat([stats, -stats], dim=1))  # (T, 4): max and -min over ranks
    differs = (extremes[:, :2] != -extremes[:, 2:]).any(dim=1)
    return [name for name, bad in zip(names, differs.tolist()) if bad]


# ----------------------------------------------------------------------------------------- randomness
def seed_rank_stream(seed, epoch):
    """Ranks > 0 restart their global RNGs (python, numpy, torch) from (seed, epoch, rank), so each rank
    draws its own augmentations and the draws do not depend on where a run was resumed. Rank 0 keeps its
    stream: the one a single process would have, from which the shared permutation is drawn."""
    rank = get_rank()
    if not is_distributed() or rank == 0:
        return
    from .utils import set_random_seed

    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0]
    set_random_seed(int(state))


# ----------------------------------------------------------------------------------------- sampler
class GlobalBatchSampler(torch.utils.data.Sampler):
    """Batch sampler over ``num_items`` indices that gives each rank its slice of the single-process batches.

    The permutation is the one ``DataLoader(batch_size=B, shuffle=True)`` (RandomSampler, generator=None)
    draws: one int64 seed from the global torch RNG when iteration starts, then ``randperm`` from a generator
    seeded with it; in a process group the seed is rank 0's. It is cut into global batches of B
    (the last one dropped when ``drop_last`` and short), and rank r gets positions [r*B/W, (r+1)*B/W) of
    each. ``len`` is the number of global batches, the single-process loader's length.

    Every global batch must split evenly over the W ranks (equal slices make the mean of the ranks' mean
    gradients the global batch's mean gradient); otherwise a ConfigError names ``key``.
    """

    def __init__(self, num_items, global_batch_size, drop_last, rank=None, world_size=None, shuffle=True,
                 key="the batch size"):
        self.num_items = int(num_items)
        self.batch_size = int(global_batch_size)
        self.drop_last = bool(drop_last)
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.shuffle = shuffle
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, {self.world_size})")
        self._check_split(key)

    def _check_split(self, key):
        w, b = self.world_size, self.batch_size
        if b < 1 or b % w:
            raise ConfigError(f"{key}: {b} images per global batch cannot be split evenly over {w} processes; use a "
                              f"multiple of {w} (each process takes batch size / number of processes)")
        last = 0 if self.drop_last else self.num_items % b
        if last % w:
            raise ConfigError(f"{key}: the training set has {self.num_items} images, fewer than one batch of {b}, "
                              f"so its only batch has {last} images, which cannot be split evenly over {w} "
                              f"processes; use a number of processes that divides {last}, or more shots")

    def __len__(self):
        if self.drop_last:
            return self.num_items // self.batch_size
        return (self.num_items + self.batch_size - 1) // self.batch_size

    def _order(self):
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator()
        generator.manual_seed(shared_random_seed())
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self):
        order = self._order()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start:start + self.batch_size]
            per_rank = len(batch) // self.world_size
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]


__all__ = [
    "is_distributed", "get_rank", "get_world_size", "get_local_rank", "is_main_process", "requested_world_size",
    "check_distributed_support", "init_distributed_from_env", "describe_distributed", "destroy_distributed",
    "process_device", "barrier",
    "all_reduce_sum", "all_reduce_max", "broadcast_from_main", "broadcast_tensors_", "shared_random_seed",
    "average_over_ranks", "all_reduce_gradients", "all_reduce_class_mean", "ranks_disagree_on",
    "seed_rank_stream", "GlobalBatchSampler",
]
