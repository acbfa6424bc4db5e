"""DataManager and DatasetWrapper, built-in engine.

In a distributed run (``engine.distributed``) the training loader yields each rank its slice of the
single-process loader's batches (``GlobalBatchSampler``): DATALOADER.TRAIN_X.BATCH_SIZE stays the global
batch size and the number of batches per epoch is unchanged. Val and test loaders are not split: rank 0
evaluates the whole split.
"""
import os

import torch
from PIL import Image
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from ..distributed import GlobalBatchSampler, is_distributed
from ..errors import ConfigError, DataError
from .datasets import DATASET_REGISTRY
from .transforms import build_transform

SAMPLERS = ("RandomSampler", "SequentialSampler")


def usable_cpus():
    """CPUs this process may run on (its affinity mask, as torch's DataLoader counts them)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cap_num_workers(cfg):
    """Lower DATALOADER.NUM_WORKERS to the usable CPUs (in place, with one log line): more workers than
    CPUs only add start-up time and torch's warning at every loader. Returns the number of workers."""
    requested, cpus = cfg.DATALOADER.NUM_WORKERS, usable_cpus()
    if requested <= cpus:
        return requested
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = cpus
    if frozen:
        cfg.freeze()
    print(f"DATALOADER.NUM_WORKERS {requested} lowered to {cpus}, the number of CPUs this process may use")
    return cpus


def build_dataset(cfg):
    from ..registry import check_availability

    check_availability(cfg.DATASET.NAME, DATASET_REGISTRY.registered_names(), key="DATASET.NAME")
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


def read_image(path):
    """Decode an image as RGB; an unreadable file is a DataError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:
        raise DataError(f'Cannot read image "{path}": {type(exc).__name__}: {exc}. Expected a readable '
                        "image file (re-extract or re-download it).") from None


class DatasetWrapper(Dataset):
    """Batch dict: img, label, domain, impath, index (Dassl's key set, K_TRANSFORMS/RETURN_IMG0 aside)."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        img = read_image(item.impath)
        if self.transform is not None:
            img = self.transform(img)
        return {"img": img, "label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}


def build_data_loader(cfg, sampler_type, data_source, batch_size, tfm, is_train):
    if sampler_type not in SAMPLERS:
        raise ConfigError(f'DATALOADER sampler: "{sampler_type}" is not supported; choose from {list(SAMPLERS)}')
    dataset = DatasetWrapper(cfg, data_source, transform=tfm, is_train=is_train)
    drop_last = is_train and len(data_source) >= batch_size
    pin_memory = torch.cuda.is_available() and cfg.USE_CUDA
    if is_train and is_distributed():
        batch_sampler = GlobalBatchSampler(len(data_source), batch_size, drop_last,
                                           shuffle=sampler_type == "RandomSampler", key="DATALOADER.TRAIN_X.BATCH_SIZE")
        loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                            pin_memory=pin_memory)
    else:
        sampler = RandomSampler(data_source) if sampler_type == "RandomSampler" else SequentialSampler(data_source)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                            drop_last=drop_last, pin_memory=pin_memory)
    if len(loader) == 0:
        raise DataError("A data split is empty: nothing to load")
    return loader


class DataManager:
    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        dataset = build_dataset(cfg)
        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test
        dl = cfg.DATALOADER
        self.train_loader_x = build_data_loader(cfg, dl.TRAIN_X.SAMPLER, dataset.train_x, dl.TRAIN_X.BATCH_SIZE,
                                                tfm_train, is_train=True)
        self.train_loader_u = None
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(cfg, dl.TEST.SAMPLER, dataset.val, dl.TEST.BATCH_SIZE,
                                                tfm_test, is_train=False)
        self.test_loader = build_data_loader(cfg, dl.TEST.SAMPLER, dataset.test, dl.TEST.BATCH_SIZE,
                                             tfm_test, is_train=False)
        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        rows = [["Dataset", cfg.DATASET.NAME], ["# classes", f"{self.num_classes:,}"],
                ["# train_x", f"{len(self.dataset.train_x):,}"]]
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(rows))
