"""Argument checks shared by every method: each error names the argument and the fix."""
from __future__ import annotations

import math
import numbers

import torch

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


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
