"""Built-in trainer lifecycle: TrainerBase -> SimpleTrainer -> TrainerX.

Same construction order, hooks, log lines, TensorBoard tags and checkpoint layout as Dassl's, plus two
repairs: checkpoints also carry every RNG state, so a resumed run continues exactly where the
interrupted one stopped; and ``load_model`` tolerates ``val_result=None`` (§6.3).

Additions: distributed data-parallel training under torchrun (``engine.distributed``, docs/distributed.md:
gradients averaged over ranks before every optimizer step, rank 0 alone logs, writes checkpoints and
evaluates while the others wait), and optional Weights & Biases scalars next to TensorBoard (``WANDB.*``).
"""
import datetime
import os
import time
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import CheckpointMixin
from .data.manager import DataManager
from .distributed import (all_reduce_gradients, all_reduce_max, average_over_ranks, barrier, broadcast_tensors_,
                          is_distributed, is_main_process, process_device, ranks_disagree_on, seed_rank_stream)
from .errors import UserError
from .evaluation import build_evaluator
from .registry import Registry, check_availability
from .utils import AverageMeter, MetricMeter, mkdir_if_missing, start_wandb

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg):
    check_availability(cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names(), key="TRAINER.NAME")
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


class TrainerBase(CheckpointMixin):
    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None
        self._wandb = None
        self._synced_optims = set()

    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise AssertionError("Found duplicate model names")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched
        if optim is not None and is_distributed():
            optim.register_step_pre_hook(self._require_synced_gradients)

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            assert name in names_real
        return names

    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(mode)

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def init_writer(self, log_dir):
        """TensorBoard (and W&B when WANDB.ENABLED) on rank 0; other ranks write no scalars."""
        if not is_main_process():
            return
        if self.__dict__.get("_writer") is None:
            from torch.utils.tensorboard import SummaryWriter

            print(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)
        if self._wandb is None and getattr(self, "cfg", None) is not None:
            self._wandb = start_wandb(self.cfg)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)
        if self._wandb is not None:
            self._wandb.log_scalar(tag, scalar_value, global_step)

    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def sync_gradients(self, names=None):
        """Average the learnable parameters' gradients over ranks (sum / world size), so every rank steps
        with the gradient of the global batch; a no-op in a single process. Call after backward and before
        the optimizer step. With AMP call it before ``GradScaler.step`` (not after ``unscale_``): the
        scaled gradients are reduced, so an inf or NaN on any rank reaches every rank, every rank's scaler
        skips the step and lowers its scale alike."""
        if not is_distributed():
            return
        names = self.get_model_names(names)
        params = [p for name in names for p in self._models[name].parameters() if p.requires_grad]
        all_reduce_gradients(params)
        self._synced_optims.update(id(self._optims[name]) for name in names if self._optims[name] is not None)

    def _require_synced_gradients(self, optimizer, args, kwargs):
        """Optimizer step pre-hook (distributed runs): a step whose gradients were not averaged over ranks
        would let the replicas drift apart, so it is an error."""
        if id(optimizer) not in self._synced_optims:
            raise RuntimeError("An optimizer stepped without sync_gradients() in a distributed run: a trainer that "
                               "calls optimizer.step() or GradScaler.step() itself must call "
                               "self.sync_gradients() between backward and the step (docs/distributed.md).")
        self._synced_optims.discard(id(optimizer))

    def learned_state(self):
        """{"<model>.<key>": tensor} of what a checkpoint stores: every registered model's state-dict tensors
        except ``checkpoint_ignored_keys`` (buffers rebuilt from the class names at construction)."""
        ignored = set(getattr(self, "checkpoint_ignored_keys", ()))
        return {f"{name}.{key}": value for name in self.get_model_names()
                for key, value in self._models[name].state_dict().items() if key not in ignored}

    def model_update(self, names=None):
        self.sync_gradients(names)
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        self.device = process_device(cfg.USE_CUDA)
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        pass

    def build_data_loader(self):
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        raise NotImplementedError

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.resume_model_if_exist(directory)
        self.share_learned_state()
        if is_main_process():
            writer_dir = os.path.join(self.output_dir, "tensorboard")
            mkdir_if_missing(writer_dir)
            self.init_writer(writer_dir)
        self.time_start = time.time()

    def share_learned_state(self):
        """Distributed runs: every rank must start from the same epoch (checkpoints are read from the output
        folder, which all nodes must share) and continue from rank 0's learned state."""
        if not is_distributed():
            return
        epochs = all_reduce_max(torch.tensor([self.start_epoch, -self.start_epoch]))
        if epochs[0].item() != -epochs[1].item():
            raise UserError(f"The ranks found different checkpoints to resume from (epochs {-epochs[1].item()} to "
                            f"{epochs[0].item()}) in {self.cfg.RESUME or self.output_dir}: in a multi-node run the "
                            "output folder must be on a filesystem every node shares.")
        broadcast_tensors_(self.learned_state().values())
        self.after_weights_loaded()

    def check_replicas_in_sync(self):
        """Distributed runs: after an epoch every rank must hold rank 0's learned state exactly."""
        differ = ranks_disagree_on(self.learned_state())
        if differ:
            raise RuntimeError(f"After epoch {self.epoch + 1} the ranks hold different {differ}: something updated "
                               "learned state on one rank only (gradients not synchronised, or a buffer updated "
                               "from the rank's own batch without reducing it; docs/distributed.md).")

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Checkpoints are written by rank 0 only (every rank holds the same learned state)."""
        if is_main_process():
            super().save_model(epoch, directory, is_best=is_best, val_result=val_result, model_name=model_name)

    def test_on_main_process(self, split=None):
        """Rank 0 evaluates the whole split while the other ranks wait at a barrier; the result on rank 0,
        None elsewhere. In a single process, ``test(split)``."""
        result = self.test(split) if is_main_process() else None
        barrier()
        return result

    def after_train(self):
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test_on_main_process()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        print(f"Elapsed: {elapsed}")
        self.close_writer()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0
        self.check_replicas_in_sync()
        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test_on_main_process(split="val")
            if curr_result is not None and curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result,
                                model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)
        barrier()  # the other ranks go on once rank 0's checkpoints are on disk

    @torch.no_grad()
    def test(self, split=None):
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        print(f"Evaluate on the *{split}* set")
        for batch in tqdm(data_loader):
            inputs, label = self.parse_batch_test(batch)
            output = self.model_inference(inputs)
            self.evaluator.process(output, label)
        results = self.evaluator.evaluate()
        for key, value in results.items():
            self.write_scalar(f"{split}/{key}", value, self.epoch)
        return list(results.values())[0]

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None):
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """Trainer over labelled data only."""

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        end = time.time()
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        seed_rank_stream(self.cfg.SEED, self.epoch)  # distributed: ranks > 0 draw their own augmentations
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            loss_summary = average_over_ranks(self.forward_backward(batch))  # global-batch figures
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            meet_freq = (self.batch_idx + 1) % print_freq == 0
            only_few_batches = self.num_batches < print_freq
            if meet_freq or only_few_batches:
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                print(
                    f"epoch [{self.epoch + 1}/{self.max_epoch}] "
                    f"batch [{self.batch_idx + 1}/{self.num_batches}] "
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) "
                    f"data {data_time.val:.3f} ({data_time.avg:.3f}) "
                    f"{losses} lr {self.get_current_lr():.4e} eta {eta}"
                )
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device), batch["domain"].to(self.device)


__all__ = ["TRAINER_REGISTRY", "TrainerBase", "SimpleTrainer", "TrainerX", "build_trainer"]
