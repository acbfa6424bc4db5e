"""What every CLIP trainer shares: loading CLIP once, precision, freezing, optimisation, evaluation cache.

A trainer subclasses :class:`CLIPTrainer` and provides ``build_clip_model(classnames, clip)`` returning an
``nn.Module`` with a learnable sub-module ``prompt_learner`` (or none, for zero-shot), ``encode_image``,
``text_features()`` (all class text features, L2-normalised) and ``logits(image_features, text_features)``.
Evaluation computes the text features once per ``test()`` call, never once per test batch. With
``FEATURE_CACHE_*`` keys on the trainer's node, image features come from ``trainers.feature_cache``: the
test-transform features of the evaluation splits are encoded once per run by default (exact; bounded by
``FEATURE_CACHE_EVAL_MAX_MB``), augmented training views only when ``FEATURE_CACHE_VIEWS`` asks for them.
"""
import types
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from engine import TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy
from engine.errors import ConfigError, TrainingDiverged

from .clip import load_clip
from .config import DEFAULT_FEATURE_CACHE_EVAL_MAX_MB, PRECISIONS
from .feature_cache import CachedFeatureLoader, ImageFeatureCache
from .registry import default_node

LEARNABLE = "prompt_learner"


def resolve_precision(prec, device, key):
    """The precision actually used: fp16, amp and bf16 need CUDA; on CPU they run in fp32, and the log says
    so. fp16 is CoOp's (CLIP's weights in half precision); amp and bf16 autocast the forward pass and keep
    every parameter in fp32 (amp with a gradient scaler)."""
    if prec not in PRECISIONS:
        raise ConfigError(f'{key}: "{prec}" is not one of {list(PRECISIONS)}')
    if device.type != "cuda" and prec in ("fp16", "amp", "bf16"):
        print(f"{key} is {prec} but the device is {device.type}: running in fp32 (half-precision CPU kernels "
              "are slow or missing)")
        return "fp32"
    return prec


class CLIPTrainer(TrainerX):
    # -- what the trainer declares (trainers/registry.py reads it; docs/extending.md) -----------------
    #: config node of the trainer: its keys live under TRAINER.<cfg_node> (PREC at least)
    cfg_node = ""
    #: configs/trainers/<config_dir or class name>/<default_config>.yaml is the run scripts' default
    default_config = "vit_b16"
    config_dir = ""
    #: other names the tools accept (the run scripts' folder name, e.g. "zsclip"), lower case
    aliases = ()
    #: False: evaluation only (no shots, no seeds; CoOp's zero-shot layout)
    few_shot = True
    #: the config keys that name a run's folder (``registry.VariantKey``), e.g. MixPrompt's K
    variant_keys = ()
    #: rank in the report tables (baselines first)
    report_order = 100
    #: keys that change speed or memory, never a result: runs differing only there are seeds of one experiment
    result_neutral_keys = ()
    #: {key: value} for keys added after runs were recorded: the value every run recorded before the key existed
    #: behaved as, read into this trainer's records and saved configs that lack it (``runs.complete_settings``)
    keys_added_later = types.MappingProxyType({})

    def __init__(self, cfg):
        super().__init__(cfg)
        self.evaluator = RecordingEvaluator(self.evaluator)

    @classmethod
    def config_folder(cls):
        return cls.config_dir or cls.__name__

    @staticmethod
    def add_config(cfg):
        """Add ``TRAINER.<cfg_node>`` with its defaults to ``cfg`` (before any YAML or opts are merged)."""
        raise NotImplementedError

    @classmethod
    def bench_variants(cls, sub_prompts, context_length):
        """(row label, extra opts) of the rows ``scripts/bench.py`` measures for this trainer: ``sub_prompts``
        are the benchmark's K values (for trainers that have sub-prompts), ``context_length`` its prompt
        length (``context_opts``)."""
        return [(cls.__name__, cls.context_opts(context_length))]

    @classmethod
    def context_opts(cls, context_length):
        """Opts for a learnable context of ``context_length`` tokens and no init words, for trainers whose
        node has N_CTX and CTX_INIT; else none."""
        if not {"N_CTX", "CTX_INIT"} <= set(default_node(cls)):
            return []
        return [f"TRAINER.{cls.cfg_node}.N_CTX", str(context_length), f"TRAINER.{cls.cfg_node}.CTX_INIT", ""]

    #: True when the class text features depend on the image (CoCoOp): nothing to compute once per evaluation
    text_features_per_image = False
    checkpoint_ignored_keys = ("token_prefix", "token_suffix")
    _eval_text_features = None
    feature_cache = None  # ImageFeatureCache when FEATURE_CACHE_VIEWS > 0 or FEATURE_CACHE_EVAL (default)

    @property
    def trainer_cfg(self):
        return self.cfg.TRAINER[self.cfg_node]

    def load_clip(self):
        cfg = self.cfg
        name = cfg.MODEL.BACKBONE.NAME
        if not name:
            raise ConfigError("MODEL.BACKBONE.NAME is empty: give a CLIP name (RN50, ViT-B/16, ...), an "
                              "OpenCLIP MODEL:TAG, or a checkpoint file")
        print(f"Loading CLIP (backbone: {name})")
        loaded = load_clip(name, device="cpu")
        if cfg.INPUT.SIZE[0] != loaded.input_resolution:
            raise ConfigError(f"INPUT.SIZE: {tuple(cfg.INPUT.SIZE)} but the CLIP model {name} expects "
                              f"{loaded.input_resolution}x{loaded.input_resolution} images")
        self.precision = resolve_precision(self.trainer_cfg.PREC, self.device, f"TRAINER.{self.cfg_node}.PREC")
        clip_model = loaded.model
        if self.precision == "fp16":
            clip_model.half()
        self.clip_info = loaded
        return clip_model

    def build_model(self):
        classnames = self.dm.dataset.classnames
        clip_model = self.load_clip()
        self.feature_cache = self.build_feature_cache()
        print("Building custom CLIP")
        self.model = self.build_clip_model(classnames, clip_model).eval()  # frozen parts stay in eval mode
        print("Turning off gradients in both the image and the text encoder")
        for name, param in self.model.named_parameters():
            if LEARNABLE not in name:
                param.requires_grad_(False)
        self.model.to(self.device)
        self.scaler = None
        if self.feature_cache is not None and self.feature_cache.views > 0:
            features, labels = self.feature_cache.train_views(self.model, self.dm.dataset.train_x)
            self.train_loader_x = CachedFeatureLoader(features, labels, self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
        learner = getattr(self.model, LEARNABLE, None)
        if learner is None:
            return
        if self.cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(learner, self.cfg.MODEL.INIT_WEIGHTS)
        self.optim = build_optimizer(learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model(LEARNABLE, learner, self.optim, self.sched)
        if self.precision == "amp":
            self.scaler = torch.amp.GradScaler("cuda")
        n_params = sum(p.numel() for p in learner.parameters() if p.requires_grad)
        print(f"Learnable parameters: {n_params:,}")

    def build_feature_cache(self):
        """The image-feature cache the trainer's FEATURE_CACHE_* keys ask for, or None."""
        node, key = self.trainer_cfg, f"TRAINER.{self.cfg_node}"
        views = node.get("FEATURE_CACHE_VIEWS", 0)
        if views < 0:
            raise ConfigError(f"{key}.FEATURE_CACHE_VIEWS: must be >= 0 (0 = no training-view cache), got {views}")
        max_mb = node.get("FEATURE_CACHE_EVAL_MAX_MB", DEFAULT_FEATURE_CACHE_EVAL_MAX_MB)
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or max_mb <= 0:
            raise ConfigError(f"{key}.FEATURE_CACHE_EVAL_MAX_MB: must be a number of MiB > 0 (the memory bound of the "
                              f"cached test-transform features; to cache none set {key}.FEATURE_CACHE_EVAL False), "
                              f"got {max_mb!r}")
        eval_cache = bool(node.get("FEATURE_CACHE_EVAL", False))
        if views == 0 and not eval_cache:
            if node.get("FEATURE_CACHE_DIR", ""):
                raise ConfigError(f"{key}.FEATURE_CACHE_DIR is set but nothing is cached: set {key}.FEATURE_CACHE_VIEWS "
                                  f"> 0 (training views) and/or {key}.FEATURE_CACHE_EVAL True (test images)")
            return None
        return ImageFeatureCache(self.cfg, self.device, self.precision, views, node.FEATURE_CACHE_DIR,
                                 seed=max(self.cfg.SEED, 0),
                                 eval_max_bytes=int(max_mb * 2 ** 20) if eval_cache else 0,
                                 embed_dim=self.clip_info.embed_dim, bound_key=f"{key}.FEATURE_CACHE_EVAL_MAX_MB")

    def load_init_weights(self, module, path):
        from engine import load_checkpoint

        ckpt = load_checkpoint(path)
        state = ckpt.get("state_dict", ckpt)
        own = module.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not matched:
            raise ConfigError(f'MODEL.INIT_WEIGHTS: nothing in "{path}" matches the prompt learner '
                              f"(its keys: {sorted(own)})")
        module.load_state_dict(matched, strict=False)
        print(f"Successfully loaded pretrained weights from {path}")
        skipped = sorted(set(state) - set(matched))
        if skipped:
            print(f"Layers discarded due to unmatched keys or size: {skipped}")

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def batch_image_features(self, batch):
        """(image features (B, D), labels (B,)) of a training batch: cached features when the loader gives
        them (FEATURE_CACHE_VIEWS), else the frozen image encoder on the batch's images."""
        if "features" in batch:
            return batch["features"].to(self.device), batch["label"].to(self.device)
        image, label = self.parse_batch_train(batch)
        return self.model.encode_image(image), label

    def autocast(self):
        """The forward pass's autocast context: fp16 for amp, bf16 for bf16 (CUDA only), else none."""
        if self.precision == "amp":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def compute_loss(self, batch):
        """(loss, logits, label) for a training batch; trainers with other objectives override this."""
        image_features, label = self.batch_image_features(batch)
        logits = self.model.logits(image_features, self.model.text_features())
        return F.cross_entropy(logits, label), logits, label

    def loss_terms(self):
        """Named parts of the last loss, for the log line and for the message when a loss is not finite."""
        return {}

    def forward_backward(self, batch):
        """One training step: zero the gradients, ``backward_pass`` (the trainer's forward and backward),
        one optimiser step (gradients averaged over ranks first), the log-line summary."""
        self.model_zero_grad()
        loss, logits, label = self.backward_pass(batch)
        self.optimizer_step()
        summary = {"loss": float(loss), "acc": compute_accuracy(logits, label)[0].item(), **self.loss_terms()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def backward_pass(self, batch):
        """Forward and backward of a training batch: (loss, logits, labels). Trainers that split a batch
        (CoCoOp's chunks) override this and call ``backward`` per part."""
        with self.autocast():
            loss, logits, label = self.compute_loss(batch)
        self.backward(loss)
        return loss.item(), logits, label

    def backward(self, loss):
        """Backpropagate ``loss`` after checking it is finite (scaled under amp)."""
        self.check_finite(loss)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def optimizer_step(self):
        if self.scaler is not None:
            self.sync_gradients()  # distributed: average the scaled gradients over ranks before the step
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            self.model_update()

    def check_finite(self, loss):
        """Stop the run at the first non-finite loss, naming the step, the loss terms and likely causes."""
        if torch.isfinite(loss).all():
            return
        node = f"TRAINER.{self.cfg_node}"
        terms = ", ".join(f"{k} {v:.4g}" for k, v in self.loss_terms().items()) or "no separate terms"
        causes = [f"learning rate too high (OPTIM.LR {self.cfg.OPTIM.LR})"]
        if self.precision == "fp16":
            causes.insert(0, f"fp16 overflow ({node}.PREC fp16 keeps CLIP in half precision; try amp, bf16 or fp32)")
        elif self.precision in ("amp", "bf16"):
            causes.insert(0, f"reduced-precision overflow ({node}.PREC {self.precision}; try fp32)")
        causes += self.divergence_causes()
        raise TrainingDiverged(
            f"the training loss is {loss.item()} at epoch {self.epoch + 1}, batch {self.batch_idx + 1} "
            f"(loss terms: {terms}). Likely causes: " + "; ".join(causes) + ". The last checkpoint in "
            f"{self.output_dir} (if any) is from before this step.")

    def divergence_causes(self):
        """Trainer-specific likely causes of a non-finite loss (for ``check_finite``)."""
        return []

    @torch.no_grad()
    def test(self, split=None):
        """The engine's evaluation, with the class text features computed once for the whole evaluation
        (unless they depend on the image: ``text_features_per_image``), and the image features encoded once
        per run with FEATURE_CACHE_EVAL (the loaders then yield cached features instead of images) when the
        split fits FEATURE_CACHE_EVAL_MAX_MB."""
        self.set_model_mode("eval")
        if not self.text_features_per_image:
            self._eval_text_features = self.model.text_features()
        loaders = self.test_loader, self.val_loader
        cache = self.feature_cache
        if cache is not None and cache.eval_fits(self.dm.dataset.test):
            self.test_loader = CachedEvalLoader(self, self.dm.dataset.test, "test")
        if cache is not None and self.val_loader is not None and cache.eval_fits(self.dm.dataset.val):
            self.val_loader = CachedEvalLoader(self, self.dm.dataset.val, "val")
        try:
            return super().test(split)
        finally:
            self._eval_text_features = None
            self.test_loader, self.val_loader = loaders

    def model_inference(self, image):
        """Logits of a test batch: images (B, 3, H, W), or their image features (B, D) from the cache."""
        features = image if image.dim() == 2 else self.model.encode_image(image)
        text_features = self._eval_text_features
        if text_features is None:
            text_features = self.model.text_features()
        return self.model.logits(features, text_features)


class CachedEvalLoader:
    """An evaluation split as batches of cached image features (``{"img": (B, D), "label": (B,)}``), in the
    image loader's order and batch size, in the dtype the image encoder gives (the cache keeps float32; an
    fp16 encoder's features convert back exactly); the features are encoded (or loaded) when first iterated."""

    def __init__(self, trainer, items, split):
        self.trainer, self.items, self.split = trainer, items, split
        self.batch_size = trainer.cfg.DATALOADER.TEST.BATCH_SIZE

    def __len__(self):
        return -(-len(self.items) // self.batch_size)

    def __iter__(self):
        features, labels = self.trainer.feature_cache.eval_features(self.trainer.model, self.items, self.split)
        device = self.trainer.device
        dtype = getattr(self.trainer.model, "dtype", features.dtype)  # CLIPClassifier: the image tower's dtype
        for start in range(0, len(labels), self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield {"img": features[rows].to(device=device, dtype=dtype), "label": labels[rows].to(device)}


class RecordingEvaluator:
    """The engine's evaluator, keeping the metrics of its last ``evaluate()`` (``last_results``) for the run's
    record."""

    def __init__(self, evaluator):
        self._evaluator = evaluator
        self.last_results = None

    def __getattr__(self, name):
        return getattr(self._evaluator, name)

    def evaluate(self):
        results = self._evaluator.evaluate()
        self.last_results = dict(results)
        return results
