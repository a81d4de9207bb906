"""The settings a model may declare for itself (`GradOPPipeline(method_defaults=...)`, saved in `model_index.json`).

A pipeline method's `strength`, `num_iterative_steps`, `grad_steps_per_iter` and (GradOP+) `lr` left as `None` take
the model's declared value, else `METHOD_DEFAULTS`: the release's for GradOP+ (s = 0.8, K = 3, N = 12, Adam's
lr 0.1), GradOP's own strength.
The toy model declares its own (gradop/toy/components.py says how they were chosen); Stable Diffusion declares
none. Its own module, so that `pipeline` and `methods` (which imports `pipeline`) both read it.
"""
from __future__ import annotations

from contextlib import contextmanager

METHOD_DEFAULTS = {"gradop_plus": {"strength": 0.8, "num_iterative_steps": 3, "grad_steps_per_iter": 12, "lr": 0.1},
                   "gradop": {"strength": 0.6}}


def check_method_defaults(value, name: str = "method_defaults") -> dict:
    """A model's declared defaults: {method: {setting: value}} with methods and settings of `METHOD_DEFAULTS`."""
    from .checks import ARGUMENT_CHECKS

    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict like {METHOD_DEFAULTS}, got {type(value).__name__}")
    checked = {}
    for method, settings in value.items():
        if method not in METHOD_DEFAULTS or not isinstance(settings, dict):
            raise ValueError(f"{name} declares defaults for {list(METHOD_DEFAULTS)} as dicts, got {method!r}: {settings!r}")
        checked[method] = {}
        for key, setting in settings.items():
            if key not in METHOD_DEFAULTS[method]:
                raise ValueError(f"{name}[{method!r}] may set {list(METHOD_DEFAULTS[method])}, got {key!r}")
            # the checks return plain int/float: numpy numbers would not survive `save_pretrained`'s JSON
            checked[method][key] = ARGUMENT_CHECKS[key](setting, f"{name}[{method!r}][{key!r}]")
        # strength 0 puts GradOP+'s window after the last step (and GradOP re-noises nothing): every call would fail
        if checked[method].get("strength") == 0:
            raise ValueError(f"{name}[{method!r}]['strength'] must be > 0: at 0 there is no step left to optimise "
                             f"after; the release uses {METHOD_DEFAULTS[method]['strength']}")
    return checked


def declared_defaults(pipe, attribute: str) -> dict:
    """The defaults of `pipe.<attribute>` that a model may declare: `METHOD_DEFAULTS`, overridden by what the
    pipeline's config declares (`config.method_defaults`). {} for other methods."""
    config = getattr(pipe, "config", None) or {}
    declared = (config.get("method_defaults") if hasattr(config, "get") else None) or {}
    return {**METHOD_DEFAULTS.get(attribute, {}), **declared.get(attribute, {})}


def with_declared_defaults(pipe, attribute: str, **settings) -> tuple:
    """`settings` in order, each `None` replaced by `pipe`'s declared default for `pipe.<attribute>`."""
    defaults = declared_defaults(pipe, attribute)
    return tuple(defaults[k] if v is None else v for k, v in settings.items())


@contextmanager
def naming_declared_defaults(pipe, attribute: str, **given):
    """Around the resolution of a method's settings and its input checks: a window error (`callback.check_window`)
    that settings the caller left out (`given` as passed on entry; `None` or absent = left out) helped cause says
    they are the model's declared defaults, which the user never typed."""
    left_out = [k for k in ("strength", "num_iterative_steps") if given.get(k) is None]
    try:
        yield
    except ValueError as err:
        if not left_out or not str(err).startswith("the optimisation window"):
            raise
        defaults = declared_defaults(pipe, attribute)
        used = ", ".join(f"{k}={defaults[k]:g}" for k in left_out)
        them = "them" if len(left_out) > 1 else "it"
        raise ValueError(f"{err} ({used}: the model's default{'s' if len(left_out) > 1 else ''}, "
                         f"used as you left {them} out)") from None
