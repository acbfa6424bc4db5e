"""A tiny CLIP with seeded random weights, saved in OpenAI's state-dict format.

Same architecture families as OpenAI's CLIP (ViT or ModifiedResNet image tower, causal text transformer with
the full 49408-token BPE vocabulary and context length 77), input resolution 224, but widths of 64 and two
layers, so tests, the demo and CPU benchmarks run in seconds. The checkpoint is a plain OpenAI-format state
dict; that its weights are random is recorded in its sidecar ``<file>.json`` (``trainers/clip/provenance.py``,
kind ``random-clip``), from which :func:`trainers.clip.load_clip` sets ``random_weights`` and warns loudly.
Real-size random checkpoints: ``trainers/clip/random_clip.py``.
"""
import os
from pathlib import Path
from typing import Dict, Union

import torch

from .provenance import RANDOM_KIND, write_provenance
from .random_clip import NON_OPENAI_KEYS, save_state_dict

ARCHES = ("vit", "rn")
IMAGE_SIZE = 224
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
EMBED_DIM = 64
TEXT_WIDTH = 64  # open_clip infers heads = width // 64 from OpenAI state dicts
LAYERS = 2
RN_WIDTH = 8  # ModifiedResNet stem/base width; attention-pool heads = RN_WIDTH * 32 // 64 = 4


def _tiny_model(arch: str):
    """Instantiate the tiny open_clip CLIP (weights from the current global RNG)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    if arch == "vit":
        vision = CLIPVisionCfg(layers=LAYERS, width=64, patch_size=32, image_size=IMAGE_SIZE)
    elif arch == "rn":
        vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=RN_WIDTH, image_size=IMAGE_SIZE)
    else:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    text = CLIPTextCfg(context_length=CONTEXT_LENGTH, vocab_size=VOCAB_SIZE, width=TEXT_WIDTH,
                       heads=TEXT_WIDTH // 64, layers=LAYERS)
    return CLIP(EMBED_DIM, vision_cfg=vision, text_cfg=text, quick_gelu=True)  # OpenAI's activation


def build_tiny_clip_state_dict(seed: int = 0, arch: str = "vit") -> Dict[str, torch.Tensor]:
    """OpenAI-format state dict (fp32) of a tiny CLIP with weights drawn from ``seed`` (open_clip's
    initialisation from a seeded global RNG; the caller's global RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _tiny_model(arch)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in NON_OPENAI_KEYS}


def save_tiny_clip(path: Union[str, os.PathLike], seed: int = 0, arch: str = "vit") -> Path:
    """Write the tiny CLIP to ``path`` atomically, with its ``random-clip`` sidecar."""
    path = save_state_dict(path, build_tiny_clip_state_dict(seed=seed, arch=arch))
    write_provenance(path, {
        "kind": RANDOM_KIND, "architecture": f"tiny-{arch}", "seed": seed, "precision": "fp32",
        "description": f"seeded RANDOM weights of the tiny test CLIP ({arch}, width {EMBED_DIM}, {LAYERS} layers; "
                       "trainers/clip/tiny.py)",
    })
    return path
