"""The toy world: procedural landscapes with labels, captions and paintings (design.md, "toy world").

Built like Stable Diffusion's data: every scene can be rendered in three *modalities* and the
training set holds all three, captions naming the modality only part of the time.

* `renders["photo"]` (also `image`) — textured like a photo: each class has its own texture and a fine
  periodic grain (ripples, blades, strata, weave), so the class shows in the texture;
* `renders["painting"]` — flat per-region colour with a slight tint of its own and wobbly edges;
* `renders["cartoon"]` — cel-shaded fills (a lit and a shadowed tone), dark outlines, simple marks;
* `labels` — the class of every pixel (`CLASSES`);
* `description` — what is in it ("a lake below snowy mountains"), and `caption` — the training
  caption of the scene's own `modality`: "a photo of …" / "a painting of …" / "a cartoon of …"
  for a share `NAMED_MODALITY` of the scenes, the bare description otherwise;
* `painting` — what a user would scribble: flat per-region colours, wobbly edges. It plays the stroke
  painting in every experiment.

What tells a photo from a painting is fine: the grain and texture against flat fills. The grain is finer
than the painting function f keeps, so GradOP's loss never asks for it, and it repeats at the VAE's
stride, so a latent carries it as a steady offset over each region that survives the noise SDEdit starts
from (`benchmarks/toy_world_evidence.py` measures how much): the toy's version of the intrinsic domain shift.
GradOP+ restores only what f sees, so it largely escapes it (reports/toy/report.md: on held-out scenes SDEdit at
s = 0.7 is judged photo 0.44, GradOP+ 0.92).

Painted colours overlap across classes (`COLOR_GROUPS`: green = forest or meadow, white = snow or
cloud, blue = lake or sky), so a colour alone does not say the class; forests stand anywhere on
the ground, and a second layout family (`make_scene(seed, wood=True)`, used to train region bindings) turns
the field into a wood around a meadow clearing, so neither does the place. That is what gives a region
binding something to decide.

    python -m gradop.toy.world --out world.png     # preview: photo / painting / cartoon / scribble / labels
"""
from __future__ import annotations

import argparse
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ..checks import check_count

CLASSES = ("sky", "cloud", "sun", "mountain", "snow", "forest", "grass", "water", "sand", "house")
MODALITIES = ("photo", "painting", "cartoon")
MODALITY_MIX = (0.5, 0.25, 0.25)  # share of training scenes shown in each modality
NAMED_MODALITY = 0.5  # share of captions that name a modality ("a photo of …"); the rest leave it out
PHOTO_LIGHT = {"side": 0.0, "vignette": 0.0}  # a photo's light across the frame (from one side, toward the corners)
# A photo's classes carry a fine periodic grain (ripples, blades, strata, weave) on top of their texture: its period in
# pixels at 64x64, then per class (amplitude 0..255, direction of the lines). It is finer than the painting function
# keeps (σ = 1.5 px leaves 6 % of a 4-px period), so GradOP's loss never asks for it, and it repeats at the latent's
# stride, so the VAE encodes it as a steady offset over each region that survives the noise SDEdit starts from:
# the part of "photo, not painting" that GradOP+ can restore and SDEdit cannot (benchmarks/toy_world_evidence.py).
GRAIN_PERIOD = 4.0
PHOTO_GRAIN = {"sky": (14, "rows"), "cloud": (18, "rows"), "sun": (10, "columns"), "mountain": (30, "diagonal"),
               "snow": (18, "antidiagonal"), "forest": (34, "diagonal"), "grass": (32, "columns"), "water": (30, "rows"),
               "sand": (26, "checks"), "house": (20, "columns")}
RIGHT_MODALITY = 1.0  # a caption that names one names the right one this often (below 1: noisy web captions)
# Painted colour ranges (base, per-scene jitter, 0..255), shared within a group: a colour alone does not say the class
COLOR_GROUPS = {"green": ((62, 128, 52), (26, 30, 16)), "white": ((236, 240, 246), (10, 8, 6)),
                "blue": ((70, 125, 200), (28, 28, 25))}
BASE_COLORS = {
    "sky": COLOR_GROUPS["blue"], "cloud": COLOR_GROUPS["white"],
    "sun": ((255, 225, 110), (0, 20, 30)), "mountain": ((115, 102, 118), (25, 20, 25)),
    "snow": COLOR_GROUPS["white"], "forest": COLOR_GROUPS["green"],
    "grass": COLOR_GROUPS["green"], "water": COLOR_GROUPS["blue"],
    "sand": ((218, 192, 140), (15, 15, 15)), "house": ((196, 170, 140), (30, 30, 30)),
}
# One painting colour per class for palettes (e.g. the scribble pad's), each inside its class's range; classes that
# share a range get two different shades of it, so that a binding can tell their strokes apart
PALETTE = {"sky": (95, 150, 222), "cloud": (230, 234, 241), "sun": (255, 225, 110), "mountain": (115, 102, 118),
           "snow": (244, 246, 250), "forest": (42, 102, 42), "grass": (82, 152, 62), "water": (48, 100, 180),
           "sand": (218, 192, 140), "house": (196, 170, 140), "roof": (150, 55, 45)}
NAMED_SHARE = 0.06  # a class the caption names covers at least this share of the image
ROOF_COLOR = ((150, 55, 45), (25, 15, 15))
# The words the grammar uses for each class (what a prompt must say to name it)
PHRASES = {"cloud": "clouds", "sun": "sun", "mountain": "mountains", "snow": "snowy", "forest": "forest",
           "grass": "meadow", "water": "lake", "sand": "beach", "house": "house", "sky": "sky"}
VOCABULARY = sorted({"a", "photo", "painting", "cartoon", "of", "the", "with", "and", "near", "under", "by", "below", "blue",
                     "snowy", "cloudy"} | set(PHRASES.values()))


@dataclass
class Scene:
    renders: dict  # modality -> [H, W, 3] uint8
    labels: np.ndarray  # [H, W] int64, indices into CLASSES
    painting: np.ndarray  # [H, W, 3] uint8, the user-style scribble
    description: str  # what is in the scene, no modality: "a lake below snowy mountains"
    modality: str  # the modality the scene is shown in for training
    caption: str  # the training caption of that render
    seed: int

    @property
    def image(self) -> np.ndarray:
        """The photo render."""
        return self.renders["photo"]

    @property
    def training_image(self) -> np.ndarray:
        return self.renders[self.modality]

    def prompt(self, modality: str = "photo") -> str:
        """"a <modality> of <description>": the prompt of an experiment that wants `modality`."""
        return f"a {modality} of {self.description}"

    def painted_color(self, name: str) -> np.ndarray:
        """The colour class `name` is scribbled in here: the median over its pixels of `painting` (float RGB)."""
        return np.median(self.painting[self.labels == CLASSES.index(name)], axis=0)

    @property
    def named_classes(self) -> list[str]:
        """The classes the caption names."""
        words = set(self.description.split())
        return [c for c in CLASSES if PHRASES[c] in words and c != "sky"]


def smooth_noise(rng, height, width, cell, stretch=(1.0, 1.0)) -> np.ndarray:
    """Value noise in [-1, 1]: random values on a grid of `cell` pixels (at 64x64; scaled with the
    image, so a scene looks the same at any size), bicubic-interpolated."""
    cell = cell * min(height, width) / 64
    gh = max(2, int(height / (cell * stretch[0])) + 2)
    gw = max(2, int(width / (cell * stretch[1])) + 2)
    grid = PIL.Image.fromarray(rng.uniform(-1, 1, (gh, gw)).astype(np.float32), mode="F")
    return np.clip(np.asarray(grid.resize((width, height), PIL.Image.BICUBIC)), -1.5, 1.5)


def _shade(rng, name, table=BASE_COLORS):
    base, jitter = table[name] if name in table else name
    return np.clip(np.array(base) + rng.uniform(-1, 1, 3) * np.array(jitter), 0, 255)


def _ridge(rng, width, base, height) -> np.ndarray:
    """A mountain skyline by midpoint displacement: y of the ridge for every column."""
    n = 1
    ys = np.array([rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)])
    while n < width:
        mids = (ys[:-1] + ys[1:]) / 2 + rng.normal(0, 0.5 / n ** 0.7, len(ys) - 1)
        ys = np.insert(ys, np.arange(1, len(ys)), mids)
        n *= 2
    ys = np.interp(np.linspace(0, len(ys) - 1, width), np.arange(len(ys)), ys)
    return base - height * np.clip(ys, 0.1, 1.2)


def layout(rng, size, wood: bool = False):
    """The class map, its parts (house walls vs roof) and the caption's ingredients; `wood`: the field is a wood
    around a meadow clearing (the same draws otherwise, so `wood=False` scenes never change)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    labels = np.zeros((h, w), np.int64)
    roof = np.zeros((h, w), bool)
    cls = {name: i for i, name in enumerate(CLASSES)}
    horizon = rng.uniform(0.42, 0.62) * h
    warp = smooth_noise(rng, h, w, 8) * 0.03 * h  # keeps horizons and shores from being ruler-straight

    if rng.random() < 0.4:  # sun
        r = rng.uniform(0.14, 0.19) * h
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(r, max(r + 1, horizon - 0.2 * h))
        labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = cls["sun"]
    if rng.random() < 0.5:  # clouds: unions of ellipses
        for _ in range(rng.integers(1, 3)):
            cx, cy = rng.uniform(0, w), rng.uniform(0.08, 0.3) * h
            for _ in range(rng.integers(3, 6)):
                ex, ey = cx + rng.normal(0, 0.08 * w), cy + rng.normal(0, 0.02 * h)
                ax, ay = rng.uniform(0.06, 0.14) * w, rng.uniform(0.04, 0.07) * h
                labels[((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 <= 1] = cls["cloud"]
    if rng.random() < 0.6:  # mountains, maybe snowy
        ridge = _ridge(rng, w, horizon + 1, rng.uniform(0.2, 0.38) * h)
        mountain = yy >= ridge[None, :]
        labels[mountain] = cls["mountain"]
        if rng.random() < 0.5:
            snowline = ridge.min() + rng.uniform(0.35, 0.55) * (horizon - ridge.min())
            labels[mountain & (yy < snowline + warp)] = cls["snow"]

    ground = yy >= horizon + warp
    labels[ground] = cls["grass"]
    if rng.random() < 0.5:  # a lake from the horizon down, or a pond in the field
        cx, depth = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.3) * h
        ax = rng.uniform(0.3, 0.7) * w
        lake = ground & (((xx - cx) / ax) ** 2 + ((yy - horizon - warp) / depth) ** 2 <= 1)
        if rng.random() < 0.4:  # a sandy shore around it
            shore = ground & (((xx - cx) / (ax + 0.08 * w)) ** 2 + ((yy - horizon - warp) / (depth + 0.08 * h)) ** 2 <= 1)
            labels[shore] = cls["sand"]
        labels[lake] = cls["water"]
    elif rng.random() < 0.3:  # a beach along the bottom
        labels[ground & (yy >= h - rng.uniform(0.15, 0.25) * h + warp)] = cls["sand"]
    if rng.random() < 0.55 or wood:  # a forest: a band of tree crowns on the horizon, or a wood anywhere in the field
        crowns = smooth_noise(rng, h, w, 3) * 0.04 * h
        if rng.random() < 0.4 and not wood:
            top = horizon - rng.uniform(0.08, 0.16) * h
            start, end = sorted(rng.uniform(0, w, 2))
            end = max(end, start + 0.3 * w)
            forest = (xx >= start) & (xx <= end) & (yy >= top + crowns) & (yy <= horizon + 0.04 * h + warp)
        else:
            cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(horizon + 0.1 * h, 0.9 * h)
            ax, ay = rng.uniform(0.14, 0.3) * w, rng.uniform(0.08, 0.16) * h
            if wood:  # a clearing about as large as a wood in the field
                ax, ay = 1.5 * ax, 1.5 * ay
            forest = ground & (((xx - cx) / ax) ** 2 + ((yy - cy + crowns) / ay) ** 2 <= 1)
        if wood:  # the other way round: the field is a wood around a meadow clearing
            labels[ground & (labels == cls["grass"]) & ~forest] = cls["forest"]
        else:
            labels[forest & (labels != cls["water"])] = cls["forest"]
    if rng.random() < 0.35:  # a house on the field
        bw, bh = rng.uniform(0.22, 0.32) * w, rng.uniform(0.14, 0.2) * h
        x0, base = rng.uniform(0.05 * w, 0.95 * w - bw), rng.uniform(horizon + 0.2 * h, h - 0.05 * h)
        walls = (xx >= x0) & (xx <= x0 + bw) & (yy <= base) & (yy >= base - bh)
        apex = base - bh - rng.uniform(0.07, 0.12) * h
        roof = (yy < base - bh) & (yy >= apex + np.abs(xx - (x0 + bw / 2)) * (base - bh - apex) / (bw / 2 + 0.03 * w))
        if (labels[walls] == cls["water"]).mean() < 0.1:  # houses stand on land
            labels[walls | roof] = cls["house"]
        else:
            roof[:] = False
    # the caption names what is clearly visible: at least 6 % of the image (later shapes may hide earlier ones)
    present = {name for name in CLASSES if (labels == cls[name]).mean() >= NAMED_SHARE}
    return labels, roof, present


def _blob(rng, xx, yy, cx, cy, ax, ay, rough=0.25):
    """An ellipse at (cx, cy) with half-axes (ax, ay) whose edge wobbles by `rough` of its size: a hand-shaped patch."""
    h, w = xx.shape
    edge = 1 + rough * smooth_noise(rng, h, w, 4)
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= edge


def _line_side(xx, yy, point, angle, bend, w):
    """Signed distance (pixels) of every pixel from a line through `point` at `angle`, bent by `bend` pixels at
    the frame's edges (0 at the point): the shore or horizon of a free layout."""
    nx, ny = -np.sin(angle), np.cos(angle)  # the line's normal
    along = (xx - point[0]) * np.cos(angle) + (yy - point[1]) * np.sin(angle)
    return (xx - point[0]) * nx + (yy - point[1]) * ny - bend * (along / w * 2) ** 2


def free_layout(rng, size):
    """The free layout family: what people actually scribble. A horizon at any height and tilt (sometimes bent,
    sometimes out of the frame), any number of each object (0-2 suns, 0-3 clouds, 0-3 mountains, 0-3 forest
    patches, 0-2 houses) at any place and scale, lakes or a straight or curved shore crossing the ground at any
    angle, beaches and diagonal sand strips. Same outputs as `layout`."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    labels = np.zeros((h, w), np.int64)
    roof = np.zeros((h, w), bool)
    cls = {name: i for i, name in enumerate(CLASSES)}
    warp = smooth_noise(rng, h, w, 8) * 0.03 * h
    # the horizon: height anywhere from near the top to below the frame, tilt up to ±30°, a bend up to ±15 % of h
    height = rng.uniform(0.15, 1.05) * h if rng.random() < 0.9 else -0.1 * h  # (-0.1 h: all ground)
    tilt, bend = rng.uniform(-0.52, 0.52), rng.uniform(-0.15, 0.15) * h
    horizon_side = _line_side(xx, yy, (w / 2, height), tilt, bend, w) + warp  # > 0 below the horizon
    ground = horizon_side >= 0
    sky = ~ground
    for _ in range(rng.choice([0, 0, 1, 1, 1, 2])):  # suns, anywhere in the sky, low ones half set
        r = rng.uniform(0.07, 0.2) * h
        cx, cy = rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h
        labels[((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & sky] = cls["sun"]
    for _ in range(rng.choice([0, 0, 1, 2, 3])):  # clouds: unions of ellipses anywhere in the sky
        cx, cy = rng.uniform(0, w), rng.uniform(0.02, 0.9) * h
        scale = rng.uniform(0.6, 1.6)
        for _ in range(rng.integers(3, 6)):
            ex, ey = cx + rng.normal(0, 0.08 * w * scale), cy + rng.normal(0, 0.02 * h * scale)
            ax, ay = rng.uniform(0.06, 0.14) * w * scale, rng.uniform(0.04, 0.07) * h * scale
            labels[(((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 <= 1) & sky] = cls["cloud"]
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):  # mountains: peaks of any width and height on the horizon
        px = rng.uniform(-0.1, 1.1) * w
        half_width, peak = rng.uniform(0.12, 0.45) * w, rng.uniform(0.12, 0.6) * h
        ridge = np.abs(xx - px) / half_width + 0.12 * smooth_noise(rng, h, w, 3)  # 0 at the peak, 1 at the foot
        above = -horizon_side  # pixels above the horizon, measured across it
        mountain = sky & (above <= peak * (1 - ridge))
        labels[mountain] = cls["mountain"]
        if rng.random() < 0.5:  # a snowy top
            labels[mountain & (above >= peak * (1 - ridge) - rng.uniform(0.25, 0.5) * peak)] = cls["snow"]
    labels[ground] = cls["grass"]
    water = rng.random()
    if water < 0.3:  # lakes and ponds anywhere on the ground
        for _ in range(rng.integers(1, 3)):
            cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.2, 1.0) * h
            ax, ay = rng.uniform(0.12, 0.45) * w, rng.uniform(0.08, 0.25) * h
            lake = ground & _blob(rng, xx, yy, cx, cy, ax, ay, 0.15)
            if rng.random() < 0.4:  # a sandy rim
                rim = ground & _blob(rng, xx, yy, cx, cy, ax + 0.08 * w, ay + 0.08 * h, 0.1)
                labels[rim & (labels == cls["grass"])] = cls["sand"]
            labels[lake] = cls["water"]
    elif water < 0.6:  # a shore across the ground at any angle, straight or curved, maybe with a beach along it
        point = (rng.uniform(0.1, 0.9) * w, rng.uniform(0.3, 0.9) * h)
        shore = _line_side(xx, yy, point, rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3) * h, w) + warp
        if rng.random() < 0.5:
            labels[ground & (shore >= -rng.uniform(0.05, 0.15) * h)] = cls["sand"]
        labels[ground & (shore >= 0)] = cls["water"]
    if rng.random() < 0.25:  # a diagonal strip of sand (a path, a spit), a bold stroke
        point = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.4, 0.9) * h)
        across = np.abs(_line_side(xx, yy, point, rng.uniform(0, np.pi), rng.uniform(-0.1, 0.1) * h, w) + warp)
        labels[ground & (across <= rng.uniform(0.04, 0.09) * h)] = cls["sand"]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):  # forest patches of any size anywhere on land
        cx, cy = rng.uniform(0, 1) * w, rng.uniform(0.1, 1.0) * h
        patch = ground & _blob(rng, xx, yy, cx, cy, rng.uniform(0.08, 0.4) * w, rng.uniform(0.06, 0.25) * h)
        labels[patch & (labels != cls["water"])] = cls["forest"]
    for _ in range(rng.choice([0, 0, 1, 1, 2])):  # houses on land, any size
        scale = rng.uniform(0.6, 1.5)
        bw, bh = rng.uniform(0.18, 0.28) * w * scale, rng.uniform(0.12, 0.18) * h * scale
        x0, base = rng.uniform(-0.05 * w, w - 0.9 * bw), rng.uniform(0.25 * h, 1.02 * h)
        walls = (xx >= x0) & (xx <= x0 + bw) & (yy <= base) & (yy >= base - bh)
        apex = base - bh - rng.uniform(0.06, 0.11) * h * scale
        house_roof = (yy < base - bh) & (yy >= apex + np.abs(xx - (x0 + bw / 2)) * (base - bh - apex) / (bw / 2 + 0.03 * w))
        if walls.any() and ground[walls].mean() > 0.7 and (labels[walls] == cls["water"]).mean() < 0.1:
            labels[walls | house_roof] = cls["house"]
            roof |= house_roof
    roof &= labels == cls["house"]
    present = {name for name in CLASSES if (labels == cls[name]).mean() >= NAMED_SHARE}
    return labels, roof, present


def scene_colors(rng) -> dict:
    """The painted colour of every class in this scene (and of the roof), drawn from its range."""
    colors = {name: _shade(rng, name) for name in CLASSES}
    colors["roof"] = _shade(rng, ROOF_COLOR, {})
    return colors


def render_photo(rng, labels, roof, colors) -> np.ndarray:
    """The "photo": each class's texture on its scene colour, under soft uneven light.

    Textures live at 2-4 pixels (at 64x64) and are strong: fine enough to tell the classes apart
    in an 8x8 patch (even where two classes share a colour), coarse enough for a VAE with 4x
    downsampling to keep them.
    """
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w] / h
    image = np.zeros((h, w, 3), np.float32)
    fine = rng.normal(0, 1, (h, w, 1))
    for i, name in enumerate(CLASSES):
        mask = labels == i
        if not mask.any():
            continue
        color = colors[name]
        if name == "sky":  # lighter toward the horizon, soft horizontal wisps
            tex = (yy[..., None] * 50 - 20) + smooth_noise(rng, h, w, 4, stretch=(0.6, 3))[..., None] * 12 + fine * 2
        elif name == "cloud":  # puffy, shaded underneath
            tex = smooth_noise(rng, h, w, 3)[..., None] * 22 - yy[..., None] * 25 + fine * 2
        elif name == "sun":  # a bright core fading to an orange rim
            cy, cx = yy[mask].mean(), xx[mask].mean()
            r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / max(((yy[mask] - cy) ** 2 + (xx[mask] - cx) ** 2).max(), 1e-6)
            tex = r2[..., None] * np.array([0, -45, -80]) + 10 + fine * 3
        elif name == "mountain":  # rock: ridged noise at two scales
            tex = (np.abs(smooth_noise(rng, h, w, 3.5)) * 45 - 22 + smooth_noise(rng, h, w, 10) * 15)[..., None] + fine * 4
        elif name == "snow":  # bluish shadows
            tex = smooth_noise(rng, h, w, 3)[..., None] * np.array([16, 10, 2]) + fine * 2
        elif name == "forest":  # dark, blobby crowns with deep shadows between them
            tex = (np.maximum(smooth_noise(rng, h, w, 2.5), 0) * 60 - 28)[..., None] + fine * 4
        elif name == "grass":  # vertical blades
            tex = smooth_noise(rng, h, w, 2, stretch=(3, 0.7))[..., None] * 30 + fine * 5
        elif name == "water":  # horizontal ripples with glints
            ripple = smooth_noise(rng, h, w, 2, stretch=(0.5, 4))[..., None]
            tex = ripple * 28 + (ripple > 0.8) * 40 + fine * 2
        elif name == "sand":  # grain
            tex = smooth_noise(rng, h, w, 2)[..., None] * 12 + fine * 8 + smooth_noise(rng, h, w, 6)[..., None] * 8
        else:  # house: walls with dark windows, and a tiled roof
            tex = fine * 4
            windows = ((np.arange(w) // max(2, w // 32)) % 3 == 1)[None, :] & ((np.arange(h) // max(2, h // 32)) % 3 == 1)[:, None]
            tex = tex - (windows & mask & ~roof)[..., None] * 90
        image[mask] = (color + tex + photo_grain(rng, h, w, name))[mask]
    if roof.any():
        tiles = (np.mgrid[0:h, 0:w][0] % 3 == 0)[..., None] * -25 + fine * 6
        image[roof] = (colors["roof"] + tiles)[roof]
    return np.clip(np.round(image * photo_light(rng, h, w)[..., None]), 0, 255).astype(np.uint8)


def photo_grain(rng, h, w, name) -> np.ndarray:
    """[H, W, 1] the fine periodic grain of class `name` in a photo (`PHOTO_GRAIN`), in a random phase."""
    amplitude, direction = PHOTO_GRAIN[name]
    period = GRAIN_PERIOD * min(h, w) / 64
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * (2 * np.pi / period)
    phase = rng.uniform(0, 2 * np.pi, 2)
    if direction == "checks":  # a product of the two (1.4: about the others' strength)
        grain = 1.4 * np.sin(yy + phase[0]) * np.sin(xx + phase[1])
    else:  # lines: constant along them, a sine across
        across = {"rows": yy, "columns": xx, "diagonal": (xx + yy) / np.sqrt(2), "antidiagonal": (xx - yy) / np.sqrt(2)}
        grain = np.sin(across[direction] + phase[0])
    return (amplitude * grain)[..., None]


def photo_light(rng, h, w) -> np.ndarray:
    """The light of a photo, [H, W] around 1: light falling from one side and a darkening toward the
    corners (a lens's vignette), plus some unevenness. It varies across the whole frame, the scale a
    noised latent keeps longest: what tells a photo from a flat painting even when its texture is
    drowned in noise (in Stable Diffusion's data, lighting and shading do this at every scale)."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None] - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    side = (np.cos(angle) * xx + np.sin(angle) * yy) * 2  # -1 .. 1 across the frame
    corners = (xx ** 2 + yy ** 2) * 2  # 0 at the centre, 1 in the corners
    return (1 + PHOTO_LIGHT["side"] * side) * (1 - PHOTO_LIGHT["vignette"] * corners) + 0.04 * smooth_noise(rng, h, w, 24)


def _parts(labels, roof):
    return labels + roof * len(CLASSES)  # the roof is painted in its own colour


def _part_color(colors, part):
    return colors["roof"] if part >= len(CLASSES) else colors[CLASSES[part]]


def _wobble(rng, parts, amount):
    """The part map read through a smooth random displacement: hand-drawn, not ruler-straight, edges."""
    h, w = parts.shape
    dy = np.clip(np.round(np.arange(h)[:, None] + smooth_noise(rng, h, w, 6) * amount * h), 0, h - 1).astype(int)
    dx = np.clip(np.round(np.arange(w)[None, :] + smooth_noise(rng, h, w, 6) * amount * w), 0, w - 1).astype(int)
    return parts[dy, dx]


def _flat_fill(rng, labels, roof, colors, wobble) -> np.ndarray:
    """Every region (and the roof) one flat colour near its painted colour, with a slight tint of its own,
    edges read through a random displacement of `wobble` x the side."""
    wobbly = _wobble(rng, _parts(labels, roof), wobble)
    image = np.zeros((*labels.shape, 3), np.float32)
    for part in np.unique(wobbly):
        image[wobbly == part] = _part_color(colors, part) + rng.uniform(-8, 8, 3)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_painting(rng, labels, roof, colors) -> np.ndarray:
    """The "painting" modality: flat fills, wobbly edges (the same look whatever the class: in a painting the
    colour does not say it)."""
    return _flat_fill(rng, labels, roof, colors, 0.03)


CARTOON_MARKS = {  # (cell, stretch, threshold, colour change) of each class's simple drawn marks
    "forest": (2.5, (1, 1), 0.55, -70), "grass": (2, (3, 0.6), 0.6, -45), "water": (2, (0.4, 4), 0.6, 60),
    "mountain": (4, (2, 1), 0.65, -45), "sand": (1.5, (1, 1), 0.7, -35), "cloud": (6, (1, 2), 0.7, -25),
}


def render_cartoon(rng, labels, roof, colors) -> np.ndarray:
    """The "cartoon" modality: saturated cel-shaded fills (a lit and a shadowed tone), a few drawn marks
    per class, and dark outlines around every region."""
    h, w = labels.shape
    parts = _parts(labels, roof)
    image = np.zeros((h, w, 3), np.float32)
    shadow = smooth_noise(rng, h, w, 8) > 0.25
    for part in np.unique(parts):
        base = _part_color(colors, part)
        base = np.clip(base.mean() + (base - base.mean()) * 1.4, 0, 255)  # cartoons are more saturated
        fill = np.where(shadow[..., None], base * 0.78, base)
        name = CLASSES[part] if part < len(CLASSES) else "roof"
        if name in CARTOON_MARKS:
            cell, stretch, threshold, change = CARTOON_MARKS[name]
            fill = fill + (smooth_noise(rng, h, w, cell, stretch=stretch) > threshold)[..., None] * change
        image[parts == part] = fill[parts == part]
    # outlines 2 px wide at 64x64 (both sides of every boundary): 1 px lines are finer than a VAE with 4x
    # downsampling keeps (cartoon reconstructions stayed below 20 dB PSNR with them)
    b = max(1, round(min(h, w) / 64))
    edge = np.zeros((h, w), bool)
    edge[:-b] |= parts[:-b] != parts[b:]
    edge[b:] |= parts[b:] != parts[:-b]
    edge[:, :-b] |= parts[:, :-b] != parts[:, b:]
    edge[:, b:] |= parts[:, b:] != parts[:, :-b]
    image[edge] = (35, 30, 40)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def paint(rng, labels, roof, colors) -> np.ndarray:
    """The user's scribble: flat fills near the painted colours, wobbly edges (a little less than a painting's)."""
    return _flat_fill(rng, labels, roof, colors, 0.025)


def describe(rng, present: set[str]) -> str:
    """"<subject> <connector> <thing> ...": things present, in a random order, some left unnamed."""
    things = []
    for name in ("house", "water", "mountain", "forest", "sand", "grass", "cloud", "sun"):
        if name in present and (not things or rng.random() < 0.8):
            if name == "mountain":
                things.append("snowy mountains" if "snow" in present else "mountains")
            elif name in ("cloud", "sun"):
                things.append({"cloud": "clouds", "sun": "the sun"}[name])
            else:
                things.append("a " + PHRASES[name])
    things = things or ["a blue sky"]
    first, rest = things[0], list(rng.permutation(things[1:]))
    connectors = ["with", "near", "and", "by"]
    words = [first]
    for thing in rest:
        connector = "under" if thing in ("clouds", "the sun") else connectors[rng.integers(len(connectors))]
        words += [connector, thing]
    return " ".join(words)


def caption(rng, description: str, modality: str) -> str:
    """The training caption: the description, with "a <modality> of" in front for `NAMED_MODALITY` of the scenes,
    naming a wrong modality for a share 1 - `RIGHT_MODALITY` of those (none by default: a wrong name weakens
    the prompt against the grain's evidence, and GradOP+ then loses realism, see the issue-14 note)."""
    if rng.random() >= NAMED_MODALITY:
        return description
    if rng.random() >= RIGHT_MODALITY:
        modality = rng.choice([m for m in MODALITIES if m != modality])
    return f"a {modality} of {description}"


FAMILIES = ("band", "wood", "free")  # layout families: `layout` (and its wood variant) and `free_layout`
FREE_SHARE = 0.5  # share of training scenes drawn in the free family (`training_family`)


def training_family(seed: int) -> str:
    """The layout family of training scene `seed`: "free" for a share `FREE_SHARE` of the seeds, "band" otherwise
    (drawn from the seed alone, so a scene's family never depends on how many scenes are drawn)."""
    return "free" if np.random.default_rng([check_count(seed, 'seed'), 31]).random() < FREE_SHARE else "band"


def check_scene_size(size, name: str = "size") -> tuple[int, int]:
    """`size` as (height, width): one side for a square, or a pair, each an integer >= 16."""
    def integer(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    pair = (size, size) if integer(size) else tuple(size) if isinstance(size, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(map(integer, pair)):
        raise TypeError(f"{name} must be an integer side or a pair of integers, got {size!r}")
    if min(pair) < 16:
        raise ValueError(f"{name} must be at least 16 pixels, got {size}")
    return int(pair[0]), int(pair[1])


def make_scene(seed: int, size: int | tuple[int, int] = 64, family: str = "band") -> Scene:
    """The scene of `seed` at `size` (>= 64 recommended) in layout `family`; identical for the same arguments.

    Families (`FAMILIES`): "band" — sky on top, one horizon, ground below, objects at their usual places;
    "wood" — the same draws with the field a wood around a meadow clearing (the training of region bindings uses
    it: there, the place of a green region says nothing about its class); "free" — `free_layout`, objects
    anywhere at any scale, tilted horizons, diagonal shores: the layouts people scribble."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    seed, size = check_count(seed, "seed"), check_scene_size(size)  # numpy seeds its generator from them
    rng = np.random.default_rng([seed, *size])
    labels, roof, present = free_layout(rng, size) if family == "free" else layout(rng, size, family == "wood")
    colors = scene_colors(rng)
    renders = {"photo": render_photo(rng, labels, roof, colors), "painting": render_painting(rng, labels, roof, colors),
               "cartoon": render_cartoon(rng, labels, roof, colors)}
    painting = paint(rng, labels, roof, colors)
    description = describe(rng, present)
    modality = MODALITIES[rng.choice(len(MODALITIES), p=MODALITY_MIX)]
    return Scene(renders=renders, labels=labels, painting=painting, description=description, modality=modality,
                 caption=caption(rng, description, modality), seed=seed)


# One distinct colour per class for label maps: classes that share a painted colour must not share this one
LABEL_COLORS = {"sky": (135, 190, 240), "cloud": (190, 190, 200), "sun": (255, 215, 50), "mountain": (115, 95, 130),
                "snow": (255, 255, 255), "forest": (20, 85, 30), "grass": (150, 225, 90), "water": (25, 55, 165),
                "sand": (225, 190, 125), "house": (175, 60, 50)}


def label_colors() -> np.ndarray:
    """A fixed colour per class, for label-map figures (`LABEL_COLORS`)."""
    return np.array([LABEL_COLORS[c] for c in CLASSES], np.uint8)


def preview(seeds, size=64, scale=2, family: str = "band") -> PIL.Image.Image:
    """Rows of photo | painting | cartoon | scribble | labels for `seeds` in layout `family`, with each scene's
    caption underneath."""
    rows = []
    for seed in seeds:
        s = make_scene(seed, size, family)
        row = np.concatenate([*(s.renders[m] for m in MODALITIES), s.painting, label_colors()[s.labels]], axis=1)
        tile = PIL.Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), PIL.Image.NEAREST)
        canvas = PIL.Image.new("RGB", (tile.width, tile.height + 14), "white")
        canvas.paste(tile)
        PIL.ImageDraw.Draw(canvas).text((2, tile.height + 1), f"{seed} ({s.modality}): {s.caption}", fill="black")
        rows.append(canvas)
    head = PIL.Image.new("RGB", (rows[0].width, 14), "white")
    for i, title in enumerate(MODALITIES + ("scribble", "labels")):
        PIL.ImageDraw.Draw(head).text((2 + i * size * scale, 1), title, fill="black")
    grid = PIL.Image.new("RGB", (rows[0].width, 14 + sum(r.height for r in rows)), "white")
    grid.paste(head)
    for i, r in enumerate(rows):
        grid.paste(r, (0, 14 + i * r.height))
    return grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradop.toy.world", description="Preview toy-world scenes.")
    parser.add_argument("--out", default="toy-world.png", help="output PNG")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--family", choices=FAMILIES, default="band",
                        help="layout family: band (sky, horizon, ground), wood (a wood around a clearing), free (anywhere)")
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() != ".png":
        parser.error(f"--out must end in .png, got {args.out!r}")
    if not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out!r}: its folder does not exist")
    try:
        check_scene_size(args.size, "--size")
        for seed in args.seeds:
            check_count(seed, "--seeds")
    except ValueError as err:
        parser.error(str(err))
    preview(args.seeds, args.size, family=args.family).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
