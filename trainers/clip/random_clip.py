"""Real-size CLIP checkpoints with seeded RANDOM weights, in OpenAI's exact state-dict format.

For measuring speed and memory at real model size without network access (``scripts/make_random_clip.py``,
``scripts/bench.py --backbone random:ViT-B/16``). The keys and shapes are those of OpenAI's released
checkpoints for the same name (ViT-B/16, ViT-B/32, RN50, ...), so OpenAI's strict ``clip.build_model`` and
open_clip's ``build_model_from_openai_state_dict`` accept the file; that the weights are random is recorded
in the sidecar ``<file>.json`` (``trainers/clip/provenance.py``, kind ``random-clip``), never in the state
dict. The loader reads the sidecar and prints its RANDOM WEIGHTS banner.

The values come from a ``torch.Generator`` of their own, seeded with ``seed`` and drawn key by key in the
state dict's order (the global RNG is not touched):

* normalisation layers (LayerNorm, BatchNorm): weight 1, bias 0, running mean 0, running variance 1;
* every other bias: 0;  ``logit_scale``: log(1 / 0.07), CLIP's initial temperature;
* embeddings (token, positional, class): normal with std ``EMBEDDING_STD``;
* weight matrices and convolutions: normal with std 1 / sqrt(fan-in), so activations keep their scale
  through the layers and no feature is infinite or NaN.

The features mean nothing: only timings and memory measured with these files are meaningful.
"""
import math
import os
from pathlib import Path
from typing import Dict, Union

import torch
from torch import nn

from .loader import COOP_BACKBONES
from .provenance import RANDOM_KIND, write_provenance

EMBEDDING_STD = 0.02
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
# Keys open_clip's CLIP may carry that OpenAI's checkpoints (and CoOp's build_model) do not have.
NON_OPENAI_KEYS = ("logit_bias", "attn_mask")
# OpenAI's projections used as ``x @ proj`` (shape [in, out]); every other matrix is [out, in, ...].
_RIGHT_MULTIPLIED = ("visual.proj", "text_projection")
_NORMS = (nn.LayerNorm, nn.BatchNorm2d)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


TINY_NAMES = ("tiny-vit", "tiny-rn")  # the tiny test architectures of tiny.py, for cheap checks of this module


def random_clip_names():
    """CoOp names with a real-size random checkpoint (those open_clip has an architecture config for), and
    the tiny architectures."""
    import open_clip

    real = [name for name, (oc_name, _) in COOP_BACKBONES.items() if open_clip.get_model_config(oc_name)]
    return real + list(TINY_NAMES)


def _skeleton(name: str) -> nn.Module:
    """open_clip's CLIP of architecture ``name`` (a CoOp name) on the meta device: keys, shapes, modules."""
    import open_clip
    from open_clip.model import CLIP

    if name in TINY_NAMES:
        from .tiny import _tiny_model

        with torch.device("meta"):
            return _tiny_model(name.split("-", 1)[1])
    if name not in COOP_BACKBONES:
        raise ValueError(f"unknown CLIP architecture {name!r}; one of {', '.join(random_clip_names())}")
    config = open_clip.get_model_config(COOP_BACKBONES[name][0])
    if not config:
        raise ValueError(f"open_clip has no architecture config for {name!r}; one of {', '.join(random_clip_names())}")
    with torch.device("meta"):  # no memory, no initialisation cost
        return CLIP(**config, quick_gelu=True)  # OpenAI's activation


def _norm_keys(model: nn.Module) -> set:
    """State-dict keys of the normalisation layers' weights (initialised to 1)."""
    return {f"{prefix}.weight" for prefix, module in model.named_modules() if isinstance(module, _NORMS)}


def _fan_in(key: str, shape: torch.Size) -> int:
    if key in _RIGHT_MULTIPLIED:
        return shape[0]
    return math.prod(shape[1:])


def build_random_clip_state_dict(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                                 device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """OpenAI-format state dict of CLIP ``name`` (e.g. "ViT-B/16", or "tiny-vit") with random weights drawn
    from ``seed``.

    ``device="meta"`` gives the keys and shapes without allocating (for checks of the layout).
    """
    model = _skeleton(name)
    shapes = {k: v for k, v in model.state_dict().items() if k not in NON_OPENAI_KEYS}
    norm_weights = _norm_keys(model)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, skeleton in shapes.items():
        if torch.device(device).type == "meta":
            state_dict[key] = torch.empty(skeleton.shape, dtype=_dtype_of(skeleton, dtype), device="meta")
            continue
        state_dict[key] = _draw(key, skeleton, norm_weights, generator).to(_dtype_of(skeleton, dtype))
    return state_dict


def _dtype_of(skeleton: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """Floating tensors in ``dtype``; integer buffers (BatchNorm's step counter) keep theirs."""
    return dtype if skeleton.dtype.is_floating_point else skeleton.dtype


def _draw(key: str, skeleton: torch.Tensor, norm_weights: set, generator: torch.Generator) -> torch.Tensor:
    """The value of one key (float32 on CPU, or the skeleton's integer dtype); rules in the module docstring."""
    shape = skeleton.shape
    if not skeleton.dtype.is_floating_point:  # num_batches_tracked
        return torch.zeros(shape, dtype=skeleton.dtype)
    if key == "logit_scale":
        return torch.full(shape, INITIAL_LOGIT_SCALE)
    if key.endswith("running_var") or key in norm_weights:
        return torch.ones(shape)
    if key.endswith(("bias", "running_mean")):
        return torch.zeros(shape)
    std = EMBEDDING_STD if ("embedding" in key or skeleton.dim() < 2) else _fan_in(key, shape) ** -0.5
    return torch.randn(shape, generator=generator) * std


def save_random_clip(path: Union[str, os.PathLike], name: str, seed: int = 0, precision: str = "fp32") -> Path:
    """Write the random CLIP ``name`` to ``path`` atomically, with its ``random-clip`` sidecar.

    ``precision`` "fp16" halves the file (OpenAI's own files are fp16); the loader casts to fp32.
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {list(DTYPES)}, got {precision!r}")
    state_dict = build_random_clip_state_dict(name, seed=seed, dtype=DTYPES[precision])
    path = save_state_dict(path, state_dict)
    write_provenance(path, {
        "kind": RANDOM_KIND, "architecture": name, "seed": seed, "precision": precision,
        "description": f"seeded RANDOM weights of CLIP {name} in OpenAI's format (trainers/clip/random_clip.py)",
    })
    return path


def save_state_dict(path: Union[str, os.PathLike], state_dict: Dict[str, torch.Tensor]) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so os.replace is atomic
    try:
        torch.save(state_dict, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
