"""Each speed/memory optimisation leaves GradOP+'s result equal (fp32 paths) or within a stated bound of the
released configuration, and the benchmark harness restores the pipeline after each configuration."""
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import gen

spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

RELEASED = dict(freeze_decoder=False, sdpa=False)


def run(pipe, painting, **config):
    with bench.configured(pipe, **config):
        return pipe.gradop_plus("a red house", painting, 0.8, 3, 4, num_inference_steps=6, output_type="pt",
                                generator=gen(0)).images


def test_a_frozen_decoder_gives_the_same_image_and_no_weight_gradients(pipe, painting):
    unfrozen = run(pipe, painting, **RELEASED)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.vae.parameters())  # the release's cost
    pipe.vae.zero_grad(set_to_none=True)
    frozen = run(pipe, painting, **RELEASED | dict(freeze_decoder=True))
    assert all(p.grad is None for p in pipe.vae.parameters())
    assert torch.equal(unfrozen, frozen)


def test_decoder_checkpointing_gives_the_same_image(pipe, painting):
    assert torch.equal(run(pipe, painting, **RELEASED), run(pipe, painting, **RELEASED | dict(checkpointing=True)))
    assert not pipe.vae.is_gradient_checkpointing  # restored


@pytest.mark.parametrize("change", [dict(sdpa=True), dict(channels_last=True)], ids=["sdpa", "channels_last"])
def test_kernel_choices_stay_within_float_rounding(pipe, painting, change):
    # a fused kernel or another memory layout sums in another order: images in [0, 1] agree to 1e-4
    difference = (run(pipe, painting, **RELEASED) - run(pipe, painting, **RELEASED | change)).abs().max()
    assert difference < 1e-4


def test_bfloat16_models_stay_within_a_measured_bound(pipe, painting):
    # bf16 UNet and decoder, latent and Adam in fp32: measured max |Δ| 0.030 on the tiny model (CPU); bound 0.1 of [0, 1]
    reference = run(pipe, painting, **RELEASED)
    half = run(pipe, painting, **RELEASED | dict(dtype=torch.bfloat16))
    assert torch.isfinite(half).all()
    assert (reference - half.float()).abs().max() < 0.1
    assert pipe.dtype == torch.float32  # restored


def test_the_configuration_is_restored(pipe, painting):
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = pipe.unet
    run(pipe, painting, **RELEASED | dict(channels_last=True))
    assert pipe.unet is unet and pipe.freeze_decoder is True
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    weight = next(p for p in pipe.unet.parameters() if p.ndim == 4)
    assert weight.is_contiguous()


# ---------------------------------------------------------------------- guidance_decoder=
def guided(pipe, painting, method="gradop_plus", **kwargs):
    call = getattr(pipe, method)
    args = (0.8, 3, 4) if method == "gradop_plus" else (0.6, 4)
    return call("a red house", painting, *args, num_inference_steps=6, output_type="pt", generator=gen(0),
                **kwargs).images


@pytest.mark.parametrize("method", ["gradop_plus", "gradop"])
def test_the_pipelines_own_vae_as_guidance_decoder_changes_nothing(pipe, painting, method):
    assert torch.equal(guided(pipe, painting, method), guided(pipe, painting, method, guidance_decoder=pipe.vae))


def test_a_small_guidance_decoder_steers_the_optimisation_only(pipe, painting):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    small = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4,
                            decoder_block_out_channels=(8,) * 4, num_decoder_blocks=(1,) * 4).eval()
    out = pipe.gradop_plus("a red house", painting, 0.8, 3, 4, num_inference_steps=6, output_type="pt",
                           generator=gen(0), guidance_decoder=small)
    assert torch.isfinite(out.images).all()
    assert not torch.equal(out.images, guided(pipe, painting))  # it did drive the descent
    assert all(p.grad is None for p in small.parameters())  # frozen like the VAE
    assert len(out.loss_history) == 3 and out.loss_history[0].shape == (4, 1)  # K windows of N steps, as usual


def test_a_guidance_decoder_of_the_wrong_kind_or_scale_is_a_clear_error(pipe, painting):
    from diffusers import AutoencoderTiny

    with pytest.raises(TypeError, match="guidance_decoder"):
        guided(pipe, painting, guidance_decoder=torch.nn.Identity())
    four_x = AutoencoderTiny(encoder_block_out_channels=(8,) * 3, num_encoder_blocks=(1,) * 3,
                             decoder_block_out_channels=(8,) * 3, num_decoder_blocks=(1,) * 3)
    with pytest.raises(ValueError, match="upsample by 8"):
        guided(pipe, painting, guidance_decoder=four_x)
