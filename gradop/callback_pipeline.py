"""`CallbackPipeline`: GradOP's method names on any diffusers text-to-image pipeline (SDXL, SD3, FLUX, ...).

    pipe = CallbackPipeline(StableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0"))
    pipe.gradop_plus(prompt, "painting.png", strength=0.8).images[0]    # the pipeline + `PaintingCallback`
    pipe.sdedit(prompt, "painting.png", strength=0.8)                    # diffusers' img2img of the same components
    pipe.text2img(prompt)                                                # the pipeline itself

The wrapped pipeline runs unmodified: GradOP+ is its `callback_on_step_end`, region binding its attention
processors (`gradop.regions`). Everything else (`pipe.vae`, `pipe.unet`, `pipe.to(...)`, ...) is the pipeline's.
One difference from `GradOPPipeline` (Stable Diffusion 1, as released): sampling starts from diffusers' start
noise, ε · `init_noise_sigma`, not from √(1 − ᾱ_{t_0}) ε.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Mapping
from typing import Callable

import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from . import checks
from .callback import PaintingCallback
from .images import check_side, load_image, output_size
from .model_defaults import naming_declared_defaults, with_declared_defaults
from .noise_schedule import NoiseSchedule
from .pipeline import GradOPPipeline, GradOPPipelineOutput, synthesis_method
from .regions import RegionBinding, TokenSpan, attention_control, bind_regions, token_positions

_SHARED = dict(height=None, width=None, num_inference_steps=50, guidance_scale=None, negative_prompt=None,
               num_images_per_prompt=1, generator=None, output_type="pil", return_dict=True,
               callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",), regions=None,
               region_weight=0.4, region_image=None, region_step_fraction=1.0, attention_store=None)


class CallbackPipeline:
    r"""
    GradOP+, SDEdit and text-only sampling on an unmodified diffusers text-to-image pipeline, with the method names,
    arguments and outputs of [`~gradop.GradOPPipeline`].

    Args:
        pipeline ([`DiffusionPipeline`]): a text-to-image pipeline with a VAE, a scheduler and `callback_on_step_end`
            (e.g. `StableDiffusionXLPipeline`, `StableDiffusion3Pipeline`, `FluxPipeline`).
        painting_sigma_fraction (`float`, *optional*): the painting blur's σ as a fraction of the shorter side
            (default: the release's 7/512).
    """

    _OWN = ("pipeline", "painting_sigma_fraction", "painting_decoder", "_img2img", "_call_lock")  # the rest: the pipeline's

    def __init__(self, pipeline, painting_sigma_fraction: float | None = None):
        if isinstance(pipeline, (CallbackPipeline, GradOPPipeline)):
            raise TypeError(f"pipeline must be a diffusers text-to-image pipeline, got a {type(pipeline).__name__} "
                            "(which has GradOP's methods already)")
        PaintingCallback(torch.zeros(1, 3, 8, 8), num_iterative_steps=0).check_pipeline(pipeline)
        self.pipeline = pipeline
        self.painting_sigma_fraction = None if painting_sigma_fraction is None else \
            checks.check_sigma_fraction(painting_sigma_fraction)
        self.painting_decoder = None  # what gradop_plus's loss decodes through by default: None is the VAE
        self._img2img = None
        self._call_lock = threading.RLock()

    def __getattr__(self, name):  # vae, unet, scheduler, tokenizer, device, dtype, config, ...: the pipeline's
        if name == "pipeline":
            raise AttributeError(name)
        return getattr(self.pipeline, name)

    def __setattr__(self, name, value):  # `pipe.scheduler = ...`, `pipe.unet = torch.compile(...)`: the pipeline's
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.pipeline, name, value)
            self._img2img = None  # rebuilt from the changed components when next needed

    def __repr__(self) -> str:
        return f"CallbackPipeline({type(self.pipeline).__name__})"

    def to(self, *args, **kwargs) -> "CallbackPipeline":
        self.pipeline.to(*args, **kwargs)
        return self

    @property
    def img2img(self):
        """diffusers' image-to-image pipeline on the same components (SDEdit)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image
            from diffusers.utils import logging

            verbosity = logging.get_verbosity()
            logging.set_verbosity_error()  # from_pipe's notes on dtype casts it does not make
            try:
                self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipeline)
            finally:
                logging.set_verbosity(verbosity)
            self._img2img.set_progress_bar_config(**getattr(self.pipeline, "_progress_bar_config", {}))
        return self._img2img

    # ------------------------------------------------------------------ the methods
    @synthesis_method
    def gradop_plus(self, prompt, image, strength: float | None = None, num_iterative_steps: int | None = None,
                    grad_steps_per_iter: int | None = None, *, latents: torch.Tensor | None = None, lr: float | None = None,
                    optimizer="adam", painting_function="gaussian", blur_target: bool = False,
                    optimize_target: str = "noisy", painting_decoder=None, freeze_decoder: bool = True, **kwargs):
        """GradOP+ (single pass): the pipeline with a [`~gradop.PaintingCallback`]. Arguments as in
        [`~gradop.GradOPPipeline.gradop_plus`]; `guidance_scale=None` is the pipeline's own default;
        `painting_decoder=None` is `pipe.painting_decoder`, itself None (the VAE) unless set; keywords this method
        does not name go to the pipeline (e.g. SDXL's `original_size`). Settings left as None take the wrapped
        pipeline's declared defaults (`config.method_defaults`), else the release's 0.8 / 3 / 12 and lr 0.1."""
        settings, extra = _split(kwargs)
        with naming_declared_defaults(self.pipeline, "gradop_plus", strength=strength,
                                      num_iterative_steps=num_iterative_steps):
            strength, num_iterative_steps, grad_steps_per_iter, lr = with_declared_defaults(
                self.pipeline, "gradop_plus", strength=strength, num_iterative_steps=num_iterative_steps,
                grad_steps_per_iter=grad_steps_per_iter, lr=lr)
            GradOPPipeline.check_inputs(
                "gradop_plus", prompt, image, strength=strength, num_iterative_steps=num_iterative_steps,
                grad_steps_per_iter=grad_steps_per_iter, lr=lr, optimizer=optimizer, painting_function=painting_function,
                blur_target=blur_target, optimize_target=optimize_target, freeze_decoder=freeze_decoder, latents=latents,
                **_checked(settings))
        painting = PaintingCallback(
            image, strength, num_iterative_steps, grad_steps_per_iter, lr, painting_function=painting_function,
            painting_decoder=self.painting_decoder if painting_decoder is None else painting_decoder,
            generator=settings["generator"], optimizer=optimizer,
            blur_target=blur_target, optimize_target=optimize_target, freeze_decoder=freeze_decoder,
            painting_sigma_fraction=self.painting_sigma_fraction)
        painting.check_pipeline(self.pipeline)
        if latents is not None:
            extra["latents"] = latents
        paintings = painting.paintings
        size = self._size(paintings[0], settings) if isinstance(paintings, list) else tuple(paintings.shape[-2:])
        painting.size = size  # FLUX's packed latents do not carry it
        regions_from = paintings if isinstance(paintings, list) else [load_image(p, "image") for p in paintings]
        out = self._run(self.pipeline, prompt, size, settings, extra, regions_from, painting)
        return self._output(out, settings, painting)

    @synthesis_method
    def sdedit(self, prompt, image, strength: float = 0.8, **kwargs):
        """SDEdit: diffusers' image-to-image pipeline on the same components, from the painting at its size."""
        settings, extra = _split(kwargs)
        GradOPPipeline.check_inputs("sdedit", prompt, image, strength=strength, **_checked(settings))
        steps = settings["num_inference_steps"]
        if int(steps * strength) < 1:  # diffusers' img2img runs int(n · strength) steps
            raise ValueError(f"sdedit with strength {strength} of {steps} steps runs no denoising step "
                             f"(int({steps} x {strength}) = 0): raise strength or num_inference_steps")
        images, _ = GradOPPipeline._load_images(image, "image", len(checks.check_prompts(prompt)))
        height, width = self._size(images[0], settings)
        resized = [im.resize((width, height), PIL.Image.LANCZOS) for im in images]  # as VaeImageProcessor resizes
        extra.update(image=resized if len(resized) > 1 else resized[0], strength=strength)
        return self._output(self._run(self.img2img, prompt, (height, width), settings, extra, images), settings)

    @synthesis_method
    def text2img(self, prompt, **kwargs):
        """Text-only samples, the target subspace S_τ; with `regions`, `region_image` is the painting."""
        settings, extra = _split(kwargs)
        GradOPPipeline.check_inputs("text2img", prompt, **_checked(settings))
        return self._output(self._run(self.pipeline, prompt, self._size(None, settings), settings, extra), settings)

    def gradop(self, *args, **kwargs):
        raise ValueError(f"gradop (multi-pass) is available on Stable Diffusion 1.x/2.x (GradOPPipeline); on "
                         f"{type(self.pipeline).__name__} use gradop_plus, sdedit or text2img")

    def loopback(self, *args, **kwargs):
        raise ValueError(f"loopback is available on Stable Diffusion 1.x/2.x (GradOPPipeline); on "
                         f"{type(self.pipeline).__name__} use gradop_plus, sdedit or text2img")

    # ------------------------------------------------------------------ one run
    @property
    def _denoiser(self):
        """The pipeline's UNet, or its transformer (SD3, FLUX)."""
        unet = getattr(self.pipeline, "unet", None)
        return unet if unet is not None else self.pipeline.transformer

    @property
    def _packed(self) -> bool:
        """FLUX: its latents travel packed into 2x2 patches of their channels."""
        return hasattr(self.pipeline, "_pack_latents")

    @property
    def size_step(self) -> int:
        """Image sides are multiples of this: the VAE's factor, times the transformer's patch side (SD3: 2) or
        FLUX's 2x2 packing."""
        factor, transformer = self.pipeline.vae_scale_factor, getattr(self.pipeline, "transformer", None)
        if transformer is None:
            return factor
        return factor * (2 if self._packed else transformer.config.get("patch_size", 1))

    def _size(self, painting, settings) -> tuple[int, int]:
        step = self.size_step
        if painting is None:
            default = (getattr(self.pipeline, "default_sample_size", None)
                       or self._denoiser.config.sample_size) * self.pipeline.vae_scale_factor
            size = (check_side(settings["height"] or default, "height", step),
                    check_side(settings["width"] or default, "width", step))
        else:
            size = output_size(painting, settings["height"], settings["width"], step)
        # SD3's position embedding covers pos_embed_max_size patches a side
        patches = getattr(getattr(self._denoiser, "config", None), "pos_embed_max_size", None)
        if patches and max(size) > patches * step:
            raise ValueError(f"height and width must be at most {patches * step} pixels on "
                             f"{type(self.pipeline).__name__} (its position embedding covers {patches} patches a "
                             f"side), got {size[0]}x{size[1]}")
        return size

    def _run(self, pipeline, prompt, size: tuple[int, int], settings: dict, extra: dict, paintings=None,
             painting: PaintingCallback | None = None):
        """`pipeline(...)` at `size` with the painting callback (if any) and the user's, and the region binding
        (whose colours come from `region_image`, else from `paintings`)."""
        (height, width), prompts = size, checks.check_prompts(prompt)
        batch = len(prompts) * settings["num_images_per_prompt"]
        if self._packed and settings["negative_prompt"] is not None \
                and not extra.get("true_cfg_scale", 1.0) > 1:
            raise ValueError("negative_prompt: FLUX is guidance-distilled and ignores a negative prompt unless "
                             "true_cfg_scale > 1 (e.g. true_cfg_scale=4.0, a second transformer pass per step); pass "
                             "both, or leave negative_prompt out")
        callbacks = [c for c in (painting, settings["callback_on_step_end"]) if c is not None]
        arguments = dict(height=height, width=width, num_inference_steps=settings["num_inference_steps"],
                         negative_prompt=settings["negative_prompt"],
                         num_images_per_prompt=settings["num_images_per_prompt"], generator=settings["generator"],
                         output_type=settings["output_type"], **extra)
        if settings["guidance_scale"] is not None:
            arguments["guidance_scale"] = settings["guidance_scale"]
        parameters = inspect.signature(type(pipeline).__call__).parameters
        if "height" not in parameters:  # img2img: the image's own size
            del arguments["height"], arguments["width"]
        # diffusers' pipelines swallow unknown keywords (**kwargs): a misspelt one must not run with the default
        named = {k for k, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        unknown = sorted(set(extra) - named)
        if unknown:
            raise TypeError(f"{type(pipeline).__name__} takes no argument {', '.join(map(repr, unknown))}; its "
                            f"arguments are {', '.join(sorted(named - {'self'}))}")
        if extra.get("latents") is not None:
            factor, channels = pipeline.vae_scale_factor, self._denoiser.config.in_channels
            h, w = height // factor, width // factor
            if self._packed:  # FLUX: 2x2 patches of its latent channels
                expected, what = (batch, (h // 2) * (w // 2), channels), "batch, (height / 16) (width / 16), channels"
            else:
                expected, what = (batch, channels, h, w), f"batch, channels, height / {factor}, width / {factor}"
            if not isinstance(extra["latents"], torch.Tensor) or tuple(extra["latents"].shape) != expected:
                raise ValueError(f"latents must be a tensor of shape {expected} ({what}), got "
                                 f"{tuple(getattr(extra['latents'], 'shape', ())) or type(extra['latents']).__name__}")
        if callbacks:
            user = settings["callback_on_step_end"]
            # a diffusers PipelineCallback names its own tensors, as diffusers' pipelines read them
            requested = [] if user is None else list(user.tensor_inputs) if isinstance(
                user, (PipelineCallback, MultiPipelineCallbacks)) else list(settings["callback_on_step_end_tensor_inputs"])
            inputs = list(dict.fromkeys((painting.tensor_inputs if painting else []) + requested))
            arguments.update(callback_on_step_end=_chain(callbacks), callback_on_step_end_tensor_inputs=inputs)
        region_images = paintings if settings["region_image"] is None else \
            GradOPPipeline._load_images(settings["region_image"], "region_image", len(prompts))[0]
        binding = self._binding(prompts, region_images, batch, size, settings, extra)
        with self._call_lock, attention_control(self._denoiser, binding), _steps_of(pipeline, binding):
            return pipeline(prompts if len(prompts) > 1 else prompts[0], **arguments)

    def _text_spans(self, extra: dict) -> tuple[list[TokenSpan], int]:
        """Where each tokenizer's tokens sit in the text the attention layers see, and its length: CLIP's 77 (SD 1,
        SDXL); CLIP's 77 then T5's `max_sequence_length` (SD3, T5's zeros when it is left out); T5's alone (FLUX)."""
        pipe = self.pipeline
        if getattr(pipe, "transformer", None) is None:
            return [TokenSpan(pipe.tokenizer)], pipe.tokenizer.model_max_length
        known = inspect.signature(type(pipe).__call__).parameters.get("max_sequence_length")
        if known is None or not hasattr(pipe, "tokenizer_3") and not self._packed:
            raise ValueError(f"regions and attention_store: gradop reads the text tokens of Stable Diffusion, SDXL, SD3 "
                             f"and FLUX, not of {type(pipe).__name__}")
        default = known.default
        t5_length = checks.check_count(extra.get("max_sequence_length", default), "max_sequence_length", 1)
        if t5_length > 512:
            raise ValueError(f"max_sequence_length must be at most 512 (T5's limit), got {t5_length}")
        if hasattr(pipe, "tokenizer_3"):  # SD3
            clip = pipe.tokenizer.model_max_length
            spans = [TokenSpan(pipe.tokenizer, 0, clip)]
            if pipe.text_encoder_3 is not None:
                spans.append(TokenSpan(pipe.tokenizer_3, clip, t5_length))
            return spans, clip + t5_length
        return [TokenSpan(pipe.tokenizer_2, 0, t5_length)], t5_length  # FLUX

    def _binding(self, prompts, paintings, batch, size, settings, extra) -> RegionBinding | None:
        regions, store = settings["regions"], settings["attention_store"]
        if not regions and store is None:
            return None
        spans, text_length = self._text_spans(extra)
        if not regions:
            return RegionBinding.empty(batch, size, store, text_length)
        clip = [self.pipeline.tokenizer, getattr(self.pipeline, "tokenizer_2", None)]
        tokenizers = [t for t in clip if t is not None and type(t).__name__.startswith("CLIP")]
        for phrase in {spec if isinstance(spec, str) else spec[0] for spec in regions.values()}:
            for prompt in prompts:  # SDXL's two encoders' states sit side by side per token: positions must agree
                positions = [token_positions(t, prompt, phrase.strip()) for t in tokenizers]
                if any(p != positions[0] for p in positions):
                    raise ValueError(f"regions: the two tokenizers place {phrase!r} at different tokens of {prompt!r} "
                                     f"({positions}); bind a phrase both split alike")
        names = ["region_image" if settings["region_image"] is not None else "image"] * len(paintings)
        return bind_regions(regions, prompts, spans, paintings, names, batch, size,
                            region_weight=settings["region_weight"], step_fraction=settings["region_step_fraction"],
                            schedule=NoiseSchedule.of(self.pipeline.scheduler), store=store, text_length=text_length)

    @staticmethod
    def _output(out, settings, painting: PaintingCallback | None = None):
        output = GradOPPipelineOutput(images=out.images, loss_history=painting.loss_history if painting else [],
                                      optimized_timesteps=painting.optimized_timesteps if painting else [])
        return output if settings["return_dict"] else output.to_tuple()


def _split(kwargs: dict) -> tuple[dict, dict]:
    """The settings every method shares (with their defaults) and the rest, which goes to the pipeline."""
    settings = {k: kwargs.pop(k, default) for k, default in _SHARED.items()}
    return settings, kwargs


def _checked(settings: dict) -> dict:
    """The shared settings `GradOPPipeline.check_inputs` validates (guidance None is the pipeline's default; the
    pipeline itself checks which tensors its callbacks may ask for)."""
    return {k: v for k, v in settings.items()
            if v is not None and k not in ("attention_store", "callback_on_step_end_tensor_inputs")}


def _chain(callbacks: list) -> Callable:
    """One `callback_on_step_end` calling each in turn, each seeing the tensors the last returned."""
    def chained(pipeline, step_index, timestep, tensors):
        for callback in callbacks:
            returned = callback(pipeline, step_index, timestep, tensors)
            if returned is not None:
                if not isinstance(returned, Mapping):
                    raise TypeError("callback_on_step_end must return a dict of tensors (or None), got a "
                                    f"{type(returned).__name__}")
                tensors = {**tensors, **returned}
        return tensors

    return chained


@contextlib.contextmanager
def _steps_of(pipeline, binding: RegionBinding | None):
    """Tell the binding each denoising step's index and σ_t before the denoiser runs (a forward pre-hook: diffusers'
    pipelines have no hook before a step). The index counts the run's steps, one denoiser call each (classifier-free
    guidance batches both halves into one call), so a late start (img2img) counts from its own first step. A
    transformer called again at the same step (FLUX's negative prompt, SD3's skip-layer guidance) is left unbiased."""
    if binding is None:
        yield
        return
    unet = getattr(pipeline, "unet", None)
    denoiser = unet if unet is not None else pipeline.transformer
    steps, last = 0, None

    def before_denoiser(module, args, kwargs):
        nonlocal steps, last
        # FLUX passes its transformer t / 1000: the step's own timestep, where the pipeline keeps it
        timestep = getattr(pipeline, "_current_timestep", None)
        if timestep is None:
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        timestep = float(torch.as_tensor(timestep).flatten()[0])
        if unet is None and timestep == last:
            binding.paused = True
            return
        last = timestep
        binding.start_step(steps, getattr(pipeline, "_num_timesteps", None) or len(pipeline.scheduler.timesteps),
                           timestep)
        steps += 1

    handle = denoiser.register_forward_pre_hook(before_denoiser, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
