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


# ---------------------------------------------------------------------- multistep history after GradOP+
# GradOP+ replaces the sample z_{t_{i+1}} by a re-noised one carrying fresh noise ε' (method.md §3, step 4b). A
# multistep solver's memory of earlier steps belongs to the trajectory that was replaced: DPM-Solver++, UniPC, DEIS
# and SA-Solver extrapolate from earlier model outputs, UniPC's and SA-Solver's correctors rebuild the current
# sample from the *previous* one (throwing the optimisation away), PNDM extrapolates ε from its last four steps.
# Each restarts as at the start of an img2img run: first order from the new sample.

def restart_history(scheduler) -> None:
    """Forget `scheduler`'s multistep history after the sample was replaced (see above)."""
    if hasattr(scheduler, "lower_order_nums"):  # DPM-Solver++, UniPC, DEIS, SA-Solver: next step at first order
        scheduler.lower_order_nums = 0
    if hasattr(scheduler, "last_sample"):  # UniPC, SA-Solver: no corrector from the sample before the replacement
        scheduler.last_sample = None
    if isinstance(scheduler, PNDMScheduler):  # PLMS: its first-order start (counter 0) from the new sample
        scheduler.ets, scheduler.counter, scheduler.cur_sample = [], 0, None


def settle_restart(scheduler) -> None:
    """Call after the first step that follows `restart_history`. PNDM's second step (counter 1) would redo its
    first with the mean of two ε on the *repeated* timestep PLMS puts at the start of a run; mid-run there is no
    repeat, so that step would not advance. Skip to its two-step formula instead."""
    if isinstance(scheduler, PNDMScheduler) and scheduler.counter == 1:
        scheduler.counter, scheduler.cur_sample = 2, None


def check_restartable(scheduler, window: range | None = None) -> None:
    """A clear error for a scheduler whose history GradOP+ cannot restart (instead of silently weaker guidance):
    LMS (`derivatives`), iPNDM (`ets`), the singlestep DPM-Solver (its second stage rebuilds from the sample before
    the window), and PNDM with a window right after its first step, which PLMS repeats."""
    name = type(scheduler).__name__
    keeps = [attribute for attribute in ("derivatives", "ets", "order_list") if hasattr(scheduler, attribute)]
    if keeps and not isinstance(scheduler, PNDMScheduler):
        raise ValueError(f"{name} builds its steps from earlier ones ({keeps[0]}), which GradOP+ cannot restart after "
                         f"it replaces the sample: use one of {sorted(SCHEDULERS)} (gradop.schedulers.make_scheduler)")
    if isinstance(scheduler, PNDMScheduler) and window is not None and 0 in window:
        raise ValueError("PNDM's first two steps are one (PLMS repeats its first timestep), so GradOP+ cannot optimise "
                         "after step 0: lower strength so the window starts later, or use another scheduler")
