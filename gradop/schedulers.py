"""Schedulers by name, all built on the released DDIM configuration's noise schedule."""
from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

# What the authors' release used with Stable Diffusion v1.4 (method.md §3): 50 steps give
# timesteps 981, 961, ..., 1 ("leading" spacing, offset 1) and the last step lands on alpha_bar_0.
RELEASED_DDIM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)
# The part of it that is a sampler choice rather than the model's noise schedule: applied on top of
# a checkpoint's own scheduler config so v-prediction or other betas survive.
RELEASED_DDIM_SAMPLER = {k: RELEASED_DDIM_CONFIG[k] for k in ("clip_sample", "set_alpha_to_one", "steps_offset", "timestep_spacing")}

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),  # as Stable Diffusion ships it
    "dpm": (DPMSolverMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}


def released_ddim_scheduler(config=None) -> DDIMScheduler:
    """DDIM as released; with `config` (a checkpoint's scheduler config) its noise schedule is kept."""
    if config is None:
        return DDIMScheduler(**RELEASED_DDIM_CONFIG)
    return DDIMScheduler.from_config(config, **RELEASED_DDIM_SAMPLER)


def make_scheduler(name: str, config=None):
    """A scheduler by name (see `SCHEDULERS`), sharing `config`'s noise schedule (default: the released one)."""
    if not isinstance(name, str) or name.lower() not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    cls, extra = SCHEDULERS[name.lower()]
    if name.lower() == "ddim":
        return released_ddim_scheduler(config)
    base = dict(config) if config is not None else dict(RELEASED_DDIM_CONFIG)
    base.update(timestep_spacing=RELEASED_DDIM_CONFIG["timestep_spacing"], steps_offset=RELEASED_DDIM_CONFIG["steps_offset"])
    return cls.from_config(base, **extra)
