"""`GradOPPipeline`: text-only sampling, SDEdit, loopback, GradOP and GradOP+ on one denoising loop.

Every method shares the same pieces, in diffusers' style: prompt encoding with classifier-free
guidance, a start latent (noised zeros, or an encoded image noised to `strength`), `_denoise`
(the one sampling loop) and `_finish` (decode and post-process). GradOP+ adds a *painting guide*
to the loop: after chosen steps, the current latent is pulled toward the user's strokes by
gradient descent through the decoder, then re-noised to the current level (method.md §3).
"""
import inspect
import warnings
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
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
from .images import check_side, load_image, output_size
from .optimize import decode_in_tiles, frozen, optimize_latents
from .painting import get_painting_function
from .regions import AttentionStore, RegionBinding, attention_control, bind_regions
from .schedulers import make_scheduler


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
class _PaintingGuide:
    """Everything the loop needs to pull latents toward the painting after the steps in `steps`."""

    target: torch.Tensor  # [B, 3, H, W] in [0, 1]
    painting_function: Callable
    steps: range
    grad_steps: int
    lr: float
    optimizer: object
    blur_target: bool
    optimize_target: str
    generator: object
    decoder: object = None  # the decoder differentiated through (the pipeline's VAE when None)
    history: list = field(default_factory=list)
    timesteps: list = field(default_factory=list)


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
        guidance_decoder ([`AutoencoderTiny`], *optional*): a small decoder that GradOP and GradOP+
            differentiate through instead of the VAE's when a call passes none. Stable Diffusion checkpoints
            have none (the release's full-decoder optimisation); the toy model ships one distilled from its VAE
            (`gradop.toy.distill`), which makes GradOP+ on a CPU nearly as cheap as text-only sampling at the same
            faithfulness; GradOP's longer descent loses a little through it (reports/toy/report.md).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["guidance_decoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: SchedulerMixin, guidance_decoder: AutoencoderTiny | None = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              guidance_decoder=guidance_decoder)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._binding = None  # the region binding of the call in progress, read by `_denoise`
        # Backward through the decoder computes only what the latent needs. False reproduces the release, whose
        # decoder weights accumulate (unused) gradients: same images, more time and memory (benchmarks/).
        self.freeze_decoder = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load like any diffusers pipeline (safetensors preferred). Unless `scheduler` is passed
        as an object, the sampler is the released DDIM configuration on the checkpoint's own noise
        schedule; `scheduler="euler"` etc. picks another by name."""
        scheduler = kwargs.pop("scheduler", None)
        if scheduler is not None and not isinstance(scheduler, str):
            kwargs["scheduler"] = scheduler
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if scheduler is None or isinstance(scheduler, str):
            pipe.scheduler = make_scheduler(scheduler or "ddim", pipe.scheduler.config)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """Share the components of an existing (e.g. Stable Diffusion) pipeline; scheduler as in `from_pretrained`."""
        scheduler = kwargs.pop("scheduler", None)
        if scheduler is not None and not isinstance(scheduler, str):
            kwargs["scheduler"] = scheduler
        pipe = super().from_pipe(pipeline, **kwargs)
        if scheduler is None or isinstance(scheduler, str):
            pipe.scheduler = make_scheduler(scheduler or "ddim", pipeline.scheduler.config)
        return pipe

    # ------------------------------------------------------------------ public methods
    @torch.no_grad()
    def gradop_plus(
        self,
        prompt: str | list[str],
        image,
        strength: float = 0.8,
        num_iterative_steps: int = 3,
        grad_steps_per_iter: int = 12,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        lr: float = 0.1,
        optimizer="adam",
        painting_function="gaussian",
        blur_target: bool = False,
        optimize_target: str = "noisy",
        guidance_decoder=None,
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
        GradOP+ (single pass): sample from the text, and after a few early steps pull the latent toward
        the painting by gradient descent through the decoder. With the defaults and the released DDIM
        scheduler this reproduces the authors' release for the same seed.

        Args:
            prompt (`str` or `list[str]`): what the image should show.
            image (path, `PIL.Image.Image`, array, tensor, or a list of them): the stroke painting. It is
                never encoded; it is resized (Lanczos) to the output size and used as the target `y`.
            strength (`float`, *optional*, defaults to 0.8):
                *When* the optimisation starts, not SDEdit's strength: after step `k0 = int(n * (1 - strength))`
                (float truncation as released: n=50, 0.8 gives 9). Higher starts earlier.
            num_iterative_steps (`int`, *optional*, defaults to 3): K, how many consecutive steps get optimised.
            grad_steps_per_iter (`int`, *optional*, defaults to 12): N, gradient steps each time.
            height, width (`int`, *optional*): output size; defaults to the painting's size, rounded down to a
                multiple of the VAE factor (8 for Stable Diffusion).
            num_inference_steps (`int`, *optional*, defaults to 50): denoising steps; all of them run.
            guidance_scale (`float`, *optional*, defaults to 7.5): classifier-free guidance weight (off at <= 1).
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional prompt, `""` by default.
            num_images_per_prompt (`int`, *optional*, defaults to 1): images per prompt.
            eta (`float`, *optional*, defaults to 0.0): DDIM's eta (schedulers without it ignore it).
            generator (`torch.Generator` or a list, one per image): every random draw goes through it:
                the start noise, then one draw per optimised step (release order).
            lr (`float`, *optional*, defaults to 0.1): the optimiser's learning rate.
            optimizer (`str` or `torch.optim.Optimizer` class, *optional*, defaults to `"adam"`).
            painting_function (`str` or callable, *optional*, defaults to `"gaussian"`): `"gaussian"`
                (released blur), `"median_palette"`, or any differentiable `f([B,3,H,W]) -> [B,3,H,W]` in [0, 1].
            blur_target (`bool`, *optional*, defaults to `False`): compare with f(y) instead of y. The release
                compares with the raw painting, so its loss can never reach zero.
            optimize_target (`"noisy"` or `"x0"`, *optional*, defaults to `"noisy"`): optimise the current noisy
                latent (as released) or the predicted clean latent x̂₀; either is then re-noised to the current level.
            guidance_decoder (*optional*, defaults to the pipeline's `guidance_decoder` component, else its VAE):
                the decoder the optimisation differentiates through, e.g. diffusers' `AutoencoderTiny` (TAESD) for
                Stable Diffusion, or `gradop.models.load_guidance_decoder("toy")`; the final image is always decoded
                by the pipeline's VAE. Pass `pipe.vae` for the full decoder (the release's choice). It must map the
                same latents to images of the same size (`decode(z / config.scaling_factor).sample` in [-1, 1]).
                A small one is much faster and slightly less faithful (benchmarks/RESULTS.md).
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
                η_t = w' log(1 + σ_t) max(QKᵀ/√d); 0 turns it off. 0.1–1 is the usual range.
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
        # 1. Check inputs
        strength = checks.check_fraction(strength, "strength")
        num_iterative_steps = checks.check_count(num_iterative_steps, "num_iterative_steps")
        grad_steps_per_iter = checks.check_count(grad_steps_per_iter, "grad_steps_per_iter")
        num_inference_steps = checks.check_count(num_inference_steps, "num_inference_steps", 1)
        first = int(num_inference_steps * (1 - strength))  # k0, truncated as released
        if num_iterative_steps and first + num_iterative_steps > num_inference_steps - 1:
            raise ValueError(
                f"the optimisation window (steps {first}..{first + num_iterative_steps - 1}) must end before the last "
                f"step {num_inference_steps - 1}: raise strength, or lower num_iterative_steps, or add steps"
            )
        self._check_guidable()
        batch = self._check_common(prompt, num_images_per_prompt, guidance_scale, generator, output_type,
                                   callback_on_step_end, callback_on_step_end_tensor_inputs)
        self._check_optimisation(lr, optimize_target)
        paintings, height, width = self._prepare_images(image, batch, num_images_per_prompt, height, width)
        target = self._expand((paintings + 1) / 2, batch)  # y in [0, 1]
        binding = self._bind_regions(regions, region_weight, region_image, region_step_fraction, attention_store,
                                     prompt, batch, height, width, paintings)
        guide = _PaintingGuide(
            target=target, painting_function=get_painting_function(painting_function, target),
            steps=range(first, first + num_iterative_steps), grad_steps=grad_steps_per_iter, lr=lr,
            optimizer=optimizer, blur_target=blur_target, optimize_target=optimize_target, generator=generator,
            decoder=self._check_guidance_decoder(guidance_decoder, height, width),
        )

        # 2. Encode the prompt (with the unconditional half for classifier-free guidance)
        embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt, guidance_scale > 1)

        # 3. Sample from noised zeros with the painting guide in the loop (and any region bias in the attention)
        with self._region_attention(binding):
            latents = self._sample_from_noise(
                embeds, batch, height, width, num_inference_steps, guidance_scale, generator, eta, guide,
                callback_on_step_end, callback_on_step_end_tensor_inputs,
            )

        # 4. Decode
        return self._finish(latents, output_type, return_dict, guide.history, guide.timesteps)

    @torch.no_grad()
    def gradop(
        self,
        prompt: str | list[str],
        image,
        strength: float = 0.6,
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
        lr: float = 0.1,
        optimizer="adam",
        painting_function="gaussian",
        blur_target: bool = False,
        guidance_decoder=None,
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
        GradOP (multi-pass, paper Fig. 2b): (1) draw a text-only sample z_τ; (2) gradient descent on the
        clean latent toward the painting, z̃ = argmin L(f(D(z)), y) from z_τ; (3) map z̃ back to the
        target subspace with SDEdit at `strength`. Steps 2–3 repeat `num_rounds` times.

        Args:
            strength (`float`, *optional*, defaults to 0.6): SDEdit strength of step 3 (its usual meaning).
            grad_steps (`int`, *optional*, defaults to 40): gradient steps of step 2 in each round.
            num_rounds (`int`, *optional*, defaults to 1): repetitions of steps 2–3.
            Everything else (the region arguments included) as in [`~GradOPPipeline.gradop_plus`].
            `loss_history` holds one tensor per round.
        """
        # 1. Check inputs
        strength = checks.check_fraction(strength, "strength")
        grad_steps = checks.check_count(grad_steps, "grad_steps")
        num_rounds = checks.check_count(num_rounds, "num_rounds", 1)
        num_inference_steps = checks.check_count(num_inference_steps, "num_inference_steps", 1)
        batch = self._check_common(prompt, num_images_per_prompt, guidance_scale, generator, output_type,
                                   callback_on_step_end, callback_on_step_end_tensor_inputs)
        checks.check_positive(lr, "lr")
        paintings, height, width = self._prepare_images(image, batch, num_images_per_prompt, height, width)
        target = self._expand((paintings + 1) / 2, batch)
        binding = self._bind_regions(regions, region_weight, region_image, region_step_fraction, attention_store,
                                     prompt, batch, height, width, paintings)
        painting_fn = get_painting_function(painting_function, target)
        decoder = self._check_guidance_decoder(guidance_decoder, height, width)
        embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt, guidance_scale > 1)
        loop = dict(guidance_scale=guidance_scale, generator=generator, eta=eta, callback=callback_on_step_end,
                    callback_inputs=callback_on_step_end_tensor_inputs)

        with self._region_attention(binding):
            # 2. A sample from the target subspace: z_τ = Φ_τ(z_T)
            latents = self._sample_from_noise(embeds, batch, height, width, num_inference_steps, guide=None, **loop)
            history = []
            for _ in range(num_rounds):
                # 3. Descend toward the painting: z̃ = argmin_z L(f(D(z)), y), starting at z_τ
                clean, losses = self._descend(latents, target, painting_fn, grad_steps, lr, optimizer, blur_target,
                                              decoder)
                history.append(losses)
                # 4. Back to the target subspace: SDEdit from z̃
                latents = self._sdedit_latents(clean.to(latents.dtype), strength, embeds, num_inference_steps, **loop)

        # 5. Decode
        return self._finish(latents, output_type, return_dict, history, [])

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
        return self.loopback(prompt, image, strength, 1, **kwargs)

    @torch.no_grad()
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
        strength = checks.check_fraction(strength, "strength")
        num_loops = checks.check_count(num_loops, "num_loops", 1)
        num_inference_steps = checks.check_count(num_inference_steps, "num_inference_steps", 1)
        batch = self._check_common(prompt, num_images_per_prompt, guidance_scale, generator, output_type,
                                   callback_on_step_end, callback_on_step_end_tensor_inputs)
        images, height, width = self._prepare_images(image, batch, num_images_per_prompt, height, width)
        binding = self._bind_regions(regions, region_weight, region_image, region_step_fraction, attention_store,
                                     prompt, batch, height, width, images)

        # 2. Encode the prompt
        embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt, guidance_scale > 1)

        # 3. SDEdit, re-encoding the previous output each loop
        loop = dict(guidance_scale=guidance_scale, generator=generator, eta=eta, callback=callback_on_step_end,
                    callback_inputs=callback_on_step_end_tensor_inputs)
        latents = self._encode_images(images, batch, generator)
        with self._region_attention(binding):
            for i in range(num_loops):
                if i:
                    decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
                    latents = self._encode_images(decoded.clamp(-1, 1), len(latents), generator)
                latents = self._sdedit_latents(latents, strength, embeds, num_inference_steps, **loop)

        # 4. Decode
        return self._finish(latents, output_type, return_dict, [], [])

    @torch.no_grad()
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
        num_inference_steps = checks.check_count(num_inference_steps, "num_inference_steps", 1)
        batch = self._check_common(prompt, num_images_per_prompt, guidance_scale, generator, output_type,
                                   callback_on_step_end, callback_on_step_end_tensor_inputs)
        default = self.unet.config.sample_size * self.vae_scale_factor
        height = check_side(default if height is None else height, "height", self.vae_scale_factor)
        width = check_side(default if width is None else width, "width", self.vae_scale_factor)
        binding = self._bind_regions(regions, region_weight, region_image, region_step_fraction, attention_store,
                                     prompt, batch, height, width)

        # 2. Encode the prompt; 3. sample; 4. decode
        embeds = self.encode_prompt(prompt, num_images_per_prompt, negative_prompt, guidance_scale > 1)
        with self._region_attention(binding):
            latents = self._sample_from_noise(embeds, batch, height, width, num_inference_steps, guidance_scale, generator,
                                              eta, None, callback_on_step_end, callback_on_step_end_tensor_inputs)
        return self._finish(latents, output_type, return_dict, [], [])

    # ------------------------------------------------------------------ the released pipeline's names
    def gradop_plus_stroke2img(self, prompt, stroke_img, strength=0.8, num_iterative_steps=3, grad_steps_per_iter=12,
                               generator=None, **kwargs) -> PIL.Image.Image:
        """Drop-in for the release: GradOP+ on one painting, returning one PIL image."""
        return self.gradop_plus(prompt, stroke_img, strength, num_iterative_steps, grad_steps_per_iter,
                                generator=generator, **kwargs).images[0]

    def sdedit_img2img(self, prompt, image, strength=0.8, generator=None, **kwargs) -> PIL.Image.Image:
        """Drop-in for the release: SDEdit on one image, returning one PIL image."""
        return self.sdedit(prompt, image, strength, generator=generator, **kwargs).images[0]

    def text2img_prediction(self, prompt, num_images_per_prompt=1, generator=None, **kwargs) -> GradOPPipelineOutput:
        """Drop-in for the release: text-only samples, returning the output object."""
        return self.text2img(prompt, num_images_per_prompt=num_images_per_prompt, generator=generator, **kwargs)

    # ------------------------------------------------------------------ building blocks
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
                warnings.warn(f"prompt is longer than the tokenizer's {max_length} tokens and was truncated; "
                              f"dropped: {dropped!r}", stacklevel=3)
        ids = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                             return_tensors="pt").input_ids
        embeds = self.text_encoder(ids.to(self._execution_device))[0].to(self.unet.dtype)
        return embeds.repeat_interleave(num_images_per_prompt, dim=0)

    def _sample_from_noise(self, embeds, batch, height, width, num_inference_steps, guidance_scale, generator, eta,
                           guide, callback, callback_inputs):
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=torch.float32)
        # The released start: an all-zero latent diffused to t_0, z = sqrt(1 - ᾱ_t0) ε (≈ 0.9971 ε for DDIM)
        latents = self.scheduler.add_noise(torch.zeros_like(noise), noise, timesteps[:1].repeat(batch))
        return self._denoise(latents.to(self.unet.dtype), timesteps, embeds, guidance_scale, generator, eta, guide,
                             callback, callback_inputs)

    def _sdedit_latents(self, latents, strength, embeds, num_inference_steps, guidance_scale, generator, eta,
                        callback, callback_inputs):
        """Noise clean `latents` to `strength` and denoise them: the last int(n·strength) of n steps."""
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        t_start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
        timesteps = self.scheduler.timesteps[t_start * self.scheduler.order:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)
        if len(timesteps) == 0:
            return latents
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
        latents = self.scheduler.add_noise(latents.float(), noise, timesteps[:1].repeat(len(latents)))
        return self._denoise(latents.to(self.unet.dtype), timesteps, embeds, guidance_scale, generator, eta, None,
                             callback, callback_inputs)

    def _denoise(self, latents, timesteps, embeds, guidance_scale, generator, eta, guide, callback, callback_inputs):
        """The one sampling loop: UNet with classifier-free guidance, scheduler step, optional painting guide."""
        do_cfg = guidance_scale > 1
        step_kwargs = self._step_kwargs(generator, eta)
        binding = self._binding
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if binding is not None:
                    binding.start_step(i, len(timesteps), t)  # sets this step's η_t for the attention processors
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
                if do_cfg:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    # ε̂ = ε_∅ + w (ε_τ − ε_∅)
                    noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                wants_x0 = guide is not None and i in guide.steps and guide.optimize_target == "x0"
                x0 = self._predict_x0(model_input[-len(latents):], noise_pred, t) if wants_x0 else None
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]

                if guide is not None and i in guide.steps:
                    latents = self._guide(guide, latents, timesteps[i + 1], x0)
                    if len(guide.history[-1]):
                        progress.set_postfix(painting_loss=float(guide.history[-1][-1].mean()))
                if callback is not None:
                    tensors = {"latents": latents, "prompt_embeds": embeds}
                    returned = callback(self, i, t, {k: tensors[k] for k in callback_inputs}) or {}
                    latents = returned.pop("latents", latents)
                    embeds = returned.pop("prompt_embeds", embeds)
                progress.update()
        return latents

    def _guide(self, guide, latents, t_next, x0):
        """Optimise toward the painting, then re-noise the result as if clean to the current level t_{i+1}."""
        # The decoder expects variance-preserving latents: scale_model_input maps any scheduler's sample there
        start = x0 if x0 is not None else self.scheduler.scale_model_input(latents, t_next)
        optimized, losses = self._descend(start, guide.target, guide.painting_function, guide.grad_steps, guide.lr,
                                          guide.optimizer, guide.blur_target, guide.decoder)
        guide.history.append(losses)
        guide.timesteps.append(int(t_next))
        noise = randn_tensor(optimized.shape, generator=guide.generator, device=optimized.device, dtype=torch.float32)
        # z = sqrt(ᾱ_{t_{i+1}}) z̃ + sqrt(1 − ᾱ_{t_{i+1}}) ε'   (in the scheduler's own parametrisation)
        return self.scheduler.add_noise(optimized, noise, t_next.repeat(len(optimized))).to(latents.dtype)

    def _predict_x0(self, sample, model_output, t):
        """x̂₀ from a variance-preserving sample at t and the guided model output."""
        alpha_bar = self.scheduler.alphas_cumprod[int(round(float(t)))].to(sample.device, torch.float32)
        sample, model_output = sample.float(), model_output.float()
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()  # (x_t − √(1−ᾱ) ε̂) / √ᾱ
        if kind == "v_prediction":
            return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output  # √ᾱ x_t − √(1−ᾱ) v̂
        return model_output

    def _descend(self, start, target, painting_function, steps, lr, optimizer, blur_target, decoder=None):
        """`optimize_latents` through `decoder` (None: the VAE), its weights frozen unless `freeze_decoder` is off."""
        with frozen(self.vae if decoder is None else decoder) if self.freeze_decoder else nullcontext():
            return optimize_latents(start, target, partial(self._decode_for_loss, decoder=decoder), painting_function,
                                    steps, lr, optimizer, blur_target)

    def _check_guidance_decoder(self, decoder, height, width):
        """The decoder the optimisation differentiates through (None: the VAE), checked to map this pipeline's
        latents to images of the output size. A call's choice wins over the pipeline's component."""
        decoder = self.guidance_decoder if decoder is None else decoder
        if decoder is None or decoder is self.vae:
            return None
        if not (callable(getattr(decoder, "decode", None)) and hasattr(getattr(decoder, "config", None), "scaling_factor")):
            raise TypeError("guidance_decoder must be a diffusers autoencoder (AutoencoderTiny, AutoencoderKL) with "
                            f"decode() and config.scaling_factor, got {type(decoder).__name__}")
        latent = torch.zeros(1, self.vae.config.latent_channels, height // self.vae_scale_factor,
                             width // self.vae_scale_factor, device=self.device, dtype=decoder.dtype)
        with torch.no_grad():
            size = tuple(decoder.decode(latent).sample.shape[-2:])
        if size != (height, width):
            raise ValueError(f"guidance_decoder turns this pipeline's {tuple(latent.shape[-2:])} latents into {size} "
                             f"images, not ({height}, {width}): it must upsample by {self.vae_scale_factor} like the VAE")
        return decoder

    def _decode_for_loss(self, latents, decoder=None):
        """D(z) in [0, 1] for the painting loss: clamp((D(z / s) + 1) / 2, 0, 1), gradients kept.

        After diffusers' `decoder.enable_tiling()` it is decoded in tiles of the decoder's tile size and
        overlap, each recomputed in the backward pass (`decode_in_tiles`): memory for large images."""
        decoder = self.vae if decoder is None else decoder

        def decode(z):
            decoded = decoder.decode((z / decoder.config.scaling_factor).to(decoder.dtype)).sample
            return ((decoded.float() + 1) / 2).clamp(0, 1)

        if getattr(decoder, "use_tiling", False):
            tile = decoder.tile_latent_min_size
            return decode_in_tiles(decode, latents, tile, min(int(tile * decoder.tile_overlap_factor), tile // 2))
        return decode(latents)

    def _encode_images(self, images, batch, generator):
        """Posterior samples of the VAE, scaled; one image per generator when given a list (as diffusers)."""
        images = images.to(self._execution_device, self.vae.dtype)
        if isinstance(generator, list):
            images = images.repeat_interleave(batch // len(images), dim=0) if len(images) < batch else images
            latents = torch.cat([self.vae.encode(images[i:i + 1]).latent_dist.sample(generator[i]) for i in range(batch)])
        else:
            latents = self.vae.encode(images).latent_dist.sample(generator)
            latents = latents.repeat_interleave(batch // len(latents), dim=0)
        return latents * self.vae.config.scaling_factor

    def _finish(self, latents, output_type, return_dict, history, timesteps):
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0].float()
            expected = tuple(side * self.vae_scale_factor for side in latents.shape[-2:])
            if tuple(decoded.shape[-2:]) != expected:  # diffusers' tiled decoding, with tiles that do not fit
                raise ValueError(f"pipe.vae.enable_tiling() decoded a {expected} image as {tuple(decoded.shape[-2:])}: "
                                 "set pipe.vae.tile_latent_min_size to a multiple of 4 (and tile_sample_min_size to "
                                 f"{self.vae_scale_factor}x it), or disable tiling")
            if not torch.isfinite(decoded).all():
                raise FloatingPointError("the decoded image contains NaN/inf (half precision overflow?); "
                                         "load the models in dtype=torch.float32 or torch.bfloat16")
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, history
        return GradOPPipelineOutput(images=images, loss_history=history, optimized_timesteps=timesteps)

    def _step_kwargs(self, generator, eta):
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}

    # ------------------------------------------------------------------ input handling
    def _check_common(self, prompt, num_images_per_prompt, guidance_scale, generator, output_type, callback,
                      callback_inputs) -> int:
        prompts = checks.check_prompts(prompt)
        num_images_per_prompt = checks.check_count(num_images_per_prompt, "num_images_per_prompt", 1)
        checks.check_guidance(guidance_scale)
        checks.check_output_type(output_type)
        checks.check_callback(callback, callback_inputs, self._callback_tensor_inputs)
        batch = len(prompts) * num_images_per_prompt
        checks.check_generator(generator, batch)
        return batch

    def _check_optimisation(self, lr, optimize_target):
        checks.check_positive(lr, "lr")
        if optimize_target not in ("noisy", "x0"):
            raise ValueError(f"optimize_target must be 'noisy' (as released) or 'x0', got {optimize_target!r}")

    def _check_guidable(self):
        if self.scheduler.order != 1:
            raise ValueError(f"{type(self.scheduler).__name__} takes {self.scheduler.order} model evaluations per step; "
                             "GradOP+ needs a one-evaluation scheduler: use scheduler 'ddim', 'pndm', 'dpm', 'euler' ...")

    def _prepare_images(self, image, batch, num_images_per_prompt, height, width):
        """Images as `[-1, 1]` tensors at the output size; one per prompt, or one for all (see `_expand`).

        `batch` is the checked prompts x `num_images_per_prompt`.
        """
        pils, names = self._load_images(image, "image", batch // num_images_per_prompt)
        height, width = output_size(pils[0], height, width, self.vae_scale_factor, names[0])
        for pil, name in zip(pils[1:], names[1:]):
            output_size(pil, height, width, self.vae_scale_factor, name)  # size limits only
        tensor = self.image_processor.preprocess(pils, height=height, width=width).to(self._execution_device)
        return tensor, height, width

    @staticmethod
    def _load_images(image, name, num_prompts):
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

    @staticmethod
    def _expand(tensor, batch):
        """One row per image of the batch: each prompt's row repeated (or the single row for all)."""
        return tensor.repeat_interleave(batch // len(tensor), dim=0)

    def _bind_regions(self, regions, region_weight, region_image, step_fraction, store, prompt, batch, height, width,
                      paintings=None) -> RegionBinding | None:
        """The region binding of one call: `None` without regions or an attention store (see `gradop.regions`)."""
        if store is not None and not isinstance(store, AttentionStore):
            raise TypeError(f"attention_store must be a gradop.regions.AttentionStore, got {type(store).__name__}")
        checks.check_finite(region_weight, "region_weight")
        step_fraction = checks.check_fraction(step_fraction, "region_step_fraction")
        if regions is None or (isinstance(regions, Mapping) and not regions):
            return None if store is None else RegionBinding.empty(batch, (height, width), store)
        prompts = checks.check_prompts(prompt)
        if region_image is not None:
            images, names = self._load_images(region_image, "region_image", len(prompts))
        elif paintings is not None:
            images, names = self._load_images(((paintings.float().cpu() + 1) / 2).clamp(0, 1), "image", len(prompts))
        else:
            raise ValueError("regions need a painting whose colours define them: pass region_image=<the painting>")
        return bind_regions(regions, prompts, self.tokenizer, images, names, batch, (height, width),
                            region_weight=region_weight, step_fraction=step_fraction,
                            alphas_cumprod=self.scheduler.alphas_cumprod, store=store)

    @contextmanager
    def _region_attention(self, binding):
        """Region-biased (or recording) cross-attention for the sampling inside; originals restored, even on error."""
        self._binding = binding
        try:
            with attention_control(self.unet, binding):
                yield
        finally:
            self._binding = None
