"""Image-feature cache for trainers whose image encoder is frozen (CoOp, MixPrompt): encode once, reuse.

Semantics (docs/performance.md):
- training: ``views`` augmented views of every training image are encoded once, with the training
  transform, from a seeded RNG; each epoch draws one view per image, uniformly at random. This is a finite
  sample of augmentations, not fresh augmentation every epoch: with V views an image is seen in at most V
  distinct crops over the whole run, so it is off by default (``FEATURE_CACHE_VIEWS 0``);
- evaluation (on by default, ``FEATURE_CACHE_EVAL``): the test (or val) features, with the test transform,
  are encoded once per evaluation set and reused by every later evaluation of the run, and so are
  MixPrompt's training images under the test transform (initialisation, balanced E-step, diagnostics);
  they are exactly the features the uncached path computes (same batches, same transform, given back in
  the encoder's dtype), so results do not change. Their memory is bounded by ``FEATURE_CACHE_EVAL_MAX_MB``:
  a split that would exceed it is not kept (evaluation then encodes it batch by batch, as uncached).

With a cache folder, the tensors are saved there under a key of everything they depend on (backbone file
or name, precision, input/transform config, the images and labels, views and seed), so another run with the
same key (another K, another method on the same data, a resumed run) loads them instead of encoding.
"""
import hashlib
import json
import os

import torch

from engine.distributed import GlobalBatchSampler, shared_random_seed

from .features import compute_image_features

FORMAT_VERSION = 1
KEY_CONFIG_NODES = ("INPUT",)  # transform configuration: size, interpolation, transforms, pixel mean/std


def backbone_identity(name):
    """A backbone name, or for a file its absolute path, size and modification time."""
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        stat = os.stat(path)
        return {"file": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"name": name}


def cache_key(cfg, precision, items, purpose, views=1, seed=0):
    """Hex digest naming the features of ``items`` for ``purpose`` ("train-views", "eval")."""
    description = {
        "version": FORMAT_VERSION,
        "backbone": backbone_identity(cfg.MODEL.BACKBONE.NAME),
        "precision": precision,
        "config": {node: cfg[node].dump() for node in KEY_CONFIG_NODES},
        "purpose": purpose,
        "views": views,
        "seed": seed,
        "items": [[item.impath, item.label] for item in items],
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


FEATURE_BYTES = 4  # cached features are float32


class ImageFeatureCache:
    """Encodes and keeps (optionally on disk, keyed) the image features a run needs.

    ``eval_max_bytes``: bound of the test-transform features kept in memory (0: none are kept, i.e.
    FEATURE_CACHE_EVAL off); ``embed_dim``: the feature size D, to size a split before encoding it;
    ``bound_key``: the config key named when a split does not fit.
    """

    def __init__(self, cfg, device, precision, views, folder="", seed=0, eval_max_bytes=0, embed_dim=0,
                 bound_key="FEATURE_CACHE_EVAL_MAX_MB"):
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.views = views
        self.folder = os.path.expanduser(folder) if folder else ""
        self.seed = seed
        self.eval_max_bytes = eval_max_bytes
        self.embed_dim = embed_dim
        self.bound_key = bound_key
        self._memory = {}
        self._eval_bytes = 0  # test-transform features kept so far
        self._refused = set()  # keys already reported as over the bound
        # id(split list) -> (the list, its key): every image path hashed once per split (a run never edits them)
        self._eval_keys = {}

    @property
    def caches_eval(self):
        return self.eval_max_bytes > 0

    def _eval_key(self, items):
        """The cache key of ``items``' test-transform features (computed once per split list)."""
        entry = self._eval_keys.get(id(items))
        if entry is None or entry[0] is not items:
            entry = self._eval_keys[id(items)] = (items, cache_key(self.cfg, self.precision, items, "eval"))
        return entry[1]

    def eval_fits(self, items):
        """Whether the test-transform features of ``items`` are (or may be) kept in memory."""
        key = self._eval_key(items)
        if key in self._memory:
            return True
        if not self.caches_eval:
            return False
        size = len(items) * self.embed_dim * FEATURE_BYTES
        if self._eval_bytes + size <= self.eval_max_bytes:
            return True
        if key not in self._refused:
            self._refused.add(key)
            print(f"Image features of {len(items)} images ({size / 2 ** 20:.0f} MiB) not cached: "
                  f"{self._eval_bytes / 2 ** 20:.0f} MiB already kept, bound {self.bound_key} "
                  f"{self.eval_max_bytes / 2 ** 20:.0f} MiB; encoded at every use instead")
        return False

    def train_views(self, model, items):
        """(features (N, V, D), labels (N,)): V augmented views of every training image."""
        def encode():
            views = []
            for view in range(self.views):
                with torch.random.fork_rng(devices=[]):  # the run's own RNG stream is left untouched
                    torch.manual_seed(self.seed * 1_000_003 + view)
                    features, labels, _ = compute_image_features(
                        model, items, self.cfg, self.device, is_train=True,
                        desc=f"training view {view + 1}/{self.views}")
                views.append(features)
            return torch.stack(views, dim=1), labels  # (N, V, D)

        return self._get(cache_key(self.cfg, self.precision, items, "train-views", self.views, self.seed),
                         encode, f"{self.views} augmented views of {len(items)} training images")

    def eval_features(self, model, items, what):
        """(features (N, D), labels (N,)) of ``items`` under the test transform."""
        def encode():
            features, labels, _ = compute_image_features(model, items, self.cfg, self.device)
            return features, labels

        key = self._eval_key(items)
        new = key not in self._memory and self.eval_fits(items)
        value = self._get(key, encode, f"{len(items)} {what} images (test transform)", keep=new)
        if new:
            self._eval_bytes += value[0].numel() * FEATURE_BYTES
        return value

    def _get(self, key, encode, what, keep=True):
        """The features of ``key``: from memory, the cache folder, or ``encode()``; kept in memory if ``keep``."""
        if key in self._memory:
            return self._memory[key]
        path = os.path.join(self.folder, f"{key}.pt") if self.folder else None
        if path and os.path.isfile(path):
            saved = torch.load(path, map_location="cpu", weights_only=True)
            print(f"Image features of {what}: loaded from the cache {path}")
            value = (saved["features"], saved["labels"])
        else:
            print(f"Image features of {what}: encoding once" + (f" (cache {path})" if path else ""))
            value = encode()
            if path:
                save_atomically({"features": value[0], "labels": value[1]}, path)
        if keep:
            self._memory[key] = value
        return value


def save_atomically(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class CachedFeatureLoader:
    """Training batches of cached features, shaped like the image loader's: the same batches per epoch
    (``GlobalBatchSampler``: the image loader's random order and ``drop_last`` rule, each rank its slice in a
    distributed run), each image's view drawn uniformly once per epoch from a seed shared by all ranks.
    Batches are dicts with ``features`` (B, D), ``label`` (B,) and ``index`` (B,)."""

    def __init__(self, features, labels, batch_size):
        self.features = features  # (N, V, D)
        self.labels = labels  # (N,)
        self.batch_sampler = GlobalBatchSampler(len(labels), batch_size, drop_last=len(labels) >= batch_size,
                                                key="DATALOADER.TRAIN_X.BATCH_SIZE")

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        n, n_views = self.features.shape[:2]
        generator = torch.Generator().manual_seed(shared_random_seed())
        view_of = torch.randint(n_views, (n,), generator=generator)  # (N,) this epoch's view of each image
        for index in self.batch_sampler:
            index = torch.tensor(index, dtype=torch.long)  # (B,)
            yield {"features": self.features[index, view_of[index]], "label": self.labels[index], "index": index}
