"""The toy world: procedural landscapes with labels, captions and paintings (design.md, "toy world").

Every scene is a pure function of its seed. A scene gives:

* `image` — the "real photo": each region class has its own colour range and texture;
* `labels` — the class of every pixel (`CLASSES`);
* `caption` — a sentence from a small grammar naming what is in it ("a photo of a house near a
  lake with snowy mountains");
* `painting` — what a user would scribble: flat per-region colours, wobbly edges, a little
  brush texture. It plays the stroke painting in every experiment.

    python -m gradop.toy.world --out world.png     # a preview grid of image / painting / labels
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw

CLASSES = ("sky", "cloud", "sun", "mountain", "snow", "forest", "grass", "water", "sand", "house")
# Base colour and per-scene jitter (0..255) of each class: every scene draws its own shade
BASE_COLORS = {
    "sky": ((105, 165, 230), (25, 20, 15)), "cloud": ((232, 235, 240), (10, 10, 8)),
    "sun": ((255, 225, 110), (0, 20, 30)), "mountain": ((115, 102, 118), (25, 20, 25)),
    "snow": ((238, 243, 250), (8, 6, 4)), "forest": ((38, 88, 42), (10, 18, 10)),
    "grass": ((100, 165, 62), (20, 20, 15)), "water": ((45, 100, 175), (15, 25, 20)),
    "sand": ((218, 192, 140), (15, 15, 15)), "house": ((196, 170, 140), (30, 30, 30)),
}
NAMED_SHARE = 0.06  # a class the caption names covers at least this share of the image
ROOF_COLOR = ((150, 55, 45), (25, 15, 15))
# The words the grammar uses for each class (what a prompt must say to name it)
PHRASES = {"cloud": "clouds", "sun": "sun", "mountain": "mountains", "snow": "snowy", "forest": "forest",
           "grass": "meadow", "water": "lake", "sand": "beach", "house": "house", "sky": "sky"}
VOCABULARY = sorted({"a", "photo", "of", "the", "with", "and", "near", "under", "by", "below", "blue",
                     "snowy", "cloudy"} | set(PHRASES.values()))


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8
    labels: np.ndarray  # [H, W] int64, indices into CLASSES
    painting: np.ndarray  # [H, W, 3] uint8
    caption: str
    seed: int

    @property
    def named_classes(self) -> list[str]:
        """The classes the caption names."""
        words = set(self.caption.split())
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


def layout(rng, size):
    """The class map, its parts (house walls vs roof) and the caption's ingredients."""
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
    if rng.random() < 0.5:  # a forest along the horizon: a band of tree crowns
        top = horizon - rng.uniform(0.08, 0.16) * h
        start, end = sorted(rng.uniform(0, w, 2))
        end = max(end, start + 0.3 * w)
        crowns = smooth_noise(rng, h, w, 3) * 0.04 * h
        forest = (xx >= start) & (xx <= end) & (yy >= top + crowns) & (yy <= horizon + 0.04 * h + warp)
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


def render(rng, labels, roof) -> np.ndarray:
    """The "photo": each class's texture in its scene colour.

    Textures live at 2-4 pixels (at 64x64) and are strong: fine enough to tell the classes apart
    in an 8x8 patch, coarse enough for a VAE with 4x downsampling to keep them.
    """
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w] / h
    image = np.zeros((h, w, 3), np.float32)
    fine = rng.normal(0, 1, (h, w, 1))
    for i, name in enumerate(CLASSES):
        mask = labels == i
        if not mask.any():
            continue
        color = _shade(rng, name)
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
        elif name == "forest":  # dark, blobby crowns
            tex = (np.maximum(smooth_noise(rng, h, w, 2.5), 0) * 55 - 20)[..., None] + fine * 4
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
        image[mask] = (color + tex)[mask]
    if roof.any():
        roof_color = _shade(rng, ROOF_COLOR, {})
        tiles = (np.mgrid[0:h, 0:w][0] % 3 == 0)[..., None] * -25 + fine * 6
        image[roof] = (roof_color + tiles)[roof]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def paint(rng, image, labels, roof) -> np.ndarray:
    """The scribble: every region (and the roof) one flat colour near its mean, wobbly edges, brush texture."""
    h, w = labels.shape
    parts = labels + roof * len(CLASSES)  # the roof is painted in its own colour
    # wobbly edges: read the part map through a smooth random displacement
    dy = np.clip(np.round(np.arange(h)[:, None] + smooth_noise(rng, h, w, 6) * 0.025 * h), 0, h - 1).astype(int)
    dx = np.clip(np.round(np.arange(w)[None, :] + smooth_noise(rng, h, w, 6) * 0.025 * w), 0, w - 1).astype(int)
    wobbly = parts[dy, dx]
    painting = np.zeros((h, w, 3), np.float32)
    for part in np.unique(parts):
        flat = image[parts == part].reshape(-1, 3).mean(0) + rng.uniform(-8, 8, 3)
        painting[wobbly == part] = flat
    brush = smooth_noise(rng, h, w, 2, stretch=(0.5, 3))[..., None] * 4  # faint horizontal strokes
    return np.clip(np.round(painting + brush), 0, 255).astype(np.uint8)


def caption(rng, present: set[str]) -> str:
    """"a photo of <subject> <connector> <thing> ...": things present, in a random order, some left unnamed."""
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
    words = ["a photo of", first]
    for thing in rest:
        connector = "under" if thing in ("clouds", "the sun") else connectors[rng.integers(len(connectors))]
        words += [connector, thing]
    return " ".join(words)


def make_scene(seed: int, size: int | tuple[int, int] = 64) -> Scene:
    """The scene of `seed` at `size` (>= 64 recommended); identical for the same seed and size."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if min(size) < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    rng = np.random.default_rng([seed, *size])
    labels, roof, present = layout(rng, size)
    image = render(rng, labels, roof)
    painting = paint(rng, image, labels, roof)
    return Scene(image=image, labels=labels, painting=painting, caption=caption(rng, present), seed=seed)


def label_colors() -> np.ndarray:
    """A fixed colour per class, for label-map figures."""
    return np.array([BASE_COLORS[c][0] for c in CLASSES], np.uint8)


def preview(seeds, size=64, scale=2) -> PIL.Image.Image:
    """Rows of image | painting | labels for `seeds`, with captions underneath each row."""
    rows = []
    for seed in seeds:
        s = make_scene(seed, size)
        row = np.concatenate([s.image, s.painting, label_colors()[s.labels]], axis=1)
        tile = PIL.Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), PIL.Image.NEAREST)
        canvas = PIL.Image.new("RGB", (tile.width, tile.height + 14), "white")
        canvas.paste(tile)
        PIL.ImageDraw.Draw(canvas).text((2, tile.height + 1), f"{seed}: {s.caption}", fill="black")
        rows.append(canvas)
    grid = PIL.Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, r in enumerate(rows):
        grid.paste(r, (0, i * r.height))
    return grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradop.toy.world", description="Preview toy-world scenes.")
    parser.add_argument("--out", default="toy-world.png", help="output PNG")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    preview(args.seeds, args.size).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
