"""Frozen image features of a list of Datum, under the test transform (default) or the training one."""
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from engine.data.manager import read_image
from engine.data.transforms import build_transform


class _Images(Dataset):
    def __init__(self, items, transform):
        self.items = items
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        item = self.items[idx]
        return self.transform(read_image(item.impath)), item.label, idx


@torch.no_grad()
def compute_image_features(model, items, cfg, device, is_train=False, desc="image features"):
    """(features (N, D) float32 on CPU, L2-normalised; labels (N,); indices (N,) = positions in ``items``).

    ``is_train``: the training transform (random augmentation from the global RNG) instead of the test one.
    """
    transform = build_transform(cfg, is_train=is_train, verbose=False)  # already described in the log
    # its own generator: a DataLoader draws its workers' base seed even unshuffled, and a draw from the global
    # RNG here would make a run's batch order depend on whether these features came from a cache
    loader = DataLoader(_Images(items, transform), batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, shuffle=False,
                        num_workers=cfg.DATALOADER.NUM_WORKERS, generator=torch.Generator())
    feats, labels, indices = [], [], []
    for images, label, index in tqdm(loader, desc=desc):
        feats.append(model.encode_image(images.to(device)).float().cpu())
        labels.append(label)
        indices.append(index)
    return torch.cat(feats), torch.cat(labels), torch.cat(indices)
