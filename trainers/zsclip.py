"""Zero-shot CLIP: one hand-written prompt per class (CoOp's per-dataset template), or an ensemble."""
import torch
import torch.nn.functional as F

from yacs.config import CfgNode as CN

from .base import CLIPTrainer
from .clip import tokenize
from .clip_heads import CLIPClassifier
from .registry import VariantKey, register_trainer
from .templates import IMAGENET_TEMPLATES_SELECT, dataset_template, format_classname


class ZeroshotClassifier(CLIPClassifier):
    def __init__(self, clip_model, templates, classnames):
        super().__init__(clip_model)
        names = [format_classname(c) for c in classnames]
        per_template = []
        with torch.no_grad():
            for template in templates:
                prompts = [template.format(name) for name in names]
                print(f"Prompts: {prompts}")
                feats = self.text_encoder.encode_tokens(tokenize(prompts))  # (C, D)
                per_template.append(F.normalize(feats.float(), dim=-1))
        mean = torch.stack(per_template).mean(dim=0)  # (C, D)
        self.register_buffer("class_text_features", F.normalize(mean, dim=-1), persistent=False)

    def text_features(self):
        return self.class_text_features


@register_trainer
class ZeroshotCLIP(CLIPTrainer):
    """Evaluation only: run with ``--eval-only`` (no learnable parameters, nothing to load)."""

    cfg_node = "ZSCLIP"
    aliases = ("zsclip",)
    report_order = 0
    config_dir = "CoOp"  # CoOp's convention: zero-shot runs take a CoOp config (backbone, input)
    few_shot = False
    variant_keys = (VariantKey("TRAINER.ZSCLIP.ENSEMBLE", flag="--ensemble", folder={"True": "_ensemble", "False": ""},
                               default="False", pattern="True|False", what="True or False",
                               help="prompt ensemble (dataset template + IMAGENET_TEMPLATES_SELECT)"),)

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ZSCLIP = CN()
        cfg.TRAINER.ZSCLIP.PREC = "fp16"  # fp16 | fp32 (fp16 runs as fp32 on CPU)
        cfg.TRAINER.ZSCLIP.ENSEMBLE = False  # True: average the dataset template and IMAGENET_TEMPLATES_SELECT

    def build_clip_model(self, classnames, clip_model):
        templates = [dataset_template(self.cfg.DATASET.NAME)]
        if self.trainer_cfg.ENSEMBLE:
            templates += [t for t in IMAGENET_TEMPLATES_SELECT if t not in templates]
        return ZeroshotClassifier(clip_model, templates, classnames)

    def train(self):
        """Nothing to learn: write the same log lines as a finished run (final test included)."""
        self.before_train()
        self.after_train()
