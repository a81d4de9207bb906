"""What GradOP's math needs to know of a sampler's noise and of a decoder's latent space, in one place.

The painting guide, x̂₀ and the region bias read the noise level through `NoiseSchedule`, and the loss and the
final decode read the latent scaling through `LatentScaling`; nothing else reads `alphas_cumprod`, `add_noise`
or `scaling_factor`. Variance-preserving schedulers (DDIM, PNDM, DPM-Solver, UniPC, DDPM, and the Euler family,
whose samples `scale_model_input` maps to variance-preserving ones) share the forward process

    q(z_t | z_0) = N(√ᾱ_t z_0, (1 − ᾱ_t) I),      σ_t = √((1 − ᾱ_t) / ᾱ_t)

Flow-matching schedulers (Stable Diffusion 3, FLUX) interpolate instead (`FlowMatchSchedule`):

    z_σ = (1 − σ) z_0 + σ ε,      the model predicts the velocity v = ε − z_0

`NoiseSchedule.of(scheduler)` gives the one a scheduler follows; both answer the same questions (σ_t for the region
bias, x̂₀, the latent the decoder takes, a clean latent put back at a level).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


class NoiseSchedule:
    """A variance-preserving diffusers scheduler seen as a noise schedule (`NoiseSchedule.of` picks the kind).

    Args:
        scheduler ([`SchedulerMixin`]): a variance-preserving diffusers scheduler (with `alphas_cumprod`).
    """

    def __init__(self, scheduler):
        if not hasattr(scheduler, "alphas_cumprod") or not callable(getattr(scheduler, "add_noise", None)):
            raise ValueError(
                f"{type(scheduler).__name__} is not a variance-preserving scheduler (it has no alphas_cumprod and "
                "add_noise): GradOP supports DDIM, PNDM, DPM-Solver, UniPC, DDPM and Euler schedulers, and "
                "FlowMatchEulerDiscreteScheduler for flow-matching models (Stable Diffusion 3, FLUX)")
        if (scheduler.config.get("use_flow_sigmas") or scheduler.config.get("prediction_type") == "flow_prediction"):
            raise ValueError(f"{type(scheduler).__name__} is set to flow-matching sigmas, which GradOP does not follow "
                             "in a variance-preserving solver: use FlowMatchEulerDiscreteScheduler for flow models")
        self.scheduler = scheduler

    @staticmethod
    def of(scheduler) -> "NoiseSchedule | FlowMatchSchedule":
        """The schedule `scheduler` follows: `FlowMatchSchedule` for flow-matching schedulers (no `alphas_cumprod`,
        a `scale_noise`), else the variance-preserving `NoiseSchedule` (which refuses what it cannot read)."""
        if not hasattr(scheduler, "alphas_cumprod") and callable(getattr(scheduler, "scale_noise", None)):
            return FlowMatchSchedule(scheduler)
        return NoiseSchedule(scheduler)

    def alpha_bar(self, timestep) -> torch.Tensor:
        """ᾱ_t, a float32 scalar on the CPU."""
        return self.scheduler.alphas_cumprod[int(round(float(timestep)))].float()

    def sigma(self, timestep) -> float:
        """σ_t = √((1 − ᾱ_t) / ᾱ_t), the noise-to-signal ratio (eDiff-I's σ of the region bias)."""
        alpha_bar = float(self.alpha_bar(timestep))
        return ((1 - alpha_bar) / alpha_bar) ** 0.5

    def predict_x0(self, sample: torch.Tensor, model_output: torch.Tensor, timestep) -> torch.Tensor:
        """x̂₀ from a variance-preserving sample x_t and the (guided) model output, for any prediction type."""
        alpha_bar = self.alpha_bar(timestep).to(sample.device)
        sample, model_output = sample.float(), model_output.float()
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()  # (x_t − √(1−ᾱ) ε̂) / √ᾱ
        if kind == "v_prediction":
            return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output  # √ᾱ x_t − √(1−ᾱ) v̂
        if kind == "sample":
            return model_output  # the model predicts x₀ itself
        raise ValueError(f"optimize_target='x0' needs a scheduler with prediction_type 'epsilon', 'v_prediction' or "
                         f"'sample', got {kind!r}; use optimize_target='noisy'")

    def decoder_latent(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The sampler's `sample` at `timestep` as a variance-preserving latent (what the decoder expects):
        itself for DDIM-like schedulers, z / √(σ² + 1) for the Euler family (`scale_model_input`)."""
        return self.scheduler.scale_model_input(sample, timestep)

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        """A clean latent put at level t in the sampler's own space: √ᾱ_t z_0 + √(1 − ᾱ_t) ε (DDIM-like), or
        z_0 + σ_t ε (Euler family). `timestep` is one level for the whole batch."""
        timestep = torch.as_tensor(timestep, device=clean.device).reshape(-1)[:1]
        return self.scheduler.add_noise(clean, noise, timestep.repeat(len(clean)))


# The region bias's σ_t is a noise-to-signal ratio; flow matching's reaches infinity at σ = 1 (pure noise). It is
# capped at Stable Diffusion's largest, √((1 − ᾱ_999) / ᾱ_999) of the scaled-linear schedule, so that w' weighs the
# same on SD3 and FLUX as on Stable Diffusion at its noisiest step.
MAX_NOISE_TO_SIGNAL = 14.6


class FlowMatchSchedule:
    """A flow-matching diffusers scheduler (`FlowMatchEulerDiscreteScheduler`: Stable Diffusion 3, FLUX) seen as a
    noise schedule. Its sample at level σ ∈ [0, 1] interpolates between the clean latent and the noise, and the
    model predicts the velocity dz/dσ:

        z_σ = (1 − σ) z_0 + σ ε,      v = ε − z_0,      so  x̂₀ = z_σ − σ v̂

    Timestep t and level σ are one number in two units: t = σ · num_train_timesteps (`scheduler.timesteps`
    are `scheduler.sigmas` scaled; read from them where t is one of the run's timesteps).

    GradOP+'s "re-noise as if clean" (method.md §3, 4b) becomes: the optimised latent z̃ (found from the sample
    z_{σ_{i+1}} itself, as the release starts from its noisy latent) is put back at the level the sampler is at,

        z_{σ_{i+1}} = (1 − σ_{i+1}) z̃ + σ_{i+1} ε'

    which is `scheduler.scale_noise(z̃, t_{i+1}, ε')`. (The variance-preserving release keeps √ᾱ of z̃; here
    1 − σ: the same "signal share" of the level.)
    """

    def __init__(self, scheduler):
        for attribute in ("sigmas", "timesteps", "scale_noise"):
            if getattr(scheduler, attribute, None) is None:
                raise ValueError(f"{type(scheduler).__name__} has no {attribute}: it is not a flow-matching scheduler "
                                 "GradOP can read (use FlowMatchEulerDiscreteScheduler)")
        if scheduler.config.get("invert_sigmas"):
            raise ValueError(f"{type(scheduler).__name__} with invert_sigmas runs from clean to noise; GradOP needs "
                             "a sampler that denoises")
        self.scheduler = scheduler

    def level(self, timestep) -> float:
        """σ of a timestep: the scheduler's own σ where t is one of its timesteps, else t / num_train_timesteps."""
        timesteps, t = self.scheduler.timesteps, float(timestep)
        if timesteps is not None and len(timesteps):
            close = (timesteps.double() - t).abs()
            index = int(close.argmin())
            if float(close[index]) <= 1e-3 * max(1.0, abs(t)):
                return float(self.scheduler.sigmas[index])
        return t / self.scheduler.config.num_train_timesteps

    def sigma(self, timestep) -> float:
        """The noise-to-signal ratio σ/(1 − σ) of level σ (what the region bias calls σ_t), capped at
        `MAX_NOISE_TO_SIGNAL`."""
        level = self.level(timestep)
        return min(level / max(1 - level, 1e-12), MAX_NOISE_TO_SIGNAL)

    def predict_x0(self, sample: torch.Tensor, model_output: torch.Tensor, timestep) -> torch.Tensor:
        """x̂₀ = z_σ − σ v̂ from the sample and the (guided) velocity."""
        return sample.float() - self.level(timestep) * model_output.float()

    def decoder_latent(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The sample itself: flow-matching samples are latents of the decoder's space, mixed with noise."""
        return sample

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        """(1 − σ) z_0 + σ ε at the level of `timestep` (one level for the whole batch)."""
        level = self.level(timestep)
        return (1 - level) * clean + level * noise


@dataclass(frozen=True)
class LatentScaling:
    """How a decoder's latents relate to the diffusion model's: z_model = (z_vae − shift) · scale.

    Args:
        scaling_factor (`float`): `vae.config.scaling_factor` (0.18215 for SD 1, 0.13025 for SDXL).
        shift_factor (`float`): `vae.config.shift_factor` (0 unless the VAE declares one, e.g. SD3, FLUX).
        force_upcast (`bool`): the VAE overflows in float16 and must decode in float32 (SDXL's VAE).
    """

    scaling_factor: float
    shift_factor: float = 0.0
    force_upcast: bool = False

    @classmethod
    def of(cls, decoder) -> "LatentScaling":
        config = decoder.config
        # `force_upcast` counts where the checkpoint declares it (SDXL's VAE): Stable Diffusion 1.x configs predate it
        # and get the class default True, which diffusers' SD 1 pipelines ignore too
        declared = "force_upcast" not in (config.get("_use_default_values") or ())
        return cls(float(config.scaling_factor), float(config.get("shift_factor") or 0.0),
                   bool(config.get("force_upcast", False)) and declared)

    def to_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        """z_model / scale + shift, what `decoder.decode` takes."""
        latents = latents / self.scaling_factor
        return latents + self.shift_factor if self.shift_factor else latents

    def from_encoder(self, latents: torch.Tensor) -> torch.Tensor:
        """(z_vae − shift) · scale, the model's latent of an encoded image."""
        latents = latents - self.shift_factor if self.shift_factor else latents
        return latents * self.scaling_factor

    @contextlib.contextmanager
    def decoding(self, decoder):
        """The decoder in float32 for the duration when it is float16 and `force_upcast` (as diffusers' SDXL
        pipelines decode), else as it is; yields the dtype to decode in."""
        if not (self.force_upcast and decoder.dtype == torch.float16):
            yield decoder.dtype
            return
        decoder.to(torch.float32)
        try:
            yield torch.float32
        finally:
            decoder.to(torch.float16)


def decode_latents(decoder, latents: torch.Tensor) -> torch.Tensor:
    """D(z) in [-1, 1] of the model's latents z: the decoder's own latent scaling, in float32 where it must be."""
    scaling = LatentScaling.of(decoder)
    with scaling.decoding(decoder) as dtype:
        return decoder.decode(scaling.to_decoder(latents).to(dtype), return_dict=False)[0]
