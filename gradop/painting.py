"""Painting functions f: realistic image -> coarse painting, in [0, 1] pixel space.

GradOP measures faithfulness in "painting space": MSE(f(x), y). Any differentiable map from
[B, 3, H, W] to [B, 3, H, W] works; two come built in:

* ``"gaussian"`` — the released choice, a normalised Gaussian blur with reflect border (kernel 35x35, sigma 7
  on 512x512 images), scaled to the image: σ = 7·side/512 on the shorter side (`GaussianBlur.for_size`).
* ``"median_palette"`` — closer to the paper's description: a median filter, then a *soft*
  quantisation to the painting's own dominant colours (a softmax over colour distances, so
  gradients flow to every pixel).
"""
from __future__ import annotations

import math
from typing import Callable

import kornia
import torch

from .checks import PAINTING_FUNCTIONS, check_painting_function, check_sigma_fraction  # noqa: F401 (names, re-exported)
from .colors import extract_palette, parse_color

PaintingFunction = Callable[[torch.Tensor], torch.Tensor]
RELEASED_SIGMA_FRACTION = 7 / 512  # the release: sigma 7 on Stable Diffusion v1's 512x512 images (1.4 % of the side)


class GaussianBlur:
    """Normalised Gaussian blur with reflect padding; the defaults are the release's fixed kernel 35, sigma 7.

    Reflect padding needs the kernel radius below the image side, so on images smaller than
    the kernel the kernel shrinks to the largest odd size that fits (sigma unchanged).
    `"gaussian"` scales it to the image instead: see `for_size`.
    """

    def __init__(self, kernel_size: int = 35, sigma: float = 7.0):
        self.kernel_size, self.sigma = kernel_size, float(sigma)

    @classmethod
    def for_size(cls, height: int, width: int, sigma_fraction: float | None = None) -> "GaussianBlur":
        """The release's blur at the scale of a `height` x `width` image, with s its shorter side:

            σ = sigma_fraction · s   (default 7/512: σ = 7·s/512)
            kernel = the odd integer nearest 5σ, at least 3   (35 at σ = 7)

        so 512x512 (and any image whose shorter side is 512) gets exactly the release's kernel 35, σ 7, and
        64x64 gets kernel 5, σ 0.875: the same blur relative to the image, not 8x coarser.
        """
        sigma = _sigma_fraction(sigma_fraction) * min(height, width)
        return cls(max(3, 2 * math.floor(5 * sigma / 2) + 1), sigma)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        fits = 2 * min(images.shape[-2:]) - 1
        size = min(self.kernel_size, fits if fits % 2 else fits - 1)
        return kornia.filters.gaussian_blur2d(images, (size, size), (self.sigma, self.sigma), border_type="reflect")

    def __repr__(self):
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma})"


class ScaledGaussianBlur:
    """`GaussianBlur.for_size` of each input's own size, for callers that do not know the size beforehand."""

    def __init__(self, sigma_fraction: float | None = None):
        self.sigma_fraction = _sigma_fraction(sigma_fraction)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return GaussianBlur.for_size(*images.shape[-2:], self.sigma_fraction)(images)

    def __repr__(self):
        return f"ScaledGaussianBlur(sigma_fraction={self.sigma_fraction:.6g})"


def _sigma_fraction(value) -> float:
    """σ as a fraction of the shorter side: the release's 7/512 for None, else `value`, checked."""
    return RELEASED_SIGMA_FRACTION if value is None else check_sigma_fraction(value, "sigma_fraction")


class MedianPalette:
    """Median filter, then soft quantisation to `palette` ([B, K, 3] or [K, 3], values in [0, 1]).

    out = sum_k softmax_k(-|x - c_k|^2 / temperature) c_k
    """

    def __init__(self, palette: torch.Tensor, kernel_size: int = 7, temperature: float = 0.01):
        self.palette, self.kernel_size, self.temperature = palette, kernel_size, temperature

    @classmethod
    def from_paintings(cls, paintings: torch.Tensor, max_colors: int = 8, **kwargs) -> "MedianPalette":
        """Use each painting's own dominant colours as its palette."""
        return cls(torch.stack([dominant_colors(p, max_colors)[0] for p in paintings]), **kwargs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = min(self.kernel_size, min(images.shape[-2:]) | 1)
        smooth = kornia.filters.median_blur(images, (size, size)) if size > 1 else images
        palette = self.palette.to(images)
        palette = palette.expand(images.shape[0], -1, -1) if palette.ndim == 2 else palette
        pixels = smooth.flatten(2).transpose(1, 2)  # [B, HW, 3]
        weights = torch.softmax(-torch.cdist(pixels, palette).square() / self.temperature, dim=-1)
        return (weights @ palette).transpose(1, 2).reshape(images.shape)


def dominant_colors(painting: torch.Tensor, max_colors: int = 8):
    """The `max_colors` dominant stroke colours of a [3, H, W] painting in [0, 1], and their pixel shares.

    See `gradop.colors.extract_palette` (anti-aliasing fringe is not a colour). Fewer colours are
    padded by repeating the first, so the palettes of a batch stack.
    """
    palette = extract_palette(painting.detach().float().cpu().clamp(0, 1), max_colors)
    colors = torch.tensor([parse_color(c) for c, _ in palette], dtype=torch.float32) / 255
    shares = torch.tensor([share for _, share in palette])
    if len(colors) < max_colors:
        colors = torch.cat([colors, colors[:1].expand(max_colors - len(colors), -1)])
    return colors.to(painting.device), shares


def get_painting_function(spec, paintings: torch.Tensor | None = None,
                          sigma_fraction: float | None = None) -> PaintingFunction:
    """Resolve a painting-function name or callable; a callable (e.g. the release's fixed `GaussianBlur(35, 7)`)
    is used as it is.

    `paintings` ([B,3,H,W] in [0,1]) sets the size of `"gaussian"`, `GaussianBlur.for_size(H, W, sigma_fraction)`
    (without them, the blur scales to each input), and seeds `"median_palette"`'s palette. `sigma_fraction`
    (σ / shorter side; None = the release's 7/512) applies to `"gaussian"` only.
    """
    if callable(check_painting_function(spec)):
        return spec
    if spec == "gaussian":
        if paintings is None:
            return ScaledGaussianBlur(sigma_fraction)
        return GaussianBlur.for_size(*paintings.shape[-2:], sigma_fraction)
    if paintings is None:  # "median_palette"
        raise ValueError("painting_function='median_palette' needs the target painting to take its palette from")
    return MedianPalette.from_paintings(paintings)
