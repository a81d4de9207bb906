"""Tiny random-weight components with Stable Diffusion's structure, for tests and `--model tiny`.

Everything is built locally (a character-level CLIP tokenizer included), so nothing touches the
network. The VAE keeps SD's downsampling factor of 8; the UNet has cross-attention at two
resolutions. Outputs are noise: this checks plumbing, not image quality.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .schedulers import make_scheduler

TINY = "gradop:tiny"  # the `name_or_path` of `tiny_pipeline()` (`gradop.models.model_label` knows it)
TINY_XL = "gradop:tiny-xl"  # and of `tiny_sdxl_pipeline()`
TINY_SD3 = "gradop:tiny-sd3"  # `tiny_sd3_pipeline()`
TINY_FLUX = "gradop:tiny-flux"  # `tiny_flux_pipeline()`
TINY_NAMES = {"tiny": TINY, "tiny-xl": TINY_XL, "tiny-sd3": TINY_SD3, "tiny-flux": TINY_FLUX}  # load_pipeline's names


def byte_vocab() -> dict[str, int]:
    """CLIP's special tokens and a byte alphabet, each byte with and without the word-end mark `</w>`."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in sorted(ByteLevel.alphabet()):
            vocab[char + suffix] = len(vocab)
    return vocab


def tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: every byte is a token, word ends marked `</w>`."""
    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=model_max_length)


def sd_like_components(tokenizer, seeds: dict[str, int], unet: dict, vae: dict, text: dict) -> dict:
    """Untrained vae, text_encoder, unet with Stable Diffusion's classes from their configurations, each
    seeded on its own (`seeds[name]`, applied in that dict's order) so they are reproducible; plus `tokenizer`
    and the released DDIM scheduler. `text` is a `CLIPTextConfig`'s fields beyond the tokenizer's."""
    builders = {
        "unet": lambda: UNet2DConditionModel(**unet),
        "vae": lambda: AutoencoderKL(**vae),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, **text)),
    }
    models = {}
    for name, seed in seeds.items():
        torch.manual_seed(seed)
        models[name] = builders[name]()
    return dict(models, tokenizer=tokenizer, scheduler=make_scheduler("ddim"))


def built(builders: dict, seed: int) -> dict:
    """Each builder's model in eval mode, the k-th seeded with `seed + k` on its own (reproducible one by one)."""
    models = {}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        models[name] = build().eval()
    return models


def tiny_components(seed: int = 0, scheduler: str = "ddim") -> dict:
    """vae, text_encoder, tokenizer, unet, scheduler: SD's structure at a size that runs in milliseconds."""
    components = sd_like_components(
        tiny_tokenizer(), seeds={"unet": seed, "vae": seed + 1, "text_encoder": seed + 2},
        unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8, cross_attention_dim=32,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                 block_out_channels=(8, 16, 16, 16), sample_size=64,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, layer_norm_eps=1e-5),
    )
    for name in ("unet", "vae", "text_encoder"):
        components[name].eval()
    return components | {"scheduler": make_scheduler(scheduler)}


def tiny_pipeline(seed: int = 0, scheduler: str = "ddim"):
    """`GradOPPipeline` of `tiny_components`, named `TINY` (`load_pipeline("tiny")`)."""
    from .pipeline import GradOPPipeline

    pipe = GradOPPipeline(**tiny_components(seed, scheduler))
    pipe.register_to_config(_name_or_path=TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_components(seed: int = 0) -> dict:
    """The components of a `StableDiffusionXLPipeline` at a size that runs in milliseconds: SDXL's structure (two
    CLIP text encoders side by side, the second with a projection; a UNet with SDXL's `text_time` added
    conditioning and cross-attention at two resolutions; a VAE with SDXL's 8x factor and `force_upcast`), built
    locally like diffusers' own fast tests, with the released DDIM scheduler on SD's noise schedule."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length, bos_token_id=0,
                eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                num_hidden_layers=2, layer_norm_eps=1e-5, hidden_act="gelu", projection_dim=32)
    builders = {
        # added conditioning: 6 size/crop numbers x addition_time_embed_dim, plus the pooled text embedding (32)
        "unet": lambda: UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            norm_num_groups=8, attention_head_dim=(2, 4), use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64),
        "vae": lambda: AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(8, 16, 16, 16), sample_size=64, scaling_factor=0.13025, force_upcast=True,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**text)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**text)),
    }
    models = built(builders, seed)
    return dict(models, tokenizer=tokenizer, tokenizer_2=tiny_tokenizer(), scheduler=make_scheduler("ddim"),
                image_encoder=None, feature_extractor=None)


def tiny_sdxl_pipeline(seed: int = 0):
    """A diffusers `StableDiffusionXLPipeline` of `tiny_sdxl_components`, named `TINY_XL`."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed))
    pipe.register_to_config(_name_or_path=TINY_XL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------- flow-matching transformers (SD3, FLUX)
T5_WORDS = ("a photo painting cartoon of lake below snowy mountains mountain forest meadow sun sky house beach sand "
            "cloud clouds grass water snow and with in the on at next to low left right").split()


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A T5 (Unigram) tokenizer built locally: whole words of the toy world's prompts, then single letters, so any
    prompt tokenises; `</s>` ends every sequence, as T5's does."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -5.0)]
    vocab += [("\u2581" + word, -1.0) for word in T5_WORDS]
    vocab += [(char, -3.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789,.'-"]
    vocab += [("\u2581" + char, -4.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_t5_encoder(tokenizer, seed: int, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def _flow_vae(latent_channels: int, scaling_factor: float, shift_factor: float):
    """SD3's and FLUX's VAE structure (16 latent channels, a shift, no quant convs) at the tiny size, 8x."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
                         norm_num_groups=8, block_out_channels=(8, 16, 16, 16), sample_size=64,
                         scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False,
                         use_post_quant_conv=False, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4).eval()


def tiny_sd3_components(seed: int = 0, t5: bool = False) -> dict:
    """The components of a `StableDiffusion3Pipeline` at a size that runs in milliseconds: SD3's structure (two
    CLIP text encoders with projections, optionally T5; an MMDiT `SD3Transformer2DModel` with 2x2 patches and joint
    attention; a 16-channel VAE with SD3's scaling and shift; `FlowMatchEulerDiscreteScheduler` with shift 3), built
    locally like diffusers' own fast tests. `t5=False` leaves T5 out (`text_encoder_3=None`), as SD3 allows."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length, bos_token_id=0,
                eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                num_hidden_layers=2, layer_norm_eps=1e-5, hidden_act="gelu", projection_dim=32)
    t5_tokenizer = tiny_t5_tokenizer() if t5 else None
    builders = {
        # the two CLIPs' states side by side (64 channels) are padded to T5's width, the joint dimension (64)
        "transformer": lambda: SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
            pos_embed_max_size=32),
        "vae": lambda: _flow_vae(16, 1.5305, 0.0609),
        "text_encoder": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**text)),
    }
    models = built(builders, seed)
    return dict(models, tokenizer=tokenizer, tokenizer_2=tiny_tokenizer(), scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0), text_encoder_3=tiny_t5_encoder(t5_tokenizer, seed + 4, width=64) if t5 else None,
        tokenizer_3=t5_tokenizer)


def tiny_sd3_pipeline(seed: int = 0, t5: bool = False):
    """A diffusers `StableDiffusion3Pipeline` of `tiny_sd3_components`, named `TINY_SD3`."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(**tiny_sd3_components(seed, t5))
    pipe.register_to_config(_name_or_path=TINY_SD3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_components(seed: int = 0) -> dict:
    """The components of a `FluxPipeline` at a size that runs in milliseconds: FLUX's structure (CLIP for the pooled
    embedding, T5 for the sequence; a `FluxTransformer2DModel` with double- and single-stream blocks and rotary
    positions over latents packed in 2x2 patches; a 16-channel VAE with FLUX's scaling and shift;
    `FlowMatchEulerDiscreteScheduler` with FLUX's resolution-dependent shift), built locally."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, t5_tokenizer = tiny_tokenizer(), tiny_t5_tokenizer()
    builders = {
        # 16 latent channels packed 2x2 = 64 inputs; rotary axes (4, 4, 8) sum to the head dimension 16
        "transformer": lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)),
        "vae": lambda: _flow_vae(16, 0.3611, 0.1159),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length, bos_token_id=0,
            eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, layer_norm_eps=1e-5, hidden_act="gelu", projection_dim=32)),
    }
    models = built(builders, seed)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)
    return dict(models, tokenizer=tokenizer, text_encoder_2=tiny_t5_encoder(t5_tokenizer, seed + 3),
                tokenizer_2=t5_tokenizer, scheduler=scheduler, image_encoder=None, feature_extractor=None)


def tiny_flux_pipeline(seed: int = 0):
    """A diffusers `FluxPipeline` of `tiny_flux_components`, named `TINY_FLUX`."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**tiny_flux_components(seed))
    pipe.default_sample_size = 8  # 64x64 images by default, as the other tiny models (FLUX's own: 1024x1024)
    pipe.register_to_config(_name_or_path=TINY_FLUX)
    pipe.set_progress_bar_config(disable=True)
    return pipe
