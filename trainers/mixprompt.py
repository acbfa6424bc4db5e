"""MixPrompt: K learnable sub-prompts per class, trained with an annealed EM objective.

Trainer glue only: the objective, the sub-prompt parametrisation and the initialisations live in
``mixprompt_model``, the diagnostics in ``mixprompt_diagnostics``. Config: ``TRAINER.MIXPROMPT.*``, declared
with its defaults in ``add_mixprompt_config`` below and validated once in ``check_cfg``.
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.distributed import all_reduce_class_mean, is_distributed, is_main_process
from engine.errors import ConfigError
from yacs.config import CfgNode as CN

from . import mixprompt_model as mm
from .base import CLIPTrainer
from .clip import tokenize
from .clip_heads import CLIPClassifier
from .config import CLASS_TOKEN_POSITIONS, add_feature_cache_config
from .feature_cache import CachedFeatureLoader
from .features import compute_image_features
from .mixprompt_diagnostics import (DEFAULT_COLLAPSE_FEATURE_COS, DEFAULT_COLLAPSE_TOP1_SHARE, collapse_diagnostics,
                                    format_diagnostics)
from .prompts import ClassPromptTokens, assemble_prompts, init_context
from .registry import VariantKey, default_node, register_trainer
from .templates import IMAGENET_TEMPLATES_SELECT, dataset_template, format_classname

OFFSET_SPACES = ("feature", "token")
SCOPES = ("class", "shared")
TEMPLATE_SETS = ("dataset", "ensemble", "hierarchical")
INITS = ("auto", "random", "random_coordinate", "templates", "clusters", "cluster_means", "features", "kmeans")
CLUSTERINGS = ("ward", "kmeans")
SINKHORN_SHARE_CHOICES = ("auto", "equal", "clusters")
TRAIN_FEATURE_SOURCES = ("auto", "clean", "augmented")
DIAGNOSTICS_FILE = "diagnostics.jsonl"
INIT_FEATURES_COPY = "init_features.pt"  # INIT features: the run's own copy of its starting features
SUMMARY_FILE = "diagnostics_summary.json"
SUMMARY_MAX_COS_ENTRIES = 2_000_000  # C*K*K above this (e.g. iNaturalist at K 32): no per-class cosines


# ----------------------------------------------------------------------------------------- templates
def hierarchical_templates(metadata):
    """Templates built from a class's metadata dict (cars: make/model/type/year; iNaturalist: taxonomy).
    Each is a function of the class name and the metadata; missing fields are skipped."""
    templates = []
    if {"make", "model"} <= set(metadata):
        templates.append(lambda name, m: f"a photo of a {m['make']} {m['model']}.")
        if m_get(metadata, "type"):
            templates.append(lambda name, m: f"a photo of a {m['type']} made by {m['make']}.")
        if m_get(metadata, "year"):
            templates.append(lambda name, m: f"a photo of a {m['year']} {m['make']}, a type of car.")
    for rank in ("genus", "family", "order"):
        if m_get(metadata, rank):
            templates.append(lambda name, m, r=rank: f"a photo of a {name}, a member of the {r} {m[r]}.")
    return templates


def m_get(metadata, key):
    value = metadata.get(key)
    return value if value not in (None, "") else None


def class_prompts(dataset_name, classnames, metadata, template_set):
    """Per class, the list of prompt texts whose mean text feature is the base feature b[c]."""
    main = dataset_template(dataset_name)
    prompts = []
    for c, raw in enumerate(classnames):
        name = format_classname(raw)
        texts = [main.format(name)]
        if template_set in ("ensemble", "hierarchical"):
            texts += [t.format(name) for t in IMAGENET_TEMPLATES_SELECT]
        if template_set == "hierarchical" and metadata is not None:
            texts += [fn(name, metadata[c]) for fn in hierarchical_templates(metadata[c])]
        prompts.append(texts)
    return prompts


@torch.no_grad()
def encode_prompt_sets(text_encoder, prompt_sets):
    """Mean of the normalised features of each set of texts, renormalised: (len(prompt_sets), D)."""
    flat = [t for texts in prompt_sets for t in texts]
    features = F.normalize(text_encoder.encode_tokens(tokenize(flat), chunk_size=1024).float(), dim=-1)
    out, start = [], 0
    for texts in prompt_sets:
        out.append(F.normalize(features[start:start + len(texts)].mean(0), dim=-1))
        start += len(texts)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------- sub-prompts
class FeatureSubprompts(nn.Module):
    """t[c, k] = normalize(b[c] + delta[c, k]) (SCOPE class) or normalize(b[c] + delta[k]) (shared).
    The text encoder runs once, at construction, for the frozen base features b."""

    def __init__(self, base_features, n_sub, scope):
        super().__init__()
        n_cls, dim = base_features.shape
        self.register_buffer("base_features", base_features.float(), persistent=False)  # (C, D)
        shape = (n_cls, n_sub, dim) if scope == "class" else (n_sub, dim)
        self.offsets = nn.Parameter(torch.zeros(shape))  # (C, K, D) or (K, D)
        self.scope = scope

    def flat_offsets(self):
        return self.offsets  # (C, K, D) or (K, D)

    def subprompt_features(self, text_encoder=None, classes=None, chunk_size=None, checkpoint=False):
        """(C, K, D) L2-normalised, or (S, K, D) for the classes (S,) given."""
        base = self.base_features if classes is None else self.base_features[classes]  # (S, D)
        offsets = self.offsets if self.scope == "shared" or classes is None else self.offsets[classes]
        return mm.feature_subprompts(base, offsets)  # (S, K, D)


class TokenSubprompts(nn.Module):
    """Prompt (c, k) = [SOS] (ctx + offset[c, k]) [class tokens] . [EOS] through the text encoder."""

    def __init__(self, text_encoder, classnames, n_sub, scope, n_ctx, ctx_init, position, dtype):
        super().__init__()
        ctx, _ = init_context(text_encoder, n_ctx, ctx_init, len(classnames), False, torch.float32,
                              "TRAINER.MIXPROMPT")
        self.ctx = nn.Parameter(ctx)  # (M, W)
        n_ctx, width = ctx.shape
        self.tokens = ClassPromptTokens(text_encoder, classnames, n_ctx, dtype)
        shape = (len(classnames), n_sub, n_ctx, width) if scope == "class" else (n_sub, n_ctx, width)
        self.offsets = nn.Parameter(torch.zeros(shape))  # (C, K, M, W) or (K, M, W)
        self.scope = scope
        self.position = position
        self.n_cls, self.n_sub = len(classnames), n_sub

    def flat_offsets(self):
        return self.offsets.flatten(-2)  # (C, K, M*W) or (K, M*W)

    def subprompt_features(self, text_encoder, classes=None, chunk_size=None, checkpoint=False):
        """(C, K, D) L2-normalised, or (S, K, D) for the classes (S,) given. The S*K prompts are assembled
        and encoded ``chunk_size`` rows at a time (activation checkpointing per chunk with ``checkpoint``)."""
        if classes is None:
            classes = torch.arange(self.n_cls, device=self.ctx.device)
        class_index = classes.repeat_interleave(self.n_sub)  # (S*K,) class of each prompt row
        sub_index = torch.arange(self.n_sub, device=self.ctx.device).repeat(len(classes))  # (S*K,)

        def rows(chunk):
            cls, sub = class_index[chunk], sub_index[chunk]
            offsets = self.offsets[cls, sub] if self.scope == "class" else self.offsets[sub]  # (n, M, W)
            prompts = assemble_prompts(self.ctx.unsqueeze(0) + offsets, self.tokens, self.position, cls)  # (n, L, W)
            return prompts, self.tokens.tokenized_prompts[cls]

        features = text_encoder.encode_rows(len(class_index), rows, chunk_size or None, checkpoint)  # (S*K, D)
        return F.normalize(features.float(), dim=-1).reshape(len(classes), self.n_sub, -1)


def encodes_class_text(m):
    """True when a TRAINER.MIXPROMPT node ``m`` needs the frozen class text features b[c] (TEMPLATES): feature
    space starts its sub-prompts from them, the zero-shot residual scores them."""
    return m.OFFSET_SPACE == "feature" or bool(m.ZEROSHOT_WEIGHT)


class MixPromptClassifier(CLIPClassifier):
    def __init__(self, cfg, classnames, clip_model, metadata):
        super().__init__(clip_model)
        m = cfg.TRAINER.MIXPROMPT
        self.sim_scale = m.SIM_SCALE
        self.zeroshot_weight = m.ZEROSHOT_WEIGHT
        self.eval_pool = m.EVAL_POOL or m.POOL
        self.chunk_size = m.ENCODE_CHUNK
        self.encode_checkpoint = m.ENCODE_CHECKPOINT
        base = None
        if encodes_class_text(m):  # the frozen class text features b[c]
            prompts = class_prompts(cfg.DATASET.NAME, classnames, metadata, m.TEMPLATES)
            print(f"Class text features from {len(prompts[0])} template(s) per class, e.g. {prompts[0]}")
            base = encode_prompt_sets(self.text_encoder, prompts)  # (C, D)
        # the zero-shot residual's class features (the same b[c] as feature-space sub-prompts start from)
        self.register_buffer("zeroshot_features", None if base is None else base.float(), persistent=False)
        if m.OFFSET_SPACE == "feature":
            self.prompt_learner = FeatureSubprompts(base, m.K, m.SCOPE)
        else:
            self.prompt_learner = TokenSubprompts(self.text_encoder, classnames, m.K, m.SCOPE, m.N_CTX, m.CTX_INIT,
                                                  m.CLASS_TOKEN_POSITION, self.dtype)
        # class-level marginal usage of sub-prompts (running estimate for BALANCE marginal_entropy)
        self.prompt_learner.register_buffer("running_usage", torch.full((len(classnames), m.K), 1.0 / m.K))

    def text_features(self, classes=None):
        """Sub-prompt features (C, K, D) of all classes, or (S, K, D) of ``classes`` (S,); L2-normalised."""
        return self.prompt_learner.subprompt_features(self.text_encoder, classes, self.chunk_size,
                                                      self.encode_checkpoint)

    def scores(self, image_features, subprompt_features):
        return mm.subprompt_scores(image_features.float(), subprompt_features, self.sim_scale)  # (B, C, K)

    def zeroshot_residual(self, image_features, classes=None):
        """(B, S): ZEROSHOT_WEIGHT * SIM_SCALE * cos(f, b[c]) for all classes or ``classes`` (S,), the frozen
        class text feature's zero-shot score added to every sub-prompt score of its class; None when the
        weight is 0."""
        if not self.zeroshot_weight:
            return None
        base = self.zeroshot_features if classes is None else self.zeroshot_features[classes]  # (S, D)
        return self.zeroshot_weight * self.sim_scale * image_features.float() @ base.t()

    def logits(self, image_features, subprompt_features):
        logits = mm.pool_scores(self.scores(image_features, subprompt_features), self.eval_pool)  # (B, C)
        residual = self.zeroshot_residual(image_features)
        return logits if residual is None else logits + residual


# ----------------------------------------------------------------------------------------- initialisation
#: keys read only with some INIT choices (INIT features; the clustered starts), reset to their defaults when a
#: trained run is rebuilt with INIT random
INIT_ONLY_KEYS = ("INIT_FEATURES_FILE", "KMEANS_RESTARTS", "CLUSTERING", "SINKHORN_SHARES")


def random_init_opts():
    """Config opts that swap a run's initialisation for INIT random, the keys of its own INIT choice back at
    their defaults: for rebuilding a trained run, whose checkpoint replaces the offsets anyway."""
    defaults = default_node(MixPrompt)
    return ["TRAINER.MIXPROMPT.INIT", "random",
            *(opt for key in INIT_ONLY_KEYS for opt in (f"TRAINER.MIXPROMPT.{key}", str(defaults[key])))]


def resolve_init(init, offset_space):
    """The initialisation INIT asks for: ``auto`` is clusters in feature space and random in token space;
    ``kmeans`` is the older name of clusters."""
    if init == "auto":
        return "clusters" if offset_space == "feature" else "random"
    return "clusters" if init == "kmeans" else init


def is_clustered_start(m):
    """True when a TRAINER.MIXPROMPT node ``m`` starts each class's sub-prompts at clusters of its images."""
    return resolve_init(m.INIT, m.OFFSET_SPACE) in ("clusters", "cluster_means")


def has_class_clusters(m):
    """True when the balanced E-step can keep each class's start cluster sizes: BALANCE sinkhorn after a
    per-class clustered start (SCOPE class)."""
    return m.BALANCE == "sinkhorn" and is_clustered_start(m) and m.SCOPE == "class"


def resolve_sinkhorn_shares(m):
    """The balanced E-step's shares SINKHORN_SHARES asks for: ``auto`` is clusters where ``has_class_clusters``,
    else equal."""
    if m.SINKHORN_SHARES == "auto":
        return "clusters" if has_class_clusters(m) else "equal"
    return m.SINKHORN_SHARES


def init_features_copy(cfg):
    """The copy of its starting features that an INIT features run keeps in its OUTPUT_DIR."""
    return os.path.join(cfg.OUTPUT_DIR, INIT_FEATURES_COPY)


def init_features_source(cfg):
    """The file INIT features loads: INIT_FEATURES_FILE when it exists, else the run's own copy
    (``init_features_copy``: a resumed run does not need the original); None when neither exists."""
    path, copy = cfg.TRAINER.MIXPROMPT.INIT_FEATURES_FILE, init_features_copy(cfg)
    return path if path and os.path.isfile(path) else copy if os.path.isfile(copy) else None


def load_init_features(path, shape):
    """The (C, K, D) tensor of INIT_FEATURES_FILE, checked against the sub-prompts' ``shape``."""
    key = "TRAINER.MIXPROMPT.INIT_FEATURES_FILE"
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f'{key}: cannot read "{path}" as a torch file ({type(exc).__name__}: {exc})') from exc
    if not isinstance(loaded, torch.Tensor) or tuple(loaded.shape) != tuple(shape):
        got = tuple(loaded.shape) if isinstance(loaded, torch.Tensor) else type(loaded).__name__
        raise ConfigError(f'{key}: "{path}" must hold one tensor of shape (classes, K, D) = {tuple(shape)}, '
                          f'got {got}')
    if not torch.isfinite(loaded).all() or (loaded.norm(dim=-1) == 0).any():
        raise ConfigError(f'{key}: "{path}" holds non-finite or zero feature vectors')
    return loaded


def template_offsets(text_encoder, dataset_name, classnames, metadata, base, n_sub, scope, scale, generator=None):
    """Sub-prompt k starts at the text feature of the k-th distinct template (minus b[c]); sub-prompts
    beyond the template pool start at random offsets of norm ``scale``."""
    pool = [dataset_template(dataset_name)] + [t for t in IMAGENET_TEMPLATES_SELECT]
    names = [format_classname(c) for c in classnames]
    sets = []
    for c, name in enumerate(names):
        texts = [t.format(name) for t in pool]
        if metadata is not None:
            texts += [fn(name, metadata[c]) for fn in hierarchical_templates(metadata[c])]
        sets.append(texts[:n_sub])
    n_tmpl = min(len(s) for s in sets)
    offsets = mm.random_offsets((len(names), n_sub, base.shape[1]), scale, generator)
    feats = encode_prompt_sets(text_encoder, [[t] for s in sets for t in s[:n_tmpl]]).reshape(len(names), n_tmpl, -1)
    offsets[:, :n_tmpl] = feats - base.unsqueeze(1)
    return offsets.mean(0) if scope == "shared" else offsets


def resolve_train_features(m):
    """TRAIN_FEATURES of a TRAINER.MIXPROMPT node resolved: ``auto`` is augmented when FEATURE_CACHE_VIEWS > 0."""
    if m.TRAIN_FEATURES == "auto":
        return "augmented" if m.get("FEATURE_CACHE_VIEWS", 0) > 0 else "clean"
    return m.TRAIN_FEATURES


# ----------------------------------------------------------------------------------------- config
def add_mixprompt_config(cfg):
    """TRAINER.MIXPROMPT with the fixed defaults. How they were chosen, with the measurements, is in
    docs/collapse_benchmark.md and (TRAIN_FEATURES and the optimiser of the fixed configs)
    docs/mixprompt_recipe.md. ``configs/trainers/MixPrompt/seed.yaml`` is the earlier system's objective and
    recipe term by term (docs/seed_analysis.md); ``original.yaml`` is a hybrid of its tau, L2 weight and
    lambda with this code's objective, not a reproduction."""
    m = cfg.TRAINER.MIXPROMPT = CN()
    m.K = 8  # sub-prompts per class
    m.OFFSET_SPACE = "feature"  # feature: t = normalize(b[c] + delta); token: offsets on context embeddings
    m.SCOPE = "class"  # class: delta per (class, sub-prompt); shared: K offsets shared by all classes
    # token space only (CoOp's context options)
    m.N_CTX = 4
    m.CTX_INIT = "a photo of a"  # sets N_CTX to its token count when non-empty
    m.CLASS_TOKEN_POSITION = "end"  # end | middle | front
    m.ENCODE_CHUNK = 1024  # encode the C*K prompts in chunks of this many rows (0 = all at once)
    m.ENCODE_CHECKPOINT = False  # recompute each chunk's activations in backward (memory ~ chunk)
    # large label spaces: classes per training step (the batch's classes plus uniformly sampled others, with
    # the sampled-softmax logit correction); 0 = all classes (exact). See docs/performance.md.
    m.CLASS_SAMPLE = 0
    # templates of the frozen class text feature b[c] (feature-space sub-prompts start from it; the zero-shot
    # residual scores it)
    m.TEMPLATES = "hierarchical"  # dataset | ensemble | hierarchical (class metadata; else ensemble)
    # EM temperature, annealed by iteration from TAU_START to TAU_END
    m.TAU_START = 1.0
    m.TAU_END = 0.3
    m.TAU_SCHEDULE = "cosine"  # cosine | linear | exponential
    # linear lr warm-up over the first WARMUP_STEPS training steps (lr x step / WARMUP_STEPS, from 0), on top
    # of the per-epoch OPTIM schedule; 0 = off. The earlier system warmed up for 2000 steps.
    m.WARMUP_STEPS = 0
    # image features of the M-step (the loss): clean = the training images under the test transform, encoded
    # once (the same features as the E-step and the k-means initialisation); augmented = the training
    # transform, encoded per batch (or FEATURE_CACHE_VIEWS cached views); auto = augmented when
    # FEATURE_CACHE_VIEWS > 0 (cached views are a request for them), else clean. docs/mixprompt_recipe.md.
    m.TRAIN_FEATURES = "auto"
    m.SIM_SCALE = 100.0  # a in s = a * cos, softmax_k(s / tau) and class scores (CLIP's logit scale is 100)
    m.LAMBDA_MIXTURE = 0.5  # loss = LAMBDA * mixture + (1 - LAMBDA) * class
    # ce: -sum_k gamma log p(y, k) with p a softmax over all C*K pairs (pulls toward own, pushes every other
    # pair away) | pull: -sum_k gamma * s[y, k] on the own class only (the earlier system's form) | ce_pull:
    # (1 - PULL_SHARE) * ce + PULL_SHARE * pull (the pull keeps sub-prompts on their images' modes, the
    # cross-entropy keeps them apart; chosen in docs/mixprompt_recipe.md)
    m.MIXTURE_LOSS = "ce_pull"
    m.PULL_SHARE = 0.5  # MIXTURE_LOSS ce_pull only
    m.POOL = "lse"  # pooling of sub-prompt scores into class scores in training: max | lse | mean
    m.EVAL_POOL = ""  # pooling at inference ("" = POOL)
    m.CLASS_TEMPERATURE = 1.0  # class loss = CE(pool(s) / CLASS_TEMPERATURE); the earlier system: 0.07
    # w in score(c) = pool_k s[c, k] + w * SIM_SCALE * cos(f, b[c]), b[c] the frozen class text feature (TEMPLATES):
    # its zero-shot score kept as a residual in training (added to every pair score of the class, so the
    # sub-prompts learn what zero-shot misses) and at inference; 0 = off (the defaults until 2026-12-03).
    # Chosen in docs/mixprompt_recipe.md, "A zero-shot residual".
    m.ZEROSHOT_WEIGHT = 0.5
    m.OFFSET_REG_WEIGHT = 0.0001  # L2 on the raw offsets
    # sum_d: w * mean over sub-prompts of |delta|^2 | mean: w * mean of delta^2 over all numbers (D x weaker)
    m.OFFSET_REG_REDUCTION = "sum_d"
    # auto: clusters in feature space, random in token space | random (norm OFFSET_INIT_SCALE) |
    # random_coordinate (std OFFSET_INIT_SCALE per coordinate: norm ~ scale * sqrt(D)) | templates | clusters
    # (offsets of norm OFFSET_INIT_SCALE along the mean residuals of K clusters of the class's clean image
    # features, CLUSTERING: sub-prompts tilted from b[c] toward them; kmeans is its older name) | cluster_means
    # (each sub-prompt exactly at a cluster's mean feature: the text then enters through the zero-shot residual
    # only) | features (each sub-prompt exactly at a given feature direction, INIT_FEATURES_FILE; the collapse
    # benchmark's oracle_init) (all but the first three: feature space only; the last two: SCOPE class)
    m.INIT = "auto"
    m.INIT_FEATURES_FILE = ""  # INIT features: a torch file holding a (C, K, D) tensor (its content is not recorded)
    m.OFFSET_INIT_SCALE = 0.3  # norm of an initial offset (relative to |b[c]| = 1), per-coordinate std
    # with INIT random_coordinate
    # INIT clusters / cluster_means (SCOPE class): the clustering of each class's clean image features they start
    # from: ward (agglomerative, Ward's criterion; deterministic; O(N^2) per image of a class: 1.5 s at 1,000
    # images, docs/performance.md) | kmeans (k-means++; the default until 2026-12-03). SCOPE shared always
    # clusters all residuals with k-means. docs/mixprompt_recipe.md, "Ward's clustering and its cluster sizes".
    m.CLUSTERING = "ward"
    m.KMEANS_RESTARTS = 1  # CLUSTERING kmeans: per class, the lowest-inertia of this many seeded k-means++ runs
    # per-image entropy regulariser, w * (-mean_i H(gamma_i)): none | image_detached (H of the detached
    # E-step targets: a constant with zero gradient, the earlier system's later form) | image (H of
    # softmax(s / tau) with gradient: pushes every image toward uniform responsibilities)
    m.ENTROPY = "none"
    m.ENTROPY_WEIGHT = 0.0  # ENTROPY image_detached / image only
    m.DIVERSITY = "orthogonal"  # none | cosine | orthogonal: penalty on the final features t[c, :]
    m.DIVERSITY_WEIGHT = 1.0  # DIVERSITY cosine / orthogonal only
    m.BALANCE = "sinkhorn"  # none | marginal_entropy | sinkhorn (balanced epoch-level E-step)
    m.BALANCE_WEIGHT = 0.1  # marginal_entropy only
    m.BALANCE_MOMENTUM = 0.9  # marginal_entropy only: running estimate of class-level usage
    m.SINKHORN_ITERS = 50  # sinkhorn only
    # sinkhorn only: 1 = every sub-prompt takes an equal share of its class's images; p < 1 relaxes it (the
    # semi-relaxed Sinkhorn of a KL penalty tau p / (1 - p) on usage: column scale (share / usage) ** p);
    # 0 = plain softmax. Relaxing it raised K > M mode recovery and collapsed the random backbone
    # (docs/mixprompt_recipe.md).
    m.SINKHORN_POWER = 1.0
    # sinkhorn only: each sub-prompt's share of its class's images: equal (N / K) | clusters (the size of the
    # start cluster it began at: the start's uneven split is kept, no sub-prompt gets less than one image) | auto
    # (clusters after a per-class clustered start, else equal). docs/mixprompt_recipe.md, "Ward's clustering
    # and its cluster sizes".
    m.SINKHORN_SHARES = "auto"
    # diagnostics: the collapse rule's thresholds (trainers/mixprompt_diagnostics.py says why these values)
    m.COLLAPSE_FEATURE_COS = DEFAULT_COLLAPSE_FEATURE_COS
    m.COLLAPSE_TOP1_SHARE = DEFAULT_COLLAPSE_TOP1_SHARE
    m.PREC = "fp16"  # fp16 | fp32 | amp | bf16 (learnable offsets stay fp32; CPU runs in fp32)
    add_feature_cache_config(m)
    return cfg


#: keys that apply only in some modes: KEY -> (the mode key, the modes where KEY applies). Setting KEY away
#: from its default in another mode is an error (it would be silently ignored).
MODE_KEYS = {
    **{key: ("OFFSET_SPACE", ("token",)) for key in ("N_CTX", "CTX_INIT", "CLASS_TOKEN_POSITION", "ENCODE_CHUNK",
                                                      "ENCODE_CHECKPOINT")},
    "DIVERSITY_WEIGHT": ("DIVERSITY", ("cosine", "orthogonal")),
    "BALANCE_WEIGHT": ("BALANCE", ("marginal_entropy",)),
    "BALANCE_MOMENTUM": ("BALANCE", ("marginal_entropy",)),
    "SINKHORN_ITERS": ("BALANCE", ("sinkhorn",)),
    "SINKHORN_POWER": ("BALANCE", ("sinkhorn",)),
    "ENTROPY_WEIGHT": ("ENTROPY", ("image_detached", "image")),
    "PULL_SHARE": ("MIXTURE_LOSS", ("ce_pull",)),
    "INIT_FEATURES_FILE": ("INIT", ("features",)),
}


# ----------------------------------------------------------------------------------------- trainer
@register_trainer
class MixPrompt(CLIPTrainer):
    cfg_node = "MIXPROMPT"
    variant_keys = (VariantKey("TRAINER.MIXPROMPT.K", flag="--K", folder="k{}", help="sub-prompts per class"),)
    result_neutral_keys = ("TRAINER.MIXPROMPT.ENCODE_CHUNK",)
    # the value runs recorded before each key existed behaved as: the earlier code path (PULL_SHARE came with
    # MIXTURE_LOSS ce_pull, so no earlier run read it; earlier runs trained on augmented views, without the
    # zero-shot residual). ZEROSHOT_WEIGHT changes evaluation: rebuilding an old run (run_folder.load_trained)
    # sets each key its saved config lacks to this value.
    keys_added_later = {"TRAINER.MIXPROMPT.TRAIN_FEATURES": "augmented", "TRAINER.MIXPROMPT.KMEANS_RESTARTS": 1,
                        "TRAINER.MIXPROMPT.PULL_SHARE": 0.5, "TRAINER.MIXPROMPT.SINKHORN_POWER": 1.0,
                        "TRAINER.MIXPROMPT.INIT_FEATURES_FILE": "", "TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT": 0.0,
                        "TRAINER.MIXPROMPT.CLUSTERING": "kmeans", "TRAINER.MIXPROMPT.SINKHORN_SHARES": "equal"}
    report_order = 40

    @staticmethod
    def add_config(cfg):
        add_mixprompt_config(cfg)

    @classmethod
    def bench_variants(cls, sub_prompts, context_length):
        rows = []
        for k in sub_prompts:
            common = ["TRAINER.MIXPROMPT.K", str(k), "TRAINER.MIXPROMPT.INIT", "random"]
            rows.append((f"MixPrompt feature K{k}", common + ["TRAINER.MIXPROMPT.OFFSET_SPACE", "feature"]))
            rows.append((f"MixPrompt token K{k}", common + ["TRAINER.MIXPROMPT.OFFSET_SPACE", "token",
                                                            *cls.context_opts(context_length)]))
        return rows
    checkpoint_ignored_keys = ("token_prefix", "token_suffix", "tokenized_prompts", "base_features", "zeroshot_features")
    checkpoint_class_sized_keys = ("running_usage",)

    def check_cfg(self, cfg):
        validate_mixprompt_cfg(cfg)

    # -- model ----------------------------------------------------------------------------------
    def build_clip_model(self, classnames, clip_model):
        m = self.cfg.TRAINER.MIXPROMPT
        metadata = getattr(self.dm.dataset, "class_metadata", None)
        if m.TEMPLATES == "hierarchical" and metadata is None and encodes_class_text(m):
            print(f"Note: {self.cfg.DATASET.NAME} provides no class metadata; hierarchical templates fall "
                  "back to the ensemble (dataset template + IMAGENET_TEMPLATES_SELECT)")
        model = MixPromptClassifier(self.cfg, classnames, clip_model, metadata).to(self.device)
        self.model = model
        self.objective = mm.MixPromptObjective.from_cfg(self.cfg.TRAINER.MIXPROMPT)
        self._train_features = None
        self._epoch_gamma = None
        self.init_offsets(model, classnames, metadata)
        return model

    def build_model(self):
        super().build_model()
        if self.train_feature_source() == "clean":
            # the M-step reads the training images' clean features: batches of them, in the image loader's
            # order, without loading or augmenting images it would not use (as the base class swaps in the
            # loader of cached views)
            features, labels, _ = self.train_features()  # (N, D), (N,); row i = train_x[i]
            self.train_loader_x = CachedFeatureLoader(features[:, None], labels, self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE)

    @torch.no_grad()
    def init_offsets(self, model, classnames, metadata):
        m = self.cfg.TRAINER.MIXPROMPT
        learner = model.prompt_learner
        shape = tuple(learner.offsets.shape)
        init = resolve_init(m.INIT, m.OFFSET_SPACE)
        if init == "random":
            offsets = mm.random_offsets(shape, m.OFFSET_INIT_SCALE)
        elif init == "random_coordinate":
            offsets = mm.random_coordinate_offsets(shape, m.OFFSET_INIT_SCALE)
        elif init in ("clusters", "cluster_means"):
            features, labels, _ = self.train_features()
            generator = torch.Generator().manual_seed(max(self.cfg.SEED, 0))
            if m.SCOPE == "shared":
                offsets = mm.kmeans_offsets(features, labels, m.K, m.OFFSET_INIT_SCALE, generator, m.KMEANS_RESTARTS)
            else:
                offsets, self._cluster_sizes = mm.clustered_offsets(  # (C, K, D), (C, K)
                    features, labels, learner.base_features.detach().cpu(), m.K, m.OFFSET_INIT_SCALE, m.CLUSTERING,
                    init == "cluster_means", generator, m.KMEANS_RESTARTS)
        elif init == "features":
            source = init_features_source(self.cfg)
            start = load_init_features(source, shape)  # (C, K, D)
            copy = init_features_copy(self.cfg)
            if is_main_process() and source != copy:
                os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
                torch.save(start, copy)
            offsets = mm.offsets_to_features(start, learner.base_features.detach().cpu())
        else:
            offsets = template_offsets(model.text_encoder, self.cfg.DATASET.NAME, classnames, metadata,
                                       learner.base_features, m.K, m.SCOPE, m.OFFSET_INIT_SCALE)
        learner.offsets.copy_(offsets)
        # the features the sub-prompts start from: the diagnostics measure how far each one moves
        self._initial_features = model.text_features().detach().float().cpu()  # (C, K, D)
        print(f"Initialised {m.K} sub-prompts per class ({m.OFFSET_SPACE} space, {m.SCOPE} scope, init {init}"
              + (f", {m.CLUSTERING} clustering" if is_clustered_start(m) else "") + "); "
              f"initial feature cosine {float(mm.pairwise_cosine(self._initial_features).mean()):.4f}; M-step on "
              + ("the training images' test-transform features" if self.train_feature_source() == "clean"
                 else "augmented training views"))

    def train_features(self):
        """Image features (N, D) of the training images under the test transform, their labels (N,) and
        dataset indices (N,); computed once (the image encoder is frozen) and cached."""
        if self._train_features is None:
            items = self.dm.dataset.train_x
            if self.feature_cache is not None:
                features, labels = self.feature_cache.eval_features(self.model, items, "training")
                self._train_features = features, labels, torch.arange(len(items))
            else:
                print("Computing image features of the training images (test transform, once)")
                self._train_features = compute_image_features(self.model, items, self.cfg, self.device)
        return self._train_features

    def train_feature_source(self):
        """The M-step's image features, TRAIN_FEATURES resolved: ``clean`` or ``augmented``."""
        return resolve_train_features(self.cfg.TRAINER.MIXPROMPT)

    # -- schedule ---------------------------------------------------------------------------------
    def tau_at_step(self, epoch, batch_idx):
        """Tau at iteration ``batch_idx`` of ``epoch`` (annealed by iteration over the whole run)."""
        m = self.cfg.TRAINER.MIXPROMPT
        num_batches = len(self.train_loader_x)
        total = max(self.max_epoch * num_batches - 1, 1)
        return mm.tau_at((epoch * num_batches + batch_idx) / total, m.TAU_START, m.TAU_END, m.TAU_SCHEDULE)

    # -- training ---------------------------------------------------------------------------------
    def before_epoch(self):
        m = self.cfg.TRAINER.MIXPROMPT
        if m.BALANCE == "sinkhorn":
            self._epoch_gamma = self.balanced_e_step(self.tau_at_step(self.epoch, 0))

    @torch.no_grad()
    def balanced_e_step(self, tau):
        """Epoch-level E-step: per class, Sinkhorn-balanced responsibilities of its training images, so
        every sub-prompt is responsible for its share: N_c / K images, or with SINKHORN_SHARES clusters the
        size of the start cluster it began at."""
        features, labels, indices = self.train_features()
        m = self.cfg.TRAINER.MIXPROMPT
        own = mm.own_class_scores(self.model.scores(features.to(self.device), self.model.text_features()),
                                  labels.to(self.device))  # (N, K)
        gamma = torch.zeros_like(own)
        sizes = self._cluster_sizes if resolve_sinkhorn_shares(m) == "clusters" else None  # (C, K)
        for c in labels.unique():
            mask = (labels == c).to(self.device)
            shares = None if sizes is None else sizes[int(c)]  # (K,)
            gamma[mask] = mm.sinkhorn_balance(own[mask], tau, m.SINKHORN_ITERS, m.SINKHORN_POWER, shares)
        table = torch.zeros(int(indices.max()) + 1, own.shape[1], device=self.device)
        table[indices.to(self.device)] = gamma
        return table

    def step_warmup(self):
        """Scale the epoch schedule's lr by step / WARMUP_STEPS while the global step is below WARMUP_STEPS
        (a function of the step alone, so a resumed run continues the same ramp)."""
        warmup = self.cfg.TRAINER.MIXPROMPT.WARMUP_STEPS
        step = self.epoch * len(self.train_loader_x) + self.batch_idx
        if warmup <= 0 or step > warmup:  # at step == warmup the epoch lr is restored
            return
        for group, lr in zip(self.optim.param_groups, self.sched.get_last_lr()):
            group["lr"] = lr * min(step / warmup, 1.0)

    def compute_loss(self, batch):
        m = self.cfg.TRAINER.MIXPROMPT
        self.step_warmup()
        image_features, label = self.batch_image_features(batch)  # clean features, cached views or images
        tau = self.tau_at_step(self.epoch, self.batch_idx)
        # target: each image's position among the scored classes (its label unless CLASS_SAMPLE)
        sampled, target, correction = mm.sample_classes(label, self.num_classes, m.CLASS_SAMPLE)
        features = self.model.text_features(sampled)  # (S, K, D); S = C unless CLASS_SAMPLE
        scores = self.model.scores(image_features, features)  # (B, S, K)
        residual = self.model.zeroshot_residual(image_features, sampled)  # (B, S)
        if residual is not None:  # constant over a class's sub-prompts: the E-step and pull are unchanged
            scores = scores + residual[:, :, None]
        scores = scores + correction[None, :, None]  # sampled-softmax correction (zero for all classes)
        own = mm.own_class_scores(scores, target)  # (B, K)
        if m.BALANCE == "sinkhorn":
            gamma = self._epoch_gamma[batch["index"].to(self.device)]
        else:
            gamma = mm.responsibilities(own.detach(), tau)
        running = self.model.prompt_learner.running_usage  # (C, K)
        loss, terms = self.objective(scores, target, gamma, features, self.model.prompt_learner.flat_offsets(),
                                     tau, running, label)
        if m.BALANCE == "marginal_entropy":
            batch_usage, classes = terms.pop("batch_usage"), terms.pop("classes")
            soft_gamma = terms.pop("soft_gamma")
            if is_distributed():  # the running estimate is global: class usage over every rank's images
                batch_usage, classes = all_reduce_class_mean(soft_gamma, label, running.shape[0])
            mm.update_running_usage(running, classes, batch_usage, m.BALANCE_MOMENTUM)
        terms["tau"] = tau
        self._loss_terms = terms  # reported by loss_terms()
        return loss, mm.pool_scores(scores, m.POOL), target

    def loss_terms(self):
        return self._loss_terms

    def divergence_causes(self):
        m = self.cfg.TRAINER.MIXPROMPT
        return [f"scores too sharp for the precision (TRAINER.MIXPROMPT.SIM_SCALE {m.SIM_SCALE} / TAU_END "
                f"{m.TAU_END} = {m.SIM_SCALE / m.TAU_END:.4g}; lower SIM_SCALE or raise TAU_END)"]

    # -- diagnostics ------------------------------------------------------------------------------
    @torch.no_grad()
    def diagnostics(self, with_assignments=False):
        """Collapse diagnostics over the training images; with ``with_assignments`` also each image's
        arg-max sub-prompt (``assignments``: impath, label, subprompt lists), for mode-recovery analyses."""
        m = self.cfg.TRAINER.MIXPROMPT
        features, labels, indices = self.train_features()
        subprompts = self.model.text_features()
        own = mm.own_class_scores(self.model.scores(features.to(self.device), subprompts), labels.to(self.device))
        tau = self.tau_at_step(self.epoch, len(self.train_loader_x) - 1)
        gamma = mm.responsibilities(own, tau)
        diag = collapse_diagnostics(self.model.prompt_learner.flat_offsets().cpu(), subprompts.cpu(), gamma.cpu(),
                                    labels.cpu(), m.COLLAPSE_FEATURE_COS, m.COLLAPSE_TOP1_SHARE,
                                    self._initial_features)
        diag["tau"] = tau
        if with_assignments:
            items = self.dm.dataset.train_x
            diag["assignments"] = {
                "impath": [items[i].impath for i in indices.tolist()],
                "label": labels.tolist(),
                "subprompt": gamma.argmax(dim=-1).cpu().tolist(),
            }
        return diag

    def before_train(self):
        super().before_train()
        path = os.path.join(self.output_dir, DIAGNOSTICS_FILE)
        if is_main_process() and os.path.exists(path):  # a resumed run keeps only the epochs it has not redone
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["epoch"] <= self.start_epoch]
            with open(path, "w") as f:
                f.writelines(kept)

    def after_epoch(self):
        self.set_model_mode("eval")
        diag = self.diagnostics()
        diag["epoch"] = self.epoch + 1
        print(f"epoch [{self.epoch + 1}/{self.max_epoch}] {format_diagnostics(diag)}")
        for key in ("offset_cos", "feature_cos", "eff_k", "top1_share", "dead", "collapsed_frac", "tau"):
            self.write_scalar(f"collapse/{key}", diag[key], self.epoch)
        if is_main_process():  # distributed: rank 0 writes the run folder
            with open(os.path.join(self.output_dir, DIAGNOSTICS_FILE), "a") as f:
                f.write(json.dumps(diag) + "\n")
        super().after_epoch()

    def test(self, split=None):
        result = super().test(split)
        if split is None:  # the final test of a training run, or --eval-only
            self.write_summary()
        return result

    def write_summary(self):
        """Print the final diagnostics and write them, per class and per image, to the run folder."""
        diag = self.diagnostics(with_assignments=True)
        diag["classnames"] = list(self.dm.dataset.classnames)
        subprompts = self.model.text_features().float()  # (C, K, D)
        n_cls, n_sub = subprompts.shape[:2]
        if n_cls * n_sub * n_sub <= SUMMARY_MAX_COS_ENTRIES:  # per-class K x K cosines, for heatmaps
            labels = diag["per_class"]["labels"]
            cos = (subprompts[labels] @ subprompts[labels].transpose(1, 2)).cpu()
            diag["per_class"]["subprompt_cos"] = [[[round(v, 4) for v in row] for row in c] for c in cos.tolist()]
        print("=> collapse diagnostics (training images)")
        print(f"* {format_diagnostics(diag)}")
        print(f"* rule: {diag['rule']}")
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, SUMMARY_FILE), "w") as f:
            json.dump(diag, f, indent=1)


def validate_mixprompt_cfg(cfg):
    """Every TRAINER.MIXPROMPT knob checked once, with the key in the message."""
    m = cfg.TRAINER.MIXPROMPT
    key = "TRAINER.MIXPROMPT"

    def choice(name, choices):
        value = m[name]
        if value not in choices:
            raise ConfigError(f'{key}.{name}: "{value}" is not one of {list(choices)}')

    if m.K < 1:
        raise ConfigError(f"{key}.K: must be >= 1, got {m.K}")
    choice("OFFSET_SPACE", OFFSET_SPACES)
    choice("SCOPE", SCOPES)
    choice("CLASS_TOKEN_POSITION", CLASS_TOKEN_POSITIONS)
    choice("TEMPLATES", TEMPLATE_SETS)
    choice("TAU_SCHEDULE", mm.TAU_SCHEDULES)
    choice("POOL", mm.POOLS)
    if m.EVAL_POOL:
        choice("EVAL_POOL", mm.POOLS)
    choice("INIT", INITS)
    choice("CLUSTERING", CLUSTERINGS)
    choice("SINKHORN_SHARES", SINKHORN_SHARE_CHOICES)
    choice("TRAIN_FEATURES", TRAIN_FEATURE_SOURCES)
    choice("DIVERSITY", mm.DIVERSITY_TYPES)
    choice("BALANCE", mm.BALANCE_TYPES)
    choice("MIXTURE_LOSS", mm.MIXTURE_LOSSES)
    choice("OFFSET_REG_REDUCTION", mm.OFFSET_REG_REDUCTIONS)
    choice("ENTROPY", mm.ENTROPY_TYPES)
    if not m.TAU_START > 0 or not m.TAU_END > 0:
        raise ConfigError(f"{key}.TAU_START / TAU_END: must be positive, got {m.TAU_START} / {m.TAU_END}")
    if m.TAU_END > m.TAU_START:
        raise ConfigError(f"{key}.TAU_END ({m.TAU_END}) is above TAU_START ({m.TAU_START}): tau is annealed "
                          "from TAU_START down to TAU_END")
    if not 0.0 <= m.LAMBDA_MIXTURE <= 1.0:
        raise ConfigError(f"{key}.LAMBDA_MIXTURE: must be in [0, 1], got {m.LAMBDA_MIXTURE}")
    if not 0.0 <= m.PULL_SHARE <= 1.0:
        raise ConfigError(f"{key}.PULL_SHARE: must be in [0, 1], got {m.PULL_SHARE}")
    if not 0.0 <= m.SINKHORN_POWER <= 1.0:
        raise ConfigError(f"{key}.SINKHORN_POWER: must be in [0, 1] (1 = equal usage, 0 = unbalanced), "
                          f"got {m.SINKHORN_POWER}")
    if not 0.0 <= m.BALANCE_MOMENTUM < 1.0:
        raise ConfigError(f"{key}.BALANCE_MOMENTUM: must be in [0, 1), got {m.BALANCE_MOMENTUM}")
    for name in ("SIM_SCALE", "CLASS_TEMPERATURE"):
        if not m[name] > 0:
            raise ConfigError(f"{key}.{name}: must be positive, got {m[name]}")
    for name in ("OFFSET_REG_WEIGHT", "DIVERSITY_WEIGHT", "BALANCE_WEIGHT", "ENTROPY_WEIGHT", "OFFSET_INIT_SCALE",
                 "ZEROSHOT_WEIGHT", "ENCODE_CHUNK", "CLASS_SAMPLE", "WARMUP_STEPS"):
        if m[name] < 0:
            raise ConfigError(f"{key}.{name}: must be >= 0, got {m[name]}")
    if m.TRAIN_FEATURES == "clean" and m.get("FEATURE_CACHE_VIEWS", 0) > 0:
        raise ConfigError(f"{key}.FEATURE_CACHE_VIEWS ({m.FEATURE_CACHE_VIEWS}) caches augmented training views, but "
                          f"{key}.TRAIN_FEATURES clean trains on the test-transform features: set "
                          f"{key}.TRAIN_FEATURES augmented or {key}.FEATURE_CACHE_VIEWS 0")
    for name in ("SINKHORN_ITERS", "KMEANS_RESTARTS"):
        if m[name] < 1:
            raise ConfigError(f"{key}.{name}: must be >= 1, got {m[name]}")
    if not 0.0 <= m.COLLAPSE_TOP1_SHARE <= 1.0 or not -1.0 <= m.COLLAPSE_FEATURE_COS <= 1.0:
        raise ConfigError(f"{key}.COLLAPSE_TOP1_SHARE / COLLAPSE_FEATURE_COS: a share in [0, 1] and a cosine in "
                          f"[-1, 1], got {m.COLLAPSE_TOP1_SHARE} / {m.COLLAPSE_FEATURE_COS}")
    if m.OFFSET_SPACE == "token" and m.INIT not in ("auto", "random", "random_coordinate"):
        raise ConfigError(f'{key}.INIT: "{m.INIT}" initialises offsets in feature space; token-space offsets '
                          "support INIT auto, random or random_coordinate")
    defaults = default_node(MixPrompt)
    if not encodes_class_text(m) and m.TEMPLATES != defaults.TEMPLATES:
        raise ConfigError(f"{key}.TEMPLATES is set to {m.TEMPLATES!r} but no class text feature is encoded: token "
                          f"space reads it only for the zero-shot residual, and {key}.ZEROSHOT_WEIGHT is 0")
    for name, (mode, applies) in MODE_KEYS.items():
        if m[mode] not in applies and m[name] != defaults[name]:
            raise ConfigError(f"{key}.{name} is set to {m[name]!r} but applies only with {key}.{mode} "
                              f"{' or '.join(applies)} (it is {m[mode]!r}): remove it or change {key}.{mode}")
    if m.INIT in ("cluster_means", "features") and m.SCOPE != "class":
        raise ConfigError(f"{key}.INIT {m.INIT} starts each (class, sub-prompt) at its own feature: it needs "
                          f"{key}.SCOPE class, got {m.SCOPE}")
    if m.INIT == "features":
        if init_features_source(cfg) is None:
            raise ConfigError(f'{key}.INIT_FEATURES_FILE: INIT features needs an existing file, got '
                              f'"{m.INIT_FEATURES_FILE}" (a resumed run also finds its copy, '
                              f'{init_features_copy(cfg)}). To evaluate a trained run '
                              f"without it, set {key}.INIT random: the checkpoint replaces the offsets.")
    # CLUSTERING and SINKHORN_SHARES equal are not refused where no per-class clustering happens: runs saved
    # before the keys existed are rebuilt with kmeans / equal (keys_added_later), in every space and scope
    kmeans_clustered = is_clustered_start(m) and (m.CLUSTERING == "kmeans" or m.SCOPE == "shared")
    if not kmeans_clustered and m.KMEANS_RESTARTS != defaults.KMEANS_RESTARTS:
        raise ConfigError(f"{key}.KMEANS_RESTARTS is set to {m.KMEANS_RESTARTS} but applies only when k-means "
                          f"clusters the start ({key}.INIT clusters or cluster_means, or auto in feature space, with "
                          f"{key}.CLUSTERING kmeans or {key}.SCOPE shared): remove it or change {key}.CLUSTERING")
    if m.SINKHORN_SHARES == "clusters" and not has_class_clusters(m):
        raise ConfigError(f"{key}.SINKHORN_SHARES clusters keeps each sub-prompt's start cluster size in the balanced "
                          f"E-step: it needs {key}.BALANCE sinkhorn and a per-class clustered start ({key}.INIT "
                          f"clusters or cluster_means, or auto in feature space, with {key}.SCOPE class), got BALANCE "
                          f"{m.BALANCE}, INIT {m.INIT} in {m.OFFSET_SPACE} space, SCOPE {m.SCOPE}")
    if m.SCOPE == "class" and cfg.DATASET.SUBSAMPLE_CLASSES == "new":
        raise ConfigError(f"{key}.SCOPE: class-scope sub-prompts exist only for the classes seen in training, "
                          "so they cannot score new classes (DATASET.SUBSAMPLE_CLASSES new). Train with "
                          f"{key}.SCOPE shared for base-to-new evaluation.")
