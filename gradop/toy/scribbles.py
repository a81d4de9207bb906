"""Free-form scribbles for evaluation: what a person draws on the pad, made by a procedure of its own.

Training's free layouts (`world.free_layout`) are masks of analytic shapes filled with a scene's jittered colours
and read through a wobble. These are drawn instead the way the pad draws: PIL polygons, ellipses and thick brush
strokes in the pad's palette (`world.PALETTE`) on a canvas four times larger, then Lanczos-downsized, so edges are
anti-aliased as a real painting's are. Their layouts are random and often off the band grammar: suns anywhere
(low ones too), tilted horizons, shores crossing the ground at an angle, bold diagonal sand strokes, forest
blocks and houses at any place and scale. Every painted object is named in the prompt.

    from gradop.toy.scribbles import free_scribble
    s = free_scribble(HELD_OUT_SEED + 7)     # s.painting [64, 64, 3] uint8, s.labels, s.prompt, s.regions()

Seeds are the evaluation's own (`gradop.toy.evaluate` draws them from `FREE_SCRIBBLE_SEED`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ..checks import check_count, check_fraction
from .world import CLASSES, PALETTE, PHRASES, check_scene_size

SCALE = 4  # drawn at 4x the size, then downsized: anti-aliased edges, as on the pad
MIN_SHARE = 0.03  # a painted region counts (and is named) when it covers at least this share of the image


@dataclass
class Scribble:
    painting: np.ndarray  # [H, W, 3] uint8
    labels: np.ndarray  # [H, W] int64 class of every pixel (`CLASSES`; the roof counts as house)
    prompt: str  # "a photo of <every painted object>"
    seed: int

    def masks(self, min_share: float = MIN_SHARE) -> tuple[list[str], np.ndarray]:
        """The classes painted over at least `min_share` of the image and their masks [R, H, W]."""
        check_fraction(min_share, "min_share")
        names = [c for i, c in enumerate(CLASSES) if (self.labels == i).mean() >= min_share]
        masks = [self.labels == CLASSES.index(c) for c in names]
        return names, np.stack(masks) if masks else np.zeros((0, *self.labels.shape), bool)


def _color(rng, name):
    return tuple(int(v) for v in np.clip(np.array(PALETTE[name]) + rng.integers(-10, 11, 3), 0, 255))


def _horizon(w, h, rng):
    """A straight horizon at any height and tilt: its y at the left and right edges."""
    y, tilt = rng.uniform(0.3, 0.8) * h, rng.uniform(-0.55, 0.55) * w
    return y - tilt / 2, y + tilt / 2


def free_scribble(seed: int, size: int = 64) -> Scribble:
    """The free-form scribble of `seed` (deterministic), `size` x `size`."""
    seed, _ = check_count(seed, "seed"), check_scene_size(size)
    if not isinstance(size, int):
        raise TypeError(f"size must be one integer side (free scribbles are square), got {size!r}")
    rng = np.random.default_rng([seed, 4242])
    w = h = size * SCALE
    image = PIL.Image.new("RGB", (w, h), _color(rng, "sky"))
    labels = PIL.Image.new("L", (w, h), CLASSES.index("sky"))
    canvases = (PIL.ImageDraw.Draw(image), PIL.ImageDraw.Draw(labels))

    def fill(shape, name, *points, width=None, color=None):
        color = color or _color(rng, name)
        for canvas, value in zip(canvases, (color, CLASSES.index("house" if name == "roof" else name))):
            if shape == "line":
                canvas.line(points, fill=value, width=width, joint="curve")
            else:
                getattr(canvas, shape)(points, fill=value)

    left, right = _horizon(w, h, rng)
    ground_y = lambda x: left + (right - left) * x / w  # noqa: E731
    low = min(max(left, right) / h, 0.8)  # the ground is all below this share of the height
    # the sky's objects first (what stands on the ground covers them)
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        r, x = rng.uniform(0.07, 0.16) * w, rng.uniform(0.08, 0.92) * w
        y = rng.uniform(r, max(r + 1, ground_y(x)))  # anywhere above the horizon, a low sun too
        fill("ellipse", "sun", x - r, y - r, x + r, y + r)
    for _ in range(rng.choice([0, 0, 1, 2])):
        x, y, color = rng.uniform(0.1, 0.9) * w, rng.uniform(0.08, 0.35) * h, _color(rng, "cloud")
        for _ in range(3):
            cx, cy, ax, ay = x + rng.normal(0, 0.06 * w), y + rng.normal(0, 0.02 * h), rng.uniform(0.07, 0.13) * w, \
                rng.uniform(0.04, 0.07) * h
            fill("ellipse", "cloud", cx - ax, cy - ay, cx + ax, cy + ay, color=color)
    for _ in range(rng.choice([0, 1, 1, 2])):  # mountains: triangles standing on the horizon, maybe snow-capped
        x, half, height = rng.uniform(0.05, 0.95) * w, rng.uniform(0.12, 0.35) * w, rng.uniform(0.2, 0.5) * h
        base_l, base_r, peak = (x - half, ground_y(x - half) + 4), (x + half, ground_y(x + half) + 4), (x, ground_y(x) - height)
        fill("polygon", "mountain", base_l, peak, base_r)
        if rng.random() < 0.5:
            cap = rng.uniform(0.3, 0.45)
            fill("polygon", "snow", (x - cap * half, peak[1] + cap * (base_l[1] - peak[1])), peak,
                 (x + cap * half, peak[1] + cap * (base_r[1] - peak[1])))
    fill("polygon", "grass", (0, left), (w, right), (w, h), (0, h))
    # on the ground: water (a lake or a shore at an angle), a sand stroke, forest blocks, houses
    water = rng.random()
    if water < 0.35:
        x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(low + 0.1, 0.92) * h
        ax, ay = rng.uniform(0.15, 0.35) * w, rng.uniform(0.06, 0.14) * h
        fill("ellipse", "water", x - ax, y - ay, x + ax, y + ay)
    elif water < 0.65:  # a shore: the water fills one side of a line crossing a bottom corner's side of the ground
        a, b = rng.uniform(0.55, 0.95) * h, rng.uniform(0.55, 0.95) * h
        corner = (0, h) if rng.random() < 0.5 else (w, h)
        fill("polygon", "water", (0, a), (w, b), (w, h), (0, h)) if rng.random() < 0.4 else \
            fill("polygon", "water", (corner[0], a), (w - corner[0], h), corner)
    if rng.random() < 0.5:  # one bold diagonal sand stroke
        y0, y1 = rng.uniform(low * h + 0.05 * h, h, 2)
        fill("line", "sand", (0, y0), (w, y1) if rng.random() < 0.5 else (rng.uniform(0.5, 1) * w, h),
             width=int(rng.uniform(0.07, 0.12) * w))
    for _ in range(rng.choice([0, 1, 1, 2])):  # forest blocks: rough polygons around a centre
        x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(low + 0.05, 0.92) * h
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = rng.uniform(0.6, 1.0, 9)[:, None] * np.array([rng.uniform(0.1, 0.22) * w, rng.uniform(0.07, 0.15) * h])
        fill("polygon", "forest", *[(x + r[0] * np.cos(t), y + r[1] * np.sin(t)) for t, r in zip(angles, radii)])
    if rng.random() < 0.45:  # a house: walls and a roof
        bw = rng.uniform(0.18, 0.3) * w
        bh = rng.uniform(0.6, 0.8) * bw
        x, base = rng.uniform(0.05 * w, 0.95 * w - bw), rng.uniform(min(low * h + bh, h - 0.05 * h), h - 0.04 * h)
        fill("rectangle", "house", x, base - bh, x + bw, base)
        fill("polygon", "roof", (x - 0.05 * bw, base - bh), (x + bw / 2, base - bh - 0.5 * bw), (x + 1.05 * bw, base - bh))
    painting = np.asarray(image.resize((size, size), PIL.Image.LANCZOS))
    label_map = np.asarray(labels.resize((size, size), PIL.Image.NEAREST)).astype(np.int64)
    return Scribble(painting=painting.copy(), labels=label_map, prompt=naming_prompt(label_map), seed=seed)


def naming_prompt(labels, min_share: float = MIN_SHARE) -> str:
    """"a photo of a lake and a forest and a beach under the sun": every object of the class map `labels` that
    covers at least `min_share` of it, the sky's last (snow makes the mountains "snowy")."""
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or not labels.size:
        raise TypeError(f"labels must be a non-empty [H, W] array of class indices, got {type(labels).__name__}")
    check_fraction(min_share, "min_share")
    shares = {c: (labels == i).mean() for i, c in enumerate(CLASSES)}
    things = []
    for name in ("house", "water", "mountain", "forest", "sand", "grass"):
        if shares[name] >= min_share:
            if name == "mountain":
                things.append("snowy mountains" if shares["snow"] >= min_share / 3 else "mountains")
            else:
                things.append("a " + PHRASES[name])
    words = " and ".join(things) or "a meadow"
    sky = [t for name, t in (("sun", "the sun"), ("cloud", "clouds")) if shares[name] >= min_share]
    return "a photo of " + words + "".join(f" under {t}" for t in sky)
