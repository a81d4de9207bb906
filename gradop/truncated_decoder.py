"""A painting decoder that stops where the painting function stops seeing: the VAE's own decoder, cut at a lower
resolution, with a small head distilled to give the image the painting loss compares.

The painting loss compares f(D(z)) with the painting, f a Gaussian blur of σ pixels. The blur keeps a frequency k
(cycles per pixel) by exp(−2π²σ²k²): at the toy's σ = 1.5 px on 64², the Nyquist frequency of a 32² image
(k = 1/4) keeps 6 %. So the decoder's layers at full resolution, the costly ones, make detail the loss cannot see.
`TruncatedDecoder` runs the VAE decoder's layers up to a lower resolution (their weights, frozen: the gradient
through them is the full decoder's), then a small head to RGB, upsampled bilinearly to the full size:

    D̃(z) = up(head(trunk(z))),     trunk = post_quant_conv, conv_in, mid block, the first `kept_up_blocks` up blocks

Only the head is learnt (`gradop.toy.distill --truncated`), on f(D̃(z)) ≈ f(D(z)).

`TruncatedTinyDecoder` is the same cut of TAESD's decoder (`AutoencoderTiny`): at Stable Diffusion's size its
trunk, 64 channels wide, is what makes it cheap, where the VAE's 512-channel trunk stays costly at any resolution
(benchmarks/decoder_cuts.py). Its head is distilled on the full VAE's blurred output, f(D̃(z)) ≈ f(D(z))
(`gradop.toy.distill --cut-tiny`, the toy's analogue).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput, DecoderTiny
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _check_whole(**values) -> None:
    """Each keyword's value is a whole number of at least 1 (a count of blocks, channels or upsamplings)."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


class TruncatedDecoder(ModelMixin, ConfigMixin):
    """`AutoencoderKL`'s decoder, cut after `kept_up_blocks` up blocks, with a head of `head_channels` to RGB;
    a `painting_decoder=` for GradOP (`decode(z).sample`, the VAE's `scaling_factor`, `shift_factor` and
    `force_upcast`). No gradient checkpointing or tiling: it is the cheap path already."""

    HEAD = ("decoder.conv_norm_out", "decoder.conv_out")  # the learnt part's parameter names; the rest is the VAE's

    @register_to_config
    def __init__(self, latent_channels: int = 4, block_out_channels: tuple = (64, 64), layers_per_block: int = 1,
                 norm_num_groups: int = 32, act_fn: str = "silu", mid_block_add_attention: bool = True,
                 use_post_quant_conv: bool = True, scaling_factor: float = 0.18215, shift_factor: float | None = None,
                 force_upcast: bool = False, kept_up_blocks: int = 1, head_channels: int = 32):
        super().__init__()
        blocks = len(block_out_channels)
        _check_whole(kept_up_blocks=kept_up_blocks, head_channels=head_channels)
        if blocks < 2 or kept_up_blocks >= blocks:
            raise ValueError(f"kept_up_blocks must be between 1 and {blocks - 1} (the decoder has {blocks} up "
                             f"blocks; a cut needs at least 2), got {kept_up_blocks}")
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        trunk = Decoder(in_channels=latent_channels, out_channels=3, up_block_types=("UpDecoderBlock2D",) * blocks,
                        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                        norm_num_groups=norm_num_groups, act_fn=act_fn, mid_block_add_attention=mid_block_add_attention)
        trunk.up_blocks = trunk.up_blocks[:kept_up_blocks]
        channels = list(reversed(block_out_channels))[kept_up_blocks - 1]
        trunk.conv_norm_out = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        trunk.conv_out = nn.Sequential(nn.Conv2d(channels, head_channels, 3, padding=1), nn.SiLU(),
                                       nn.Conv2d(head_channels, 3, 3, padding=1))
        self.decoder = trunk
        self.upscale = 2 ** (blocks - 1 - kept_up_blocks)  # the upsamplers cut off (the last up block has none)

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, kept_up_blocks: int = 1, head_channels: int = 32) -> "TruncatedDecoder":
        """The trunk of `vae`'s decoder (its weights copied) and a fresh head."""
        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"vae must be a diffusers AutoencoderKL (its decoder is what is cut), got {type(vae).__name__}")
        c = vae.config
        model = cls(latent_channels=c.latent_channels, block_out_channels=tuple(c.block_out_channels),
                    layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups, act_fn=c.act_fn,
                    mid_block_add_attention=c.get("mid_block_add_attention", True),
                    use_post_quant_conv=c.get("use_post_quant_conv", True), scaling_factor=c.scaling_factor,
                    shift_factor=c.get("shift_factor"), force_upcast=bool(c.get("force_upcast", False)),
                    kept_up_blocks=kept_up_blocks, head_channels=head_channels)
        source = vae.state_dict()
        trunk = {k: v for k, v in model.state_dict().items() if not k.startswith(cls.HEAD)}
        missing = [k for k in trunk if k not in source or source[k].shape != trunk[k].shape]
        if missing:
            raise ValueError(f"the VAE's decoder does not match its config: {missing[:3]}")
        model.load_state_dict({k: source[k] for k in trunk}, strict=False)
        model = model.to(vae.device)
        return model if model.dtype == vae.dtype else model.to(dtype=vae.dtype)

    def head_parameters(self):
        """What distillation learns: the head (the trunk stays the VAE's)."""
        return [p for name, p in self.named_parameters() if name.startswith(self.HEAD)]

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """The trunk's output: the VAE decoder's features at the cut."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        d = self.decoder
        sample = d.mid_block(d.conv_in(z))
        for block in d.up_blocks:
            sample = block(sample)
        return sample

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Features at the cut -> the image in [-1, 1] at full size."""
        d = self.decoder
        # contiguous: the upsampler's convolution hands back channels-last features, and GroupNorm's backward on
        # those segfaults when they need no gradient (torch 2.13, CPU), as in distillation
        image = d.conv_out(d.conv_act(d.conv_norm_out(features.contiguous())))
        if self.upscale > 1:
            image = F.interpolate(image, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return image

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        image = self.head(self.features(z))
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, z: torch.Tensor):
        return self.decode(z)


class TruncatedTinyDecoder(ModelMixin, ConfigMixin):
    """`AutoencoderTiny`'s decoder (TAESD's) without its last `upsamplings_cut` upsamplings, with a head of
    `head_channels` to RGB, upsampled bilinearly to the full size; a `painting_decoder=` for GradOP:

        D̃(z) = up(head(trunk(3 tanh(z / 3))))      (TAESD clamps its latents the same way)

    The config names are `AutoencoderTiny`'s, so that `from_tiny` copies the trunk by parameter name."""

    HEAD = ("head.",)  # the learnt part's parameter names; `decoder.layers` are TAESD's

    @register_to_config
    def __init__(self, latent_channels: int = 4, decoder_block_out_channels: tuple = (64, 64, 64, 64),
                 num_decoder_blocks: tuple = (3, 3, 3, 1), upsampling_scaling_factor: int = 2, act_fn: str = "relu",
                 upsample_fn: str = "nearest", scaling_factor: float = 1.0, shift_factor: float = 0.0,
                 force_upcast: bool = False, upsamplings_cut: int = 2, head_channels: int = 32):
        super().__init__()
        upsamplings = len(num_decoder_blocks) - 1
        _check_whole(upsamplings_cut=upsamplings_cut, head_channels=head_channels,
                     upsampling_scaling_factor=upsampling_scaling_factor)
        if len(decoder_block_out_channels) != len(num_decoder_blocks):
            raise ValueError(f"decoder_block_out_channels and num_decoder_blocks need one entry per stage, got "
                             f"{len(decoder_block_out_channels)} and {len(num_decoder_blocks)}")
        if upsamplings < 1:
            raise ValueError(f"a decoder of {len(num_decoder_blocks)} stage(s) has no upsampling to cut: it needs 2 "
                             "stages or more")
        if upsamplings_cut > upsamplings:
            raise ValueError(f"upsamplings_cut must be between 1 and {upsamplings} (the decoder upsamples "
                             f"{upsamplings} time{'s' if upsamplings > 1 else ''}), got {upsamplings_cut}")
        trunk = DecoderTiny(in_channels=latent_channels, out_channels=3, num_blocks=tuple(num_decoder_blocks),
                            block_out_channels=tuple(decoder_block_out_channels),
                            upsampling_scaling_factor=upsampling_scaling_factor, act_fn=act_fn, upsample_fn=upsample_fn)
        layers = list(trunk.layers)
        cut = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Upsample)][-upsamplings_cut]
        trunk.layers = nn.Sequential(*layers[:cut])  # ends with the blocks before that upsampling
        self.decoder = trunk
        channels = list(decoder_block_out_channels)[upsamplings - upsamplings_cut]
        self.head = nn.Sequential(nn.Conv2d(channels, head_channels, 3, padding=1), get_activation(act_fn),
                                  nn.Conv2d(head_channels, 3, 3, padding=1))
        self.upscale = upsampling_scaling_factor ** upsamplings_cut

    @classmethod
    def from_tiny(cls, tiny: AutoencoderTiny, upsamplings_cut: int = 2,
                  head_channels: int = 32) -> "TruncatedTinyDecoder":
        """The trunk of `tiny`'s decoder (its weights copied) and a fresh head."""
        if not isinstance(tiny, AutoencoderTiny):
            raise TypeError(f"tiny must be a diffusers AutoencoderTiny (TAESD's class; its decoder is what is cut), "
                            f"got {type(tiny).__name__}")
        if any(parameter.is_meta for parameter in tiny.parameters()):
            raise ValueError("tiny has weights that were never loaded (meta tensors): load a folder of an "
                             "AutoencoderTiny's own weights")
        c = tiny.config
        model = cls(latent_channels=c.latent_channels, decoder_block_out_channels=tuple(c.decoder_block_out_channels),
                    num_decoder_blocks=tuple(c.num_decoder_blocks),
                    upsampling_scaling_factor=c.upsampling_scaling_factor, act_fn=c.act_fn,
                    upsample_fn=c.upsample_fn, scaling_factor=c.scaling_factor, shift_factor=c.shift_factor,
                    force_upcast=bool(c.force_upcast), upsamplings_cut=upsamplings_cut, head_channels=head_channels)
        source = tiny.state_dict()
        trunk = {k: v for k, v in model.state_dict().items() if not k.startswith(cls.HEAD)}
        model.load_state_dict({k: source[k] for k in trunk}, strict=False)  # same config: the same names and shapes
        model = model.to(tiny.device)
        return model if model.dtype == tiny.dtype else model.to(dtype=tiny.dtype)

    def head_parameters(self):
        """What distillation learns: the head (the trunk stays TAESD's)."""
        return list(self.head.parameters())

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        image = self.head(self.decoder.layers(torch.tanh(z / 3) * 3))
        image = F.interpolate(image, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        image = image.mul(2).sub(1)  # TAESD's [0, 1] to diffusers' [-1, 1]
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, z: torch.Tensor):
        return self.decode(z)
