"""CoOp (Zhou et al., IJCV 2022): learnable context vectors shared by all classes, or class-specific."""
from engine.errors import ConfigError
from yacs.config import CfgNode as CN

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CLIPTrainer
from .clip_heads import CLIPClassifier
from .config import CLASS_TOKEN_POSITIONS, add_feature_cache_config
from .prompts import ClassPromptTokens, assemble_prompts, init_context
from .registry import VariantKey, register_trainer


class CoOpPromptLearner(nn.Module):
    def __init__(self, cfg, classnames, text_encoder, dtype):
        super().__init__()
        coop = cfg.TRAINER.COOP
        # fp32 master copy whatever CLIP's precision (CoOp keeps it in CLIP's dtype, fp16 on a GPU, where
        # small SGD updates vanish); assemble_prompts casts it to the token embeddings' dtype
        ctx, _ = init_context(text_encoder, coop.N_CTX, coop.CTX_INIT, len(classnames),
                              coop.CSC and not coop.CTX_INIT, torch.float32, "TRAINER.COOP")
        self.ctx = nn.Parameter(ctx)  # (M, W) or (C, M, W)
        n_ctx = ctx.shape[-2]
        self.tokens = ClassPromptTokens(text_encoder, classnames, n_ctx, dtype)
        self.class_token_position = coop.CLASS_TOKEN_POSITION

    def forward(self):
        """Prompt embeddings (C, L, W) for all classes."""
        return assemble_prompts(self.ctx, self.tokens, self.class_token_position)


class CoOpClassifier(CLIPClassifier):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = CoOpPromptLearner(cfg, classnames, self.text_encoder, self.dtype)

    def text_features(self):
        prompts = self.prompt_learner()
        features = self.text_encoder(prompts, self.prompt_learner.tokens.tokenized_prompts)  # (C, D)
        return F.normalize(features, dim=-1)


@register_trainer
class CoOp(CLIPTrainer):
    cfg_node = "COOP"
    default_config = "vit_b16_ep50"
    report_order = 20
    # CoOp's own layout: .../<cfg>_<N>shots/nctx<N_CTX>_csc<CSC>_ctp<POSITION>/seed<S>
    variant_keys = (
        VariantKey("TRAINER.COOP.N_CTX", flag="--nctx", folder="nctx{}", default="16", help="context length"),
        VariantKey("TRAINER.COOP.CSC", flag="--csc", folder="csc{}", default="False", pattern="True|False",
                   what="True or False", help="class-specific context"),
        VariantKey("TRAINER.COOP.CLASS_TOKEN_POSITION", flag="--ctp", folder="ctp{}", default="end",
                   pattern="|".join(CLASS_TOKEN_POSITIONS), what="end, middle or front",
                   help="class token position"),
    )

    @staticmethod
    def add_config(cfg):
        coop = cfg.TRAINER.COOP = CN()
        coop.N_CTX = 16  # number of context vectors
        coop.CSC = False  # class-specific context
        coop.CTX_INIT = ""  # initialisation words, e.g. "a photo of a" (sets N_CTX)
        coop.PREC = "fp16"  # fp16 | fp32 | amp
        coop.CLASS_TOKEN_POSITION = "end"  # end | middle | front
        add_feature_cache_config(coop)

    def check_cfg(self, cfg):
        coop = cfg.TRAINER.COOP
        if coop.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ConfigError(f'TRAINER.COOP.CLASS_TOKEN_POSITION: "{coop.CLASS_TOKEN_POSITION}" is not one of '
                              f"{list(CLASS_TOKEN_POSITIONS)}")
        if not coop.CTX_INIT and coop.N_CTX < 1:
            raise ConfigError(f"TRAINER.COOP.N_CTX: must be >= 1, got {coop.N_CTX}")

    def build_clip_model(self, classnames, clip_model):
        return CoOpClassifier(self.cfg, classnames, clip_model)
