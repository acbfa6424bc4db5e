"""Pretraining a tiny CLIP on the generated world of :mod:`datasets.world`, on CPU.

OpenAI's architecture (ViT image tower, causal text transformer over CLIP's BPE vocabulary with a
77-token context, QuickGELU), at 32 px with 8-px patches and width 128, trained with CLIP's symmetric
contrastive loss and a learnable logit scale (clamped at 100) on image-caption pairs rendered on the fly.
Held-out (colour, shape) compositions are never drawn. Every random draw comes from generators seeded by
``Recipe.seed`` (weights: a ``torch.Generator``; scenes, pixels and captions: a ``numpy`` Generator), so
the same recipe and thread count give the same weights.

:func:`pretrain_tiny_clip` writes an OpenAI-format state dict (exactly the keys OpenAI's checkpoints have)
and a sidecar ``<file>.json`` with the recipe, the file's SHA-256 and zero-shot figures; the loader
recognises the file by that sidecar and says it is a synthetic model.
"""
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets import world

from .provenance import PRETRAINED_KIND, read_provenance, write_provenance
from .text import CONTEXT_LENGTH, OPENAI_VOCAB_SIZE, TextEncoder, tokenize

RECIPE_VERSION = 1
ZERO_SHOT_TEMPLATE = "a photo of a {}."  # the project's default zero-shot template (trainers/templates.py)
# Keys open_clip's CLIP may carry that OpenAI's checkpoints (and OpenAI's strict build_model) do not have.
NON_OPENAI_KEYS = ("logit_bias", "attn_mask")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the pretrained weights (with the torch version and thread count)."""

    seed: int = 0
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.1
    image_size: int = 32
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    embed_dim: int = 128
    version: int = RECIPE_VERSION


def recipe_for(quick: bool = False, seed: int = 0) -> Recipe:
    """The full-quality recipe (~7-8 min on 2 idle CPU cores) or the quick one for tests (~1 min on one)."""
    full = Recipe(seed=seed)
    return replace(full, steps=100, batch_size=64, warmup_steps=10, lr=2e-3) if quick else full


# ----------------------------------------------------------------------------------------------------------
# Model


def build_model(recipe: Recipe) -> nn.Module:
    """An open_clip CLIP in OpenAI's architecture, initialised from ``torch.Generator(recipe.seed)``."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=recipe.layers, width=recipe.width, patch_size=recipe.patch_size,
                           image_size=recipe.image_size)
    text = CLIPTextCfg(context_length=CONTEXT_LENGTH, vocab_size=OPENAI_VOCAB_SIZE, width=recipe.width,
                       heads=recipe.width // 64, layers=recipe.layers)  # OpenAI's loader infers width // 64 heads
    model = CLIP(recipe.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    _initialise(model, recipe, torch.Generator().manual_seed(recipe.seed))
    return model


def _initialise(model: nn.Module, recipe: Recipe, generator: torch.Generator) -> None:
    """CLIP's initialisation scheme, every draw from ``generator`` (the constructor's draws are replaced)."""
    width, patch = recipe.width, recipe.patch_size
    attn_std = width ** -0.5
    proj_std = width ** -0.5 * (2 * recipe.layers) ** -0.5
    stds = {
        "token_embedding.weight": 0.02, "positional_embedding": 0.01, "text_projection": width ** -0.5,
        "visual.class_embedding": width ** -0.5, "visual.positional_embedding": 0.01,  # as the text's
        "visual.proj": width ** -0.5, "visual.conv1.weight": (3 * patch * patch) ** -0.5,
        "attn.in_proj_weight": attn_std, "attn.out_proj.weight": proj_std,
        "mlp.c_fc.weight": (2 * width) ** -0.5, "mlp.c_proj.weight": proj_std,
    }
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "logit_scale":
                param.fill_(math.log(1 / 0.07))
            elif ".ln_" in name or name.startswith(("ln_", "visual.ln_")):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                std = stds.get(name, next((s for key, s in stds.items() if name.endswith("." + key)), None))
                if std is None:
                    raise ValueError(f"no initialisation rule for parameter {name}")
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def openai_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's weights with exactly the keys of an OpenAI CLIP checkpoint (fp32 copies)."""
    return {k: v.detach().clone().float() for k, v in model.state_dict().items() if k not in NON_OPENAI_KEYS}


# ----------------------------------------------------------------------------------------------------------
# Data


def _normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] with CLIP's mean and std (as the trainer configs use)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class _Captions:
    """Tokenized captions, memoised (captions repeat a lot in a small world)."""

    def __init__(self):
        self._cache: Dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, tokenize(missing)))
        return torch.stack([self._cache[t] for t in texts])


def world_batch(rng: np.random.Generator, n: int, image_size: int,
                compositions: Sequence[Tuple[str, str]]) -> Tuple[np.ndarray, list]:
    """``n`` rendered scenes of ``compositions`` (uint8 [n, H, W, 3]) and one caption each."""
    scenes = [world.sample_scene(rng, compositions) for _ in range(n)]
    pixels = np.stack([world.render(scene, image_size, rng) for scene in scenes])
    return pixels, [world.caption(scene, rng) for scene in scenes]


# ----------------------------------------------------------------------------------------------------------
# Training


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW (CLIP's betas and eps); weight decay on matrices only, not on gains, biases or embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_matrix = param.ndim >= 2 and "embedding" not in name
        (decay if is_matrix else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the batch's image-text similarity matrix."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()  # [N, N]
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def train(recipe: Recipe, progress: bool = True) -> nn.Module:
    """Pretrain a tiny CLIP following ``recipe``; returns the model (eval mode)."""
    from tqdm import tqdm

    model = build_model(recipe).train()
    text_encoder = TextEncoder(model)  # shares the modules; encodes only up to the batch's last EOT
    optimizer = _optimizer(model, recipe)
    rng = np.random.default_rng([recipe.seed, 1])  # scenes, pixels and captions
    captions = _Captions()
    seen = world.seen_compositions()
    bar = tqdm(range(recipe.steps), desc="pretraining tiny CLIP", disable=not progress, mininterval=2.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * _lr_factor(step, recipe)
        pixels, texts = world_batch(rng, recipe.batch_size, recipe.image_size, seen)
        loss = contrastive_loss(model.encode_image(_normalise(pixels)), text_encoder.encode_tokens(captions(texts)),
                                model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"pretraining diverged at step {step}: loss {loss.item()}")
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}", refresh=False)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, compositions: Sequence[Tuple[str, str]], image_size: int,
                       per_class: int = 20, seed: int = 0) -> float:
    """Top-1 zero-shot accuracy (%) over ``compositions`` as classes, with the prompt "a photo of a {}.",
    on ``per_class`` freshly rendered images each (hidden attributes uniform)."""
    model = model.eval()
    text = TextEncoder(model)
    names = [world.class_name(c, s) for c, s in compositions]
    classes = F.normalize(text.encode_tokens(tokenize([ZERO_SHOT_TEMPLATE.format(n) for n in names])), dim=-1)
    rng = np.random.default_rng([seed, 2])
    correct = 0
    for label, composition in enumerate(compositions):
        pixels, _ = world_batch(rng, per_class, image_size, [composition])
        features = F.normalize(model.encode_image(_normalise(pixels)), dim=-1)
        correct += int(((features @ classes.t()).argmax(-1) == label).sum())
    return 100.0 * correct / (per_class * len(compositions))


def zero_shot_report(model: nn.Module, recipe: Recipe) -> Dict[str, float]:
    """Zero-shot accuracy on the 80 seen and the 20 held-out compositions (chance 1.25% and 5%)."""
    return {
        "seen_80_classes": zero_shot_accuracy(model, world.seen_compositions(), recipe.image_size),
        "held_out_20_classes": zero_shot_accuracy(model, world.held_out_compositions(), recipe.image_size),
    }


# ----------------------------------------------------------------------------------------------------------
# The cached file


def is_cached(path: Union[str, os.PathLike], recipe: Recipe) -> bool:
    """True when ``path`` exists with a sidecar written for exactly this file and this recipe."""
    if not Path(path).is_file():
        return False
    info = read_provenance(path)
    return bool(info) and info.get("kind") == PRETRAINED_KIND and info.get("recipe") == asdict(recipe)


def pretrain_tiny_clip(path: Union[str, os.PathLike], recipe: Recipe, progress: bool = True,
                       threads: Optional[int] = None) -> Tuple[Path, dict]:
    """Write the pretrained tiny CLIP to ``path`` unless it is cached; returns ``(path, sidecar info)``.

    ``threads`` sets torch's CPU threads for the run (the weights depend on it through float summation
    order; it is recorded in the sidecar).
    """
    path = Path(path).expanduser()
    if is_cached(path, recipe):
        return path, read_provenance(path)
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.time()
    model = train(recipe, progress=progress)
    seconds = time.time() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so os.replace is atomic
    try:
        torch.save(openai_state_dict(model), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    info = {
        "kind": PRETRAINED_KIND,
        "description": "synthetic pretrained tiny CLIP (not OpenAI CLIP), trained on the generated world of "
                       "datasets/world.py; see docs/synthetic_world.md",
        "recipe": asdict(recipe),
        "held_out_compositions": [world.class_name(c, s) for c, s in world.held_out_compositions()],
        "zero_shot": zero_shot_report(model, recipe),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    write_provenance(path, info)
    return path, info
