"""Loading CLIP: the one place that turns ``MODEL.BACKBONE.NAME`` into an open_clip ``CLIP`` module.

``MODEL.BACKBONE.NAME`` may be

* the path of a checkpoint file in OpenAI's format (TorchScript archive or state dict; the architecture is
  inferred from the tensor shapes; built with OpenAI's QuickGELU activation);
* one of CoOp's names (``RN50``, ``ViT-B/16``, ...): OpenAI's file is looked up in the caches CoOp users
  already have, then downloaded through open_clip;
* an OpenCLIP model with a pretrained tag, ``MODEL:TAG`` (``ViT-B-32:laion2b_s34b_b79k``; the tag may also be
  the path of an OpenCLIP checkpoint), or ``hf-hub:org/repo``.

Every failure the user can fix raises :class:`engine.errors.WeightsError` with a one-paragraph message.
"""
import difflib
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from engine.errors import WeightsError

from .provenance import is_random, provenance_banner, random_weights_banner, read_provenance
from .text import TextEncoder

# CoOp's CLIP names -> (open_clip model name, file name in OpenAI's download URL / CoOp's ~/.cache/clip).
COOP_BACKBONES: Dict[str, Tuple[str, str]] = {
    "RN50": ("RN50", "RN50.pt"),
    "RN101": ("RN101", "RN101.pt"),
    "RN50x4": ("RN50x4", "RN50x4.pt"),
    "RN50x16": ("RN50x16", "RN50x16.pt"),
    "RN50x64": ("RN50x64", "RN50x64.pt"),
    "ViT-B/32": ("ViT-B-32", "ViT-B-32.pt"),
    "ViT-B/16": ("ViT-B-16", "ViT-B-16.pt"),
    "ViT-L/14": ("ViT-L-14", "ViT-L-14.pt"),
    "ViT-L/14@336px": ("ViT-L-14-336", "ViT-L-14-336px.pt"),
}

CACHE_ENV = "MIXPROMPT_CLIP_CACHE"
COOP_CACHE = "~/.cache/clip"
# Older tiny checkpoints marked their random weights with this key (now: the sidecar, provenance.py); any
# "_mixprompt*" key is stripped and still read as "random weights".
RANDOM_MARKER = "_mixprompt_random_weights"
_MARKER_PREFIX = "_mixprompt"
# Keys every OpenAI-format CLIP state dict has, whatever the image tower.
_REQUIRED_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
# Keys of OpenAI's TorchScript archives that are not weights (build_model_from_openai_state_dict drops them).
_META_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class LoadedCLIP:
    """A loaded CLIP model and where it came from."""

    model: nn.Module  # open_clip CLIP, eval mode, fp32, frozen, on the requested device
    name: str  # what the user gave (MODEL.BACKBONE.NAME)
    source: str  # resolved file path, or "open_clip:<model>/<tag>"
    random_weights: bool  # True for seeded random weights (sidecar kind "random-clip": tiny.py, random_clip.py)
    input_resolution: int
    embed_dim: int
    text_width: int
    provenance: Optional[dict] = None  # the file's sidecar (provenance.py), e.g. the synthetic pretrained CLIP


def load_clip(name: str, device: Union[str, torch.device] = "cpu", cache_dir: Optional[str] = None) -> LoadedCLIP:
    """Load CLIP ``name`` (file path, CoOp name, ``MODEL:TAG`` or ``hf-hub:org/repo``).

    ``cache_dir`` is searched first for OpenAI's files when ``name`` is a CoOp name, then
    ``$MIXPROMPT_CLIP_CACHE``, then CoOp's ``~/.cache/clip``. Raises :class:`WeightsError` on any failure.
    """
    name = str(name)
    model, source, marked_random = _resolve(name, cache_dir)
    text = _text_encoder(model, name, source)
    model = _finalise(model, device)
    provenance = read_provenance(source) if Path(source).is_file() else None
    loaded = LoadedCLIP(
        model=model,
        name=name,
        source=source,
        random_weights=marked_random or is_random(provenance),
        input_resolution=_input_resolution(model),
        embed_dim=int(getattr(model.visual, "output_dim", None) or text.embed_dim),
        text_width=text.width,
        provenance=provenance,
    )
    if loaded.provenance is not None:
        print(provenance_banner(loaded.provenance, source))
    elif marked_random:
        print(random_weights_banner(source))
    print(f"Loaded CLIP {name} from {source} "
          f"(input resolution {loaded.input_resolution}, embed dim {loaded.embed_dim})")
    return loaded


# ----------------------------------------------------------------------------------------------------------
# Resolution


def _resolve(name: str, cache_dir: Optional[str]) -> Tuple[nn.Module, str, bool]:
    """Return ``(model, source, marked_random)`` following the resolution order of the module docstring
    (``marked_random``: the state dict carried the old random-weights marker key)."""
    path = Path(name).expanduser()
    if path.is_file():
        return _load_openai_file(path)
    if name in COOP_BACKBONES:
        return _load_coop_backbone(name, cache_dir)
    if name.startswith("hf-hub:") or ":" in name:
        return _load_open_clip(name), f"open_clip:{_open_clip_label(name)}", False
    raise WeightsError(_unknown_name_message(name, path))


def _cache_dirs(cache_dir: Optional[str]) -> List[Path]:
    """Folders searched for OpenAI's files, in order, without duplicates."""
    dirs = [cache_dir, os.environ.get(CACHE_ENV) or None, COOP_CACHE]
    result: List[Path] = []
    for d in dirs:
        if d is None:
            continue
        p = Path(d).expanduser()
        if p not in result:
            result.append(p)
    return result


def _load_coop_backbone(name: str, cache_dir: Optional[str]) -> Tuple[nn.Module, str, bool]:
    """CoOp name: OpenAI's file from a cache folder, else open_clip's ``openai`` weights (may download)."""
    oc_name, filename = COOP_BACKBONES[name]
    candidates = [d / filename for d in _cache_dirs(cache_dir)]
    for candidate in candidates:
        if candidate.is_file():
            return _load_openai_file(candidate)
    try:
        model = _create_open_clip(oc_name, "openai")
    except Exception as exc:  # open_clip raises RuntimeError for every download problem; keep the cause
        raise WeightsError(_missing_coop_weights_message(name, oc_name, filename, candidates, exc)) from exc
    return model, f"open_clip:{oc_name}/openai", False


def _missing_coop_weights_message(name, oc_name, filename, candidates, exc) -> str:
    import open_clip

    url = (open_clip.get_pretrained_url(oc_name, "openai")
           or f"https://openaipublic.azureedge.net/clip/models/<sha256>/{filename}")
    looked = ", ".join(str(c) for c in candidates)
    return (
        f"No weights found for CLIP backbone '{name}': looked for {looked} and open_clip could not fetch "
        f"its 'openai' weights either ({_brief(exc)}). Put OpenAI's {filename} into one of those folders "
        f"(CoOp's {COOP_CACHE} is searched automatically; ${CACHE_ENV} names another folder), for example "
        f"downloaded from {url}, or give the file itself with MODEL.BACKBONE.NAME /path/to/file.pt. "
        f"Offline, set HF_HUB_OFFLINE=1 so that the download attempt fails at once instead of retrying."
    )


# ----------------------------------------------------------------------------------------------------------
# OpenAI-format files


def _load_openai_file(path: Path) -> Tuple[nn.Module, str, bool]:
    """Build CLIP from an OpenAI-format checkpoint file; returns ``(model, str(path), marked_random)``."""
    state_dict = _extract_state_dict(_read_checkpoint(path), path)
    random_weights = any(k.startswith(_MARKER_PREFIX) for k in state_dict)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_MARKER_PREFIX)}
    _check_clip_keys(state_dict, path)
    return _build_from_openai_state_dict(state_dict, path), str(path), random_weights


def _read_checkpoint(path: Path):
    """TorchScript archive (OpenAI's downloads) -> its state dict; otherwise whatever ``torch.load`` gives."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated (FutureWarning) but still works
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception:  # not a TorchScript archive: RuntimeError from the archive reader
        pass
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with non-tensor objects, ...: all mean "not CLIP weights"
        if isinstance(exc, pickle.UnpicklingError):  # torch's own text suggests weights_only=False: not here
            reason = "neither a TorchScript archive nor a pickle of plain tensors"
        else:
            reason = f"neither a TorchScript archive nor readable by torch.load: {_brief(exc)}"
        raise WeightsError(
            f"Cannot read CLIP weights file {path} ({reason}). Expected a CLIP checkpoint in OpenAI's "
            f"format (the TorchScript archive OpenAI distributes, e.g. ~/.cache/clip/ViT-B-16.pt, or a state "
            f"dict saved with torch.save); the file may be corrupt or incompletely downloaded."
        ) from exc


def _extract_state_dict(obj, path: Path) -> Dict[str, torch.Tensor]:
    """Accept a state dict, or a dict holding one under ``"state_dict"``; strip a DataParallel prefix."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"CLIP weights file {path} does not hold a state dict (found {type(obj).__name__}). Expected a CLIP "
            f"checkpoint in OpenAI's format: a TorchScript archive or a dict of tensors such as "
            f"'token_embedding.weight' and 'visual.conv1.weight'."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _check_clip_keys(state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    """Raise WeightsError unless ``state_dict`` has the keys of an OpenAI CLIP (ViT or ModifiedResNet)."""
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    has_visual = "visual.proj" in state_dict or "visual.attnpool.positional_embedding" in state_dict
    if missing or not has_visual:
        if not has_visual:
            missing.append("visual.proj or visual.attnpool.positional_embedding")
        raise WeightsError(
            f"CLIP weights file {path} is not a CLIP state dict in OpenAI's format: missing "
            f"{', '.join(repr(k) for k in missing)} (it has {len(state_dict)} tensors, e.g. "
            f"{', '.join(repr(k) for k in list(state_dict)[:3])}). OpenCLIP checkpoints of other layouts can be "
            f"given as MODEL:/path/to/file.pt."
        )


def _build_from_openai_state_dict(state_dict: Dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Infer the architecture and build an fp32 open_clip CLIP with the exact weights of ``state_dict``."""
    from open_clip.model import build_model_from_openai_state_dict

    try:
        # The builder pops keys from its argument, so it gets a copy. It always casts the model to fp16
        # before loading; loading the state dict again after .float() keeps fp32 checkpoints exact.
        model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True, cast_dtype=None)
        model.float()
        model.load_state_dict({k: v for k, v in state_dict.items() if k not in _META_KEYS})
    except (KeyError, RuntimeError, ValueError, AssertionError, IndexError, TypeError) as exc:
        raise WeightsError(
            f"CLIP weights file {path} looks like an OpenAI CLIP state dict but its tensors do not fit a CLIP "
            f"architecture ({_brief(exc)}). Expected an unmodified OpenAI CLIP checkpoint (or one saved "
            f"by scripts/make_tiny_clip.py or scripts/make_random_clip.py)."
        ) from exc
    return model


# ----------------------------------------------------------------------------------------------------------
# OpenCLIP names


def _open_clip_label(name: str) -> str:
    """``ViT-B-32:tag`` -> ``ViT-B-32/tag``; ``hf-hub:org/repo`` unchanged."""
    if name.startswith("hf-hub:"):
        return name
    model_name, tag = name.split(":", 1)
    return f"{model_name}/{tag}"


def _load_open_clip(name: str) -> nn.Module:
    """``MODEL:TAG`` or ``hf-hub:org/repo`` through ``open_clip.create_model``."""
    import open_clip

    if name.startswith("hf-hub:"):
        model_name, tag = name, None
    else:
        model_name, tag = name.split(":", 1)
        if model_name not in open_clip.list_models():
            hint = _closest(model_name, open_clip.list_models())
            raise WeightsError(
                f"Unknown OpenCLIP model '{model_name}' in MODEL.BACKBONE.NAME '{name}'.{hint} "
                f"See open_clip.list_models() for model names and open_clip.list_pretrained() for MODEL:TAG pairs."
            )
    try:
        return _create_open_clip(model_name, tag)
    except Exception as exc:  # unknown tag, download failure, incompatible checkpoint: all RuntimeError
        tags = open_clip.list_pretrained_tags_by_model(model_name) if tag is not None else []
        known = f" Known tags for {model_name}: {', '.join(tags)}." if tags and tag not in tags else ""
        raise WeightsError(
            f"Cannot load OpenCLIP weights '{name}' ({_brief(exc)}).{known} Check the name, the network "
            f"(or the Hugging Face cache when offline), or give a local checkpoint file instead."
        ) from exc


def _create_open_clip(model_name: str, tag: Optional[str]) -> nn.Module:
    """``open_clip.create_model`` with pretrained weights required and the tag's QuickGELU setting."""
    import open_clip

    quick_gelu = False
    if tag is not None:
        quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False))
    # open_clip's built-in configs use nn.GELU; weights trained with QuickGELU (all of OpenAI's) need the
    # override, otherwise open_clip only warns and the features are subtly wrong.
    return open_clip.create_model(
        model_name, pretrained=tag, precision="fp32", device="cpu",
        force_quick_gelu=quick_gelu, require_pretrained=True,
    )


# ----------------------------------------------------------------------------------------------------------
# Checks, finishing, messages


def _text_encoder(model: nn.Module, name: str, source: str) -> TextEncoder:
    """The project's prompts need OpenAI's BPE vocabulary and a causal, EOT-pooled text transformer."""
    try:
        return TextEncoder(model)
    except ValueError as exc:
        raise WeightsError(
            f"CLIP '{name}' (from {source}) cannot be used for prompt learning: {exc}."
        ) from exc


def _finalise(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """fp32, eval mode, every parameter frozen, on ``device``; QuickGELU computed in place where it can be
    (same results, activations.py)."""
    from .activations import use_fast_quick_gelu  # imports open_clip (~2 s of CPU): only when a model is loaded

    use_fast_quick_gelu(model)
    model = model.float().eval().to(device)
    model.requires_grad_(False)
    return model


def _input_resolution(model: nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or ("/" in name and name.endswith((".pt", ".pth", ".bin")))


def _unknown_name_message(name: str, path: Path) -> str:
    if path.is_dir():
        return (f"MODEL.BACKBONE.NAME '{name}' is a directory; expected a CLIP checkpoint file in OpenAI's "
                f"format (e.g. {path / 'ViT-B-16.pt'}) or a CLIP name.")
    if _looks_like_path(name):
        return (f"CLIP weights file {name} does not exist (resolved to {path.resolve()}). Give the path of an "
                f"existing checkpoint in OpenAI's format, or a CoOp name such as ViT-B/16 to use OpenAI's "
                f"weights from {COOP_CACHE}.")
    import open_clip

    hint = _closest(name, list(COOP_BACKBONES) + open_clip.list_models())
    return (
        f"Unknown CLIP backbone '{name}'.{hint} Use one of CoOp's names ({', '.join(COOP_BACKBONES)}) for "
        f"OpenAI's weights, an OpenCLIP model with a pretrained tag written MODEL:TAG (e.g. "
        f"ViT-B-32:laion2b_s34b_b79k; see open_clip.list_pretrained()), hf-hub:org/repo, or the path of a "
        f"checkpoint file in OpenAI's format."
    )


def _closest(name: str, choices: List[str]) -> str:
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def _brief(exc: BaseException, limit: int = 240) -> str:
    """An exception's message on one line, shortened at a word boundary, for one-paragraph errors."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()).rstrip(". ")
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
