"""The toy model's architecture: Stable Diffusion's classes at a size a CPU trains in an hour.

* tokenizer — CLIP's BPE tokenizer with a byte alphabet plus merges that make every word of the
  world's grammar one token (other words are spelled out byte by byte, as CLIP does with rare words);
* text encoder — a 2-layer `CLIPTextModel`;
* VAE — `AutoencoderKL`, 4 latent channels, downsampling 4 (64x64 images -> 16x16x4 latents);
* UNet — `UNet2DConditionModel` with cross-attention at 16x16 and 8x8;
* scheduler — SD's DDIM configuration (`gradop.schedulers.RELEASED_DDIM_CONFIG`).
"""
from __future__ import annotations

from transformers import CLIPTokenizer

from ..testing import byte_vocab, sd_like_components
from .world import VOCABULARY

IMAGE_SIZE = 64
MAX_LENGTH = 77
# The toy's painting scale (`GradOPPipeline.painting_sigma_fraction`): σ = 1.5 px at 64x64. Measured on 64 held-out
# scenes (`gradop.toy.evaluate`, "Painting scale"): it brings a photo's blur within 0.0031 of its scribble's
# (0.0095 unblurred) while a 3-px stroke keeps 70 % of its peak; the release's rule (σ = 0.875 px) leaves
# more texture (0.0042), σ = 7 px (the release's pixels, 11 % of the side) keeps 17 % of the stroke.
PAINTING_SIGMA_FRACTION = 1.5 / 64
# The toy's own GradOP+ defaults (`GradOPPipeline.method_defaults`), chosen on held-out scenes by
# `python -m gradop.toy.evaluate --select-defaults 32` (reports/toy/defaults.md: the most faithful strength x N
# whose realism stays within text-only's interval: s = 0.5, N = 24 at Adam's lr 0.1); then the same descent in a
# third of the steps, N = 8 at lr 0.3, which ends as close to the painting and as realistic on the report's 64
# held-out scenes (`benchmarks/painting_decoder_quality.py --descent 24 8@0.3`). Stable Diffusion keeps the
# release's 0.8 / 3 / 12, lr 0.1.
GRADOP_PLUS_DEFAULTS = {"strength": 0.5, "num_iterative_steps": 3, "grad_steps_per_iter": 8, "lr": 0.3}


def toy_tokenizer() -> CLIPTokenizer:
    """Byte tokens (with and without the word-end mark) plus one token per grammar word."""
    vocab = byte_vocab()
    merges: list[tuple[str, str]] = []
    for _ in range(10):  # a word's pair can be another word's merge ("h o" of "house" splits "photo"): repeat
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
        split = {word: tokenizer.tokenize(word) for word in VOCABULARY}
        if all(len(pieces) == 1 for pieces in split.values()):
            return tokenizer
        for pieces in split.values():
            while len(pieces) > 1:  # merge what the tokenizer produced, left to right, into one token
                if (pieces[0], pieces[1]) not in merges:
                    merges.append((pieces[0], pieces[1]))
                pieces = [pieces[0] + pieces[1]] + pieces[2:]
                vocab.setdefault(pieces[0], len(vocab))
    raise RuntimeError("could not build merges that keep every grammar word one token")


def toy_components(seed: int = 0, tiny: bool = False) -> dict:
    """Untrained components (each seeded on its own). `tiny` shrinks them for smoke tests."""
    width = 16 if tiny else 32
    return sd_like_components(
        toy_tokenizer(), seeds={"vae": seed, "text_encoder": seed + 1, "unet": seed + 2},
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                 block_out_channels=(width, 2 * width, 2 * width), sample_size=IMAGE_SIZE,
                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3),
        text=dict(hidden_size=2 * width, intermediate_size=4 * width, num_attention_heads=4, num_hidden_layers=2),
        unet=dict(sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(3 * width // 2, 3 * width), norm_num_groups=8, attention_head_dim=8,
                  cross_attention_dim=2 * width,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    )
