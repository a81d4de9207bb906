"""Gradient descent on a latent through the decoder: the heart of GradOP (method.md §2–3).

    z* = argmin_z  L(f(D(z)), y),   L = mean squared error in [0, 1] pixel space

starting from a latent the model produced from the text, so that z* moves toward the painting
`y` while staying near a realistic sample. `PaintingGuide` holds one call's optimisation; the
denoising loop calls its `step` after each step of GradOP+'s window, and multi-pass GradOP calls
its `descend` on a finished sample.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint

from .noise_schedule import LatentScaling, NoiseSchedule

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
    from .checks import check_optimizer

    spec = check_optimizer(spec)
    return (OPTIMIZERS[spec] if isinstance(spec, str) else spec)(params, lr=lr)


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
    each image's gradient independent of the batch, so image j of a batch follows the path it
    would follow alone (up to the float rounding of batched arithmetic). A non-finite loss or gradient stops the descent at the last
    finite latent, with a warning.
    """
    z = latents.detach().float().clone().requires_grad_(True)
    goal = painting_function(target.float()) if blur_target else target.float()
    opt = make_optimizer(optimizer, [z], lr)
    history = []
    last_finite = z.detach().clone()  # the latent whose loss and gradient were last finite
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            painted = painting_function(decode(z))
            _check_painted(painted, target)
            per_image = (painted - goal).square().flatten(1).mean(1)  # L(f(D(z)), y) for each image
            per_image.sum().backward()
            if not (torch.isfinite(per_image).all() and torch.isfinite(z.grad).all()):
                warnings.warn("painting loss or its gradient became non-finite; stopping the latent optimisation at "
                              "the last finite latent (lower lr; with float16 models, use float32 or bfloat16)",
                              stacklevel=2)
                return last_finite, _stacked(history, latents)
            history.append(per_image.detach().float().cpu())
            last_finite = z.detach().clone()
            opt.step()
    # the last step's latent is never decoded (N decoder passes, as released); an overflow there shows anyway
    return (z.detach() if torch.isfinite(z).all() else last_finite), _stacked(history, latents)


def _check_painted(painted, images: torch.Tensor) -> None:
    """f(D(z)) must be paintings like its input: a float tensor of the same shape and device, differentiable in it
    ([B, H, W] would broadcast against the target without a word; a detached or integer one stops the gradient)."""
    if not isinstance(painted, torch.Tensor):
        raise TypeError(f"painting_function must return a tensor, got {type(painted).__name__}")
    if painted.shape != images.shape or painted.device != images.device:
        raise ValueError(f"painting_function returned shape {tuple(painted.shape)} on {painted.device} for images of "
                         f"shape {tuple(images.shape)} on {images.device}; it must return paintings of the shape and "
                         "device it is given")
    if not (painted.is_floating_point() and painted.requires_grad):
        raise TypeError(f"painting_function returned a {painted.dtype} tensor"
                        f"{'' if painted.requires_grad else ' without a gradient'}: it must return floating-point "
                        "paintings computed from its input by differentiable operations (no detach, no integer casts)")


def _stacked(history: list, latents: torch.Tensor) -> torch.Tensor:
    return torch.stack(history) if history else torch.zeros(0, latents.shape[0])


# ---------------------------------------------------------------------- the decoder inside the loss
def decode_for_loss(decoder, latents: torch.Tensor) -> torch.Tensor:
    """D(z) in [0, 1] for the painting loss: clamp((D(z / s + shift) + 1) / 2, 0, 1), gradients kept, fp32 out.

    The decoder's own latent scaling (`LatentScaling`: scaling factor and shift). A float16 VAE that declares
    `force_upcast` (SDXL's) must run inside `LatentScaling.of(decoder).decoding(decoder)` for the forward *and*
    backward pass, as `PaintingGuide.descend` does. After diffusers' `decoder.enable_tiling()` it is decoded in tiles
    of the decoder's tile size and overlap, each recomputed in the backward pass (`decode_in_tiles`): memory for
    large images."""
    scaling = LatentScaling.of(decoder)

    def decode(z):
        decoded = decoder.decode(scaling.to_decoder(z).to(decoder.dtype)).sample
        return ((decoded.float() + 1) / 2).clamp(0, 1)

    if getattr(decoder, "use_tiling", False):
        tile = decoder.tile_latent_min_size
        return decode_in_tiles(decode, latents, tile, min(int(tile * decoder.tile_overlap_factor), tile // 2))
    return decode(latents)


_checked_sizes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # decoder -> latent sizes it passed


def check_painting_decoder(decoder, latent_shape: tuple[int, ...], image_size: tuple[int, int]):
    """`decoder` checked to be a diffusers autoencoder that turns latents of `latent_shape` ([C, h, w]) into
    images of `image_size` (one probe decode per decoder and size, remembered)."""
    if not (callable(getattr(decoder, "decode", None)) and hasattr(getattr(decoder, "config", None), "scaling_factor")):
        raise TypeError("painting_decoder must be a diffusers autoencoder (AutoencoderTiny, AutoencoderKL) with "
                        f"decode() and config.scaling_factor, got {type(decoder).__name__}")
    key = (tuple(latent_shape), tuple(image_size))
    if key in _checked_sizes.get(decoder, ()):
        return decoder
    channels = getattr(decoder.config, "latent_channels", None)
    if channels is not None and channels != latent_shape[0]:
        raise ValueError(f"painting_decoder takes latents of {channels} channels, but this pipeline's have "
                         f"{latent_shape[0]}: use a decoder made for this model's latents")
    latent = torch.zeros(1, *latent_shape, device=decoder.device, dtype=decoder.dtype)
    with torch.no_grad():
        size = tuple(decoder.decode(latent).sample.shape[-2:])
    if size != tuple(image_size):
        factor = image_size[0] // latent_shape[-2]
        raise ValueError(f"painting_decoder turns this pipeline's {tuple(latent_shape[-2:])} latents into {size} "
                         f"images, not {tuple(image_size)}: it must upsample by {factor} like the VAE")
    _checked_sizes.setdefault(decoder, set()).add(key)
    return decoder


# ---------------------------------------------------------------------- one call's optimisation
@dataclass
class PaintingGuide:
    """Pulls latents toward the painting `y` by gradient descent through a decoder (method.md §2–3).

    Args:
        target (`torch.Tensor`): y, the painting, `[B, 3, H, W]` in [0, 1].
        decoder: the autoencoder the loss differentiates through (the VAE, or a small painting decoder).
        painting_function (`Callable`): f, differentiable, `[B, 3, H, W] -> [B, 3, H, W]` in [0, 1].
        grad_steps (`int`): N, optimiser steps each time.
        lr (`float`), optimizer (name or `torch.optim.Optimizer` class): the optimiser.
        blur_target (`bool`): compare f(D(z)) with f(y) instead of y (the release uses y).
        optimize_target (`"noisy"` or `"x0"`): what GradOP+ optimises, the current noisy latent (as released)
            or the predicted clean one.
        freeze_decoder (`bool`): keep gradients out of the decoder's weights (the release lets them accumulate:
            same images, more time and memory).
    """

    target: torch.Tensor
    decoder: torch.nn.Module
    painting_function: Callable
    grad_steps: int
    lr: float = 0.1
    optimizer: object = "adam"
    blur_target: bool = False
    optimize_target: str = "noisy"
    freeze_decoder: bool = True
    loss_history: list = field(default_factory=list)  # one [grad_steps, B] tensor per descent
    optimized_timesteps: list = field(default_factory=list)  # GradOP+: the level t_{i+1} of each window

    @property
    def wants_x0(self) -> bool:
        return self.optimize_target == "x0"

    def descend(self, start: torch.Tensor) -> torch.Tensor:
        """z̃ = argmin_z MSE(f(D(z)), y) by `grad_steps` optimiser steps from `start` (fp32)."""
        # a float16 VAE that must decode in float32 (SDXL's) is upcast once for the whole descent, not per step
        with frozen(self.decoder) if self.freeze_decoder else contextlib.nullcontext(), \
                LatentScaling.of(self.decoder).decoding(self.decoder):
            optimized, losses = optimize_latents(start, self.target, lambda z: decode_for_loss(self.decoder, z),
                                                 self.painting_function, self.grad_steps, self.lr, self.optimizer,
                                                 self.blur_target)
        if not self.freeze_decoder:  # the release's weight gradients change nothing; don't leave them on the model
            self.decoder.zero_grad(set_to_none=True)
        self.loss_history.append(losses)
        return optimized

    def step(self, schedule: NoiseSchedule, latents: torch.Tensor, t_next, generator, x0: torch.Tensor | None = None):
        """GradOP+ after denoising step i (latents at t_{i+1}): optimise, then re-noise *as if clean*.

            z̃ = argmin_z MSE(f(D(z)), y)                 from z_{t_{i+1}} (as released) or from x̂₀
            z_{t_{i+1}} = √ᾱ_{t_{i+1}} z̃ + √(1 − ᾱ_{t_{i+1}}) ε',   ε' ~ N(0, I) from the caller's generator

        The release treats the optimised noisy latent as a clean one: at t = 761 the new latent keeps
        √ᾱ ≈ 0.23 of z̃ and adds fresh noise of std ≈ 0.97.
        """
        # the decoder expects variance-preserving latents (the Euler family's samples are scaled up)
        start = x0 if self.wants_x0 else schedule.decoder_latent(latents, t_next)
        optimized = self.descend(start)
        self.optimized_timesteps.append(int(t_next))
        noise = randn_tensor(optimized.shape, generator=generator, device=optimized.device, dtype=torch.float32)
        return schedule.noise_to(optimized, noise, t_next).to(latents.dtype)
