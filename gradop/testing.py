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
    models = {}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        models[name] = build().eval()
    return dict(models, tokenizer=tokenizer, tokenizer_2=tiny_tokenizer(), scheduler=make_scheduler("ddim"),
                image_encoder=None, feature_extractor=None)


def tiny_sdxl_pipeline(seed: int = 0):
    """A diffusers `StableDiffusionXLPipeline` of `tiny_sdxl_components`, named `TINY_XL`."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed))
    pipe.register_to_config(_name_or_path=TINY_XL)
    pipe.set_progress_bar_config(disable=True)
    return pipe
