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


def tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: every byte is a token, word ends marked `</w>`."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in sorted(ByteLevel.alphabet()):
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_components(seed: int = 0, scheduler: str = "ddim") -> dict:
    """vae, text_encoder, tokenizer, unet, scheduler; each model seeded on its own so they are reproducible."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, layer_norm_eps=1e-5,
    ))
    for model in (unet, vae, text_encoder):
        model.eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                scheduler=make_scheduler(scheduler))


def tiny_pipeline(seed: int = 0, scheduler: str = "ddim"):
    from .pipeline import GradOPPipeline

    pipe = GradOPPipeline(**tiny_components(seed, scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe
