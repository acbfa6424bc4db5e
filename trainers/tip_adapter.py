"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): zero-shot CLIP plus a cache of few-shot features.

Cache keys K (N, D): L2-normalised CLIP image features of the N few-shot training images (the mean of
``AUGMENT_VIEWS`` augmented views, renormalised; 0 = the test transform once). Cache values L (N, C): their
one-hot labels. For an L2-normalised test feature f (B, D) and the class text features W (C, D):

    A = exp(-beta * (1 - f K^T))            (B, N)
    logits = 100 * f W^T + alpha * A L       (B, C)

``TRAINER.TIPADAPTER.FINETUNE False`` is training-free; ``True`` (Tip-Adapter-F) makes K learnable
(initialised from the cache, not renormalised during training, as published) and trains it with
cross-entropy through the shared training loop. With a non-empty val split and ``SEARCH True``, alpha and
beta are chosen on val by a grid search after the cache is built (or trained); otherwise ALPHA and BETA
are used as given. docs/tip_adapter.md.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.errors import ConfigError

from .base import LEARNABLE, CLIPTrainer
from .clip import tokenize
from .clip_heads import CLIPClassifier
from .feature_cache import ImageFeatureCache
from .features import compute_image_features
from .registry import VariantKey, register_trainer
from .templates import dataset_template, format_classname

CLIP_SCALE = 100.0  # the published formula's zero-shot scale (CLIP's exp(logit_scale))


def tip_logits(features, text_features, keys, values, alpha, beta):
    """The published Tip-Adapter logits: 100 f W^T + alpha exp(-beta (1 - f K^T)) L."""
    affinity = features @ keys.t().to(features.dtype)  # (B, N)
    cache = torch.exp(-beta * (1.0 - affinity)) @ values.to(features.dtype)  # (B, C)
    return CLIP_SCALE * features @ text_features.t().to(features.dtype) + alpha * cache


class CacheModel(nn.Module):
    """Keys (N, D; learnable for Tip-Adapter-F), one-hot values (N, C), and alpha / beta (checkpointed)."""

    def __init__(self, keys, labels, num_classes, alpha, beta, learnable):
        super().__init__()
        self.keys = nn.Parameter(keys.clone(), requires_grad=learnable)
        self.register_buffer("values", F.one_hot(labels, num_classes).float())
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(beta)))


class TipAdapterClassifier(CLIPClassifier):
    """Frozen CLIP, the dataset template's class text features, and the cache (``adapter``)."""

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        template = dataset_template(cfg.DATASET.NAME)
        prompts = [template.format(format_classname(name)) for name in classnames]
        with torch.no_grad():
            feats = self.text_encoder.encode_tokens(tokenize(prompts)).float()
        self.register_buffer("class_text_features", F.normalize(feats, dim=-1), persistent=False)
        self.adapter_name = LEARNABLE if cfg.TRAINER.TIPADAPTER.FINETUNE else "cache"

    def set_cache(self, cache):
        setattr(self, self.adapter_name, cache)  # prompt_learner (trained) for Tip-Adapter-F, else "cache"

    @property
    def adapter(self):
        return getattr(self, self.adapter_name)

    def text_features(self):
        return self.class_text_features

    def logits(self, image_features, text_features):
        a = self.adapter
        return tip_logits(image_features.float(), text_features, a.keys, a.values, a.alpha, a.beta)


def search_grid(scale, steps):
    """Tip-Adapter's search values: ``steps`` evenly spaced from 0.1 up to (excluding) ``scale``."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


@register_trainer
class TipAdapter(CLIPTrainer):
    """Training-free Tip-Adapter, or Tip-Adapter-F with ``TRAINER.TIPADAPTER.FINETUNE True``."""

    cfg_node = "TIPADAPTER"
    aliases = ("tip_adapter",)
    report_order = 20
    variant_keys = (VariantKey("TRAINER.TIPADAPTER.FINETUNE", flag="--finetune", default="False",
                               folder={"True": "tip_f", "False": "tip"}, pattern="True|False",
                               what="True or False", help="Tip-Adapter-F: fine-tune the cache keys"),)

    @staticmethod
    def add_config(cfg):
        tip = cfg.TRAINER.TIPADAPTER = CN()
        tip.FINETUNE = False  # True: Tip-Adapter-F (cache keys trained with cross-entropy)
        tip.ALPHA = 1.0  # residual ratio of the cache logits (used as is when not searched)
        tip.BETA = 1.0  # sharpness of the affinity
        tip.AUGMENT_VIEWS = 10  # augmented views averaged per cache key (0: test transform once)
        tip.SEARCH = True  # choose ALPHA / BETA on the val split when it is not empty
        tip.SEARCH_SCALE = (7.0, 3.0)  # (beta, alpha) upper bounds of the search grid
        tip.SEARCH_STEPS = (20, 20)  # (beta, alpha) grid sizes
        tip.PREC = "fp16"  # fp16 | fp32 | amp | bf16 (fp16 runs as fp32 on CPU)

    def check_cfg(self, cfg):
        tip = cfg.TRAINER.TIPADAPTER
        for key in ("ALPHA", "BETA"):
            if not isinstance(tip[key], (int, float)) or isinstance(tip[key], bool) or tip[key] < 0:
                raise ConfigError(f"TRAINER.TIPADAPTER.{key}: must be a number >= 0, got {tip[key]!r}")
        views = tip.AUGMENT_VIEWS
        if not isinstance(views, int) or isinstance(views, bool) or views < 0:
            raise ConfigError(f"TRAINER.TIPADAPTER.AUGMENT_VIEWS: must be an integer >= 0, got {views!r}")
        for key, ok in (("SEARCH_SCALE", lambda v: isinstance(v, (int, float)) and v > 0.1),
                        ("SEARCH_STEPS", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)):
            value = tip[key]
            if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(ok(v) for v in value):
                raise ConfigError(f"TRAINER.TIPADAPTER.{key}: must be two values (beta, alpha), "
                                  f"{'each > 0.1' if key == 'SEARCH_SCALE' else 'integers >= 1'}, got {value!r}")

    def build_clip_model(self, classnames, clip_model):
        tip = self.trainer_cfg
        model = TipAdapterClassifier(self.cfg, classnames, clip_model).to(self.device).eval()
        keys, labels = self.cache_features(model)
        model.set_cache(CacheModel(keys, labels, len(classnames), tip.ALPHA, tip.BETA, learnable=tip.FINETUNE))
        print(f"Tip-Adapter cache: {keys.shape[0]} keys of dimension {keys.shape[1]}, {len(classnames)} classes"
              f" ({'keys fine-tuned: Tip-Adapter-F' if tip.FINETUNE else 'training-free'})")
        return model

    def cache_features(self, model):
        """(keys (N, D) L2-normalised, labels (N,)) of the few-shot training images."""
        items = self.dm.dataset.train_x
        views = self.trainer_cfg.AUGMENT_VIEWS
        if views == 0:
            keys, labels, _ = compute_image_features(model, items, self.cfg, self.device, desc="cache keys")
            return keys, labels
        cache = ImageFeatureCache(self.cfg, self.device, self.precision, views, seed=max(self.cfg.SEED, 0))
        features, labels = cache.train_views(model, items)  # (N, V, D), seeded views
        return F.normalize(features.mean(dim=1), dim=-1), labels

    def train(self):
        if self.trainer_cfg.FINETUNE:
            return super().train()
        self.before_train()  # training-free: nothing to optimise
        self.after_train()

    def after_train(self):
        self.search_alpha_beta()
        super().after_train()

    @torch.no_grad()
    def search_alpha_beta(self):
        """Set alpha and beta to the best (beta, alpha) of the search grid on the val split (first best in
        grid order), when SEARCH is on and val is not empty."""
        tip, val = self.trainer_cfg, self.dm.dataset.val
        if not tip.SEARCH or not val:
            print(f"Tip-Adapter: alpha {tip.ALPHA}, beta {tip.BETA} as configured "
                  f"({'the val split is empty' if tip.SEARCH else 'SEARCH is off'})")
            return
        self.set_model_mode("eval")
        x, y, _ = compute_image_features(self.model, val, self.cfg, self.device, desc="val features")
        x, y = x.to(self.device), y.to(self.device)
        a = self.model.adapter
        text = self.model.text_features()
        best = None
        for beta in search_grid(tip.SEARCH_SCALE[0], tip.SEARCH_STEPS[0]):
            for alpha in search_grid(tip.SEARCH_SCALE[1], tip.SEARCH_STEPS[1]):
                logits = tip_logits(x, text, a.keys, a.values, alpha, beta)
                acc = (logits.argmax(dim=1) == y).float().mean().item() * 100
                if best is None or acc > best[0]:
                    best = (acc, alpha, beta)
        acc, alpha, beta = best
        a.alpha.fill_(alpha)
        a.beta.fill_(beta)
        print(f"Tip-Adapter: searched on val ({len(y)} images): alpha {alpha:.3f}, beta {beta:.3f}, "
              f"val accuracy {acc:.2f}%")


__all__ = ["TipAdapter", "TipAdapterClassifier", "CacheModel", "tip_logits", "search_grid"]
