"""Gradient descent on a latent through the VAE decoder: the heart of GradOP.

    z* = argmin_z  L(f(D(z)), y),   L = mean squared error in [0, 1] pixel space

starting from a latent the model produced from the text, so that z* moves toward the painting
`y` while staying near a realistic sample.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Stop gradients reaching `module`'s weights: backward then only computes what the latent needs."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def decode_in_tiles(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, tile: int,
                    overlap: int) -> torch.Tensor:
    """`decode(latents)` put together from overlapping `tile`-sized latent tiles, for large images.

    Each tile is decoded under activation checkpointing, so backward recomputes one tile at a time: memory
    holds one tile's activations instead of the whole image's. Tiles are blended with linear ramps across
    the overlap, normalised by the summed weights (so a pixel only one tile covers is that tile's):
        D̃(z) = Σ_i w_i · D(z_i) / Σ_i w_i
    The decoder sees each tile alone, so the result is close to, not equal to, `decode(latents)`.
    """
    height, width = latents.shape[-2:]
    if height <= tile and width <= tile:
        return decode(latents)
    tiles = []
    for top in _tile_starts(height, tile, overlap):
        for left in _tile_starts(width, tile, overlap):
            part = latents[..., top:top + tile, left:left + tile]
            tiles.append((top, left, checkpoint(decode, part, use_reentrant=False)))
    first = tiles[0][2]
    scale = first.shape[-1] // min(tile, width)  # the decoder's upsampling
    image = first.new_zeros(*first.shape[:-2], height * scale, width * scale)
    total = first.new_zeros(height * scale, width * scale)
    for top, left, decoded in tiles:
        h, w = decoded.shape[-2:]
        weight = _ramp(h, overlap * scale, image)[:, None] * _ramp(w, overlap * scale, image)
        rows, cols = slice(top * scale, top * scale + h), slice(left * scale, left * scale + w)
        image[..., rows, cols] += weight * decoded
        total[rows, cols] += weight
    return image / total


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets that cover `size` with at least `overlap` shared; the last tile ends at the border."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramp(length: int, overlap: int, like: torch.Tensor) -> torch.Tensor:
    """1 in the middle, falling linearly to ~0 (never 0) over `overlap` pixels at both ends."""
    position = torch.arange(length, device=like.device, dtype=torch.float32) + 0.5
    edge = torch.minimum(position, length - position)
    return (edge / max(overlap, 1)).clamp(max=1).to(like.dtype)


def make_optimizer(spec, params, lr: float) -> torch.optim.Optimizer:
    if isinstance(spec, str):
        if spec not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a torch.optim.Optimizer class, got {spec!r}")
        spec = OPTIMIZERS[spec]
    if not (isinstance(spec, type) and issubclass(spec, torch.optim.Optimizer)):
        raise TypeError(f"optimizer must be a name or a torch.optim.Optimizer class, got {spec!r}")
    return spec(params, lr=lr)


def optimize_latents(
    latents: torch.Tensor,
    target: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    painting_function: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    lr: float = 0.1,
    optimizer="adam",
    blur_target: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise each image's painting loss over its latent; returns (latents, losses[steps, batch]).

    Runs in fp32 whatever the models' dtype (`decode` casts). The summed per-image losses keep
    each image's gradient independent of the batch, so image j of a batch follows exactly the
    path it would follow alone. A non-finite loss or gradient stops the descent at the last
    finite latent, with a warning.
    """
    z = latents.detach().float().clone().requires_grad_(True)
    goal = painting_function(target.float()) if blur_target else target.float()
    opt = make_optimizer(optimizer, [z], lr)
    history = []
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            painted = painting_function(decode(z))
            per_image = (painted - goal).square().flatten(1).mean(1)  # L(f(D(z)), y) for each image
            per_image.sum().backward()
            if not (torch.isfinite(per_image).all() and torch.isfinite(z.grad).all()):
                warnings.warn("painting loss or its gradient became non-finite; stopping the latent "
                              "optimisation early (try float32 or bfloat16 models, or a lower lr)", stacklevel=2)
                break
            history.append(per_image.detach().float().cpu())
            opt.step()
    losses = torch.stack(history) if history else torch.zeros(0, latents.shape[0])
    return z.detach(), losses
