"""A tiny CLIP with seeded random weights, saved in OpenAI's state-dict format.

Same architecture families as OpenAI's CLIP (ViT or ModifiedResNet image tower, causal text transformer with
the full 49408-token BPE vocabulary and context length 77), input resolution 224, but widths of 64 and two
layers, so tests, the demo and CPU benchmarks run in seconds. The key ``_mixprompt_random_weights`` (a
tensor holding the seed) marks the file; :func:`trainers.clip.load_clip` strips it and warns loudly.
"""
import os
from pathlib import Path
from typing import Dict, Union

import torch

from .loader import RANDOM_MARKER

ARCHES = ("vit", "rn")
IMAGE_SIZE = 224
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
EMBED_DIM = 64
TEXT_WIDTH = 64  # open_clip infers heads = width // 64 from OpenAI state dicts
LAYERS = 2
RN_WIDTH = 8  # ModifiedResNet stem/base width; attention-pool heads = RN_WIDTH * 32 // 64 = 4
# Keys open_clip's CLIP may carry that OpenAI's checkpoints (and CoOp's build_model) do not have.
_NON_OPENAI_KEYS = ("logit_bias", "attn_mask")


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
    """OpenAI-format state dict (fp32) of a tiny CLIP with weights drawn from ``seed``, plus the marker key.

    The caller's global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _tiny_model(arch)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in _NON_OPENAI_KEYS}
    state_dict[RANDOM_MARKER] = torch.tensor(seed, dtype=torch.int64)
    return state_dict


def save_tiny_clip(path: Union[str, os.PathLike], seed: int = 0, arch: str = "vit") -> Path:
    """Write the tiny CLIP to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path).expanduser()
    state_dict = build_tiny_clip_state_dict(seed=seed, arch=arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so os.replace is atomic
    try:
        torch.save(state_dict, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
