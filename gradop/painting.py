"""Painting functions f: realistic image -> coarse painting, in [0, 1] pixel space.

GradOP measures faithfulness in "painting space": MSE(f(x), y). Any differentiable map from
[B, 3, H, W] to [B, 3, H, W] works; two come built in:

* ``"gaussian"`` — the released choice: a 35x35 Gaussian blur, sigma 7, reflect border.
* ``"median_palette"`` — closer to the paper's description: a median filter, then a *soft*
  quantisation to the painting's own dominant colours (a softmax over colour distances, so
  gradients flow to every pixel).
"""
from __future__ import annotations

from typing import Callable

import kornia
import torch

from .regions import extract_palette, parse_color

PaintingFunction = Callable[[torch.Tensor], torch.Tensor]


class GaussianBlur:
    """Normalised Gaussian blur with reflect padding, as released (kernel 35, sigma 7).

    Reflect padding needs the kernel radius below the image side, so on images smaller than
    the kernel the kernel shrinks to the largest odd size that fits (sigma unchanged).
    """

    def __init__(self, kernel_size: int = 35, sigma: float = 7.0):
        self.kernel_size, self.sigma = kernel_size, float(sigma)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        fits = 2 * min(images.shape[-2:]) - 1
        size = min(self.kernel_size, fits if fits % 2 else fits - 1)
        return kornia.filters.gaussian_blur2d(images, (size, size), (self.sigma, self.sigma), border_type="reflect")

    def __repr__(self):
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma})"


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

    See `gradop.regions.extract_palette` (anti-aliasing fringe is not a colour). Fewer colours are
    padded by repeating the first, so the palettes of a batch stack.
    """
    palette = extract_palette(painting.detach().float().cpu().clamp(0, 1), max_colors)
    colors = torch.tensor([parse_color(c) for c, _ in palette], dtype=torch.float32) / 255
    shares = torch.tensor([share for _, share in palette])
    if len(colors) < max_colors:
        colors = torch.cat([colors, colors[:1].expand(max_colors - len(colors), -1)])
    return colors.to(painting.device), shares


PAINTING_FUNCTIONS = ("gaussian", "median_palette")


def get_painting_function(spec, paintings: torch.Tensor | None = None) -> PaintingFunction:
    """Resolve a painting-function name or callable. `paintings` ([B,3,H,W] in [0,1]) seeds a palette."""
    from .checks import check_painting_function

    if callable(check_painting_function(spec)):
        return spec
    if spec == "gaussian":
        return GaussianBlur()
    if paintings is None:  # "median_palette"
        raise ValueError("painting_function='median_palette' needs the target painting to take its palette from")
    return MedianPalette.from_paintings(paintings)
