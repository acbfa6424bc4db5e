"""The project's one home for CLIP: loading weights, tokenizing, encoding prompt embeddings, test models."""
from .loader import COOP_BACKBONES, LoadedCLIP, load_clip
from .random_clip import build_random_clip_state_dict, save_random_clip
from .text import TextEncoder, tokenize
from .tiny import build_tiny_clip_state_dict, save_tiny_clip

__all__ = ["COOP_BACKBONES", "LoadedCLIP", "TextEncoder", "build_random_clip_state_dict", "build_tiny_clip_state_dict",
           "load_clip", "save_random_clip", "save_tiny_clip", "tokenize"]
