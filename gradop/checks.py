"""Argument checks shared by every method: each error names the argument and the fix.

A leaf of the package: it imports nothing from `gradop` but `images` (itself a leaf), so every module can use it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .images import MAX_SIDE

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The names the checks accept; `gradop.optimize.OPTIMIZERS` maps each to its class, and `gradop.painting`'s
# `get_painting_function` builds each painting function (tests keep the lists in step)
OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
MAX_LR = 1e10  # latents have unit variance: a step of 1e10 is already nothing but overflow
PAINTING_FUNCTIONS = ("gaussian", "median_palette")


def check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0 <= value <= 1:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def check_count(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_lr(value, name: str = "lr") -> float:
    """The descent's step size. Far above any useful step (Adam moves each latent entry by about lr per step, in
    float32), a huge one overflows inside the optimiser instead of failing cleanly: refused up front."""
    value = check_positive(value, name)
    if value > MAX_LR:
        raise ValueError(f"{name} must be at most {MAX_LR:g} (the release's is 0.1), got {value:g}")
    return value


def check_guidance(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"guidance_scale must be a number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0 (7.5 is usual), got {value}")
    return float(value)


def check_prompts(prompt, name: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}")
    if any(not p.strip() for p in prompts):
        raise ValueError(f"{name} must not be empty: describe the image you want, e.g. 'a photo of a castle by a lake'")
    return list(prompts)


def check_negative_prompts(negative_prompt, batch: int) -> list[str]:
    if negative_prompt is None:
        return [""] * batch  # the unconditional prompt, as released
    negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else negative_prompt
    if not isinstance(negatives, (list, tuple)) or not all(isinstance(p, str) for p in negatives):
        raise TypeError(f"negative_prompt must be a string or a list of strings, got {negative_prompt!r}")
    if len(negatives) != batch:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {batch}; give one per prompt")
    return list(negatives)


def check_generator(generator, batch: int):
    gens = generator if isinstance(generator, list) else [generator]
    if not all(g is None or isinstance(g, torch.Generator) for g in gens):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {generator!r}")
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator is a list of {len(generator)} but the batch has {batch} images "
                         "(prompts x num_images_per_prompt); give one generator per image")
    return generator


def check_output_type(output_type) -> str:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    return output_type


def check_callback(callback, tensor_inputs, allowed) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback_on_step_end must be callable(pipe, step, timestep, tensors) -> dict, got {callback!r}")
    unknown = [k for k in tensor_inputs if k not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs may only name {list(allowed)}, got {unknown}")


def check_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_size(value, name: str) -> int:
    """An explicit `height`/`width` in pixels (rounded to the model's VAE factor later, when it is known)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer number of pixels, got {value!r}")
    if not 1 <= value <= MAX_SIDE:
        raise ValueError(f"{name} must be between 1 and {MAX_SIDE} pixels (rounded down to the model's VAE factor), "
                         f"got {value}")
    return int(value)


def check_optimize_target(value, name: str = "optimize_target") -> str:
    if value not in ("noisy", "x0"):
        raise ValueError(f"{name} must be 'noisy' (as released) or 'x0', got {value!r}")
    return value


def check_optimizer(value, name: str = "optimizer"):
    if isinstance(value, str):
        if value not in OPTIMIZER_NAMES:
            raise ValueError(f"{name} must be one of {sorted(OPTIMIZER_NAMES)} or a torch.optim.Optimizer class, "
                             f"got {value!r}")
    elif not (isinstance(value, type) and issubclass(value, torch.optim.Optimizer)):
        raise TypeError(f"{name} must be a name or a torch.optim.Optimizer class, got {value!r}")
    else:
        _check_one_step(value, name)
    return value


def _check_one_step(optimizer: type, name: str) -> None:
    """The descent calls `optimizer(params, lr=lr)` and a plain `step()` on dense gradients: a class that cannot
    (LBFGS wants a closure, SparseAdam sparse gradients) fails here, before the model runs, not in its first window."""
    z = torch.zeros(1, requires_grad=True)
    z.grad = torch.ones(1)
    try:
        optimizer([z], lr=0.1).step()
    except Exception as err:  # noqa: BLE001 — whatever it raises, the descent could not use it
        raise TypeError(f"{name}={optimizer.__name__} cannot run the latent descent (optimizer(params, lr=lr) then "
                        f"step() on dense gradients): {type(err).__name__}: {err}; use one of "
                        f"{sorted(OPTIMIZER_NAMES)}") from None


def check_painting_function(value, name: str = "painting_function"):
    if not callable(value) and value not in PAINTING_FUNCTIONS:
        raise ValueError(f"{name} must be one of {PAINTING_FUNCTIONS} or a callable mapping [B,3,H,W] images in "
                         f"[0,1] to paintings, got {value!r}")
    return value


def check_sigma_fraction(value, name: str = "painting_sigma_fraction") -> float:
    """The Gaussian painting function's σ as a fraction of the image's shorter side (the release: 7/512)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 0.5) or None, got {value!r}")
    if not 0 < value < 0.5:  # also rejects NaN and inf
        raise ValueError(f"{name} must be a finite number with 0 < {name} < 0.5 (sigma as a fraction of the "
                         f"image's shorter side; the release's is 7/512 = 0.0137), got {value}")
    return float(value)


def check_latents(value, name: str = "latents"):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of start noise (batch, channels, h, w), got {type(value).__name__}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return value


def _at_least_one(value, name: str) -> int:
    return check_count(value, name, 1)


# Each argument of the pipeline's methods -> its check (`GradOPPipeline.check_inputs` applies them)
ARGUMENT_CHECKS = {
    "strength": check_fraction, "region_step_fraction": check_fraction,
    "num_iterative_steps": check_count, "grad_steps_per_iter": check_count, "grad_steps": check_count,
    "num_rounds": _at_least_one, "num_loops": _at_least_one, "num_inference_steps": _at_least_one,
    "num_images_per_prompt": _at_least_one,
    "guidance_scale": lambda value, name: check_guidance(value),
    "eta": check_finite, "region_weight": check_finite, "lr": check_lr,
    "height": check_size, "width": check_size,
    "output_type": lambda value, name: check_output_type(value),
    "optimize_target": check_optimize_target, "optimizer": check_optimizer, "painting_function": check_painting_function,
    "blur_target": check_bool, "freeze_decoder": check_bool, "return_dict": check_bool,
    "latents": check_latents,
}
