"""MixPrompt: K learnable sub-prompts per class, trained with an annealed EM objective (DESIGN §5-6).

Trainer glue only; the model maths lives in ``mixprompt_model`` and the diagnostics in
``mixprompt_diagnostics``. Config: ``TRAINER.MIXPROMPT.*`` (``trainers/config.py``), validated once in
``check_cfg``.
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import TRAINER_REGISTRY
from engine.distributed import all_reduce_class_mean, is_distributed, is_main_process
from engine.errors import ConfigError

from . import mixprompt_model as mm
from .base import CLIPTrainer
from .clip import tokenize
from .clip_heads import CLIPClassifier
from .config import CLASS_TOKEN_POSITIONS
from .features import compute_image_features
from .mixprompt_diagnostics import collapse_diagnostics, format_diagnostics
from .prompts import ClassPromptTokens, assemble_prompts, init_context
from .templates import IMAGENET_TEMPLATES_SELECT, dataset_template, format_classname

OFFSET_SPACES = ("feature", "token")
SCOPES = ("class", "shared")
TEMPLATE_SETS = ("dataset", "ensemble", "hierarchical")
INITS = ("random", "templates", "kmeans")
DIAGNOSTICS_FILE = "diagnostics.jsonl"
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
        if self.scope == "shared":
            offsets = self.offsets.unsqueeze(0)  # (1, K, D)
        else:
            offsets = self.offsets if classes is None else self.offsets[classes]  # (S, K, D)
        return F.normalize(base.unsqueeze(1) + offsets, dim=-1)


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


class MixPromptClassifier(CLIPClassifier):
    def __init__(self, cfg, classnames, clip_model, metadata):
        super().__init__(clip_model)
        m = cfg.TRAINER.MIXPROMPT
        self.sim_scale = m.SIM_SCALE
        self.eval_pool = m.EVAL_POOL or m.POOL
        self.chunk_size = m.ENCODE_CHUNK
        self.encode_checkpoint = m.ENCODE_CHECKPOINT
        if m.OFFSET_SPACE == "feature":
            prompts = class_prompts(cfg.DATASET.NAME, classnames, metadata, m.TEMPLATES)
            print(f"Base class features from {len(prompts[0])} template(s) per class, e.g. {prompts[0]}")
            base = encode_prompt_sets(self.text_encoder, prompts)  # (C, D)
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

    def logits(self, image_features, subprompt_features):
        return mm.pool_scores(self.scores(image_features, subprompt_features), self.eval_pool)  # (B, C)


# ----------------------------------------------------------------------------------------- initialisation
def random_offsets(shape, scale, generator=None):
    """Gaussian offsets whose expected norm (over the last dim(s) after the sub-prompt axis) is ``scale``."""
    per_offset = 1
    for size in shape[-1:]:
        per_offset *= size
    return torch.randn(shape, generator=generator) * (scale / per_offset ** 0.5)


def kmeans(points, n_clusters, n_iters=25, generator=None):
    """Plain k-means with k-means++ seeding: centroids (n_clusters, D) of ``points`` (N >= n_clusters, D)."""
    first = torch.randint(len(points), (1,), generator=generator)
    centroids = [points[first]]
    for _ in range(1, n_clusters):
        dist = torch.cdist(points, torch.cat(centroids)).min(dim=1).values.pow(2)
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / len(dist))
        centroids.append(points[torch.multinomial(probs, 1, generator=generator)])
    centroids = torch.cat(centroids)
    for _ in range(n_iters):
        assign = torch.cdist(points, centroids).argmin(dim=1)
        for k in range(n_clusters):
            members = points[assign == k]
            if len(members):
                centroids[k] = members.mean(0)
    return centroids


def kmeans_offsets(features, labels, n_cls, n_sub, scope, scale, generator=None):
    """Offsets toward the within-class modes: per class, k-means of the class's image features minus the
    class mean, directions scaled to norm ``scale`` (shared scope: k-means of all within-class residuals).
    Sub-prompts beyond a class's image count get random directions."""
    dim = features.shape[1]
    residuals = torch.zeros_like(features)
    for c in labels.unique():
        mask = labels == c
        residuals[mask] = features[mask] - features[mask].mean(0)
    if scope == "shared":
        offsets = random_offsets((n_sub, dim), scale, generator)
        k = min(n_sub, len(residuals))
        offsets[:k] = F.normalize(kmeans(residuals, k, generator=generator), dim=-1) * scale
        return offsets
    offsets = random_offsets((n_cls, n_sub, dim), scale, generator)
    for c in range(n_cls):
        points = residuals[labels == c]
        k = min(n_sub, len(points))
        if k >= 2:
            offsets[c, :k] = F.normalize(kmeans(points, k, generator=generator), dim=-1) * scale
    return offsets


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
    offsets = random_offsets((len(names), n_sub, base.shape[1]), scale, generator)
    feats = encode_prompt_sets(text_encoder, [[t] for s in sets for t in s[:n_tmpl]]).reshape(len(names), n_tmpl, -1)
    offsets[:, :n_tmpl] = feats - base.unsqueeze(1)
    return offsets.mean(0) if scope == "shared" else offsets


# ----------------------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class MixPrompt(CLIPTrainer):
    cfg_node = "MIXPROMPT"
    checkpoint_ignored_keys = ("token_prefix", "token_suffix", "tokenized_prompts", "base_features")
    checkpoint_class_sized_keys = ("running_usage",)

    def check_cfg(self, cfg):
        validate_mixprompt_cfg(cfg)

    # -- model ----------------------------------------------------------------------------------
    def build_clip_model(self, classnames, clip_model):
        m = self.cfg.TRAINER.MIXPROMPT
        metadata = getattr(self.dm.dataset, "class_metadata", None)
        if m.TEMPLATES == "hierarchical" and metadata is None and m.OFFSET_SPACE == "feature":
            print(f"Note: {self.cfg.DATASET.NAME} provides no class metadata; hierarchical templates fall "
                  "back to the ensemble (dataset template + IMAGENET_TEMPLATES_SELECT)")
        model = MixPromptClassifier(self.cfg, classnames, clip_model, metadata).to(self.device)
        self.model = model
        self._train_features = None
        self._epoch_gamma = None
        self.init_offsets(model, classnames, metadata)
        return model

    @torch.no_grad()
    def init_offsets(self, model, classnames, metadata):
        m = self.cfg.TRAINER.MIXPROMPT
        learner = model.prompt_learner
        shape = tuple(learner.offsets.shape)
        if m.INIT == "random":
            offsets = random_offsets(shape, m.OFFSET_INIT_SCALE)
        elif m.INIT == "kmeans":
            features, labels, _ = self.train_features()
            offsets = kmeans_offsets(features, labels, len(classnames), m.K, m.SCOPE, m.OFFSET_INIT_SCALE)
        else:
            offsets = template_offsets(model.text_encoder, self.cfg.DATASET.NAME, classnames, metadata,
                                       learner.base_features, m.K, m.SCOPE, m.OFFSET_INIT_SCALE)
        learner.offsets.copy_(offsets)
        print(f"Initialised {m.K} sub-prompts per class ({m.OFFSET_SPACE} space, {m.SCOPE} scope, init {m.INIT})")

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
        every sub-prompt is responsible for an equal share (N_c / K images)."""
        features, labels, indices = self.train_features()
        m = self.cfg.TRAINER.MIXPROMPT
        own = mm.own_class_scores(self.model.scores(features.to(self.device), self.model.text_features()),
                                  labels.to(self.device))  # (N, K)
        gamma = torch.zeros_like(own)
        for c in labels.unique():
            mask = (labels == c).to(self.device)
            gamma[mask] = mm.sinkhorn_balance(own[mask], tau, m.SINKHORN_ITERS)
        table = torch.zeros(int(indices.max()) + 1, own.shape[1], device=self.device)
        table[indices.to(self.device)] = gamma
        return table

    def compute_loss(self, batch):
        m = self.cfg.TRAINER.MIXPROMPT
        image_features, label = self.batch_image_features(batch)
        tau = self.tau_at_step(self.epoch, self.batch_idx)
        # target: each image's position among the scored classes (its label unless CLASS_SAMPLE)
        sampled, target, correction = mm.sample_classes(label, self.num_classes, m.CLASS_SAMPLE)
        features = self.model.text_features(sampled)  # (S, K, D); S = C unless CLASS_SAMPLE
        scores = self.model.scores(image_features, features)  # (B, S, K)
        scores = scores + correction[None, :, None]  # sampled-softmax correction (zero for all classes)
        own = mm.own_class_scores(scores, target)  # (B, K)
        if m.BALANCE == "sinkhorn":
            gamma = self._epoch_gamma[batch["index"].to(self.device)]
        else:
            gamma = mm.responsibilities(own.detach(), tau)
        loss_mix = mm.mixture_loss(scores, target, gamma)
        loss_cls = mm.class_loss(scores, target, m.POOL)
        loss = m.LAMBDA_MIXTURE * loss_mix + (1 - m.LAMBDA_MIXTURE) * loss_cls
        terms = {"loss_mix": loss_mix.item(), "loss_cls": loss_cls.item()}
        offsets = self.model.prompt_learner.flat_offsets()
        if m.OFFSET_REG_WEIGHT > 0:
            loss = loss + m.OFFSET_REG_WEIGHT * offsets.pow(2).sum(-1).mean()
        if m.DIVERSITY != "none" and m.DIVERSITY_WEIGHT > 0:
            loss_div = mm.diversity_loss(features, m.DIVERSITY)
            loss = loss + m.DIVERSITY_WEIGHT * loss_div
            terms["loss_div"] = loss_div.item()
        if m.BALANCE == "marginal_entropy":
            running = self.model.prompt_learner.running_usage
            soft_gamma = mm.responsibilities(own, tau)  # (B, K)
            loss_bal, batch_usage, classes = mm.usage_balance_loss(soft_gamma, label, running, m.BALANCE_MOMENTUM)
            if is_distributed():  # the running estimate is global: class usage over every rank's images
                batch_usage, classes = all_reduce_class_mean(soft_gamma.detach(), label, running.shape[0])
            loss = loss + m.BALANCE_WEIGHT * loss_bal
            running[classes] = m.BALANCE_MOMENTUM * running[classes] + (1 - m.BALANCE_MOMENTUM) * batch_usage
            terms["loss_bal"] = loss_bal.item()
        logits = mm.pool_scores(scores, m.POOL)
        terms["tau"] = tau
        self._loss_terms = terms  # reported by loss_terms()
        return loss, logits, target

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
                                    labels.cpu(), m.COLLAPSE_FEATURE_COS, m.COLLAPSE_TOP1_SHARE)
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
    choice("DIVERSITY", mm.DIVERSITY_TYPES)
    choice("BALANCE", mm.BALANCE_TYPES)
    if not m.TAU_START > 0 or not m.TAU_END > 0:
        raise ConfigError(f"{key}.TAU_START / TAU_END: must be positive, got {m.TAU_START} / {m.TAU_END}")
    if m.TAU_END > m.TAU_START:
        raise ConfigError(f"{key}.TAU_END ({m.TAU_END}) is above TAU_START ({m.TAU_START}): tau is annealed "
                          "from TAU_START down to TAU_END")
    if not 0.0 <= m.LAMBDA_MIXTURE <= 1.0:
        raise ConfigError(f"{key}.LAMBDA_MIXTURE: must be in [0, 1], got {m.LAMBDA_MIXTURE}")
    if not 0.0 <= m.BALANCE_MOMENTUM < 1.0:
        raise ConfigError(f"{key}.BALANCE_MOMENTUM: must be in [0, 1), got {m.BALANCE_MOMENTUM}")
    for name in ("SIM_SCALE",):
        if not m[name] > 0:
            raise ConfigError(f"{key}.{name}: must be positive, got {m[name]}")
    for name in ("OFFSET_REG_WEIGHT", "DIVERSITY_WEIGHT", "BALANCE_WEIGHT", "OFFSET_INIT_SCALE", "ENCODE_CHUNK",
                 "CLASS_SAMPLE"):
        if m[name] < 0:
            raise ConfigError(f"{key}.{name}: must be >= 0, got {m[name]}")
    if m.OFFSET_SPACE == "token" and m.INIT != "random":
        raise ConfigError(f'{key}.INIT: "{m.INIT}" initialises offsets in feature space; token-space offsets '
                          "support only INIT random")
    if m.SCOPE == "class" and cfg.DATASET.SUBSAMPLE_CLASSES == "new":
        raise ConfigError(f"{key}.SCOPE: class-scope sub-prompts exist only for the classes seen in training, "
                          "so they cannot score new classes (DATASET.SUBSAMPLE_CLASSES new). Train with "
                          f"{key}.SCOPE shared for base-to-new evaluation.")
