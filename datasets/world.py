"""A generated world of objects and captions whose truth is known: the data of the pretrained tiny CLIP.

A scene is one object on a background, described by five attributes:

* colour (10): red, orange, yellow, green, cyan, blue, purple, pink, white, brown;
* shape (10): circle, square, triangle, diamond, star, cross, ring, heart, crescent, arrow;
* size (3): small, medium, large;
* position (5): center, left, right, top, bottom;
* background (5): plain, striped, checkered, dotted, wavy (muted tones, random frequency and phase).

:func:`render` draws a scene at any resolution (32 px for the tiny CLIP) with numpy, anti-aliased through
approximate signed distances, with jitter in hue, brightness, place, size, rotation and pixel noise, all
drawn from the ``numpy.random.Generator`` it is given. :func:`caption` writes a caption that names a random
subset of the attributes ("a photo of a small red star on a striped background.", "a red star", "the
thing on the left").

Held-out compositions: the 20 (colour, shape) pairs with ``(colour index - shape index) % 5 == 0`` never
appear in pretraining, neither in images nor in captions; every colour and every shape still appears with 8
of the 10 others. Zero-shot accuracy on them measures composition.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.88, 0.10),
    "green": (0.15, 0.72, 0.20),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.58, 0.20, 0.85),
    "pink": (1.00, 0.50, 0.75),
    "white": (0.97, 0.97, 0.97),
    "brown": (0.50, 0.28, 0.08),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "heart", "crescent", "arrow")
SIZES: Dict[str, float] = {"small": 0.19, "medium": 0.26, "large": 0.34}  # object radius / image width
POSITIONS: Dict[str, Tuple[float, float]] = {  # object centre (x, y) / image width, y downwards
    "center": (0.5, 0.5), "left": (0.32, 0.5), "right": (0.68, 0.5), "top": (0.5, 0.32), "bottom": (0.5, 0.68),
}
POSITION_PHRASES: Dict[str, Tuple[str, ...]] = {
    "center": ("in the center", "in the middle"), "left": ("on the left",), "right": ("on the right",),
    "top": ("at the top",), "bottom": ("at the bottom",),
}
BACKGROUNDS = ("plain", "striped", "checkered", "dotted", "wavy")
HIDDEN_ATTRIBUTES = ("size", "position", "background")  # what a "<colour> <shape>" class name leaves out
HELD_OUT_PERIOD = 5  # (colour index - shape index) % HELD_OUT_PERIOD == 0 -> held out of pretraining

# Caption vocabulary
_PREFIXES = ("a photo of", "a picture of", "an image of", "a rendering of", "")
_NOUNS = ("thing", "object", "shape")
_BACKGROUND_PHRASES = ("on a {} background", "with a {} background", "in front of a {} background")
# Probability that a caption names each attribute
_MENTION = {"colour": 0.8, "shape": 0.8, "size": 0.35, "position": 0.35, "background": 0.45}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str
    background: str

    @property
    def composition(self) -> Tuple[str, str]:
        return self.colour, self.shape


def class_name(colour: str, shape: str) -> str:
    """The class name of a composition: ``"red star"``."""
    return f"{colour} {shape}"


def all_compositions() -> List[Tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def is_held_out(colour: str, shape: str) -> bool:
    return (list(COLOURS).index(colour) - SHAPES.index(shape)) % HELD_OUT_PERIOD == 0


def held_out_compositions() -> List[Tuple[str, str]]:
    """The 20 (colour, shape) pairs never shown in pretraining."""
    return [p for p in all_compositions() if is_held_out(*p)]


def seen_compositions() -> List[Tuple[str, str]]:
    """The 80 (colour, shape) pairs pretraining shows."""
    return [p for p in all_compositions() if not is_held_out(*p)]


def sample_scene(rng: np.random.Generator, compositions: Sequence[Tuple[str, str]],
                 size: Optional[str] = None, position: Optional[str] = None,
                 background: Optional[str] = None) -> Scene:
    """A scene of one of ``compositions`` (uniform); hidden attributes uniform unless given."""
    colour, shape = compositions[int(rng.integers(len(compositions)))]
    return Scene(
        colour=colour, shape=shape,
        size=size if size is not None else list(SIZES)[int(rng.integers(len(SIZES)))],
        position=position if position is not None else list(POSITIONS)[int(rng.integers(len(POSITIONS)))],
        background=background if background is not None else BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
    )


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _triangle(u, v):  # pointing up, circumradius 1.1
    return np.maximum(v, np.maximum(0.866 * u - 0.5 * v, -0.866 * u - 0.5 * v)) - 0.55


def _star(u, v):  # five points, outer radius 1.05, inner 0.45
    rho, theta = np.hypot(u, v), np.arctan2(v, u) + math.pi / 2
    phase = np.abs(((theta / (2 * math.pi / 5)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between points
    return (rho - (0.45 + 0.6 * phase)) * 0.6


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 1.0, av - 0.3), np.maximum(au - 0.3, av - 1.0))


def _heart(u, v):
    lobes = np.minimum(np.hypot(u - 0.42, v + 0.25), np.hypot(u + 0.42, v + 0.25)) - 0.47
    point = np.maximum(-(v + 0.25), 0.777 * np.abs(u) + 0.629 * v - 0.598)
    return np.minimum(lobes, point)


def _crescent(u, v):
    return np.maximum(np.hypot(u, v) - 1.0, 0.8 - np.hypot(u - 0.45, v))


def _arrow(u, v):  # pointing up
    shaft = np.maximum(np.abs(u) - 0.22, np.abs(v - 0.45) - 0.55)
    head = np.maximum(v + 0.1, 0.789 * np.abs(u) - 0.614 * v - 0.614)
    return np.minimum(shaft, head)


# shape -> approximate signed distance in object radii (negative inside) of a point (u, v), y downwards
SHAPE_SDF: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: np.hypot(u, v) - 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) - 0.82,
    "triangle": _triangle,
    "diamond": lambda u, v: (np.abs(u) + np.abs(v) - 1.05) * 0.7071,
    "star": _star,
    "cross": _cross,
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.72) - 0.28,
    "heart": _heart,
    "crescent": _crescent,
    "arrow": _arrow,
}


def _background(kind: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] float background in muted tones (low saturation, mid-dark), pattern ``kind``."""
    base = rng.uniform(0.3, 0.55) * (1 + rng.uniform(-0.15, 0.15, 3))  # greyish with a slight random tint
    other = np.clip(base + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.25), 0.05, 0.8)
    freq, phase = rng.uniform(3.0, 5.0), rng.uniform(0.0, 1.0)
    if kind == "plain":
        mask = np.zeros_like(x, dtype=bool)
    elif kind == "striped":
        angle = rng.integers(4) * math.pi / 4
        mask = ((x * math.cos(angle) + y * math.sin(angle)) * freq + phase) % 1.0 < 0.5
    elif kind == "checkered":
        mask = (np.floor(x * freq + phase) + np.floor(y * freq + phase)) % 2 == 1
    elif kind == "dotted":
        mask = np.hypot((x * freq + phase) % 1.0 - 0.5, (y * freq + phase) % 1.0 - 0.5) < 0.22
    elif kind == "wavy":
        mask = (y * freq + 0.12 * np.sin(2 * math.pi * (2 * x + phase)) + phase) % 1.0 < 0.5
    else:
        raise ValueError(f"unknown background {kind!r}; choose from {BACKGROUNDS}")
    return np.where(mask[..., None], other, base)


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 [image_size, image_size, 3] picture of ``scene``; every random draw comes from ``rng``."""
    y, x = (np.mgrid[0:image_size, 0:image_size] + 0.5) / image_size  # pixel centres in [0, 1)
    image = _background(scene.background, x, y, rng)
    cx, cy = np.array(POSITIONS[scene.position]) + rng.uniform(-0.04, 0.04, 2)
    radius = SIZES[scene.size] * rng.uniform(0.92, 1.08)
    angle = rng.uniform(-0.2, 0.2)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    distance_px = SHAPE_SDF[scene.shape](u, v) * radius * image_size
    alpha = np.clip(0.5 - distance_px, 0.0, 1.0)[..., None]  # anti-aliased edge, one pixel wide
    colour = np.array(COLOURS[scene.colour]) * rng.uniform(0.88, 1.05) + rng.normal(0, 0.03, 3)
    image = (1 - alpha) * image + alpha * np.clip(colour, 0, 1)
    image = image + rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Captions


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming a random, non-empty subset of the scene's attributes."""
    mention = {k: rng.random() < p for k, p in _MENTION.items()}
    if not any(mention.values()):
        mention[list(_MENTION)[int(rng.integers(len(_MENTION)))]] = True
    noun = scene.shape if mention["shape"] else _NOUNS[int(rng.integers(len(_NOUNS)))]
    words = [("a", "the")[int(rng.integers(2))]]
    if mention["size"]:
        words.append(scene.size)
    if mention["colour"]:
        words.append(scene.colour)
    words.append(noun)
    if mention["position"]:
        phrases = POSITION_PHRASES[scene.position]
        words.append(phrases[int(rng.integers(len(phrases)))])
    if mention["background"]:
        words.append(_BACKGROUND_PHRASES[int(rng.integers(len(_BACKGROUND_PHRASES)))].format(scene.background))
    prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))]
    text = " ".join(([prefix] if prefix else []) + words)
    return text + "." if rng.random() < 0.5 else text
