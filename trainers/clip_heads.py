"""The CLIP wrapper shared by trainers: image encoding, scaled cosine logits."""
import torch.nn as nn
import torch.nn.functional as F

from .clip import TextEncoder


class CLIPClassifier(nn.Module):
    """Frozen CLIP image and text encoders plus the logit scale. Subclasses define ``text_features``."""

    def __init__(self, clip_model):
        super().__init__()
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = next(clip_model.visual.parameters()).dtype

    def encode_image(self, image):
        """L2-normalised image features (B, D)."""
        features = self.image_encoder(image.to(self.dtype))
        return F.normalize(features, dim=-1)

    def logits(self, image_features, text_features):
        """(B, C) = exp(logit_scale) * cos(image, class text)."""
        return self.logit_scale.exp() * image_features @ text_features.t().to(image_features.dtype)

    def text_features(self):
        raise NotImplementedError

    def forward(self, image):
        return self.logits(self.encode_image(image), self.text_features())
