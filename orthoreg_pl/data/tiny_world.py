"""The pre-training world of the tiny CLIP: captioned 32 px images made offline from a fixed seed.

Each image is a scene with several attributes (an object: shape, digit or dot; its colour, size and
position; a plain or patterned background) and its caption names a random subset of them in varied
wording. The quickstart tasks (Digits, Shapes, Colors, Patterns, control Quadrants) are each one
attribute of this world, seen in their own, narrower image style: a model pre-trained here can
classify them zero-shot, but not perfectly, so fine-tuning has something to add, and a task vector
that erases one attribute can leave the others (the control's position skill) in place.

Nothing here reads the quickstart tasks' images: digits are drawn from hand-made strokes (not
scikit-learn's handwriting), shapes and patterns by this module's own painter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SIZE = 32
WORLD_VERSION = "1"

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 215, 40),
    "purple": (140, 40, 180),
    "orange": (240, 130, 20),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}
PATTERNS = ("horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


@dataclass(frozen=True)
class WorldRecipe:
    """Every knob of the data: part of the weights' manifest, so a recipe names one data set."""

    seed: int = 0
    num_images: int = 40000
    p_digit_scene: float = 0.2  # a lone handwriting-style digit, white on black (an 8×8 scan look)
    p_pattern_only: float = 0.1  # a patterned background and no object
    p_patterned_background: float = 0.35  # otherwise the background is plain grey noise
    p_dot: float = 0.2  # the object is a small dot (position is its main attribute)
    p_digit_object: float = 0.2  # the object is a coloured digit
    p_mention: float = 0.6  # each attribute of a scene is named in the caption with this probability
    # How often each colour of COLORS paints an object, and the colours no caption ever names: the
    # world's captioners have no word for purple or orange, as web captions lack words for rare
    # concepts. Zero-shot has to guess those two Colors classes; fine-tuning can teach them.
    color_freq: tuple[float, ...] = (0.2, 0.18, 0.2, 0.1, 0.05, 0.05, 0.11, 0.11)
    unnamed_colors: tuple[str, ...] = ("purple", "orange")
    stripe_freq: tuple[float, float] = (0.05, 0.16)  # cycles per pixel: wider than the Patterns task's

    def as_dict(self) -> dict:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"world_version": WORLD_VERSION, **fields}


# ---- digits from strokes ----------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n + 1)
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in t]


# Polylines in a unit box (x right, y down); a digit is a list of strokes.
_DIGIT_STROKES: tuple[list[list[tuple[float, float]]], ...] = (
    [_ellipse(0.5, 0.5, 0.32, 0.45)],
    [[(0.3, 0.25), (0.55, 0.05), (0.55, 0.95)]],
    [[(0.2, 0.3), (0.3, 0.1), (0.5, 0.04), (0.72, 0.1), (0.8, 0.3), (0.7, 0.5), (0.2, 0.95), (0.85, 0.95)]],
    [
        [
            (0.2, 0.1),
            (0.5, 0.04),
            (0.8, 0.15),
            (0.75, 0.4),
            (0.45, 0.5),
            (0.8, 0.6),
            (0.8, 0.85),
            (0.5, 0.96),
            (0.2, 0.9),
        ]
    ],
    [[(0.7, 0.95), (0.7, 0.05), (0.15, 0.65), (0.9, 0.65)]],
    [[(0.8, 0.05), (0.25, 0.05), (0.2, 0.45), (0.5, 0.4), (0.8, 0.55), (0.8, 0.85), (0.5, 0.96), (0.2, 0.9)]],
    [
        [
            (0.75, 0.08),
            (0.45, 0.15),
            (0.25, 0.45),
            (0.22, 0.75),
            (0.4, 0.95),
            (0.65, 0.95),
            (0.8, 0.75),
            (0.7, 0.55),
            (0.45, 0.5),
            (0.25, 0.65),
        ]
    ],
    [[(0.15, 0.05), (0.85, 0.05), (0.4, 0.95)]],
    [_ellipse(0.5, 0.27, 0.24, 0.22), _ellipse(0.5, 0.72, 0.29, 0.23)],
    [_ellipse(0.5, 0.3, 0.27, 0.25), [(0.77, 0.32), (0.7, 0.95)]],
)


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(px - a[0] - t * d[0], py - a[1] - t * d[1])


def digit_mask(
    digit: int,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    height: float,
    aspect: tuple[float, float] = (0.55, 0.8),
    thickness: tuple[float, float] = (0.06, 0.11),
) -> np.ndarray:
    """Boolean [SIZE, SIZE] mask of a digit drawn from its strokes under a random slant, jitter and width."""
    shear, stretch = rng.uniform(-0.25, 0.25), rng.uniform(*aspect)
    width = rng.uniform(*thickness) * height
    dist = np.full((SIZE, SIZE), np.inf, dtype=np.float32)
    for stroke in _DIGIT_STROKES[digit]:
        pts = np.array(stroke, dtype=np.float32) + rng.normal(0, 0.03, (len(stroke), 2)).astype(np.float32)
        x = cx + (pts[:, 0] - 0.5) * height * stretch + shear * (pts[:, 1] - 0.5) * height
        y = cy + (pts[:, 1] - 0.5) * height
        xy = np.stack([x, y], axis=1)
        for a, b in zip(xy[:-1], xy[1:]):
            dist = np.minimum(dist, _segment_distance(_XX + 0.5, _YY + 0.5, a, b))
    return dist <= width


def _scan_look(mask: np.ndarray) -> np.ndarray:
    """White-on-black glyph as a 4×4-block count (an 8×8 scan, 0..16), upsampled back to SIZE px."""
    from PIL import Image

    small = mask.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.float32) * (255.0 / 16.0)
    big = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR))
    return np.repeat(big[..., None].astype(np.float32), 3, axis=2)


# ---- shapes, backgrounds ----------------------------------------------------------------------------


def shape_mask(kind: int, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = _XX - cx, _YY - cy
    dist = np.sqrt(dx**2 + dy**2)
    if kind == 0:
        return dist <= r
    if kind == 1:
        return np.maximum(abs(dx), abs(dy)) <= 0.8 * r
    if kind == 2:
        h = 0.9 * r
        return (dy >= -h) & (dy <= h) & (abs(dx) <= (dy + h) / 2)
    if kind == 3:
        return ((abs(dx) <= r / 3) & (abs(dy) <= r)) | ((abs(dy) <= r / 3) & (abs(dx) <= r))
    return (dist <= r) & (dist >= 0.55 * r)


def _plain(rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.uniform(40, 200) + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255)


def _pattern(kind: int, rng: np.random.Generator, freq_range: tuple[float, float]) -> np.ndarray:
    freq, phase = rng.uniform(*freq_range), rng.uniform(0, 2 * np.pi)
    arg = 2 * np.pi * freq
    if kind == 0:
        wave = np.sin(arg * _YY + phase)
    elif kind == 1:
        wave = np.sin(arg * _XX + phase)
    elif kind == 2:
        sign = rng.choice((-1.0, 1.0))
        wave = np.sin(arg * (_XX + sign * _YY) / np.sqrt(2) + phase)
    else:
        wave = np.sin(arg * _XX + phase) * np.sin(arg * _YY + phase)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    mix = (np.sign(wave) + 1)[..., None] / 2
    return mix * a + (1 - mix) * b + rng.normal(0, 10, (SIZE, SIZE, 3))


# ---- scenes and captions ------------------------------------------------------------------------------

_DIGIT_PHRASES = ('the number: "{d}"', "the number {d}", "the digit {d}", 'a handwritten "{d}"', "a {d}")
_SCENE_TEMPLATES = ("a photo of {x}.", "a drawing of {x}.", "{x}.", "an image of {x}.", "a picture of {x}.")


def _object_phrase(obj: str, color: str | None, size: str | None, rng: np.random.Generator) -> str:
    words = [w for w in (size, color) if w]
    if obj.isdigit():
        phrase = str(rng.choice(_DIGIT_PHRASES)).format(d=obj)
        return f"a {' '.join(words)} number {obj}" if words else phrase
    noun = obj
    kind = str(rng.choice(("", "", " shape"))) if obj in SHAPES else ""
    article = "an" if (words or [noun])[0][0] in "aeiou" else "a"
    return f"{article} {' '.join([*words, noun])}{kind}"


def _caption(attrs: dict, rng: np.random.Generator, p: float) -> str:
    """Name a random subset of the scene's attributes (at least one) in one of several phrasings."""
    said = {k: v for k, v in attrs.items() if v is not None and rng.random() < p}
    if not said:
        key = str(rng.choice([k for k, v in attrs.items() if v is not None]))
        said = {key: attrs[key]}
    obj = attrs.get("object")
    parts = []
    if obj is not None and ("object" in said or "color" in said or "size" in said):
        name = obj if "object" in said else "object"
        parts.append(_object_phrase(name, said.get("color"), said.get("size"), rng))
    elif "color" in said:
        parts.append(
            str(rng.choice(("something {c}", "the color {c}", "a {c} object"))).format(c=said["color"])
        )
    if "position" in said:
        where = said["position"]
        if not parts:
            parts.append(
                str(
                    rng.choice(("an object in the {q}", "a dot in the {q} corner", "something in the {q}"))
                ).format(q=where)
            )
        else:
            parts.append(str(rng.choice(("in the {q}", "in the {q} corner", "at the {q}"))).format(q=where))
    if "background" in said:
        bg = said["background"]
        if not parts:
            forms = (
                ("a plain background",)
                if bg == "plain background"
                else ("{b}", "a texture of {b}", "a pattern of {b}")
            )
            parts.append(str(rng.choice(forms)).format(b=bg))
        elif bg == "plain background":
            parts.append("on a plain background")
        else:
            parts.append(str(rng.choice(("on {b}", "on a background of {b}", "over {b}"))).format(b=bg))
    return str(rng.choice(_SCENE_TEMPLATES)).format(x=" ".join(parts))


def _scene(recipe: WorldRecipe, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One image and its attributes (None = absent); the painter each quickstart task is a slice of."""
    u = rng.random()
    if u < recipe.p_digit_scene:
        digit = int(rng.integers(0, 10))
        cx, cy = rng.uniform(13, 19, 2)
        mask = digit_mask(digit, rng, cx, cy, rng.uniform(25, 31), aspect=(0.6, 0.95), thickness=(0.08, 0.14))
        img = _scan_look(mask)
        img = img * rng.uniform(0.8, 1.0)
        return img, {"object": str(digit), "color": None, "size": None, "position": None, "background": None}
    pattern_bg = (
        u < recipe.p_digit_scene + recipe.p_pattern_only or rng.random() < recipe.p_patterned_background
    )
    pattern = int(rng.integers(0, 4))
    img = _pattern(pattern, rng, recipe.stripe_freq) if pattern_bg else _plain(rng)
    attrs: dict = {"background": PATTERNS[pattern] if pattern_bg else "plain background"}
    if u < recipe.p_digit_scene + recipe.p_pattern_only:
        return img, {"object": None, "color": None, "size": None, "position": None, **attrs}
    kind = rng.random()
    quadrant = int(rng.integers(0, 5))  # 4 = centre (position unnamed)
    row, col = divmod(quadrant, 2)
    if kind < recipe.p_dot:
        obj, size, r = "dot", None, rng.uniform(3, 6)
    else:
        large = bool(rng.random() < 0.5)
        size, r = ("large", rng.uniform(7, 11)) if large else ("small", rng.uniform(4, 6.5))
        obj = (
            str(int(rng.integers(0, 10)))
            if kind < recipe.p_dot + recipe.p_digit_object
            else SHAPES[int(rng.integers(0, 5))]
        )
    if quadrant == 4 or (size == "large"):
        cx, cy = rng.uniform(11, 21, 2)
        position = None
    else:
        cy, cx = rng.uniform(4, 12) + 16 * row, rng.uniform(4, 12) + 16 * col
        position = QUADRANTS[quadrant]
    if obj.isdigit():
        mask = digit_mask(int(obj), rng, cx, cy, 2.2 * r)
    else:
        mask = shape_mask(0 if obj == "dot" else SHAPES.index(obj), cx, cy, r)
    color = str(rng.choice(list(COLORS), p=np.asarray(recipe.color_freq) / sum(recipe.color_freq)))
    img[mask] = np.clip(np.array(COLORS[color]) + rng.normal(0, 20, 3), 0, 255)
    named = None if color in recipe.unnamed_colors else color
    return img, {**attrs, "object": obj, "color": named, "size": size, "position": position}


def make_world(recipe: WorldRecipe) -> tuple[np.ndarray, list[str]]:
    """(uint8 images [N, SIZE, SIZE, 3], captions): a pure function of the recipe."""
    rng = np.random.default_rng(recipe.seed)
    images = np.empty((recipe.num_images, SIZE, SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(recipe.num_images):
        img, attrs = _scene(recipe, rng)
        images[i] = img.round().clip(0, 255).astype(np.uint8)
        captions.append(_caption(attrs, rng, recipe.p_mention))
    return images, captions
