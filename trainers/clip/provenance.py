"""Where a CLIP checkpoint file came from, kept beside it: ``<file>.json`` (the checkpoint stays a plain
OpenAI-format state dict that OpenAI's strict ``clip.build_model`` accepts).

The sidecar records the file's SHA-256, so a sidecar describes only the exact file it was written for: a
checkpoint replaced later is not mistaken for the one described.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Union

PRETRAINED_KIND = "synthetic-pretrained-tiny-clip"  # written by trainers/clip/pretrain.py
# seeded random weights (trainers/clip/tiny.py, random_clip.py): also "architecture", "seed", "precision"
RANDOM_KIND = "random-clip"
PathLike = Union[str, os.PathLike]


def sidecar_path(path: PathLike) -> Path:
    """``weights/world_clip.pt`` -> ``weights/world_clip.pt.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_provenance(path: PathLike, info: dict) -> Path:
    """Write ``info`` plus the checkpoint's SHA-256 to the sidecar of ``path`` (atomically)."""
    target = sidecar_path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**info, "sha256": file_sha256(path)}, indent=1) + "\n")
    os.replace(tmp, target)
    return target


def read_provenance(path: PathLike) -> Optional[dict]:
    """The sidecar of ``path`` when it exists, parses and names this exact file; otherwise None."""
    target = sidecar_path(path)
    try:
        info = json.loads(target.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("sha256") != file_sha256(path):
        return None
    return info


def is_random(info: Optional[dict]) -> bool:
    """Whether a sidecar says the weights are seeded random ones."""
    return isinstance(info, dict) and info.get("kind") == RANDOM_KIND


def provenance_banner(info: dict, source: str) -> str:
    """The log banner of a checkpoint with a sidecar (the synthetic pretrained tiny CLIP, random weights)."""
    if is_random(info):
        return random_weights_banner(source, info)
    rule = "=" * 100
    if info.get("kind") != PRETRAINED_KIND:
        return f"CLIP weights {source}: {info.get('description', info.get('kind', 'described in its sidecar'))}"
    zero_shot = info.get("zero_shot") or {}
    figures = ", ".join(f"{k} {v:.1f}%" for k, v in zero_shot.items() if isinstance(v, (int, float)))
    return "\n".join([
        "NOTE: synthetic pretrained tiny CLIP (not OpenAI CLIP)",
        rule,
        f"== {source} was pretrained by scripts/pretrain_tiny_clip.py on a generated world of coloured shapes",
        "== (docs/synthetic_world.md). Its features know that world only: accuracies on the SyntheticWorld",
        "== datasets are meaningful, on real images (Stanford Cars, iNaturalist) they are not.",
        *([f"== Zero-shot at pretraining time: {figures}"] if figures else []),
        rule,
    ])


def random_weights_banner(source: str, info: Optional[dict] = None) -> str:
    """The loud warning of a checkpoint with seeded random weights (``info``: its sidecar, when it has one)."""
    rule = "!" * 100
    what = "a seeded test model (scripts/make_tiny_clip.py, scripts/make_random_clip.py)"
    if info:
        what = f"seeded random weights of CLIP {info.get('architecture', '?')}, seed {info.get('seed', '?')}"
    return "\n".join([
        "WARNING: RANDOM WEIGHTS",
        rule,
        f"!! The CLIP weights loaded from {source} are RANDOM: {what}.",
        "!! Its features mean nothing, so every accuracy of this run is meaningless (timings and memory are not).",
        "!! For real experiments set MODEL.BACKBONE.NAME to real CLIP weights (e.g. ViT-B/16 or RN50).",
        rule,
    ])
