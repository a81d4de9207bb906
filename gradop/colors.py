"""Colours of a stroke painting: parsing, the palette, and masks that survive anti-aliasing (method.md §4.1).

Real scribbles are anti-aliased (the released inputs have hundreds to thousands of distinct colours), so
a pixel goes to its nearest stroke colour, and edge pixels that blend two stroke colours count too; a
colour is never matched by exact RGB alone.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .images import load_image

_CELL = 8  # histogram cell width, in 0..255 levels: a flat stroke colour fills one cell
_SAME_COLOR = 24  # colours closer than this (Euclidean, 0..255) are one stroke colour with noise
_FRINGE_SHARE = 0.01  # below this share, a blend of two found colours is anti-aliasing fringe, not a stroke


def parse_color(color, name: str = "color") -> tuple[int, int, int]:
    """`"#rrggbb"`, `"#rgb"` or an `(r, g, b)` tuple of 0–255 integers -> `(r, g, b)`."""
    if isinstance(color, str):
        text = color.strip().removeprefix("#")
        if len(text) == 3:
            text = "".join(c * 2 for c in text)
        if len(text) == 6 and all(c in "0123456789abcdefABCDEF" for c in text):
            return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
    elif (isinstance(color, (tuple, list)) and len(color) == 3
          and all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
        return tuple(int(c) for c in color)
    elif not isinstance(color, (tuple, list)):
        raise TypeError(f"{name}: a colour is a '#rrggbb' string or an (r, g, b) tuple, got {type(color).__name__}")
    raise ValueError(f"{name}: {color!r} is not a colour; write '#rrggbb' (e.g. '#2a7a2a') "
                     "or an (r, g, b) tuple of integers 0-255")


def to_hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(round(float(c))) for c in rgb))


def _pixels(image, name: str = "image") -> torch.Tensor:
    """[H, W, 3] float in 0..255 from anything `load_image` takes."""
    return torch.from_numpy(np.asarray(load_image(image, name), dtype=np.float32).copy())


def _assign(pixels: torch.Tensor, palette: torch.Tensor, tolerance: float, chunk: int = 1 << 18) -> torch.Tensor:
    """Index of each pixel's nearest palette colour, or -1 when the pixel is explained by none.

    A pixel is explained when it lies within `tolerance` of a blend (1 − λ) a + λ b of its nearest
    colour a with any other colour b: anti-aliased edges are such blends, and the nearest colour
    is the side of the edge the pixel is on. Pixels far from every blend (an unlisted colour)
    stay unassigned.
    """
    labels = []
    for part in pixels.split(chunk):  # bounded memory on large paintings
        nearest = torch.cdist(part, palette).argmin(1)  # [n]
        a = palette[nearest]  # [n, 3]
        ab = palette[None] - a[:, None]  # [n, P, 3]
        lam = (((part - a)[:, None] * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-6)).clamp(0, 1)
        off_blend = (part[:, None] - (a[:, None] + lam[..., None] * ab)).norm(dim=-1).amin(1)  # b = a gives |p − a|
        labels.append(torch.where(off_blend <= tolerance, nearest, -1))
    return torch.cat(labels)


def _blend_distance(point: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Distance from `point` to the blends of a and b, with a little overshoot (Lanczos ringing) past each end."""
    lam = float(((point - a) @ (b - a)) / (b - a).square().sum().clamp_min(1e-6))
    return float((point - (a + min(max(lam, -0.25), 1.25) * (b - a))).norm())


def extract_palette(image, max_colors: int = 8, min_share: float = 0.0002, tolerance: float = 40.0):
    """The dominant stroke colours of a painting, most common first: a list of `("#rrggbb", share)`.

    Colours are the modes of a colour histogram covering at least `min_share` of the pixels (and
    4 pixels); a mode's own noise and ringing (within `_SAME_COLOR` levels) is absorbed into it,
    and small modes that are blends of two colours already found are skipped as anti-aliasing
    fringe. `share` is the fraction of the painting's pixels assigned to the colour by
    `region_masks`' rule (so shares sum to at most 1).
    """
    if isinstance(max_colors, bool) or not isinstance(max_colors, numbers.Integral) or max_colors < 1:
        raise ValueError(f"max_colors must be an integer >= 1, got {max_colors!r}")
    pixels = _pixels(image).reshape(-1, 3)
    levels = 256 // _CELL
    cells = (pixels // _CELL).long()
    keys = (cells[:, 0] * levels + cells[:, 1]) * levels + cells[:, 2]
    counts = torch.bincount(keys, minlength=levels**3).float()
    grid = torch.arange(levels, dtype=torch.float32) * _CELL + _CELL / 2
    centres = torch.cartesian_prod(grid, grid, grid)  # same order as `keys`
    colors: list[torch.Tensor] = []
    for _ in range(8 * max_colors + 16):  # each round empties at least one cell
        key = int(counts.argmax())
        if len(colors) == max_colors or counts[key] < max(min_share * len(pixels), 4):
            break
        mode = pixels[keys == key].median(0).values
        near = pixels[(pixels - mode).norm(dim=1) <= _SAME_COLOR / 2]
        color = near.median(0).values
        counts[(centres - color).norm(dim=1) <= _SAME_COLOR] = 0
        counts[key] = 0
        if any((color - c).norm() <= _SAME_COLOR for c in colors):
            continue  # ringing around a colour already found
        is_blend = any(_blend_distance(color, a, b) <= _SAME_COLOR / 2
                       for i, a in enumerate(colors) for b in colors[i + 1:])
        if not (is_blend and len(near) < _FRINGE_SHARE * len(pixels)):
            colors.append(color)
    palette = torch.stack(colors)
    labels = _assign(pixels, palette, tolerance)
    shares = torch.bincount(labels[labels >= 0], minlength=len(palette)).float() / len(pixels)
    order = shares.argsort(descending=True, stable=True)
    return [(to_hex(palette[i]), float(shares[i])) for i in order]


def region_masks(image, colors, tolerance: float = 40.0) -> torch.Tensor:
    """Boolean masks `[len(colors), H, W]`: the pixels of `image` that belong to each listed colour.

    Each pixel goes to its nearest colour among the listed ones *and* the painting's other stroke
    colours (so an unlisted stroke keeps its own pixels); anti-aliased edge pixels go to the nearer
    side. Pixels within `tolerance` (0..255, Euclidean) of no colour or blend stay unassigned;
    a stroke colour within `tolerance` of a listed colour counts as that colour.
    """
    colors = [colors] if isinstance(colors, str) else list(colors)
    listed = torch.tensor([parse_color(c, f"colors[{i}]") for i, c in enumerate(colors)], dtype=torch.float32)
    if not math.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(f"tolerance must be a positive number of 0..255 levels (40 is usual), got {tolerance}")
    rgb = _pixels(image)
    height, width, _ = rgb.shape
    found = torch.tensor([parse_color(c) for c, _ in extract_palette(rgb.numpy().astype(np.uint8), 16)],
                         dtype=torch.float32)
    others = found[torch.cdist(found, listed).min(1).values > tolerance] if len(listed) else found
    labels = _assign(rgb.reshape(-1, 3), torch.cat([listed, others]), tolerance).view(height, width)
    return torch.stack([labels == k for k in range(len(listed))]) if len(listed) else labels[None, :0]
