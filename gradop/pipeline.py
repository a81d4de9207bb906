"""`GradOPPipeline`: text-only sampling, SDEdit, loopback, GradOP and GradOP+ on one denoising loop.

Every public method is numbered steps over the same building blocks, named as in diffusers:
`check_inputs` (validation only), `encode_prompt`, `prepare_image`, `get_timesteps`, `prepare_latents`,
`denoise` (the one sampling loop) and `_finish` (decode and post-process). GradOP+ adds a
`PaintingGuide` (`gradop.optimize`) to the loop: after a few early steps it pulls the latent toward the
user's strokes by gradient descent through the decoder, then re-noises it to the current level
(method.md §3). One call's shared state lives in a `_Call` record; calls on one pipeline are serialised.
"""
import functools
import inspect
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from . import checks
from .callback import X0_INPUT, PaintingCallback, check_window, optimisation_window
from .images import check_side, load_image, output_size
from .model_defaults import check_method_defaults, naming_declared_defaults, with_declared_defaults
from .noise_schedule import LatentScaling, NoiseSchedule, decode_latents
from .optimize import PaintingGuide, check_painting_decoder
from .painting import get_painting_function
from .regions import AttentionStore, RegionBinding, attention_control, bind_regions, parse_regions
from .schedulers import make_scheduler
from .truncated_decoder import TruncatedDecoder, TruncatedTinyDecoder  # so that a saved pipeline holding one reloads


@dataclass
class GradOPPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The generated images (or latents for `output_type="latent"`).
        loss_history (`list[torch.Tensor]`):
            One `[grad_steps, batch]` tensor per optimisation window: the painting loss
            MSE(f(D(z)), y) of every image before each gradient step. Empty without optimisation.
        optimized_timesteps (`list[int]`):
            For GradOP+, the noise level (timestep) of the latent each window optimised.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    loss_history: list[torch.Tensor] = field(default_factory=list)
    optimized_timesteps: list[int] = field(default_factory=list)


@dataclass
class _Call:
    """What the steps of one pipeline call share, filled in as the steps run."""

    prompt: list[str]
    num_images_per_prompt: int = 1
    guidance_scale: float = 7.5
    eta: float = 0.0
    generator: object = None
    output_type: str = "pil"
    return_dict: bool = True
    callback_on_step_end: Callable | None = None
    callback_on_step_end_tensor_inputs: tuple = ("latents",)
    regions: dict | None = None
    region_weight: float = 0.4
    region_image: object = None
    region_step_fraction: float = 1.0
    attention_store: AttentionStore | None = None
    height: int | None = None
    width: int | None = None
    prompt_embeds: torch.Tensor | None = None
    binding: RegionBinding | None = None
    guide: PaintingGuide | PaintingCallback | None = None  # what optimises: GradOP's guide, GradOP+'s callback

    @classmethod
    def from_arguments(cls, arguments: dict) -> "_Call":
        """The record of a method's (checked) arguments; `height`/`width` are set when the size is known."""
        known = {f.name for f in fields(cls)} - {"height", "width"}
        call = cls(**{k: v for k, v in arguments.items() if k in known})
        call.prompt = checks.check_prompts(call.prompt)
        return call

    @property
    def batch_size(self) -> int:
        return len(self.prompt) * self.num_images_per_prompt

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1


def _one_call_at_a_time(method):
    """Serialise calls on one pipeline: a call mutates shared state (scheduler timesteps, attention
    processors, decoder weight flags), so two threads at once would silently mix their images."""

    @functools.wraps(method)
    def serialised(self, *args, **kwargs):
        with self._call_lock:
            return method(self, *args, **kwargs)

    return serialised


def synthesis_method(method):
    """Marks a pipeline method as one of the synthesis methods (`gradop.methods.METHODS` runs them by name, and
    `check_inputs` takes their names): the outermost decorator, so the mark is on what the class holds."""
    method.is_synthesis_method = True
    return method


def synthesis_methods(pipeline_class) -> tuple[str, ...]:
    """The names of the synthesis methods `pipeline_class` runs (`synthesis_method`)."""
    return tuple(name for name in dir(pipeline_class)
                 if getattr(getattr(pipeline_class, name, None), "is_synthesis_method", False))


def _arguments(scope: dict) -> dict:
    """A method's arguments from its `locals()` at the top of the call, without `self`."""
    return {k: v for k, v in scope.items() if k not in ("self", "__class__", "deprecated")}


class GradOPPipeline(DiffusionPipeline):
    r"""
    High-fidelity scribble-guided synthesis with a latent diffusion model (Singh, Gould, Zheng, CVPR 2023).

    Args:
        vae ([`AutoencoderKL`]): encodes images to latents and decodes them back.
        text_encoder ([`CLIPTextModel`]): the frozen text encoder.
        tokenizer ([`CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the text-conditioned denoiser.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler; `from_pretrained` defaults to the
            released DDIM configuration (`gradop.schedulers.RELEASED_DDIM_CONFIG`).
        painting_decoder ([`AutoencoderTiny`], [`TruncatedDecoder`] or [`TruncatedTinyDecoder`], *optional*): a
            cheaper decoder that GradOP and GradOP+'s painting loss differentiates through instead of the VAE's
            when a call passes none. Stable Diffusion checkpoints have none (the release's full-decoder
            optimisation); the toy model ships one, its VAE's decoder cut at 32² with a distilled head (as
            realistic, a third of the cost: README, "Speed").
            `painting_decoder=pipe.vae` in a call goes through the full VAE instead; `load_painting_decoder("toy")`
            (a small `AutoencoderTiny`, less realistic) is the other opt-in.
            (Called `guidance_decoder` before; "guidance" here means classifier-free guidance only.)
        painting_sigma_fraction (`float`, *optional*): the model's painting scale: σ of `painting_function="gaussian"`
            as a fraction of the image's shorter side, 0 < x < 0.5. `None` (the default) is the release's
            σ = 7·side/512 (kernel 35, σ 7 at 512x512). Saved in and loaded from `model_index.json` (`pipe.config`).
        method_defaults (`dict`, *optional*): the model's own defaults for GradOP+ (`strength`,
            `num_iterative_steps`, `grad_steps_per_iter`, `lr`) and GradOP (`strength`), e.g.
            `{"gradop_plus": {"strength": 0.6}}`; what it leaves out keeps `gradop.model_defaults.METHOD_DEFAULTS` (the
            release's 0.8 / 3 / 12, lr 0.1). Stable Diffusion declares none. Saved in `model_index.json` like the above.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["painting_decoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", X0_INPUT]  # x̂₀ of the step: see `denoise`

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: SchedulerMixin,
                 painting_decoder: AutoencoderTiny | TruncatedDecoder | TruncatedTinyDecoder | None = None,
                 painting_sigma_fraction: float | None = None, method_defaults: dict | None = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              painting_decoder=painting_decoder)
        if painting_sigma_fraction is not None:
            painting_sigma_fraction = checks.check_sigma_fraction(painting_sigma_fraction)
        if method_defaults is not None:
            method_defaults = check_method_defaults(method_defaults)
        # settings, not components
        self.register_to_config(painting_sigma_fraction=painting_sigma_fraction, method_defaults=method_defaults)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._call_lock = threading.RLock()
        self._interrupt = False

    @property
    def interrupt(self) -> bool:
        """diffusers' convention: set `pipe._interrupt = True` (e.g. in `callback_on_step_end`) to stop the call in
        progress; the remaining steps are skipped and the current latents decoded. Each call starts with it off."""
        return self._interrupt

    @property
    def guidance_decoder(self):
        """Deprecated name of the `painting_decoder` component."""
        warnings.warn("pipe.guidance_decoder is now pipe.painting_decoder", FutureWarning, stacklevel=2)
        return self.painting_decoder

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load like any diffusers pipeline (safetensors preferred). Unless `scheduler` is passed
        as an object, the sampler is the released DDIM configuration on the checkpoint's own noise
        schedule; `scheduler="euler"` etc. picks another by name."""
        scheduler = kwargs.pop("scheduler", None)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **_scheduler_object(scheduler), **kwargs)
        return _with_named_scheduler(pipe, scheduler, pipe.scheduler.config)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """Share the components of an existing (e.g. Stable Diffusion) pipeline; scheduler as in `from_pretrained`."""
        if getattr(pipeline, "text_encoder_2", None) is not None or "XL" in type(pipeline).__name__:
            raise ValueError(f"GradOPPipeline is for Stable Diffusion 1.x/2.x; {type(pipeline).__name__} has another "
                             "architecture. Use GradOP+ on it directly: pipe(prompt, callback_on_step_end="
                             "gradop.PaintingCallback(painting), ...), or gradop.CallbackPipeline(pipe) for every method")
        scheduler = kwargs.pop("scheduler", None)
        pipe = super().from_pipe(pipeline, **_scheduler_object(scheduler), **kwargs)
        return _with_named_scheduler(pipe, scheduler, pipeline.scheduler.config)

    # ------------------------------------------------------------------ public methods
    @synthesis_method
    @torch.no_grad()
    @_one_call_at_a_time
    def gradop_plus(
        self,
        prompt: str | list[str],
        image,
        strength: float | None = None,
        num_iterative_steps: int | None = None,
        grad_steps_per_iter: int | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        lr: float | None = None,
        optimizer="adam",
        painting_function="gaussian",
        blur_target: bool = False,
        optimize_target: str = "noisy",
        painting_decoder=None,
        freeze_decoder: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        regions: dict | None = None,
        region_weight: float = 0.4,
        region_image=None,
        region_step_fraction: float = 1.0,
        attention_store: AttentionStore | None = None,
        **deprecated,
    ):
        r"""
        GradOP+ (single pass): sample from the text, and after a few early steps pull the latent toward
        the painting by gradient descent through the decoder. With the defaults and the released DDIM
        scheduler this reproduces the authors' release for the same seed.

        Args:
            prompt (`str` or `list[str]`): what the image should show.
            image (path, `PIL.Image.Image`, array, tensor, or a list of them): the stroke painting. It is
                never encoded; it is resized (Lanczos) to the output size and used as the target `y`.
            strength (`float`, *optional*, defaults to the model's declared default, else the release's 0.8):
                *When* the optimisation starts, not SDEdit's strength: after step `k0 = int(n * (1 - strength))`
                (float truncation as released: n=50, 0.8 gives 9). Higher starts earlier.
            num_iterative_steps (`int`, *optional*, defaults to the model's declared default, else 3): K, how many
                consecutive steps get optimised.
            grad_steps_per_iter (`int`, *optional*, defaults to the model's declared default, else 12): N, gradient
                steps each time. (`config.method_defaults` declares a model's own; Stable Diffusion has none.)
            height, width (`int`, *optional*): output size; defaults to the painting's size, rounded down to a
                multiple of the VAE factor (8 for Stable Diffusion).
            num_inference_steps (`int`, *optional*, defaults to 50): denoising steps; all of them run.
            guidance_scale (`float`, *optional*, defaults to 7.5): classifier-free guidance weight (off at <= 1).
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional prompt, `""` by default.
            num_images_per_prompt (`int`, *optional*, defaults to 1): images per prompt.
            eta (`float`, *optional*, defaults to 0.0): DDIM's eta (schedulers without it ignore it).
            generator (`torch.Generator` or a list, one per image): every random draw goes through it:
                the start noise, then one draw per optimised step (release order).
            lr (`float`, *optional*, defaults to the model's declared default, else 0.1 as released): the
                optimiser's learning rate.
            optimizer (`str` or `torch.optim.Optimizer` class, *optional*, defaults to `"adam"`).
            painting_function (`str` or callable, *optional*, defaults to `"gaussian"`): f. `"gaussian"` is the
                released blur at the image's scale, σ = 7·side/512 on the shorter side (kernel 35, σ 7 at 512x512;
                5, 0.875 at 64x64), or the model's `config.painting_sigma_fraction`·side (`GaussianBlur.for_size`);
                `"median_palette"`; or any differentiable `f([B,3,H,W]) -> [B,3,H,W]` in [0, 1], used as it is:
                `gradop.painting.GaussianBlur(35, 7)` is the release's fixed blur at any size.
            blur_target (`bool`, *optional*, defaults to `False`): compare with f(y) instead of y. The release
                compares with the raw painting, so its loss can never reach zero.
            optimize_target (`"noisy"` or `"x0"`, *optional*, defaults to `"noisy"`): optimise the current noisy
                latent (as released) or the predicted clean latent x̂₀; either is then re-noised to the current level.
            latents (`torch.Tensor`, *optional*): the start noise ε `[batch, C, h, w]` instead of a draw from
                `generator` (the start is still z = √(1 − ᾱ_{t_0}) ε, as released); later draws use `generator`.
            painting_decoder (*optional*, defaults to the pipeline's `painting_decoder` component, else its VAE):
                the decoder the painting loss differentiates through, e.g. diffusers' `AutoencoderTiny` (TAESD) for
                Stable Diffusion, or `gradop.models.load_painting_decoder("toy")`; the final image is always decoded
                by the pipeline's VAE. Pass `pipe.vae` for the full decoder (the release's choice). It must map the
                same latents to images of the same size (`decode(z / config.scaling_factor).sample` in [-1, 1]).
                A small one is much faster and slightly less faithful (benchmarks/RESULTS.md). The old keyword
                `guidance_decoder` still works, with a warning.
            freeze_decoder (`bool`, *optional*, defaults to `True`): keep gradients out of the decoder's weights
                during the optimisation. `False` reproduces the release, whose decoder weights accumulate unused
                gradients: the same images, more time and memory (benchmarks/).
            output_type (`"pil"`, `"np"`, `"pt"` or `"latent"`, *optional*, defaults to `"pil"`).
            return_dict (`bool`, *optional*, defaults to `True`): return a `GradOPPipelineOutput`, else a tuple.
            callback_on_step_end (`Callable`, *optional*): `callback(pipe, step, timestep, tensors) -> dict`,
                called after every step; a returned `"latents"` replaces the latents.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): which of `latents`, `prompt_embeds`
                the callback receives.
            regions (`dict`, *optional*): what each painted colour becomes, `{"#2a7a2a": "forest"}`, or
                `{colour: (phrase, weight)}` with a per-region weight ρ (negative keeps the phrase *out* of the
                region). Phrases must be words of the prompt (else `ValueError`); a colour that covers no pixel is
                kept with a warning and has no effect. Cross-attention bias on the conditional branch (method.md §4,
                `gradop.regions`); the original attention processors are restored after the call.
            region_weight (`float`, *optional*, defaults to 0.4): w', the bias strength
                λ_t = w' log(1 + σ_t) max(QKᵀ/√d) (eDiff-I's η_t); 0 turns it off. 0.1–1 is the usual range.
            region_image (*optional*): the painting whose colours define the regions (one, or one per prompt);
                defaults to `image`, and is required by `text2img`. Its masks are resized to the output size
                (with a warning) when its size differs.
            region_step_fraction (`float`, *optional*, defaults to 1.0): the bias applies during this first
                fraction of each denoising pass.
            attention_store ([`~gradop.regions.AttentionStore`], *optional*): records the conditional branch's
                per-token cross-attention maps (for figures).

        Returns:
            [`GradOPPipelineOutput`] with `.images`, `.loss_history` and `.optimized_timesteps`.
        """
        # 1. Check inputs (the settings left out take the model's declared defaults, else the release's)
        painting_decoder = _renamed_keyword(deprecated, painting_decoder)
        with naming_declared_defaults(self, "gradop_plus", strength=strength, num_iterative_steps=num_iterative_steps):
            strength, num_iterative_steps, grad_steps_per_iter, lr = with_declared_defaults(
                self, "gradop_plus", strength=strength, num_iterative_steps=num_iterative_steps,
                grad_steps_per_iter=grad_steps_per_iter, lr=lr)
            self.check_inputs("gradop_plus", **_arguments(locals()))
        call = self._start_call(_arguments(locals()))

        # 2. Encode the prompt (with the unconditional half for classifier-free guidance)
        call.prompt_embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt,
                                                call.do_classifier_free_guidance)

        # 3. Prepare the painting y, the region binding and GradOP+ itself: the painting callback (`gradop.callback`)
        paintings = self.prepare_image(image, call, height, width)
        call.binding = self.prepare_regions(call, paintings)
        target = self._per_image((paintings + 1) / 2, call)  # y in [0, 1]
        call.guide = PaintingCallback(
            target, strength, num_iterative_steps, grad_steps_per_iter, lr,
            painting_function=self.prepare_painting_function(painting_function, target),
            painting_decoder=self.prepare_painting_decoder(painting_decoder, call), generator=generator,
            optimizer=optimizer, blur_target=blur_target, optimize_target=optimize_target,
            freeze_decoder=freeze_decoder,
        )
        call.guide.check_pipeline(self, "gradop_plus")

        # 4. Prepare timesteps and the start: zeros noised to t_0 (as released), z = √(1 − ᾱ_{t_0}) ε
        timesteps = self.get_timesteps(num_inference_steps)
        latents = self.prepare_latents(call, timesteps[:1], latents=latents)

        # 5. Denoise; after each step of the callback's window, pull the latent toward the painting
        with attention_control(self.unet, call.binding):
            latents = self.denoise(latents, timesteps, call)

        # 6. Decode
        return self._finish(latents, call)

    @synthesis_method
    @torch.no_grad()
    @_one_call_at_a_time
    def gradop(
        self,
        prompt: str | list[str],
        image,
        strength: float | None = None,
        grad_steps: int = 40,
        num_rounds: int = 1,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        lr: float = 0.1,
        optimizer="adam",
        painting_function="gaussian",
        blur_target: bool = False,
        painting_decoder=None,
        freeze_decoder: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        regions: dict | None = None,
        region_weight: float = 0.4,
        region_image=None,
        region_step_fraction: float = 1.0,
        attention_store: AttentionStore | None = None,
        **deprecated,
    ):
        r"""
        GradOP (multi-pass, paper Fig. 2b): (1) draw a text-only sample z_τ; (2) gradient descent on the
        clean latent toward the painting, z̃ = argmin L(f(D(z)), y) from z_τ; (3) map z̃ back to the
        target subspace with SDEdit at `strength`. Steps 2–3 repeat `num_rounds` times.

        Args:
            strength (`float`, *optional*, defaults to the model's declared default, else 0.6): SDEdit strength of
                step 3 (its usual meaning).
            grad_steps (`int`, *optional*, defaults to 40): gradient steps of step 2 in each round.
            num_rounds (`int`, *optional*, defaults to 1): repetitions of steps 2–3.
            Everything else (the region arguments included) as in [`~GradOPPipeline.gradop_plus`].
            `loss_history` holds one tensor per round.
        """
        # 1. Check inputs
        painting_decoder = _renamed_keyword(deprecated, painting_decoder)
        (strength,) = with_declared_defaults(self, "gradop", strength=strength)
        self.check_inputs("gradop", **_arguments(locals()))
        call = self._start_call(_arguments(locals()))

        # 2. Encode the prompt
        call.prompt_embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt,
                                                call.do_classifier_free_guidance)

        # 3. Prepare the painting y, the region binding and the painting guide (no window: GradOP descends apart)
        paintings = self.prepare_image(image, call, height, width)
        call.binding = self.prepare_regions(call, paintings)
        target = self._per_image((paintings + 1) / 2, call)
        guide = PaintingGuide(
            target=target, decoder=self.prepare_painting_decoder(painting_decoder, call),
            painting_function=self.prepare_painting_function(painting_function, target), grad_steps=grad_steps, lr=lr,
            optimizer=optimizer, blur_target=blur_target, freeze_decoder=freeze_decoder,
        )

        with attention_control(self.unet, call.binding):
            # 4. A sample from the target subspace: z_τ = Φ_τ(z_T)
            timesteps = self.get_timesteps(num_inference_steps)
            latents = self.denoise(self.prepare_latents(call, timesteps[:1], latents=latents), timesteps, call)
            for _ in range(num_rounds):
                if self.interrupt:
                    break
                # 5. Descend toward the painting: z̃ = argmin_z L(f(D(z)), y), starting at z_τ
                clean = guide.descend(latents).to(latents.dtype)
                # 6. Back to the target subspace: SDEdit from z̃
                latents = self._sdedit(clean, self.get_timesteps(num_inference_steps, strength), call)

        # 7. Decode
        call.guide = guide  # for its loss history
        return self._finish(latents, call)

    @synthesis_method
    def sdedit(self, prompt: str | list[str], image, strength: float = 0.8, **kwargs):
        r"""
        SDEdit (diffusers' img2img): encode the painting, noise it to `strength`, denoise with the prompt.
        The same computation as `StableDiffusionImg2ImgPipeline` for the same components, scheduler and seed.

        Args:
            strength (`float`, *optional*, defaults to 0.8): how much noise is added; the last
                `int(n * strength)` of the `n` steps run. 0 returns the VAE's reconstruction.
            **kwargs: `height`, `width`, `num_inference_steps`, `guidance_scale`, `negative_prompt`,
                `num_images_per_prompt`, `eta`, `generator`, `output_type`, `return_dict`,
                `callback_on_step_end`, `callback_on_step_end_tensor_inputs`, `regions`, `region_weight`,
                `region_image`, `region_step_fraction`, `attention_store`, as in [`~GradOPPipeline.gradop_plus`].
        """
        if "num_loops" in kwargs:
            raise TypeError("sdedit takes no num_loops: it is one SDEdit pass; use loopback(num_loops=...)")
        return self.loopback(prompt, image, strength, 1, **kwargs)

    @synthesis_method
    @torch.no_grad()
    @_one_call_at_a_time
    def loopback(
        self,
        prompt: str | list[str],
        image,
        strength: float = 0.8,
        num_loops: int = 2,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        regions: dict | None = None,
        region_weight: float = 0.4,
        region_image=None,
        region_step_fraction: float = 1.0,
        attention_store: AttentionStore | None = None,
    ):
        r"""
        Loopback: SDEdit applied `num_loops` times, each time to the decoded (clamped) output of the last.
        `num_loops=1` is exactly [`~GradOPPipeline.sdedit`]; `strength` as there, applied in every loop.
        Everything else as in [`~GradOPPipeline.gradop_plus`].
        """
        # 1. Check inputs
        self.check_inputs("loopback", **_arguments(locals()))
        call = self._start_call(_arguments(locals()))

        # 2. Encode the prompt
        call.prompt_embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt,
                                                call.do_classifier_free_guidance)

        # 3. Prepare the painting and the region binding
        images = self.prepare_image(image, call, height, width)
        call.binding = self.prepare_regions(call, images)

        # 4. SDEdit, re-encoding the previous output each loop
        latents = self._encode_images(images, call)
        with attention_control(self.unet, call.binding):
            for i in range(num_loops):
                if self.interrupt:
                    break
                if i:
                    decoded = self._decode(latents)
                    latents = self._encode_images(decoded.clamp(-1, 1), call)
                latents = self._sdedit(latents, self.get_timesteps(num_inference_steps, strength), call)

        # 5. Decode
        return self._finish(latents, call)

    @synthesis_method
    @torch.no_grad()
    @_one_call_at_a_time
    def text2img(
        self,
        prompt: str | list[str],
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        regions: dict | None = None,
        region_weight: float = 0.4,
        region_image=None,
        region_step_fraction: float = 1.0,
        attention_store: AttentionStore | None = None,
    ):
        r"""
        Text-only samples: the target subspace S_τ = D(Φ_τ(z_T)). As released, sampling starts from an
        all-zero latent noised to the first timestep, so this equals `gradop_plus` with
        `num_iterative_steps=0`. With `regions`, `region_image` gives the painting that defines them;
        everything else as in [`~GradOPPipeline.gradop_plus`].
        """
        # 1. Check inputs
        self.check_inputs("text2img", **_arguments(locals()))
        call = self._start_call(_arguments(locals()))
        default = self.unet.config.sample_size * self.vae_scale_factor
        call.height = check_side(default if height is None else height, "height", self.vae_scale_factor)
        call.width = check_side(default if width is None else width, "width", self.vae_scale_factor)

        # 2. Encode the prompt; 3. prepare the region binding, timesteps and the start
        call.prompt_embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt,
                                                call.do_classifier_free_guidance)
        call.binding = self.prepare_regions(call)
        timesteps = self.get_timesteps(num_inference_steps)
        latents = self.prepare_latents(call, timesteps[:1], latents=latents)

        # 4. Denoise; 5. decode
        with attention_control(self.unet, call.binding):
            latents = self.denoise(latents, timesteps, call)
        return self._finish(latents, call)

    # ------------------------------------------------------------------ the released pipeline's names
    def gradop_plus_stroke2img(self, prompt, stroke_img, strength=0.8, num_iterative_steps=3, grad_steps_per_iter=12,
                               generator=None, **kwargs) -> PIL.Image.Image:
        """Drop-in for the release: GradOP+ on one painting, returning one PIL image (the release's lr 0.1 too)."""
        kwargs.setdefault("lr", 0.1)
        return self.gradop_plus(prompt, stroke_img, strength, num_iterative_steps, grad_steps_per_iter,
                                generator=generator, **kwargs).images[0]

    def sdedit_img2img(self, prompt, image, strength=0.8, generator=None, **kwargs) -> PIL.Image.Image:
        """Drop-in for the release: SDEdit on one image, returning one PIL image."""
        return self.sdedit(prompt, image, strength, generator=generator, **kwargs).images[0]

    def text2img_prediction(self, prompt, num_images_per_prompt=1, generator=None, **kwargs) -> GradOPPipelineOutput:
        """Drop-in for the release: text-only samples, returning the output object."""
        return self.text2img(prompt, num_images_per_prompt=num_images_per_prompt, generator=generator, **kwargs)

    # ------------------------------------------------------------------ building blocks, in call order
    @classmethod
    def check_inputs(cls, method: str, prompt, image=None, **arguments) -> None:
        """Validate every argument of `method` (`"gradop_plus"`, `"gradop"`, `"sdedit"`, `"loopback"`,
        `"text2img"`) before any work: a `ValueError`/`TypeError` naming the argument and the fix.

        Validation only, and no model needed (the CLI and the sweep call it before loading one). What
        depends on the model (image sizes against its VAE factor, the scheduler, the painting decoder) is
        checked where it is prepared. The painting itself is read by `prepare_image`.
        """
        if not isinstance(method, str) or method not in synthesis_methods(cls):
            raise ValueError(f"method must be one of {synthesis_methods(cls)} (gradop.methods.METHODS), got {method!r}")
        prompts = checks.check_prompts(prompt)
        if method != "text2img" and image is None:
            raise TypeError(f"{method} needs the painting as image: a file path, PIL image, numpy array or torch tensor")
        for name, value in arguments.items():
            if name in checks.ARGUMENT_CHECKS and value is not None:
                checks.ARGUMENT_CHECKS[name](value, name)
        batch = len(prompts) * arguments.get("num_images_per_prompt", 1)
        checks.check_generator(arguments.get("generator"), batch)
        if arguments.get("negative_prompt") is not None:
            checks.check_negative_prompts(arguments["negative_prompt"], len(prompts))
        checks.check_callback(arguments.get("callback_on_step_end"),
                              arguments.get("callback_on_step_end_tensor_inputs", ()), cls._callback_tensor_inputs)
        store = arguments.get("attention_store")
        if store is not None and not isinstance(store, AttentionStore):
            raise TypeError(f"attention_store must be a gradop.regions.AttentionStore, got {type(store).__name__}")
        regions = arguments.get("regions")
        if _binds_regions(regions):
            parse_regions(regions)
            if method == "text2img" and arguments.get("region_image") is None:
                raise ValueError("regions need a painting whose colours define them: pass region_image=<the painting>")
        if method == "gradop_plus":  # (a setting left as None takes the model's default: checked when it is known)
            steps = arguments.get("num_inference_steps", 50)
            strength, k = arguments.get("strength"), arguments.get("num_iterative_steps")
            if strength is not None and k is not None:
                check_window(optimisation_window(steps, strength, k), steps)

    def encode_prompt(self, prompt, num_images_per_prompt=1, negative_prompt=None, do_classifier_free_guidance=True):
        """Text embeddings `[batch, seq, dim]`, with the unconditional ones first when guiding (as diffusers)."""
        prompts = checks.check_prompts(prompt)
        texts = prompts
        if do_classifier_free_guidance:
            texts = checks.check_negative_prompts(negative_prompt, len(prompts)) + prompts
        max_length = self.tokenizer.model_max_length
        for text in prompts:
            tokens = self.tokenizer.tokenize(text)  # without start/end tokens, which take 2 of the max_length places
            if len(tokens) > max_length - 2:
                dropped = self.tokenizer.convert_tokens_to_string(tokens[max_length - 2:])
                shown = dropped if len(dropped) <= 60 else dropped[:57] + "..."
                warnings.warn(f"prompt is longer than the tokenizer's {max_length} tokens and was truncated; "
                              f"{len(tokens) - max_length + 2} tokens dropped, from {shown!r}", stacklevel=3)
        ids = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                             return_tensors="pt").input_ids
        embeds = self.text_encoder(ids.to(self._execution_device))[0].to(self.unet.dtype)
        return embeds.repeat_interleave(num_images_per_prompt, dim=0)

    def prepare_image(self, image, call: _Call, height=None, width=None) -> torch.Tensor:
        """The painting(s) as `[-1, 1]` tensors at the output size, which this sets on `call`: explicit
        `height`/`width`, else the (first) painting's own size, as multiples of the VAE factor."""
        pils, names = self._load_images(image, "image", len(call.prompt))
        call.height, call.width = output_size(pils[0], height, width, self.vae_scale_factor, names[0])
        for pil, name in zip(pils[1:], names[1:]):
            output_size(pil, call.height, call.width, self.vae_scale_factor, name)  # size limits only
        return self.image_processor.preprocess(pils, height=call.height, width=call.width).to(self._execution_device)

    def prepare_regions(self, call: _Call, paintings: torch.Tensor | None = None) -> RegionBinding | None:
        """The region binding of the call (`gradop.regions`): `None` without regions or an attention store.
        The colours come from `region_image`, else from the painting."""
        regions, store, size = call.regions, call.attention_store, (call.height, call.width)
        if not _binds_regions(regions):
            return None if store is None else RegionBinding.empty(call.batch_size, size, store)
        if call.region_image is not None:
            images, names = self._load_images(call.region_image, "region_image", len(call.prompt))
        else:
            images, names = self._load_images(((paintings.float().cpu() + 1) / 2).clamp(0, 1), "image", len(call.prompt))
        return bind_regions(regions, call.prompt, self.tokenizer, images, names, call.batch_size, size,
                            region_weight=call.region_weight, step_fraction=call.region_step_fraction,
                            schedule=NoiseSchedule.of(self.scheduler), store=store)

    def prepare_painting_function(self, painting_function, target: torch.Tensor):
        """f for `target` ([B,3,H,W] in [0,1]): `"gaussian"` at its size and the model's painting scale."""
        return get_painting_function(painting_function, target, self.config.painting_sigma_fraction)

    def prepare_painting_decoder(self, painting_decoder, call: _Call):
        """The decoder the painting loss differentiates through: the call's, else the pipeline's `painting_decoder`
        component, else the VAE; checked to turn this call's latents into images of its size."""
        decoder = self.painting_decoder if painting_decoder is None else painting_decoder
        if decoder is None or decoder is self.vae:
            return self.vae
        latent_shape = (self.vae.config.latent_channels, call.height // self.vae_scale_factor,
                        call.width // self.vae_scale_factor)
        return check_painting_decoder(decoder, latent_shape, (call.height, call.width))

    def get_timesteps(self, num_inference_steps: int, strength: float | None = None) -> torch.Tensor:
        """The sampler's timesteps: all `n`, or for SDEdit the last int(n·strength) (t_start = n − int(n·s))."""
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        if strength is None:
            return self.scheduler.timesteps
        t_start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)
        return self.scheduler.timesteps[t_start * self.scheduler.order:]

    def prepare_latents(self, call: _Call, timestep: torch.Tensor, image_latents=None, latents=None) -> torch.Tensor:
        """The start of sampling at `timestep`, q(z_t | z_0) = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, with ε from the call's
        generator (or `latents`, the user's ε). z_0 is the encoded painting for SDEdit, else zeros: the release
        starts text-only sampling and GradOP+ from z = √(1 − ᾱ_{t_0}) ε (≈ 0.9971 ε for DDIM)."""
        f = self.vae_scale_factor
        shape = tuple(image_latents.shape) if image_latents is not None else (
            call.batch_size, self.unet.config.in_channels, call.height // f, call.width // f)
        if latents is None:
            noise = randn_tensor(shape, generator=call.generator, device=self._execution_device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (batch, channels, height/{f}, width/{f}), "
                             f"got {tuple(latents.shape)}")
        else:
            noise = latents.to(self._execution_device, torch.float32)
        clean = torch.zeros_like(noise) if image_latents is None else image_latents.float()
        return NoiseSchedule.of(self.scheduler).noise_to(clean, noise, timestep).to(self.unet.dtype)

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        """`eta` and `generator` for schedulers whose `step` takes them (DDIM's η, ancestral samplers)."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, call: _Call) -> torch.Tensor:
        """The one sampling loop of every method: UNet with classifier-free guidance, the scheduler's step, then
        GradOP+'s painting callback (`PaintingCallback`, which acts inside its window) and the user's callback."""
        painting = call.guide if isinstance(call.guide, PaintingCallback) else None
        wants_x0 = X0_INPUT in (painting.tensor_inputs if painting else ()) or X0_INPUT in (
            call.callback_on_step_end_tensor_inputs if call.callback_on_step_end else ())
        schedule, binding = NoiseSchedule.of(self.scheduler), call.binding
        extra_step_kwargs = self.prepare_extra_step_kwargs(call.generator, call.eta)
        self._num_timesteps = len(timesteps)  # what callbacks read, as in diffusers' pipelines
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if binding is not None:
                    binding.start_step(i, len(timesteps), t)  # σ_t of the region bias
                model_input = torch.cat([latents] * 2) if call.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(model_input, t, encoder_hidden_states=call.prompt_embeds, return_dict=False)[0]
                if call.do_classifier_free_guidance:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + call.guidance_scale * (noise_text - noise_uncond)  # ε_∅ + w (ε_τ − ε_∅)
                x0 = schedule.predict_x0(model_input[-len(latents):], noise_pred, t) if wants_x0 else None
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                self._check_finite(latents, i, "after the scheduler's step", call)

                if painting is not None:  # GradOP+: inside its window, pull z_{t_{i+1}} toward the painting
                    windows = len(painting.loss_history)
                    latents = painting(self, i, t, {"latents": latents, X0_INPUT: x0})["latents"]
                    if len(painting.loss_history) > windows and len(painting.loss_history[-1]):
                        progress_bar.set_postfix(painting_loss=float(painting.loss_history[-1][-1].mean()))
                if call.callback_on_step_end is not None:
                    latents = self._step_callback(call, i, t, latents, x0)
                    self._check_finite(latents, i, "as callback_on_step_end returned them", call)
                progress_bar.update()
        return latents

    def _sdedit(self, clean: torch.Tensor, timesteps: torch.Tensor, call: _Call) -> torch.Tensor:
        """SDEdit from clean latents: noise them to the first of `timesteps`, then denoise (no steps: unchanged)."""
        if not len(timesteps):
            return clean
        return self.denoise(self.prepare_latents(call, timesteps[:1], clean), timesteps, call)

    def _step_callback(self, call: _Call, i: int, t, latents: torch.Tensor, x0=None) -> torch.Tensor:
        """diffusers' `callback_on_step_end`: it sees the tensors it asked for; returned ones replace them."""
        tensors = {"latents": latents, "prompt_embeds": call.prompt_embeds, X0_INPUT: x0}
        returned = call.callback_on_step_end(self, i, t, {k: tensors[k] for k in call.callback_on_step_end_tensor_inputs})
        if returned is None:
            return latents
        if not isinstance(returned, Mapping):
            raise TypeError("callback_on_step_end must return a dict of tensors (or None), e.g. `return tensors`; "
                            f"it returned a {type(returned).__name__}")
        for name, before in (("latents", latents), ("prompt_embeds", call.prompt_embeds)):
            after = returned.get(name, before)
            # a latent of another shape would decode to another image size (or fail deep in the UNet) unremarked
            if not isinstance(after, torch.Tensor) or after.shape != before.shape:
                raise ValueError(f"callback_on_step_end returned {name!r} of shape "
                                 f"{tuple(getattr(after, 'shape', ())) or type(after).__name__} at step {i}; it must "
                                 f"keep the shape {tuple(before.shape)} it was given")
        call.prompt_embeds = returned.get("prompt_embeds", call.prompt_embeds)
        return returned.get("latents", latents)

    def _encode_images(self, images: torch.Tensor, call: _Call) -> torch.Tensor:
        """Posterior samples of the VAE, scaled; one image per generator when given a list (as diffusers)."""
        images, batch, generator = images.to(self._execution_device, self.vae.dtype), call.batch_size, call.generator
        if isinstance(generator, list):
            images = images.repeat_interleave(batch // len(images), dim=0) if len(images) < batch else images
            latents = torch.cat([self.vae.encode(images[i:i + 1]).latent_dist.sample(generator[i]) for i in range(batch)])
        else:
            latents = self.vae.encode(images).latent_dist.sample(generator)
            latents = latents.repeat_interleave(batch // len(latents), dim=0)
        return LatentScaling.of(self.vae).from_encoder(latents)

    def _finish(self, latents: torch.Tensor, call: _Call):
        """Decode (unless `output_type="latent"`), post-process, and package every output field."""
        if call.output_type == "latent":
            images = latents
        else:
            decoded = self._decode(latents).float()
            expected = tuple(side * self.vae_scale_factor for side in latents.shape[-2:])
            if tuple(decoded.shape[-2:]) != expected:  # diffusers' tiled decoding, with tiles that do not fit
                raise ValueError(f"pipe.vae.enable_tiling() decoded a {expected} image as {tuple(decoded.shape[-2:])}: "
                                 "set pipe.vae.tile_latent_min_size to a multiple of 4 (and tile_sample_min_size to "
                                 f"{self.vae_scale_factor}x it), or disable tiling")
            if not torch.isfinite(decoded).all():
                raise FloatingPointError(f"the decoded image contains NaN/inf{self._overflow_advice()}")
            images = self.image_processor.postprocess(decoded, output_type=call.output_type)
        self.maybe_free_model_hooks()
        guide = call.guide
        output = GradOPPipelineOutput(images=images, loss_history=guide.loss_history if guide else [],
                                      optimized_timesteps=guide.optimized_timesteps if guide else [])
        return output if call.return_dict else output.to_tuple()

    def _check_finite(self, latents: torch.Tensor, i: int, where: str, call: _Call) -> None:
        """Stop at the step where the latents stop being finite, with the knobs that can cause it (one reduction
        per step; otherwise NaN only shows in the decoded image, or not at all with `output_type="latent"`)."""
        if not torch.isfinite(latents).all():
            raise FloatingPointError(
                f"the latents became NaN/inf at step {i} of {self._num_timesteps} {where}"
                f"{self._overflow_advice()}; check guidance_scale (got {call.guidance_scale:g}), eta (got "
                f"{call.eta:g}), lr, and what callbacks return")

    def _overflow_advice(self) -> str:
        dtype = self.unet.dtype if hasattr(self, "unet") else self.vae.dtype
        if dtype == torch.float16:  # only half precision overflows at sane settings
            return " (half precision overflow?): load the models in dtype=torch.float32 or torch.bfloat16"
        return ""

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """D(z) in [-1, 1] by the VAE, with its latent scaling (and in float32 if it must be: `force_upcast`)."""
        return decode_latents(self.vae, latents)

    # ------------------------------------------------------------------ small helpers
    def _start_call(self, arguments: dict) -> _Call:
        self._interrupt = False
        return _Call.from_arguments(arguments)

    @staticmethod
    def _per_image(tensor: torch.Tensor, call: _Call) -> torch.Tensor:
        """One row per image of the batch: each prompt's row repeated (or the single row for all)."""
        return tensor.repeat_interleave(call.batch_size // len(tensor), dim=0)

    @staticmethod
    def _load_images(image, name: str, num_prompts: int):
        """`image` (one, or one per prompt) as RGB PIL images, with the names errors will use."""
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            image = list(image)
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError(f"{name} must not be an empty list")
        if len(images) not in (1, num_prompts):
            raise ValueError(f"{name} has {len(images)} entries but prompt has {num_prompts}; "
                             "give one image for all prompts or one per prompt")
        names = [name] if len(images) == 1 else [f"{name}[{i}]" for i in range(len(images))]
        return [load_image(im, n) for im, n in zip(images, names)], names


def _binds_regions(regions) -> bool:
    """`regions=None` and `regions={}` both mean no binding."""
    return regions is not None and not (isinstance(regions, Mapping) and not regions)


def _scheduler_object(scheduler) -> dict:
    """The `scheduler` keyword for diffusers' loaders when it is an object; a name is applied afterwards."""
    return {} if scheduler is None or isinstance(scheduler, str) else {"scheduler": scheduler}


def _with_named_scheduler(pipe, scheduler, config):
    """Unless a scheduler object was given: the named one (the released DDIM by default) on `config`'s schedule."""
    if scheduler is None or isinstance(scheduler, str):
        pipe.scheduler = make_scheduler(scheduler or "ddim", config)
    return pipe


def _renamed_keyword(extra: dict, painting_decoder):
    """`guidance_decoder=` is the old name of `painting_decoder=` (with a warning); other unknown keywords fail."""
    unknown = sorted(set(extra) - {"guidance_decoder"})
    if unknown:
        raise TypeError(f"got an unexpected keyword argument {unknown[0]!r}")
    if "guidance_decoder" not in extra:
        return painting_decoder
    warnings.warn("guidance_decoder= is now called painting_decoder= (\"guidance\" means classifier-free guidance)",
                  FutureWarning, stacklevel=4)
    if painting_decoder is not None:
        raise TypeError("pass painting_decoder= only; guidance_decoder= is its old name")
    return extra["guidance_decoder"]
