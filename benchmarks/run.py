"""Time and memory of each method, and of each GradOP+ optimisation on its own, in one process.

    python benchmarks/run.py --config toy                              # the toy model, 64², 50 steps (CPU)
    python benchmarks/run.py --config sd-arch --quick                  # SD v1's architecture, random weights, 256² (CPU)
    python benchmarks/run.py --config sd-arch --device cuda            # 512², 50 steps, fp16 (GPU)
    python benchmarks/run.py --config sd-arch --device cuda --batches 1 4 8   # images per second
    python benchmarks/run.py --config sd-arch --decoder-memory --size 1024    # one decoder step: plain/checkpointed/tiled/TAESD
    python benchmarks/run.py --config sdxl-arch --quick                # SDXL base 1.0's architecture, random weights, 256² (CPU)
    python benchmarks/run.py --config sdxl-arch --device cuda          # 1024², 50 steps, fp16 (GPU)
    python benchmarks/run.py --config sdxl-arch --device cuda --decoder-memory --size 1024   # one decoder step at 1024²
    python benchmarks/run.py --config sdxl-arch --decoder-memory --size 1024 --memory-only \
        --only '+ decoder checkpointing' '+ tiled decoding' 'painting decoder'   # CPU, 24 GB: the plain row does not fit
    python benchmarks/run.py --config sd3-arch --quick                 # SD3 Medium's widths, 4 of 24 layers, no T5, 256² (CPU)
    python benchmarks/run.py --config sd3-arch --device cuda           # SD3 Medium (with T5-XXL), 1024², 28 steps, fp16
    python benchmarks/run.py --config flux-arch --quick                # FLUX.1-dev's widths, 2+4 of 19+38 blocks, 256² (CPU)
    python benchmarks/run.py --config flux-arch --device cuda --dtype bf16   # FLUX.1-dev, 1024², 28 steps
    python benchmarks/run.py --config flux-arch --decoder-memory --size 1024 --memory-only   # the 16-channel VAE

Every variant runs on the same prompt, painting and seed: a warm-up (see `measure`), then `--repeats` rounds over
all variants (interleaved, so that drifting machine speed hits every row alike), and the median. Peak memory is
`torch.cuda.max_memory_allocated` on a GPU; on a CPU, the peak resident memory above the start of the call,
sampled every 2 ms in a child process (see `cpu_peaks`). Ratios are to `text2img` in the same run. The table
is printed and appended, with device, versions, date and command, to benchmarks/RESULTS.md.

"released" is GradOP+ as the authors run it: fp32, the full decoder with its weights accumulating gradients,
and attention without a fused kernel (torch 1.x had none). "gradop default" is GradOP+ as this package runs
it by default (through the model's painting decoder, frozen: the full VAE for Stable Diffusion, the VAE's decoder cut
at 32² for the toy, whose "+ full decoder" row goes through its full VAE). The rows "+ X" are the released
configuration with optimisation X alone. "painting decoder" is a small surrogate decoder used only inside
the optimisation: the distilled one bundled with the toy model, TAESD's architecture for sd-arch, or TAESD-XL's
(the same `AutoencoderTiny` configuration) for sdxl-arch, random weights. "painting decoder cut at 1/4" (the -arch
configs) is that architecture without its last two upsamplings, with a head (`TruncatedTinyDecoder`; random weights:
its cost, the toy measures its gradient: benchmarks/painting_decoder_quality.py).

sdxl-arch is SDXL base 1.0's architecture (UNet 2.6B, VAE 84M, CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 text encoders,
random weights) run through `gradop.CallbackPipeline` (diffusers' `StableDiffusionXLPipeline` with GradOP+ as its
`callback_on_step_end`, SDEdit as diffusers' SDXL img2img) on the released DDIM scheduler. Its rows are the ones
that apply to it: text2img, sdedit 0.8, GradOP+ as this package runs it (full decoder, frozen), + the painting
decoder, + decoder checkpointing and + tiled decoding (each on top of the default). There are no "released"
rows: the release is SD 1 only, and an fp32 SDXL (14 GB of weights) does not fit beside a run in 24 GB of RAM.
On a CPU the UNet's and text encoders' weights are stored in bfloat16 and computed in float32, layer by layer
(`--weights`, `store_weights`): 7 GB of weights instead of 14, and float32 speed (this CPU has no bfloat16
arithmetic: a bfloat16 matmul is 65x slower than float32). With `--decoder-memory` only the VAE (and the
TAESD-XL-architecture decoder) is built, float32 on a CPU, float16 on a GPU (where SDXL's VAE, `force_upcast`,
decodes in float32 anyway).

sd3-arch and flux-arch are Stable Diffusion 3 Medium's and FLUX.1-dev's architectures (MMDiT transformers over
16-channel latents, random weights) through `gradop.CallbackPipeline` on their own flow-matching Euler sampler
(28 steps by default, as their model cards use), with the rows of sdxl-arch; their painting decoder is TAESD3's /
TAEF1's architecture (`AutoencoderTiny` with 16 latent channels). A full-size FLUX.1-dev (12B) or SD3 Medium with
T5-XXL does not fit in this machine's 24 GB beside a run, and takes minutes per step on 2 cores: `--quick` keeps
every width and cuts the depth (SD3: 4 of 24 joint blocks, T5 left out as SD3 allows; FLUX: 2 of 19 double- and 4
of 38 single-stream blocks, T5-XXL with 2 of 24 layers), so the denoiser's share of a run is smaller than at full
depth and GradOP+'s ratio to text2img is larger than it would be: an upper bound. The GPU commands build the full
models.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
PROMPT = "a photo of a lake near a meadow and snowy mountains"


# ---------------------------------------------------------------------- models
def sd_arch_vae():
    """Stable Diffusion v1's VAE (84M), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)


def sd_arch_pipeline():
    """Stable Diffusion v1's exact architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder), random weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from gradop import GradOPPipeline, released_ddim_scheduler
    from gradop.testing import tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    vae = sd_arch_vae()
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, hidden_act="quick_gelu"))
    for model in (unet, vae, text_encoder):
        model.eval()
    return GradOPPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=released_ddim_scheduler())


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build models directly in `dtype` (no float32 copy first: SDXL's UNet alone is 10 GB in float32)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def sdxl_arch_vae():
    """SDXL base 1.0's VAE: SD's architecture, its scaling factor, `force_upcast` (overflows in float16)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
        scaling_factor=0.13025, force_upcast=True).eval()


_STORED_SKIP = ("norm", "embedding", "conv_in", "conv_out")  # kept in the compute dtype: small, and conv_in's
# weight (the UNet's first) is the one diffusers reports as the UNet's dtype


def store_weights(model, storage: torch.dtype, compute: torch.dtype):
    """Keep `model`'s convolutions and linear layers in `storage`, each converted to `compute` just before it runs
    (into one reused buffer: no allocation, no conversion back) and given back its stored weights after; the norms,
    embeddings (time, added, token), conv_in and conv_out are kept in `compute`. The outputs, and `model.dtype` as
    diffusers and transformers report it, are `compute`'s. Inference only (gradients fall back to a fresh copy).
    For a `model` built in `storage`: the layers kept in `compute` are converted here, one at a time."""
    scratch = {}  # slot -> flat `compute` buffer, as large as the largest weight (slot 0) and bias (slot 1)

    def view(slot: int, like: torch.Tensor) -> torch.Tensor:
        if slot not in scratch or scratch[slot].numel() < like.numel() or scratch[slot].device != like.device:
            scratch[slot] = torch.empty(like.numel(), dtype=compute, device=like.device)
        return scratch[slot][:like.numel()].view(like.shape)

    def before(module, args):
        for slot, param in enumerate(module._stored):
            stored = param.data
            param.data = stored.to(compute) if torch.is_grad_enabled() else view(slot, stored).copy_(stored)
            module._stored[param] = stored

    def after(module, args, output):
        for param, stored in module._stored.items():
            param.data = stored

    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False)]
        # T5's feed-forward output layer casts its input to the layer's weight dtype (transformers keeps it in
        # float32): it stays in `compute`
        stored = isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not any(k in name for k in _STORED_SKIP) \
            and not name.endswith("DenseReluDense.wo")
        if stored:
            for param in own:
                param.data = param.data.to(storage)
            module._stored = dict.fromkeys(own)  # weight, bias -> its stored tensor while the layer runs
            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)
        else:
            for param in own:
                param.data = param.data.to(compute)
            for key, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point():
                    module._buffers[key] = buffer.to(compute)
    return model


def sdxl_arch_pipeline(dtype=torch.float32, storage: torch.dtype | None = None):
    """SDXL base 1.0's exact architecture (UNet 2.6B, VAE 84M, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text
    encoders, the second with its projection), random weights, computing in `dtype`, in a `gradop.CallbackPipeline`
    on the released DDIM scheduler. `storage`: the UNet's and text encoders' weights are kept in that dtype and cast
    to `dtype` layer by layer (`store_weights`): bfloat16 weights computed in float32 on a CPU, where the float32
    pipeline (14 GB) does not fit beside a run, and bfloat16 arithmetic is 65x slower than float32 (no AVX512-BF16)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from gradop import CallbackPipeline, make_scheduler
    from gradop.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()  # no hub tokenizer offline; the encoders keep CLIP's 49408-token embeddings
    builders = {
        "text_encoder": lambda: clip_tower("L", tokenizer),
        "text_encoder_2": lambda: clip_tower("bigG", tokenizer, projection=True),
        "vae": sdxl_arch_vae,
        "unet": lambda: UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_embed_type_num_heads=64,
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
    }
    models = build_models(builders, dtype, storage)
    xl = StableDiffusionXLPipeline(**models, tokenizer=tokenizer, tokenizer_2=tiny_tokenizer(),
                                   scheduler=make_scheduler("ddim"), image_encoder=None, feature_extractor=None)
    return CallbackPipeline(xl)


QUICK_DEPTH = {"sd3-arch": "4 of SD3 Medium's 24 joint blocks, T5 left out (as SD3 allows)",
               "flux-arch": "2 of FLUX.1-dev's 19 double- and 4 of its 38 single-stream blocks, T5-XXL with 2 of 24 layers"}
FLOW_VAE_SCALING = {"sd3-arch": (1.5305, 0.0609), "flux-arch": (0.3611, 0.1159)}  # (scaling, shift) of their VAEs


def flow_arch_vae(config: str):
    """SD3's and FLUX's VAE: SDXL's decoder widths over 16 latent channels, no quant convs, their scaling and shift."""
    from diffusers import AutoencoderKL

    scaling, shift = FLOW_VAE_SCALING[config]
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
        scaling_factor=scaling, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False).eval()


def t5_xxl(layers: int = 24):
    """T5 v1.1 XXL's encoder (4.7B at 24 layers), random weights."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=layers,
                                   num_heads=64, feed_forward_proj="gated-gelu", is_gated_act=True,
                                   dense_act_fn="gelu_new", pad_token_id=0, eos_token_id=1)).eval()


CLIP_TOWERS = {  # text towers: CLIP ViT-L/14 ("L") and OpenCLIP ViT-bigG/14 ("bigG")
    "L": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              hidden_act="quick_gelu", projection_dim=768),
    "bigG": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 hidden_act="gelu", projection_dim=1280),
}


def clip_tower(tower: str, tokenizer, projection: bool = False):
    """A CLIP text tower of `CLIP_TOWERS`, random weights, with CLIP's 49408-token vocabulary; `projection`: with its
    text projection (SDXL's second encoder, both of SD3's)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **CLIP_TOWERS[tower])
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_models(builders: dict, dtype, storage: torch.dtype | None) -> dict:
    """name -> module from each builder, seeded by its place; every module but the VAE is built in `storage` (no
    float32 copy first) and computed in `dtype` (`store_weights`)."""
    models = {}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(offset)
        stored = storage not in (None, dtype) and name != "vae"
        with default_dtype(storage if stored else dtype):
            models[name] = build().eval()
        if stored:
            store_weights(models[name], storage, dtype)
    return models


def flow_arch_pipeline(config: str, dtype=torch.float32, storage: torch.dtype | None = None, quick: bool = False):
    """Stable Diffusion 3 Medium's or FLUX.1-dev's architecture, random weights, in a `gradop.CallbackPipeline` on
    the flow-matching Euler sampler (shift 3 for SD3; FLUX's resolution-dependent shift). `quick`: every width, fewer
    layers (see the module's notes). `storage` as in `sdxl_arch_pipeline`."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                           SD3Transformer2DModel, StableDiffusion3Pipeline)

    from gradop import CallbackPipeline
    from gradop.testing import tiny_t5_tokenizer, tiny_tokenizer

    tokenizer = tiny_tokenizer()  # no hub tokenizers offline; the encoders keep their full vocabularies
    large = lambda: clip_tower("L", tokenizer, projection=True)  # noqa: E731
    big_g = lambda: clip_tower("bigG", tokenizer, projection=True)  # noqa: E731
    if config == "sd3-arch":
        builders = {
            "text_encoder": large, "text_encoder_2": big_g, "vae": lambda: flow_arch_vae(config),
            "transformer": lambda: SD3Transformer2DModel(  # SD3 Medium: 24 joint blocks of 24 heads x 64, 2B
                sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=4 if quick else 24,
                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                pooled_projection_dim=2048, pos_embed_max_size=192),
        }
        if not quick:
            builders["text_encoder_3"] = t5_xxl
    else:
        builders = {
            "text_encoder": lambda: clip_tower("L", tokenizer),  # FLUX reads its pooled output
            "text_encoder_2": lambda: t5_xxl(2 if quick else 24), "vae": lambda: flow_arch_vae(config),
            "transformer": lambda: FluxTransformer2DModel(  # FLUX.1-dev: 19 double + 38 single blocks, 24 heads x 128
                patch_size=1, in_channels=64, num_layers=2 if quick else 19, num_single_layers=4 if quick else 38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        }
    models = build_models(builders, dtype, storage)
    if config == "sd3-arch":
        t5 = models.pop("text_encoder_3", None)
        pipe = StableDiffusion3Pipeline(**models, tokenizer=tokenizer, tokenizer_2=tiny_tokenizer(),
                                        text_encoder_3=t5, tokenizer_3=tiny_t5_tokenizer() if t5 is not None else None,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)
        pipe = FluxPipeline(**models, tokenizer=tokenizer, tokenizer_2=tiny_t5_tokenizer(), scheduler=scheduler)
    return CallbackPipeline(pipe)


def load(config: str, device: str, dtype=torch.float32, storage=None, quick=False):
    from gradop import load_pipeline

    if config == "toy":
        pipe = load_pipeline("toy", device="cpu", verbose=False)
    elif config == "sdxl-arch":
        pipe = sdxl_arch_pipeline(dtype, storage)
    elif config in FLOW_VAE_SCALING:
        pipe = flow_arch_pipeline(config, dtype, storage, quick)
    else:
        pipe = sd_arch_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_vae(config: str, device: str):
    """The VAE alone (for `--decoder-memory`) and its scale factor."""
    if config == "toy":
        pipe = load(config, "cpu")
        return pipe.vae.to(device), pipe.vae_scale_factor
    if config == "sdxl-arch":
        return sdxl_arch_vae().to(device), 8
    if config in FLOW_VAE_SCALING:
        return flow_arch_vae(config).to(device), 8
    torch.manual_seed(0)
    return sd_arch_vae().eval().to(device), 8


def target_of(pipe):
    """The diffusers pipeline a configuration is applied to: a `CallbackPipeline`'s wrapped one (assigning
    `wrapper.unet` would set an attribute on the wrapper), else `pipe` itself."""
    from gradop import CallbackPipeline

    return pipe.pipeline if isinstance(pipe, CallbackPipeline) else pipe


def release_memory():
    """Give freed memory back to the system (so that a child process measuring peaks has room)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def painting(size: int):
    from gradop.notebook import INPUT_IMAGES, load_examples

    return next(e for e in load_examples(INPUT_IMAGES / "toy", size) if e.name == "lake_mountains").painting


# ---------------------------------------------------------------------- configurations
_COMPILED = {}  # module -> its torch.compile wrapper, kept so that repeated configurations reuse the compiled code


@contextlib.contextmanager
def configured(pipe, dtype=torch.float32, sdpa=True, channels_last=False, checkpointing=False, tile=None,
               compile_models=False, compile_decoder=False):
    """Put `pipe` in one configuration for the duration, then restore it. `tile`: latent tile size for tiled
    decoding (diffusers' `enable_tiling` with that size); `compile_models`: torch.compile the UNet and decoder;
    `compile_decoder`: the decoder alone (the descent's cost; the sampling loop as text-only runs it). Channels-last
    and the decoder's compilation apply to the model's own painting decoder too (the toy's `TruncatedDecoder`)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    saved_unet, saved_dtype = getattr(pipe, "unet", None), pipe.dtype  # SD3 and FLUX: a transformer, left as it is
    saved_tiles = pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size
    models = [m for m in (saved_unet, pipe.vae) if m is not None]
    saved_processors = [(model, dict(model.attn_processors)) for model in models]
    if pipe.dtype != dtype:
        pipe.to(dtype=dtype)
    painting = getattr(pipe, "painting_decoder", None)
    laid_out = models + ([painting] if painting is not None else [])  # the models channels-last applies to
    for model in models:
        model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
    for model in laid_out:
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if checkpointing:
        pipe.vae.enable_gradient_checkpointing()
    if tile:
        pipe.vae.enable_tiling()
        pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = tile, tile * pipe.vae_scale_factor
    # diffusers' decoders with a mid block and up blocks: the VAE's, and a TruncatedDecoder's trunk
    decoders = [d for d in (pipe.vae.decoder, getattr(painting, "decoder", None)) if hasattr(d, "mid_block")]
    saved_blocks = [(d, d.mid_block, list(d.up_blocks)) for d in decoders]
    if compile_models and saved_unet is not None:
        pipe.unet = _COMPILED.setdefault(pipe.unet, torch.compile(pipe.unet))
    if (compile_models and saved_unet is not None) or compile_decoder:
        # The decoder block by block: compiled whole, diffusers' `Decoder` gives its input a zero gradient
        # (torch 2.13, CPU; tests/test_performance.py checks the blocks' gradient)
        for decoder, mid_block, up_blocks in saved_blocks:
            decoder.mid_block = _COMPILED.setdefault(mid_block, torch.compile(mid_block))
            for i, block in enumerate(up_blocks):
                decoder.up_blocks[i] = _COMPILED.setdefault(block, torch.compile(block))
    try:
        yield pipe
    finally:
        if saved_unet is not None:
            pipe.unet = saved_unet
        for decoder, mid_block, up_blocks in saved_blocks:
            decoder.mid_block = mid_block
            for i, block in enumerate(up_blocks):
                decoder.up_blocks[i] = block
        for model, processors in saved_processors:
            model.set_attn_processor(processors)
        for model in laid_out:
            model.to(memory_format=torch.contiguous_format)
        if checkpointing:
            pipe.vae.disable_gradient_checkpointing()
        pipe.vae.disable_tiling()
        pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = saved_tiles
        if pipe.dtype != saved_dtype:
            pipe.to(dtype=saved_dtype)


@contextlib.contextmanager
def decoder_configured(vae, dtype, scale_factor: int, checkpointing=False, tile=None):
    """`configured` for a decoder alone (`--decoder-memory`): dtype, gradient checkpointing, tiles; restored after."""
    saved_dtype = vae.dtype
    tiled = hasattr(vae, "tile_latent_min_size")
    saved_tiles = (vae.tile_latent_min_size, vae.tile_sample_min_size) if tiled else None
    vae.to(dtype=dtype)
    if checkpointing:
        vae.enable_gradient_checkpointing()
    if tile:
        vae.enable_tiling()
        vae.tile_latent_min_size, vae.tile_sample_min_size = tile, tile * scale_factor
    try:
        yield vae
    finally:
        if checkpointing:
            vae.disable_gradient_checkpointing()
        if tile:
            vae.disable_tiling()
            vae.tile_latent_min_size, vae.tile_sample_min_size = saved_tiles
        vae.to(dtype=saved_dtype)


def variants(fast_dtype, pipe, tile: int, with_compile: bool, config: str = "sd-arch"):
    """name -> (method, configuration, painting decoder). The "+ X" rows change one thing from "released".
    painting decoder: "full" (the VAE, as released), "model" (the pipeline's default) or "surrogate".
    sdxl-arch, sd3-arch, flux-arch: the rows that apply to them (no released configuration; see the module's notes)."""
    if config in ("sdxl-arch", *FLOW_VAE_SCALING):
        default = dict(dtype=fast_dtype, freeze_decoder=True, sdpa=True)
        return {
            "text2img": ("text2img", default, None),
            "sdedit 0.8": ("sdedit", default, None),
            "gradop+ (gradop default)": ("gradop_plus", default, "model"),
            "gradop default + painting decoder": ("gradop_plus", default, "surrogate"),
            "gradop default + painting decoder cut at 1/4": ("gradop_plus", default, "surrogate cut"),
            "gradop default + decoder checkpointing": ("gradop_plus", default | dict(checkpointing=True), "full"),
            f"gradop default + tiled decoding ({tile}-latent tiles)": ("gradop_plus", default | dict(tile=tile),
                                                                       "full"),
        }
    released = dict(freeze_decoder=False, sdpa=False)
    default = dict(dtype=fast_dtype, freeze_decoder=True, sdpa=True)
    rows = {
        "text2img": ("text2img", default, None),
        "sdedit 0.8": ("sdedit", default, None),
        "gradop+ released": ("gradop_plus", released, "full"),
        "gradop+ (gradop default)": ("gradop_plus", default, "model"),
    }
    if config == "toy":  # the toy's own painting decoder is its VAE's decoder cut at 32²; the full one for comparison
        rows["gradop default + full decoder"] = ("gradop_plus", default, "full")
    rows["gradop default + painting decoder"] = ("gradop_plus", default, "surrogate")
    if config != "toy":  # the toy's cut one is distilled: pass its folder as --painting-decoder
        rows["gradop default + painting decoder cut at 1/4"] = ("gradop_plus", default, "surrogate cut")
    rows |= {
        "+ frozen decoder": ("gradop_plus", released | dict(freeze_decoder=True), "full"),
        "+ SDPA attention": ("gradop_plus", released | dict(sdpa=True), "full"),
        "+ channels-last": ("gradop_plus", released | dict(channels_last=True), "full"),
        "+ decoder checkpointing": ("gradop_plus", released | dict(checkpointing=True), "full"),
        f"+ tiled decoding ({tile}-latent tiles)": ("gradop_plus", released | dict(tile=tile), "full"),
        "+ painting decoder": ("gradop_plus", released, "surrogate"),
    }
    if fast_dtype != torch.float32:
        rows[f"+ {str(fast_dtype).split('.')[1]}"] = ("gradop_plus", released | dict(dtype=fast_dtype), "full")
    if with_compile:
        rows["+ torch.compile"] = ("gradop_plus", released | dict(compile_models=True), "full")
        rows["gradop default + torch.compile"] = ("gradop_plus", default | dict(compile_models=True), "model")
        rows["text2img + torch.compile"] = ("text2img", default | dict(compile_models=True), None)
        rows["gradop default + compiled decoder"] = ("gradop_plus", default | dict(compile_decoder=True), "model")
    rows["gradop default + channels-last"] = ("gradop_plus", default | dict(channels_last=True), "model")
    return rows


# ---------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory of a block: CUDA's allocator counter, or on a CPU the sampled peak RSS above the start."""

    def __init__(self, device: torch.device, sample: bool = True):
        # sample=False: no sampling thread (its GIL wake-ups every 2 ms slow Python-heavy code; timing runs on
        # a CPU leave memory to `cpu_peaks`)
        self.device, self.sample, self.peak_mb = device, sample, 0.0

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._start, self._peak, self._running = self.rss_mb(), 0.0, True
        self._thread = threading.Thread(target=self._sample, daemon=True) if self.sample else None
        if self._thread:
            self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self._peak = max(self._peak, self.rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._running = False
            if self._thread:
                self._thread.join()
            self.peak_mb = max(self._peak, self.rss_mb()) - self._start


def surrogate_decoder(config: str, device, folder: str | None = None):
    """The small decoder GradOP+ can differentiate through: `folder` where given (`--painting-decoder`), else the
    bundled distilled one for the toy model, TAESD's architecture (random weights, same cost) for sd-arch, TAESD-XL's
    for sdxl-arch (madebyollin/taesdxl has the same `AutoencoderTiny` configuration as madebyollin/taesd, other
    weights)."""
    from diffusers import AutoencoderTiny

    if config == "toy" or folder:
        from gradop.models import load_painting_decoder

        return load_painting_decoder(folder or "toy", device=device)  # toy: distilled from the toy VAE
    torch.manual_seed(0)
    with default_dtype(torch.float32):
        if config in FLOW_VAE_SCALING:  # TAESD3's and TAEF1's: the same, over 16 latent channels
            scaling, shift = FLOW_VAE_SCALING[config]
            return AutoencoderTiny(latent_channels=16, scaling_factor=scaling, shift_factor=shift).to(device).eval()
        return AutoencoderTiny().to(device).eval()  # TAESD's (and TAESD-XL's) default configuration


def cut_short(surrogate):
    """The surrogate's architecture without its last two upsamplings (a quarter of the side), a fresh head; made
    once per surrogate and dtype."""
    from gradop.truncated_decoder import TruncatedTinyDecoder

    cut = surrogate.__dict__.get("_cut_short")
    if cut is None or cut.dtype != surrogate.dtype:
        torch.manual_seed(0)
        cut = TruncatedTinyDecoder.from_tiny(surrogate, upsamplings_cut=2).eval()
        surrogate.__dict__["_cut_short"] = cut  # not a submodule: kept out of the surrogate's parameters
    return cut


SURROGATE_NAME = {"toy": "painting decoder (bundled, distilled)", "sd-arch": "painting decoder (TAESD's architecture)",
                  "sdxl-arch": "painting decoder (TAESD-XL's architecture)",
                  "sd3-arch": "painting decoder (TAESD3's architecture)",
                  "flux-arch": "painting decoder (TAEF1's architecture)"}


def run_once(pipe, row, args, target, surrogate, batch: int):
    """One timed call of a row (configured, on the same seed): (seconds, peak MB, images)."""
    from gradop.methods import get_method

    method, config, decoder = row
    config = dict(config)
    settings = dict(strength=0.8, num_iterative_steps=3, grad_steps_per_iter=args.grad_steps,
                    num_inference_steps=args.steps, generator=torch.Generator("cpu").manual_seed(0),
                    height=args.size, width=args.size, num_images_per_prompt=batch, output_type="pt")
    if method == "gradop_plus":
        settings["freeze_decoder"] = config.pop("freeze_decoder", True)
        settings["lr"] = args.lr
    else:
        config.pop("freeze_decoder", None)
    with configured(target_of(pipe), **config):
        if decoder == "full":
            settings["painting_decoder"] = pipe.vae
        elif decoder in ("surrogate", "surrogate cut"):
            if surrogate.dtype != pipe.dtype:
                surrogate.to(dtype=pipe.dtype)  # the surrogate runs in the models' dtype
            settings["painting_decoder"] = cut_short(surrogate) if decoder == "surrogate cut" else surrogate
        call = partial(get_method(method), pipe, PROMPT, target, **settings)
        seconds, peak, output = timed_call(call, pipe.device, sample=args.peaks_only)
    return seconds, peak, output.images.float().cpu()


def timed_call(call, device: torch.device, sample: bool):
    """(seconds, peak MB, call()) of one call, a GPU synchronised before the clock stops."""
    with PeakMemory(device, sample) as memory:
        start = time.perf_counter()
        result = call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mb, result


def measure(pipe, rows, args, target, surrogate, batch: int | None = None):
    """name -> (median seconds, peak MB, images). A warm-up round, then `repeats` rounds over all rows:
    interleaved, so a machine whose speed drifts during the run slows every row alike and ratios stay fair.
    On a GPU every row warms up (kernel choice per dtype and layout); on a CPU the first row's call warms the
    shared caches, and only torch.compile rows (whose first call compiles) need their own."""
    timings = {name: [] for name in rows}
    peaks = {name: [] for name in rows}
    images = {}
    for round_ in tqdm(range(args.repeats + 1), desc=f"rounds (batch {batch or args.batch})", leave=False):
        for i, (name, row) in enumerate(rows.items()):
            if not round_ and i and pipe.device.type == "cpu" and not (row[1].get("compile_models")
                                                                        or row[1].get("compile_decoder")):
                continue
            seconds, peak, images[name] = run_once(pipe, row, args, target, surrogate, batch or args.batch)
            if round_:  # round 0 is the warm-up (and torch.compile's compilation)
                timings[name].append(seconds)
                peaks[name].append(peak)
    return {name: (statistics.median(timings[name]), max(peaks[name]), images[name]) for name in rows}


def cpu_peaks(argv) -> dict:
    """name -> peak MB, measured in a child process with glibc's mmap threshold fixed, so that freed blocks go
    back to the system and the peak resident memory above the start is each call's own. (Timings are taken
    without it: fixed, it makes every large allocation a fresh mapping, 2x slower here.)"""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--peaks-only", "--no-append"]
    done = subprocess.run(command, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peaks_only(pipe, rows, args, target, surrogate) -> dict:
    """The child of `cpu_peaks`: one call per row, each its own peak (after one call that allocates what is
    allocated once)."""
    run_once(pipe, next(iter(rows.values())), args, target, surrogate, args.batch)
    return {name: run_once(pipe, row, args, target, surrogate, args.batch)[1] for name, row in rows.items()}


def decoder_rows(config: str, tile: int, folder: str | None = None) -> dict:
    """name -> (which decoder, its configuration) of `--decoder-memory`; `folder`: the `--painting-decoder` given."""
    return {"frozen decoder": ("vae", {}), "+ decoder checkpointing": ("vae", dict(checkpointing=True)),
            f"+ tiled decoding ({tile}-latent tiles)": ("vae", dict(tile=tile)),
            f"painting decoder ({folder})" if folder else SURROGATE_NAME[config]: ("surrogate", {})}


def decoder_memory(vae, scale_factor: int, surrogate, rows: dict, args, dtype) -> dict:
    """Forward + backward through a decoder alone at `--size` (what one gradient step costs), its weights
    frozen: the full decoder; + gradient checkpointing; + tiled decoding; the painting decoder.
    name -> (median seconds, peak MB)."""
    from gradop.optimize import decode_for_loss, frozen

    latents = torch.randn(1, vae.config.latent_channels, args.size // scale_factor, args.size // scale_factor,
                          generator=torch.Generator().manual_seed(0))
    latents = latents.to(vae.device, dtype)
    results = {}
    for name, (which, config) in rows.items():
        decoder = vae if which == "vae" else surrogate

        def step():
            decode_for_loss(decoder, latents.clone().requires_grad_(True)).square().mean().backward()

        with decoder_configured(decoder, dtype, scale_factor, **config), frozen(decoder):
            # a child measuring peaks takes the first call (see cpu_peaks); timing runs drop the warm-up
            calls = [timed_call(step, vae.device, sample=args.peaks_only)
                     for _ in range(1 if args.peaks_only else args.repeats + 1)]
        measured = calls if args.peaks_only else calls[1:]
        results[name] = (statistics.median(c[0] for c in measured), max(c[1] for c in measured))
        print(f"decoder {name:<32} {results[name][0]:8.2f} s  {results[name][1]:9.0f} MB", flush=True,
              file=sys.stderr)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["toy", "sd-arch", "sdxl-arch", "sd3-arch", "flux-arch"], default="toy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="the -arch configs on a CPU: 256², 10 steps, N=4 (sd3-arch, "
                                                        "flux-arch: fewer layers too)")
    p.add_argument("--size", type=int, default=None,
                   help="image side (toy 64, sd-arch 512, sdxl-arch, sd3-arch and flux-arch 1024, quick 256)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (50; sd3-arch, flux-arch 28; quick 10)")
    p.add_argument("--grad-steps", type=int, default=None,
                   help="N, gradient steps per window (12; quick 4; toy: the model's own, 8)")
    p.add_argument("--lr", type=float, default=None, help="Adam's learning rate (0.1; toy: the model's own, 0.3)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="*", help="images per second at these batch sizes instead (e.g. 1 4 8)")
    p.add_argument("--decoder-memory", action="store_true",
                   help="instead: one decoder forward+backward at --size, plain / checkpointed / tiled / "
                        "painting decoder")
    p.add_argument("--memory-only", action="store_true",
                   help="with --decoder-memory on a CPU: peak memory only (one call per row, in the measuring child), "
                        "no timing runs; for sizes where timing every row would take an hour (1024² on 2 cores)")
    p.add_argument("--tile", type=int, default=None, help="latent tile side for tiled decoding (default: 2x2 tiles)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None,
                   help="the fast dtype (GPU default fp16; CPU default fp32)")
    p.add_argument("--weights", choices=["bf16", "fp16", "same"], default=None,
                   help="sdxl-arch: store the UNet's and text encoders' weights in this dtype, computing in the fast "
                        "dtype (CPU default bf16: the float32 pipeline does not fit in 24 GB beside a run; GPU: same)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (UNet and decoder)")
    p.add_argument("--painting-decoder", default=None, metavar="DIR",
                   help="the painting decoder rows use this folder (an AutoencoderTiny or a TruncatedDecoder)")
    p.add_argument("--only", nargs="*", help="measure only these rows, by name or its beginning (text2img is "
                   "always measured, but with --decoder-memory)")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    p.add_argument("--no-peaks", action="store_true",
                   help="on a CPU: timings only, without the child process that measures each row's peak memory "
                        "(one more call per row, twice as slow)")
    p.add_argument("--peaks-only", action="store_true", help=argparse.SUPPRESS)  # the child of cpu_peaks
    args = p.parse_args(argv)
    args.load_start = os.getloadavg()[0]  # other processes' load on this machine shows in the timings
    flow = args.config in FLOW_VAE_SCALING
    quick = args.quick and args.config != "toy"
    args.size = args.size or (64 if args.config == "toy" else 256 if quick else
                              1024 if args.config in ("sdxl-arch", *FLOW_VAE_SCALING) else 512)
    args.steps = args.steps or (10 if quick else 28 if flow else 50)
    # the toy declares its own descent (N = 8 at lr 0.3, as far as the release's N = 24 at 0.1 would go on it)
    from gradop.toy.components import GRADOP_PLUS_DEFAULTS as TOY

    args.grad_steps = args.grad_steps if args.grad_steps is not None else (
        TOY["grad_steps_per_iter"] if args.config == "toy" else 4 if quick else 12)
    args.lr = args.lr if args.lr is not None else (TOY["lr"] if args.config == "toy" else 0.1)
    from gradop.checks import check_count, check_lr

    try:  # before minutes of loading
        check_lr(args.lr, "--lr"), check_count(args.grad_steps, "--grad-steps"), check_count(args.repeats, "--repeats", 1)
    except (TypeError, ValueError) as err:
        p.error(str(err))
    device = torch.device(args.device)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    fast = dtypes[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    large = args.config in ("sdxl-arch", *FLOW_VAE_SCALING)
    args.weights = args.weights or ("bf16" if large and device.type == "cpu" else "same")
    storage = None if args.weights == "same" or not large else dtypes[args.weights]
    argv = list(sys.argv[1:] if argv is None else argv)
    # default tiles: 2x2 tiles overlapping by a quarter tile; a multiple of 4, which diffusers' tiled decode needs
    default_tile = lambda factor: args.tile or 4 * math.ceil(0.6 * args.size / factor / 4)  # noqa: E731

    if args.memory_only and not (args.decoder_memory and device.type == "cpu"):
        raise SystemExit("--memory-only: only with --decoder-memory on a CPU (a GPU measures time and memory at once)")
    if args.memory_only and not args.peaks_only:  # the child measures every row; no timing runs here
        args.repeats = 0
        results = {name: (None, peak) for name, peak in cpu_peaks(argv).items()}
        table = decoder_report(args, device, fast, results, argv)
    elif args.decoder_memory:
        vae, factor = load_vae(args.config, args.device)
        args.tile = default_tile(factor)
        rows = select(decoder_rows(args.config, args.tile, args.painting_decoder), args.only)
        results = decoder_memory(vae, factor, surrogate_decoder(args.config, device, args.painting_decoder), rows, args,
                                 fast)
        if args.peaks_only:
            print(json.dumps({name: peak for name, (_, peak) in results.items()}))
            return 0
        if device.type == "cpu":
            vae = None
            release_memory()
            peaks = cpu_peaks(argv)
            results = {name: (seconds, peaks[name]) for name, (seconds, _) in results.items()}
        table = decoder_report(args, device, fast, results, argv)
    else:
        pipe = load(args.config, args.device, fast if large else torch.float32, storage, quick)
        args.tile = default_tile(pipe.vae_scale_factor)
        target = painting(args.size)
        surrogate = surrogate_decoder(args.config, pipe.device, args.painting_decoder)
        rows = variants(fast, pipe, args.tile, args.compile, args.config)
        if args.only:
            rows = {k: v for k, v in rows.items() if k == "text2img" or k in select(rows, args.only)}
        if args.batches is not None:
            rows = {k: v for k, v in rows.items() if k in ("text2img", "gradop+ (gradop default)",
                                                          "gradop default + painting decoder")}
        if args.peaks_only:
            print(json.dumps(peaks_only(pipe, rows, args, target, surrogate)))
            return 0
        if args.batches:
            results = {batch: measure(pipe, rows, args, target, surrogate, batch) for batch in args.batches}
            table = batch_report(args, device, fast, results, argv)
        else:
            results = measure(pipe, rows, args, target, surrogate)
            if device.type == "cpu" and args.no_peaks:
                results = {name: (seconds, None, images) for name, (seconds, _, images) in results.items()}
            elif device.type == "cpu":
                pipe = surrogate = None  # the child measuring peaks builds its own models
                release_memory()
                peaks = cpu_peaks(argv)
                results = {name: (seconds, peaks[name], images) for name, (seconds, _, images) in results.items()}
            table = report(args, device, fast, results, argv, storage)
    print(table)
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(table + "\n")
        print(f"appended to {HERE / 'RESULTS.md'}")
    return 0


def select(rows: dict, only) -> dict:
    """The rows named by `only` (a name or its beginning each), or all when `only` is empty."""
    if not only:
        return rows
    unknown = sorted(o for o in only if not any(k.startswith(o) for k in rows))
    if unknown:
        raise SystemExit(f"--only: no row named {unknown}; the rows are {sorted(rows)}")
    return {k: v for k, v in rows.items() if any(k.startswith(o) for o in only)}


def header(args, device, argv, what: str, fast=None, interleaved=True) -> list[str]:
    import diffusers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}, " \
        f"{torch.get_num_threads()} threads, load average {args.load_start:.1f} at the start, " \
        f"{os.getloadavg()[0]:.1f} at the end"
    command = "python benchmarks/run.py " + shlex.join(argv)
    dtype = f"fast dtype {str(fast).split('.')[1]}; " if fast is not None else ""
    return [
        f"\n## {args.config}, {what} — {datetime.date.today().isoformat()}",
        f"Device: {device.type} ({name}); torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{dtype}median of {args.repeats} runs after a warm-up{', the rows interleaved' if interleaved else ''}.",
        f"Command: `{command.strip()}`\n",
    ]


def report(args, device, fast, results, argv, storage=None) -> str:
    base = results["text2img"][0]
    # the images are compared to the released configuration's, or (sdxl-arch, none released) to gradop's default
    reference_row = next((r for r in ("gradop+ released", "gradop+ (gradop default)") if r in results), None)
    reference = results[reference_row][2] if reference_row else None
    reference_name = "released" if reference_row == "gradop+ released" else "gradop default"
    lines = header(args, device, argv, f"{args.size}², {args.steps} steps, batch {args.batch}, N={args.grad_steps}, lr {args.lr:g}", fast)
    if args.quick and args.config in QUICK_DEPTH:
        lines.insert(-1, f"Quick: {QUICK_DEPTH[args.config]}, every width as in the full model; the denoiser's share of "
                         "a run is smaller than at full depth, so the ratios to text2img are upper bounds.")
    if storage is not None:
        stored, computed = str(storage).split('.')[1], str(fast).split('.')[1]
        denoiser = "transformer" if args.config in FLOW_VAE_SCALING else "UNet"
        lines.insert(-1, f"Weights: the {denoiser}'s and text encoders' convolutions and linear layers stored in {stored}, "
                         f"each converted to {computed} just before it runs (`store_weights`); their norms and "
                         f"embeddings, the VAE and the painting decoder in {computed}.")
    lines += [f"| variant | seconds | × text2img | peak memory (MB) | max abs. difference to {reference_name} |",
              "|---|---:|---:|---:|---:|"]
    for row, (seconds, peak, images) in results.items():
        # how far each GradOP+ variant's image is from the released configuration's (0 = identical)
        diff = "" if reference is None or row.startswith(("text2img", "sdedit")) or row == reference_row and \
            reference_row != "gradop+ released" else \
            f"{float((images - reference).abs().max()):.1e}" if images.shape == reference.shape else "other size"
        lines.append(f"| {row} | {seconds:.2f} | {seconds / base:.2f} | {'—' if peak is None else f'{peak:.0f}'} | {diff} |")
    return "\n".join(lines)


def batch_report(args, device, fast, results, argv) -> str:
    lines = header(args, device, argv, f"throughput, {args.size}², {args.steps} steps, N={args.grad_steps}, lr {args.lr:g}", fast)
    batches = list(results)
    lines += ["| variant | " + " | ".join(f"images/s at batch {b} (× text2img)" for b in batches) + " |",
              "|---|" + "---:|" * len(batches)]
    for row in next(iter(results.values())):
        cells = []
        for batch in batches:
            seconds, base = results[batch][row][0], results[batch]["text2img"][0]
            cells.append(f"{batch / seconds:.2f} ({seconds / base:.2f})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decoder_report(args, device, fast, results, argv) -> str:
    lines = header(args, device, argv, f"one decoder forward+backward at {args.size}²", fast, interleaved=False)
    if args.memory_only:  # no timing runs: say so instead of a median of none
        lines[-2] = lines[-2].replace("median of 0 runs after a warm-up", "peak memory of one call per row, not timed")
    lines += ["| decoder | seconds | peak memory (MB) |", "|---|---:|---:|"]
    lines += [f"| {row} | {'—' if seconds is None else f'{seconds:.2f}'} | {peak:.0f} |"
              for row, (seconds, peak) in results.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
