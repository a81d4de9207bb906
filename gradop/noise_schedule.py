"""What GradOP's math needs to know of a sampler's noise and of a decoder's latent space, in one place.

The painting guide, x̂₀ and the region bias read the noise level through `NoiseSchedule`, and the loss and the
final decode read the latent scaling through `LatentScaling`; nothing else reads `alphas_cumprod`, `add_noise`
or `scaling_factor`. Variance-preserving schedulers (DDIM, PNDM, DPM-Solver, UniPC, DDPM, and the Euler family,
whose samples `scale_model_input` maps to variance-preserving ones) share the forward process

    q(z_t | z_0) = N(√ᾱ_t z_0, (1 − ᾱ_t) I),      σ_t = √((1 − ᾱ_t) / ᾱ_t)

Flow-matching schedulers (SD3, FLUX: z_σ = (1 − σ) z_0 + σ ε) are refused with a clear error for now.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


class NoiseSchedule:
    """A diffusers scheduler seen as a noise schedule.

    Args:
        scheduler ([`SchedulerMixin`]): a variance-preserving diffusers scheduler (with `alphas_cumprod`).
    """

    def __init__(self, scheduler):
        if not hasattr(scheduler, "alphas_cumprod") or not callable(getattr(scheduler, "add_noise", None)):
            raise ValueError(
                f"{type(scheduler).__name__} is not a variance-preserving scheduler (it has no alphas_cumprod and "
                "add_noise): GradOP supports DDIM, PNDM, DPM-Solver, UniPC, DDPM and Euler schedulers; flow-matching "
                "schedulers (Stable Diffusion 3, FLUX) are not supported yet")
        self.scheduler = scheduler

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

    def variance_preserving(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The sampler's `sample` at `timestep` as a variance-preserving latent (what the decoder expects):
        itself for DDIM-like schedulers, z / √(σ² + 1) for the Euler family (`scale_model_input`)."""
        return self.scheduler.scale_model_input(sample, timestep)

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        """A clean latent put at level t in the sampler's own space: √ᾱ_t z_0 + √(1 − ᾱ_t) ε (DDIM-like), or
        z_0 + σ_t ε (Euler family). `timestep` is one level for the whole batch."""
        timestep = torch.as_tensor(timestep, device=clean.device).reshape(-1)[:1]
        return self.scheduler.add_noise(clean, noise, timestep.repeat(len(clean)))


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
