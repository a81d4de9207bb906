"""The synthesis methods in one table: name -> pipeline call, its own defaults, and the settings it takes.

The CLI, the widgets, the sweep, the benchmarks and the tests all run methods through this table, so a
method is added, renamed or re-defaulted here once. Each method takes the same *settings* (`strength`,
`num_iterative_steps` K, `grad_steps_per_iter` N, `painting_decoder`, `num_loops`, and any keyword of the
pipeline method) and uses those that mean something to it:

    from gradop.methods import METHODS, get_method
    out = get_method("sdedit")(pipe, prompt, painting, strength=0.6, generator=g)
    for method in METHODS.values():
        method.defaults["strength"]              # gradop+ 0.8, gradop 0.6, sdedit 0.8, loopback 0.8
        method.defaults_for(pipe)                # ... with the model's declared defaults on top (the toy's)

GradOP (multi-pass) spends its gradient steps on one descent, GradOP+ spreads them over K windows of N; given
K or N, GradOP gets the same budget, `gradop_grad_steps(K, N)` = N·max(K, 1), the other from GradOP+'s defaults.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property

from .model_defaults import METHOD_DEFAULTS, declared_defaults  # noqa: F401 (re-exported: the method table's defaults)

# Settings every method accepts; each method keeps the ones it uses (see `Method.arguments`)
SHARED_SETTINGS = ("strength", "num_iterative_steps", "grad_steps_per_iter", "num_loops", "painting_decoder")


def gradop_grad_steps(num_iterative_steps: int, grad_steps_per_iter: int) -> int:
    """GradOP's gradient steps for GradOP+'s K windows of N steps: the same budget, N·max(K, 1)."""
    return grad_steps_per_iter * max(num_iterative_steps, 1)


@dataclass(frozen=True)
class Method:
    """One synthesis method of `GradOPPipeline`.

    Args:
        name: the CLI's and the sweep's name (`"gradop+"`).
        label: for figures and the widget (`"GradOP+"`).
        attribute: the `GradOPPipeline` method (`"gradop_plus"`).
        uses: which of `SHARED_SETTINGS` it takes.
        takes_painting: whether the painting is its input (`text` only uses it for regions).
    """

    name: str
    label: str
    attribute: str
    uses: tuple[str, ...]
    takes_painting: bool = True

    @cached_property
    def parameters(self) -> dict[str, inspect.Parameter]:
        """The pipeline method's keyword parameters (sdedit: loopback's, less `num_loops`)."""
        from .pipeline import GradOPPipeline

        target = "loopback" if self.attribute == "sdedit" else self.attribute
        params = dict(inspect.signature(getattr(GradOPPipeline, target)).parameters)
        for name in ("self", "prompt", "image") + (("num_loops",) if self.attribute == "sdedit" else ()):
            params.pop(name, None)
        # `**deprecated` (old keyword names, `_renamed_keyword`) is no setting to offer
        return {k: p for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}

    @property
    def defaults(self) -> dict:
        """The method's own defaults: the pipeline's signature (sdedit's strength from its own), with
        `METHOD_DEFAULTS` for the settings a model may declare (`None` in the signature)."""
        from .pipeline import GradOPPipeline

        defaults = {k: p.default for k, p in self.parameters.items() if p.default is not inspect.Parameter.empty}
        if self.attribute == "sdedit":
            defaults["strength"] = inspect.signature(GradOPPipeline.sdedit).parameters["strength"].default
        return {**defaults, **METHOD_DEFAULTS.get(self.attribute, {})}

    def defaults_for(self, pipe) -> dict:
        """`defaults` as `pipe` runs them: with the model's declared ones (`declared_defaults`) on top."""
        return {**self.defaults, **declared_defaults(pipe, self.attribute)}

    def describe_settings(self, pipe, **settings) -> str:
        """"GradOP+ at strength 0.6, K 3, N 12 (strength: the model's default)": the settings `pipe` will run
        with (those left `None` take `defaults_for(pipe)`), saying which came from the model's declaration."""
        names = {"strength": "strength", "num_iterative_steps": "K", "grad_steps_per_iter": "N", "num_loops": "loops",
                 "lr": "lr"}
        from .checks import ARGUMENT_CHECKS

        self.arguments(**settings)  # a misspelt setting is a TypeError, not a description of the defaults
        for key in names:
            if settings.get(key) is not None:
                settings[key] = ARGUMENT_CHECKS[key](settings[key], key)  # plain numbers (a Fraction cannot :g)
        defaults, declared = self.defaults_for(pipe), declared_defaults(pipe, self.attribute)
        released = METHOD_DEFAULTS.get(self.attribute, {})
        running = {k: defaults[k] if settings.get(k) is None else settings[k] for k in names if k in defaults}

        def shown(key):  # the settings the method uses; Adam's lr only where it is not the release's
            return key in self.uses or (key == "lr" and key in released and running[key] != released[key])

        used = [f"{names[k]} {v:g}" for k, v in running.items() if shown(k)]
        from_model = [names[k] for k in running if shown(k) and settings.get(k) is None
                      and k in declared and declared[k] != released.get(k)]
        note = f" ({', '.join(from_model)}: the model's own default)" if from_model else ""
        return f"{self.label}" + (f" at {', '.join(used)}" if used else "") + note

    def available_on(self, pipe) -> bool:
        """Whether `pipe` runs this method: a `GradOPPipeline` runs all, a `CallbackPipeline` (SDXL) those it marks
        (`pipeline.synthesis_method`)."""
        from .pipeline import synthesis_methods

        return self.attribute in synthesis_methods(type(pipe))

    def accepts(self, key: str) -> bool:
        """Whether `key` is a setting this table takes for any method (shared) or a keyword of this method."""
        return key in SHARED_SETTINGS or key in self.parameters

    def arguments(self, image=None, *, pipe=None, **settings) -> dict:
        """The pipeline method's keywords for these settings: unused shared settings dropped, `None` = default.
        GradOP takes GradOP+'s K and N as its gradient-step budget (`gradop_grad_steps`), the one left out from
        `pipe`'s GradOP+ defaults.

        Raises `TypeError` for a key no method takes (a misspelt setting is never silently ignored).
        """
        unknown = sorted(k for k in settings if not self.accepts(k))
        if unknown:
            raise TypeError(f"{self.name} takes no setting {', '.join(map(repr, unknown))}; it takes "
                            f"{', '.join(sorted(set(SHARED_SETTINGS) | set(self.parameters)))}")
        kwargs = {k: v for k, v in settings.items() if v is not None and (k not in SHARED_SETTINGS or k in self.uses)}
        k, n = settings.get("num_iterative_steps"), settings.get("grad_steps_per_iter")
        if self.attribute == "gradop" and (k is not None or n is not None):
            # GradOP+'s K and N as GradOP's budget; the one left out is GradOP+'s default on `pipe` (else the release's)
            plus = declared_defaults(pipe, "gradop_plus") if pipe is not None else METHOD_DEFAULTS["gradop_plus"]
            k, n = (plus["num_iterative_steps"] if k is None else k), (plus["grad_steps_per_iter"] if n is None else n)
            from .checks import check_count

            for name, value in (("num_iterative_steps", k), ("grad_steps_per_iter", n)):
                check_count(value, name)
            kwargs.setdefault("grad_steps", gradop_grad_steps(k, n))
        if self.attribute == "text2img":
            kwargs.setdefault("region_image", image if settings.get("regions") else None)
        elif image is not None:
            kwargs["image"] = image
        return kwargs

    def __call__(self, pipe, prompt, image=None, **settings):
        """Run the method on `pipe`: `pipe.<attribute>(prompt, image, **arguments)`."""
        if self.takes_painting and image is None:
            raise ValueError(f"{self.name} needs a painting: pass image=<path, PIL image, array or tensor>")
        return getattr(pipe, self.attribute)(prompt, **self.arguments(image, pipe=pipe, **settings))


_OPTIMISING = ("strength", "painting_decoder")
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradop+", "GradOP+", "gradop_plus", _OPTIMISING + ("num_iterative_steps", "grad_steps_per_iter")),
    Method("gradop", "GradOP", "gradop", _OPTIMISING),
    Method("sdedit", "SDEdit", "sdedit", ("strength",)),
    Method("loopback", "Loopback", "loopback", ("strength", "num_loops")),
    Method("text", "Text only", "text2img", (), takes_painting=False),
)}


def get_method(name: str) -> Method:
    """The method called `name` (its CLI name, label or pipeline attribute), or a `ValueError` listing them."""
    for method in METHODS.values():
        if name in (method.name, method.label, method.attribute):
            return method
    raise ValueError(f"method must be one of {list(METHODS)}, got {name!r}")
