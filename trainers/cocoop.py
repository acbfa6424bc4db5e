"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context plus an image-conditional shift from a small meta-net.

For image i with normalised CLIP feature f_i, a meta-net (``linear1`` vis_dim -> vis_dim // 16, ``relu``,
``linear2`` -> ctx_dim) gives a shift pi_i, and the prompt of class c is ``[SOS] (ctx + pi_i) [class c] .
[EOS]``. Every image therefore has its own C class text features t[i, c], and
logits[i, c] = exp(logit_scale) * cos(f_i, t[i, c]). Training loss: cross-entropy over the classes.

Config ``TRAINER.COCOOP.*`` (``trainers/config.py``): N_CTX, CTX_INIT (words; their token count sets the
context length), PREC, and BATCH_CHUNK.

Efficiency. CoCoOp's reference implementation loops over the images of a batch and runs the text encoder
on C prompts per image. Here the B x C prompts of a chunk of images go through the text encoder as one
batch. ``BATCH_CHUNK`` is the number of images per chunk (0 = automatic: as many images as keep a chunk at
or under ``PROMPTS_PER_CHUNK`` prompts, at least one), so memory stays bounded on large class lists; the
results do not depend on it (up to float rounding). In training each chunk's share of the loss is
backpropagated before the next chunk is built (the loss is a mean of per-image terms, so the gradients add
up to those of the whole batch), which bounds the memory of stored activations as well. Prompts are also
cut after the last EOT token of the class list before they are built: causal attention means the padding
after it cannot change any EOT feature, and the (B x C x 77 x W) tensor would be mostly padding.

Parameters and checkpoints: the learnable parts (``ctx`` and ``meta_net``) live in ``prompt_learner``, the
model registered for optimisation and checkpoints, with CoCoOp's parameter names (``ctx``,
``meta_net.linear1.weight``, ...), so checkpoints of CoCoOp's own code load here (their ``token_prefix`` /
``token_suffix`` buffers are ignored, as in CoOp, and rebuilt from the current class names: that is what
lets a model trained on base classes score new ones). As in CoCoOp, ``ctx`` and the meta-net are kept in
CLIP's dtype (fp16 with PREC fp16 on a GPU).
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import ConfigError
from yacs.config import CfgNode as CN

from .base import CLIPTrainer
from .clip_heads import CLIPClassifier
from .config import PRECISIONS
from .prompts import ClassPromptTokens, init_context
from .registry import register_trainer

#: With BATCH_CHUNK 0, a chunk holds as many images as keep it at or under this many prompts (images x classes).
PROMPTS_PER_CHUNK = 4096


class CoCoOpPromptLearner(nn.Module):
    """Learnable context ``ctx`` (M, W) and ``meta_net``; fixed class tokens around the context."""

    def __init__(self, cocoop_cfg, classnames, text_encoder, dtype, vis_dim):
        super().__init__()
        ctx, _ = init_context(text_encoder, cocoop_cfg.N_CTX, cocoop_cfg.CTX_INIT, len(classnames), False, dtype,
                              "TRAINER.COCOOP")
        self.ctx = nn.Parameter(ctx)  # (M, W)
        n_ctx, ctx_dim = ctx.shape
        hidden = vis_dim // 16
        if hidden < 1:
            raise ConfigError(f"MODEL.BACKBONE.NAME: CoCoOp's meta-net has vis_dim // 16 hidden units, but this "
                              f"CLIP's image features have only {vis_dim} dimensions")
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, ctx_dim)),
        ])).to(dtype)
        self.tokens = ClassPromptTokens(text_encoder, classnames, n_ctx, dtype)
        # Causal attention: nothing after the last EOT of the class list can change an EOT feature.
        self.seq_len = int(self.tokens.tokenized_prompts.argmax(dim=-1).max()) + 1
        self.n_cls, self.n_ctx = len(classnames), n_ctx

    @property
    def tokenized_prompts(self):
        """Token ids (C, L') of the class prompts, cut after the last EOT."""
        return self.tokens.tokenized_prompts[:, :self.seq_len]

    def context(self, image_features):
        """Per-image context ctx + meta_net(f_i): (B, M, W) from normalised image features (B, D)."""
        bias = self.meta_net(image_features.to(self.meta_net.linear1.weight.dtype))  # (B, W)
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, M, W)

    def assemble(self, ctx):
        """Prompt embeddings (B, C, L', W): [SOS] ctx[i] [class c] . [EOS], for every image i and class c."""
        prefix = self.tokens.token_prefix  # (C, 1, W)
        suffix = self.tokens.token_suffix[:, :self.seq_len - 1 - self.n_ctx]  # (C, L'-1-M, W)
        n_img = ctx.shape[0]
        ctx = ctx.to(prefix.dtype).unsqueeze(1).expand(-1, self.n_cls, -1, -1)  # (B, C, M, W)
        return torch.cat([prefix.expand(n_img, -1, -1, -1), ctx, suffix.expand(n_img, -1, -1, -1)], dim=2)

    def forward(self, image_features):
        """Prompt embeddings (B, C, L', W) conditioned on each image."""
        return self.assemble(self.context(image_features))


class CoCoOpClassifier(CLIPClassifier):
    """CLIP with CoCoOp's prompt learner. Unlike the other heads, ``text_features`` takes the image
    features: the class text features are different for every image."""

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        vis_dim = int(getattr(clip_model.visual, "output_dim", 0) or self.text_encoder.embed_dim)
        self.prompt_learner = CoCoOpPromptLearner(cfg.TRAINER.COCOOP, classnames, self.text_encoder, self.dtype,
                                                  vis_dim)
        self.batch_chunk = int(cfg.TRAINER.COCOOP.BATCH_CHUNK)

    def images_per_chunk(self):
        if self.batch_chunk > 0:
            return self.batch_chunk
        return max(1, PROMPTS_PER_CHUNK // self.prompt_learner.n_cls)

    def image_chunks(self, n_images):
        """Row slices of a batch of ``n_images`` images, ``images_per_chunk()`` images each."""
        step = self.images_per_chunk()
        return [slice(start, start + step) for start in range(0, n_images, step)]

    def text_features(self, image_features):
        """Class text features for each image: (B, D) normalised image features -> (B, C, D), normalised.
        All B x C prompts are encoded in one batch (chunking is the caller's business: ``forward``)."""
        prompts = self.prompt_learner(image_features)  # (B, C, L', W)
        n_img, n_cls = prompts.shape[:2]
        tokenized = self.prompt_learner.tokenized_prompts.repeat(n_img, 1)  # (B*C, L'), image-major like prompts
        features = self.text_encoder(prompts.flatten(0, 1), tokenized)  # (B*C, D)
        return F.normalize(features, dim=-1).view(n_img, n_cls, -1)

    def logits(self, image_features, text_features):
        """(B, C) = exp(logit_scale) * cos(f_i, t[i, c]) for per-image text features (B, C, D); shared
        text features (C, D) are scored as in the other heads."""
        if text_features.dim() == 2:
            return super().logits(image_features, text_features)
        sims = torch.bmm(text_features.to(image_features.dtype), image_features.unsqueeze(-1)).squeeze(-1)
        return self.logit_scale.exp() * sims

    def conditional_logits(self, image_features):
        """(B, C) logits from normalised image features (B, D), computed chunk by chunk of images."""
        parts = [self.logits(image_features[rows], self.text_features(image_features[rows]))
                 for rows in self.image_chunks(len(image_features))]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def forward(self, image):
        return self.conditional_logits(self.encode_image(image))


@register_trainer
class CoCoOp(CLIPTrainer):
    """CoCoOp on the shared CLIP trainer: CLIP loaded once, frozen, PREC as configured; only
    ``prompt_learner`` (ctx and meta-net) is optimised and checkpointed."""

    cfg_node = "COCOOP"
    text_features_per_image = True  # per-image prompts: nothing image-independent to compute once per evaluation
    default_config = "vit_b16_c4_ep10_batch1_ctxv1"
    report_order = 30
    result_neutral_keys = ("TRAINER.COCOOP.BATCH_CHUNK",)

    @staticmethod
    def add_config(cfg):
        """TRAINER.COCOOP: CoCoOp's keys and defaults, plus BATCH_CHUNK (this project's memory bound).

        BATCH_CHUNK: the per-image prompts (images x classes) are encoded in chunks of this many images; 0
        picks as many images as keep a chunk at or under ``PROMPTS_PER_CHUNK`` prompts. It changes memory and
        speed only, not results. Lower it if evaluation or a training batch > 1 runs out of memory on a long
        class list."""
        c = cfg.TRAINER.COCOOP = CN()
        c.N_CTX = 16  # number of context vectors
        c.CTX_INIT = ""  # initialisation words, e.g. "a photo of a" (sets N_CTX); "" = N(0, 0.02)
        c.PREC = "fp16"  # fp16 | fp32 | amp (fp16 runs as fp32 on CPU)
        c.BATCH_CHUNK = 0  # images per chunk of per-image prompts (0 = automatic)

    def check_cfg(self, cfg):
        validate_cocoop_cfg(cfg)

    def build_clip_model(self, classnames, clip_model):
        return CoCoOpClassifier(self.cfg, classnames, clip_model)

    def build_model(self):
        super().build_model()
        enabled = sorted(name for name, p in self.model.named_parameters() if p.requires_grad)
        print("Parameters to be updated: {" + ", ".join(repr(name) for name in enabled) + "}")

    def backward_pass(self, batch):
        """CoCoOp's loss (cross-entropy over the classes, mean over the batch), chunk by chunk of images:
        each chunk's share of the loss (its summed cross-entropy / B) is backpropagated before the next
        chunk's B x C prompts are built. Gradients equal those of the whole batch."""
        image, label = self.parse_batch_train(batch)
        n_img = len(label)
        with torch.no_grad(), self.autocast():  # the image encoder is frozen: no graph needed behind f
            image_features = self.model.encode_image(image)
        loss_total, logits_parts = 0.0, []
        for rows in self.model.image_chunks(n_img):
            with self.autocast():
                feats = image_features[rows]
                logits = self.model.logits(feats, self.model.text_features(feats))  # (b, C)
                loss = F.cross_entropy(logits, label[rows], reduction="sum") / n_img
            self.backward(loss)
            loss_total += loss.item()
            logits_parts.append(logits.detach())
        return loss_total, torch.cat(logits_parts), label

    def model_inference(self, image):
        """Logits (B, C) with per-image prompts, chunked by TRAINER.COCOOP.BATCH_CHUNK."""
        return self.model(image)


def validate_cocoop_cfg(cfg):
    """TRAINER.COCOOP checked once at start-up, with the key in every message."""
    c = cfg.TRAINER.COCOOP
    key = "TRAINER.COCOOP"
    if c.PREC not in PRECISIONS:
        raise ConfigError(f'{key}.PREC: "{c.PREC}" is not one of {list(PRECISIONS)}')
    if not c.CTX_INIT and c.N_CTX < 1:
        raise ConfigError(f"{key}.N_CTX: must be >= 1 (or give {key}.CTX_INIT words), got {c.N_CTX}")
    if c.BATCH_CHUNK < 0:
        raise ConfigError(f"{key}.BATCH_CHUNK: images per chunk of per-image prompts, must be >= 0 "
                          f"(0 = automatic, at most {PROMPTS_PER_CHUNK} prompts per chunk), got {c.BATCH_CHUNK}")
