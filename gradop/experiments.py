"""Helpers for experiments that the notebooks and the toy world's evaluation (`gradop.toy.evaluate`) share:
timing a call, and the image after every loop of loopback from a single call.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .noise_schedule import decode_latents


def timed(fn, repeats: int = 3, warmup: bool = True):
    """(median seconds of `repeats` runs after one warm-up run, the last result).

    `warmup=False` skips the warm-up: for long runs on a model that earlier calls have already warmed, where
    a warm-up would double the cost."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a whole number >= 1, got {repeats!r}")
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def loopback_every_loop(pipe, prompts, images, num_loops: int, strength: float = 0.6, generator=None,
                        num_inference_steps: int = 50, **kwargs) -> list[torch.Tensor]:
    """The images after each of `num_loops` loops of `pipe.loopback`, from one call: [B, 3, H, W] in [0, 1] per loop.

    Loop k of the call is exactly `pipe.loopback(..., num_loops=k)` (the same generator draws in the same order),
    so a curve over the loops costs one call with the most loops instead of one call per point."""
    ends = []

    def keep(pipe_, i, t, tensors):  # each loop ends at the schedule's last timestep: its latents are that loop's result
        if t == pipe_.scheduler.timesteps[-1]:
            ends.append(tensors["latents"])
        return tensors

    pipe.loopback(prompts, images, strength=strength, num_loops=num_loops, generator=generator, output_type="latent",
                  num_inference_steps=num_inference_steps, callback_on_step_end=keep, **kwargs)
    with torch.no_grad():  # decoded and post-processed as the pipeline's own output_type="pt"
        return [pipe.image_processor.postprocess(decode_latents(pipe.vae, z).float(), output_type="pt").cpu()
                for z in ends]
