"""GradOP+ for any diffusers text-to-image pipeline, as a `callback_on_step_end` (method.md §3).

GradOP+ needs three things from a sampler: a decoder, a way to put a clean latent back at noise level t, and a
loop whose latents can be replaced between steps. diffusers' `callback_on_step_end` gives the third to every
text-to-image pipeline, so GradOP+ plugs into an unmodified `StableDiffusionPipeline`,
`StableDiffusionXLPipeline`, `StableDiffusion3Pipeline` or `FluxPipeline`:

    cb = PaintingCallback(painting, strength=0.8, num_iterative_steps=3, grad_steps_per_iter=12, generator=g)
    image = pipe(prompt, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=cb.tensor_inputs).images[0]
    cb.loss_history, cb.optimized_timesteps

After denoising step i of n, with k0 = int(n (1 − strength)) and k0 ≤ i < k0 + K (and i < n − 1), the latent
z_{t_{i+1}} is pulled toward the painting and re-noised as if clean (`PaintingGuide.step`):

    z̃ = argmin_z MSE(f(D(z)), y)   (N Adam steps from z_{t_{i+1}}),   z_{t_{i+1}} = √ᾱ z̃ + √(1 − ᾱ) ε'

and on flow-matching samplers (SD3, FLUX) at the sampler's level σ_{i+1}: z_{σ_{i+1}} = (1 − σ_{i+1}) z̃ + σ_{i+1} ε'
(`gradop.noise_schedule.FlowMatchSchedule`). FLUX's packed latents are unpacked for the decoder (`LatentLayout`).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from diffusers.callbacks import PipelineCallback
from diffusers.image_processor import VaeImageProcessor

from . import checks
from .images import load_image
from .noise_schedule import NoiseSchedule
from .optimize import PaintingGuide, check_painting_decoder
from .painting import get_painting_function
from .schedulers import check_restartable, restart_history, settle_restart

X0_INPUT = "pred_original_sample"  # the tensor a pipeline passes for optimize_target="x0" (GradOPPipeline does)


@dataclass
class _Run:
    """One pipeline run as the callback sees it: its timesteps, the window, and the guide."""

    timesteps: torch.Tensor
    window: range
    schedule: NoiseSchedule
    guide: PaintingGuide
    layout: "LatentLayout"
    restarted: bool = False  # the last step's sample was replaced: the scheduler's history was restarted


class PaintingCallback(PipelineCallback):
    r"""
    GradOP+ as a diffusers [`~diffusers.callbacks.PipelineCallback`]: pass it as `callback_on_step_end=` with
    `callback_on_step_end_tensor_inputs=cb.tensor_inputs`; it composes with diffusers' own callbacks through
    [`~diffusers.callbacks.MultiPipelineCallbacks`]. With `num_iterative_steps=0` it changes nothing.

    Args:
        painting (path, `PIL.Image.Image`, array, tensor, or a list of them): the stroke painting `y`, one for the
            whole batch or one per image (or per prompt). It is resized (Lanczos) to the size of the pipeline's
            images, which it reads from the latents; its aspect ratio must match theirs. A `[B, 3, H, W]` tensor in
            [0, 1] at the output size is used as it is.
        strength (`float`, *optional*, defaults to 0.8): *when* the optimisation starts: after step
            `k0 = int(n * (1 - strength))` of the pipeline's `n` (0.8 of 50 gives 9, as released).
        num_iterative_steps (`int`, *optional*, defaults to 3): K, how many consecutive steps are optimised.
        grad_steps_per_iter (`int`, *optional*, defaults to 12): N, optimiser steps each time.
        lr (`float`, *optional*, defaults to 0.1): the optimiser's learning rate.
        painting_function (`str` or callable, *optional*, defaults to `"gaussian"`): f (see
            [`~gradop.GradOPPipeline.gradop_plus`]); `"gaussian"` is the release's blur at the image's scale, or at the
            pipeline's `config.painting_sigma_fraction` when it declares one.
        painting_decoder (*optional*): the decoder the loss differentiates through (e.g. an `AutoencoderTiny`);
            defaults to `pipeline.vae`.
        generator (`torch.Generator` or a list, one per image, *optional*): draws the fresh noise of each re-noising.
            Pass the pipeline's own generator to draw in the release's order (start noise, then one per window).
        optimizer, blur_target, freeze_decoder: as in [`~gradop.GradOPPipeline.gradop_plus`].
        optimize_target (`"noisy"` or `"x0"`, *optional*, defaults to `"noisy"`): `"x0"` needs a pipeline that passes
            its prediction x̂₀ to callbacks (`GradOPPipeline`); diffusers' pipelines do not.
        painting_sigma_fraction (`float`, *optional*): the blur's σ as a fraction of the shorter side, instead of the
            pipeline's.
        size (`(height, width)`, *optional*): the pipeline call's image size. Needed for FLUX, whose packed latents
            do not carry their shape (give the `height` and `width` you pass the pipeline); read from the latents
            otherwise.

    Attributes:
        loss_history (`list[torch.Tensor]`): after a run, one `[grad_steps, batch]` tensor per window.
        optimized_timesteps (`list[int]`): after a run, the level t_{i+1} of the latent each window optimised.
    """

    def __init__(self, painting, strength: float = 0.8, num_iterative_steps: int = 3, grad_steps_per_iter: int = 12,
                 lr: float = 0.1, painting_function="gaussian", painting_decoder=None, generator=None, *,
                 optimizer="adam", blur_target: bool = False, optimize_target: str = "noisy",
                 freeze_decoder: bool = True, painting_sigma_fraction: float | None = None,
                 size: tuple[int, int] | None = None):
        super().__init__()  # the base's cutoff settings are not used
        self.strength = checks.check_fraction(strength, "strength")
        self.num_iterative_steps = checks.check_count(num_iterative_steps, "num_iterative_steps")
        self.grad_steps_per_iter = checks.check_count(grad_steps_per_iter, "grad_steps_per_iter")
        self.lr = checks.check_positive(lr, "lr")
        self.painting_function = checks.check_painting_function(painting_function)
        self.optimizer = checks.check_optimizer(optimizer)
        self.blur_target = checks.check_bool(blur_target, "blur_target")
        self.optimize_target = checks.check_optimize_target(optimize_target)
        self.freeze_decoder = checks.check_bool(freeze_decoder, "freeze_decoder")
        self.painting_sigma_fraction = None if painting_sigma_fraction is None else \
            checks.check_sigma_fraction(painting_sigma_fraction)
        checks.check_generator(generator, len(generator) if isinstance(generator, list) else 1)
        if isinstance(generator, list) and not generator:
            raise ValueError("generator must not be an empty list: give one generator, or one per image")
        if painting_decoder is not None and not callable(getattr(painting_decoder, "decode", None)):
            raise TypeError("painting_decoder must be a diffusers autoencoder (AutoencoderTiny, AutoencoderKL), got "
                            f"{type(painting_decoder).__name__}")
        if size is not None:
            if not (isinstance(size, (tuple, list)) and len(size) == 2):
                raise TypeError(f"size must be (height, width) in pixels, got {size!r}")
            size = tuple(checks.check_count(side, name, 1) for side, name in zip(size, ("size[0]", "size[1]")))
        self.painting_decoder, self.generator, self.size = painting_decoder, generator, size
        self.paintings = _paintings(painting)
        self.loss_history: list[torch.Tensor] = []
        self.optimized_timesteps: list[int] = []
        self._run: _Run | None = None

    @property
    def tensor_inputs(self) -> list[str]:
        return ["latents", X0_INPUT] if self.optimize_target == "x0" else ["latents"]

    def window(self, num_steps: int) -> range:
        """The steps after which the latent is optimised (`optimisation_window`)."""
        return optimisation_window(num_steps, self.strength, self.num_iterative_steps)

    # ------------------------------------------------------------------ checks
    def check_pipeline(self, pipeline, method: str = "__call__") -> None:
        """Raise a clear `TypeError`/`ValueError` if `pipeline` cannot run this callback: its `method` must take
        `callback_on_step_end`, it must pass `latents` (and x̂₀ for `optimize_target="x0"`) to callbacks, have a VAE
        (or this callback a painting decoder), and a one-evaluation variance-preserving scheduler."""
        name = type(pipeline).__name__
        entry = getattr(type(pipeline), method, None)
        if not callable(entry) or "callback_on_step_end" not in inspect.signature(entry).parameters:
            raise TypeError(f"{name} takes no callback_on_step_end: PaintingCallback needs a diffusers pipeline that "
                            "does (StableDiffusionPipeline, StableDiffusionXLPipeline, ...)")
        offered = list(getattr(pipeline, "_callback_tensor_inputs", []))
        missing = [k for k in self.tensor_inputs if k not in offered]
        if X0_INPUT in missing:
            raise ValueError(f"optimize_target='x0' needs the model's prediction x̂₀, which {name} does not pass to "
                             "callbacks; use optimize_target='noisy' (as released), or gradop.GradOPPipeline "
                             "(Stable Diffusion 1.x/2.x)")
        if missing:
            raise ValueError(f"{name} does not pass {missing} to callbacks (it offers {offered})")
        if self.painting_decoder is None and getattr(pipeline, "vae", None) is None:
            raise ValueError(f"{name} has no vae to decode latents for the painting loss: load it with its VAE, or "
                             "pass painting_decoder= (e.g. an AutoencoderTiny for its latents)")
        scheduler = getattr(pipeline, "scheduler", None)
        NoiseSchedule.of(scheduler)
        check_restartable(scheduler)
        if getattr(scheduler, "order", 1) != 1:
            raise ValueError(f"{type(scheduler).__name__} takes {scheduler.order} model evaluations per step; GradOP+ "
                             "needs a one-evaluation scheduler: DDIM, PNDM, DPM-Solver, Euler, UniPC, ...")

    # ------------------------------------------------------------------ the callback
    def callback_fn(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if step_index == 0 or self._run is None:
            self._run = self._start(pipeline, callback_kwargs["latents"], timestep)
        run = self._run
        last = step_index + 1 >= len(run.timesteps)
        if last:
            self._run = None  # the run is over: let go of its target, decoder and guide
        if run.restarted:
            settle_restart(pipeline.scheduler)
            run.restarted = False
        if step_index not in run.window or last:
            return callback_kwargs  # the release never optimises after the last step
        x0 = callback_kwargs.get(X0_INPUT) if run.guide.wants_x0 else None
        latents = run.layout.pack(run.guide.step(run.schedule, run.layout.unpack(callback_kwargs["latents"]),
                                                 run.timesteps[step_index + 1], self.generator,
                                                 None if x0 is None else run.layout.unpack(x0)))
        restart_history(pipeline.scheduler)  # its memory of earlier steps belongs to the replaced sample
        run.restarted = True
        return {**callback_kwargs, "latents": latents}

    def _start(self, pipeline, latents: torch.Tensor, first_timestep) -> _Run:
        """A new run: checks, the run's timesteps and window, the target at the latents' size, f and the decoder."""
        self.check_pipeline(pipeline, "gradop_plus" if hasattr(type(pipeline), "gradop_plus") else "__call__")
        self.loss_history, self.optimized_timesteps = [], []
        timesteps = run_timesteps(pipeline, first_timestep)
        window = self.window(len(timesteps))
        check_window(window, len(timesteps))
        check_restartable(pipeline.scheduler, window)
        checks.check_generator(self.generator, len(latents))  # a list must hold one per image of the run
        factor = pipeline.vae_scale_factor
        layout = LatentLayout.of(latents, self.paintings, self.size, factor)
        latents = layout.unpack(latents)
        size = (latents.shape[-2] * factor, latents.shape[-1] * factor)
        target = self._target(size, len(latents), factor).to(latents.device)
        decoder = self.painting_decoder if self.painting_decoder is not None else pipeline.vae
        if decoder is not getattr(pipeline, "vae", None):
            check_painting_decoder(decoder, tuple(latents.shape[1:]), size)
        sigma_fraction = self.painting_sigma_fraction
        if sigma_fraction is None:
            sigma_fraction = getattr(pipeline, "config", {}).get("painting_sigma_fraction")
        guide = PaintingGuide(
            target=target, decoder=decoder,
            painting_function=get_painting_function(self.painting_function, target, sigma_fraction),
            grad_steps=self.grad_steps_per_iter, lr=self.lr, optimizer=self.optimizer, blur_target=self.blur_target,
            optimize_target=self.optimize_target, freeze_decoder=self.freeze_decoder,
            loss_history=self.loss_history, optimized_timesteps=self.optimized_timesteps)
        return _Run(timesteps, window, NoiseSchedule.of(pipeline.scheduler), guide, layout)

    def _target(self, size: tuple[int, int], batch: int, factor: int) -> torch.Tensor:
        """y, `[batch, 3, H, W]` in [0, 1] at the pipeline's image size."""
        paintings = self.paintings
        count = len(paintings)
        if batch % count:
            raise ValueError(f"painting has {count} images but the pipeline makes {batch}; give one painting for all "
                             "images, or one per image (or per prompt)")
        if isinstance(paintings, torch.Tensor):
            if tuple(paintings.shape[-2:]) != size:
                raise ValueError(f"painting tensor is {tuple(paintings.shape[-2:])} but the pipeline makes {size} images")
            return paintings.float().repeat_interleave(batch // count, dim=0)
        height, width = size
        for i, painting in enumerate(paintings):
            # the pipeline's size is the painting's, each side rounded to the VAE factor: allow that much, and 2 %
            slack = 0.02 + factor / min(height, width)
            if abs(math.log(painting.width / painting.height) - math.log(width / height)) > slack:
                name = "painting" if count == 1 else f"painting[{i}]"
                raise ValueError(f"{name} is {painting.width}x{painting.height} but the pipeline makes {width}x{height} "
                                 "images, another aspect ratio: pass the pipeline height= and width= in the painting's "
                                 "aspect ratio, or crop the painting")
        processed = VaeImageProcessor(vae_scale_factor=factor).preprocess(list(paintings), height=height, width=width)
        return ((processed + 1) / 2).repeat_interleave(batch // count, dim=0)


@dataclass(frozen=True)
class LatentLayout:
    """How a pipeline holds its latents: as the decoder takes them, `[B, C, h, w]`, or packed in 2x2 patches as FLUX
    holds them, `[B, (h/2)(w/2), 4C]` (`grid` is then (h, w), which the latents do not carry: the call's size gives it). The painting loss and the re-noising work on the
    decoder's layout; the callback hands the pipeline back its own."""

    grid: tuple[int, int] | None = None

    @classmethod
    def of(cls, latents: torch.Tensor, paintings, size: tuple[int, int] | None = None, factor: int = 8) -> "LatentLayout":
        """The layout of a run's `latents`; packed ones take their (h, w) from `size` (pixels), else from a painting
        tensor, which is at the output size."""
        if latents.ndim == 4:
            return cls()
        if latents.ndim != 3 or latents.shape[-1] % 4:
            raise ValueError(f"latents of shape {tuple(latents.shape)} are neither [B, C, h, w] nor FLUX's packed "
                             "[B, patches, 4C]: PaintingCallback cannot decode them")
        if size is None and isinstance(paintings, torch.Tensor):
            size = tuple(paintings.shape[-2:])
        if size is None:
            raise ValueError("this pipeline's latents are packed (FLUX) and do not carry their shape: pass "
                             "PaintingCallback(..., size=(height, width)), the height and width of the pipeline call")
        grid = (size[0] // factor, size[1] // factor)
        if grid[0] % 2 or grid[1] % 2 or (grid[0] // 2) * (grid[1] // 2) != latents.shape[1]:
            raise ValueError(f"size {tuple(size)} does not match the pipeline's {latents.shape[1]} packed latent "
                             "patches: pass the height and width of the pipeline call (multiples of 16)")
        return cls(grid)

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, (h/2)(w/2), 4C] -> [B, C, h, w]: patch (i, j)'s channels c·4 + 2a + b are latent pixel (2i+a, 2j+b)."""
        if self.grid is None:
            return latents
        (h, w), batch = self.grid, latents.shape[0]
        patches = latents.reshape(batch, h // 2, w // 2, -1, 2, 2)  # [B, i, j, c, a, b]
        return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, -1, h, w)  # [B, c, (i, a), (j, b)]

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `unpack`."""
        if self.grid is None:
            return latents
        (h, w), batch, channels = self.grid, latents.shape[0], latents.shape[1]
        patches = latents.reshape(batch, channels, h // 2, 2, w // 2, 2)  # [B, c, i, a, j, b]
        return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (h // 2) * (w // 2), channels * 4)


def _paintings(painting):
    """The painting(s) as a list of RGB PIL images, or as a `[B, 3, H, W]` float tensor in [0, 1] (used as it is)."""
    if isinstance(painting, torch.Tensor) and painting.ndim == 4 and painting.shape[1] == 3 \
            and painting.is_floating_point():
        if not (torch.isfinite(painting).all() and painting.min() >= 0 and painting.max() <= 1):
            raise ValueError("painting: a [B, 3, H, W] tensor must hold finite values in [0, 1]")
        return painting.detach()
    images = list(painting) if isinstance(painting, (list, tuple)) else [painting]
    if not images:
        raise ValueError("painting must not be an empty list")
    names = ["painting"] if len(images) == 1 else [f"painting[{i}]" for i in range(len(images))]
    return [load_image(image, name) for image, name in zip(images, names)]


def optimisation_window(num_steps: int, strength: float, num_iterative_steps: int) -> range:
    """The steps after which GradOP+ optimises: k0 = int(n (1 − strength)) (float truncation, as released: 50 steps
    at 0.8 give 9), then K in a row."""
    first = int(num_steps * (1 - strength))
    return range(first, first + num_iterative_steps)


def check_window(window: range, num_steps: int) -> None:
    """The release never optimises after the last step: a window that would reach it is the user's to move."""
    if len(window) and window.stop > num_steps - 1:
        raise ValueError(f"the optimisation window (steps {window.start}..{window.stop - 1}) must end before the "
                         f"last step {num_steps - 1}: raise strength, or lower num_iterative_steps, or add steps")


def run_timesteps(pipeline, first_timestep) -> torch.Tensor:
    """The timesteps this run of `pipeline` steps through: the scheduler's from `first_timestep`, the run's first
    (img2img starts late, and DDIM, PNDM and DDPM keep no begin index), as many as the pipeline says it runs
    (`_num_timesteps`, which SDXL's `denoising_end` shortens)."""
    timesteps = pipeline.scheduler.timesteps
    matches = (timesteps == torch.as_tensor(first_timestep).to(timesteps)).nonzero()
    if not len(matches):
        raise ValueError(f"{type(pipeline).__name__}'s first step is at timestep {float(first_timestep):g}, which is "
                         "not in its scheduler's timesteps: PaintingCallback needs a pipeline whose loop steps "
                         "through scheduler.timesteps")
    start = int(matches[0])
    count = getattr(pipeline, "_num_timesteps", None) or len(timesteps) - start
    return timesteps[start:start + count]
