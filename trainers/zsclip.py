"""Zero-shot CLIP: one hand-written prompt per class (CoOp's per-dataset template), or an ensemble."""
import torch
import torch.nn.functional as F

from engine import TRAINER_REGISTRY

from .base import CLIPTrainer
from .clip import tokenize
from .clip_heads import CLIPClassifier
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


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(CLIPTrainer):
    """Evaluation only: run with ``--eval-only`` (no learnable parameters, nothing to load)."""

    cfg_node = "ZSCLIP"

    def build_clip_model(self, classnames, clip_model):
        templates = [dataset_template(self.cfg.DATASET.NAME)]
        if self.trainer_cfg.ENSEMBLE:
            templates += [t for t in IMAGENET_TEMPLATES_SELECT if t not in templates]
        return ZeroshotClassifier(clip_model, templates, classnames)

    def train(self):
        """Nothing to learn: write the same log lines as a finished run (final test included)."""
        self.before_train()
        self.after_train()
