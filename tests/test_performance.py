"""Each speed/memory optimisation leaves GradOP+'s result equal (fp32 paths) or within a stated bound of the
released configuration, and the benchmark harness restores the pipeline after each configuration."""
import contextlib
import shutil
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import gen
from gradop.optimize import decode_for_loss

TOY_PAINTING = Path(__file__).resolve().parents[1] / "input-images" / "toy" / "lake_mountains.png"
RELEASED = dict(freeze_decoder=False, sdpa=False)


@contextlib.contextmanager
def configured(pipe, dtype=torch.float32, sdpa=True, channels_last=False, checkpointing=False, tile=None):
    """One speed configuration through diffusers' own switches, restored afterwards (as benchmarks/run.py does)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    saved = [(model, dict(model.attn_processors)) for model in (pipe.unet, pipe.vae)]
    tiles = pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size
    pipe.to(dtype=dtype)
    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if checkpointing:
        pipe.vae.enable_gradient_checkpointing()
    if tile:
        pipe.vae.enable_tiling()
        pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = tile, tile * pipe.vae_scale_factor
    try:
        yield pipe
    finally:
        for model, processors in saved:
            model.set_attn_processor(processors)
            model.to(memory_format=torch.contiguous_format)
        pipe.vae.disable_gradient_checkpointing()
        pipe.vae.disable_tiling()
        pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = tiles
        pipe.to(dtype=torch.float32)


def run(pipe, painting, freeze_decoder=True, **config):
    with configured(pipe, **config):
        return pipe.gradop_plus("a red house", painting, 0.8, 3, 4, num_inference_steps=6, output_type="pt",
                                generator=gen(0), freeze_decoder=freeze_decoder).images


def test_a_frozen_decoder_gives_the_same_image_and_no_weight_gradients(pipe, painting):
    weight_gradients = []  # the release's cost: autograd computes a gradient for every decoder weight, every step
    hooks = [p.register_hook(lambda grad: weight_gradients.append(1)) for p in pipe.vae.decoder.parameters()]
    unfrozen = run(pipe, painting, **RELEASED)
    computed = len(weight_gradients)
    frozen = run(pipe, painting, **RELEASED | dict(freeze_decoder=True))
    for hook in hooks:
        hook.remove()
    assert computed > 0 and len(weight_gradients) == computed  # frozen: none computed
    assert all(p.grad is None for p in pipe.vae.parameters())  # and none left on the model after either call
    assert all(p.requires_grad for p in pipe.vae.parameters())  # freezing is undone after the call
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


# ---------------------------------------------------------------------- painting_decoder=
def guided(pipe, painting, method="gradop_plus", **kwargs):
    call = getattr(pipe, method)
    args = (0.8, 3, 4) if method == "gradop_plus" else (0.6, 4)
    return call("a red house", painting, *args, num_inference_steps=6, output_type="pt", generator=gen(0),
                **kwargs).images


@pytest.mark.parametrize("method", ["gradop_plus", "gradop"])
def test_a_painting_decoder_is_used_for_the_loss_as_it_is(pipe, painting, method):
    """A copy of the VAE (another object: it goes through the painting-decoder path, checked and frozen there)
    steers exactly as the VAE itself; the same copy with its output layer nudged steers differently."""
    def losses(**kwargs):
        args = (0.8, 3, 4) if method == "gradop_plus" else (0.6, 4)
        out = getattr(pipe, method)("a red house", painting, *args, num_inference_steps=6, output_type="pt",
                                    generator=gen(0), **kwargs)
        return out.images, torch.cat([torch.as_tensor(h).flatten() for h in out.loss_history])

    copy = deepcopy(pipe.vae)
    default_images, default_losses = losses()
    copy_images, copy_losses = losses(painting_decoder=copy)
    assert torch.equal(copy_images, default_images) and torch.equal(copy_losses, default_losses)
    assert all(p.grad is None for p in copy.parameters())
    with torch.no_grad():
        copy.decoder.conv_out.bias += 0.3  # brighter decodes: another loss landscape
    nudged_images, nudged_losses = losses(painting_decoder=copy)
    assert (nudged_losses - default_losses).abs().max() > 1e-3
    assert not torch.equal(nudged_images, default_images)  # and it is what steered the image


def test_a_small_painting_decoder_steers_the_optimisation_only(pipe, painting):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    small = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4,
                            decoder_block_out_channels=(8,) * 4, num_decoder_blocks=(1,) * 4).eval()
    out = pipe.gradop_plus("a red house", painting, 0.8, 3, 4, num_inference_steps=6, output_type="pt",
                           generator=gen(0), painting_decoder=small)
    assert torch.isfinite(out.images).all()
    assert not torch.equal(out.images, guided(pipe, painting))  # it did drive the descent
    assert all(p.grad is None for p in small.parameters())  # frozen like the VAE
    assert len(out.loss_history) == 3 and out.loss_history[0].shape == (4, 1)  # K windows of N steps, as usual


def test_a_painting_decoder_of_the_wrong_kind_or_scale_is_a_clear_error(pipe, painting):
    from diffusers import AutoencoderTiny

    with pytest.raises(TypeError, match="painting_decoder"):
        guided(pipe, painting, painting_decoder=torch.nn.Identity())
    four_x = AutoencoderTiny(encoder_block_out_channels=(8,) * 3, num_encoder_blocks=(1,) * 3,
                             decoder_block_out_channels=(8,) * 3, num_decoder_blocks=(1,) * 3)
    with pytest.raises(ValueError, match="upsample by 8"):
        guided(pipe, painting, painting_decoder=four_x)


# ---------------------------------------------------------------------- the toy model's distilled painting decoder
@pytest.fixture(scope="module")
def toy():
    from gradop import load_pipeline

    pipe = load_pipeline("toy", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_toy_model_guides_through_its_own_truncated_decoder_and_the_others_are_opt_in(toy):
    from diffusers import AutoencoderTiny

    from gradop.metrics import painting_distance
    from gradop.models import load_painting_decoder
    from gradop.notebook import INPUT_IMAGES, load_examples
    from gradop.truncated_decoder import TruncatedDecoder

    examples = load_examples(INPUT_IMAGES / "toy", 64)[:4]
    prompts, paintings = [e.prompt for e in examples], [e.painting for e in examples]

    def gradop_plus(pipe, **kwargs):  # 50 steps at the release's s = 0.8, K = 3, N = 12, lr 0.1, where this was measured
        generators = [gen(i) for i in range(len(prompts))]
        kwargs = {"strength": 0.8, "num_iterative_steps": 3, "grad_steps_per_iter": 12, "lr": 0.1, **kwargs}
        return pipe.gradop_plus(prompts, paintings, generator=generators, output_type="pt", **kwargs).images

    assert isinstance(toy.painting_decoder, TruncatedDecoder)
    default = gradop_plus(toy)  # through the VAE's decoder cut at 32²
    full = gradop_plus(toy, painting_decoder=toy.vae)  # the release's full-decoder optimisation
    small = load_painting_decoder("toy")
    assert isinstance(small, AutoencoderTiny) and sum(p.numel() for p in small.parameters()) < 0.1 * sum(
        p.numel() for p in toy.vae.decoder.parameters())
    distilled = gradop_plus(toy, painting_decoder=small)
    assert not torch.equal(distilled, full) and not torch.equal(default, full)  # each drove its descent
    text_only = gradop_plus(toy, grad_steps_per_iter=0)

    scale = toy.config.painting_sigma_fraction  # measured with the blur the optimisation used
    distance = {name: sum(painting_distance(x, y, sigma_fraction=scale) for x, y in zip(images, paintings)) / len(paintings)
                for name, images in [("full", full), ("truncated", default), ("distilled", distilled),
                                     ("text only", text_only)]}
    # measured: these 4 paintings 0.0265 (full), 0.0257 (truncated), 0.0260 (distilled), 0.0540 (text only)
    assert distance["truncated"] <= 1.25 * distance["full"], distance
    assert distance["distilled"] <= 1.25 * distance["full"], distance
    assert distance["full"] < 0.6 * distance["text only"], distance


def test_a_truncated_decoder_is_the_vaes_own_trunk_and_a_head(toy, tmp_path):
    """`TruncatedDecoder.from_vae`: up to its cut it computes what the VAE's decoder computes (its weights, by hand
    through the VAE's own modules); its image has the full size; it saves, loads by folder, and drives GradOP+."""
    from gradop.models import load_painting_decoder
    from gradop.toy.distill import main as distill
    from gradop.truncated_decoder import TruncatedDecoder

    vae = toy.vae
    cut = TruncatedDecoder.from_vae(vae, kept_up_blocks=1)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = vae.decoder
        by_hand = d.up_blocks[0](d.mid_block(d.conv_in(vae.post_quant_conv(z))))  # the VAE's first 32² features
        torch.testing.assert_close(cut.features(z), by_hand, atol=0, rtol=0)
        assert cut.decode(z).sample.shape == vae.decode(z).sample.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="kept_up_blocks must be between 1 and 2"):
        TruncatedDecoder.from_vae(vae, kept_up_blocks=3)

    # a few distillation steps learn the head alone (its backward once segfaulted on channels-last features)
    out = tmp_path / "truncated"
    assert distill(["--truncated", "1", "--steps", "3", "--scenes", "8", "--batch", "4", "--out", str(out)]) == 0
    loaded = load_painting_decoder(str(out))
    assert isinstance(loaded, TruncatedDecoder)
    trunk = {k: v for k, v in loaded.state_dict().items() if not k.startswith(TruncatedDecoder.HEAD)}
    assert all(torch.equal(v, cut.state_dict()[k]) for k, v in trunk.items())  # distillation left the trunk alone
    bundled = load_painting_decoder("toy-truncated").state_dict()  # stale if the toy VAE is retrained: redistil
    assert all(torch.equal(bundled[k], v) for k, v in cut.state_dict().items() if not k.startswith(TruncatedDecoder.HEAD))
    # a pipeline holding one saves and reloads in a fresh process (diffusers finds the class among imported modules)
    import subprocess
    import sys

    saved = tmp_path / "pipeline"
    type(toy)(**{**toy.components, "painting_decoder": loaded}).save_pretrained(saved)
    probe = "import sys; from gradop import GradOPPipeline; print(type(GradOPPipeline.from_pretrained(sys.argv[1]).painting_decoder).__name__)"
    reloaded = subprocess.run([sys.executable, "-c", probe, str(saved)], capture_output=True, text=True)
    assert reloaded.stdout.strip() == "TruncatedDecoder", reloaded.stderr[-2000:]
    painting = Image.open(TOY_PAINTING)
    plus = toy.gradop_plus("a photo of a lake below snowy mountains", painting, num_inference_steps=10,
                           grad_steps_per_iter=4, generator=gen(0), painting_decoder=loaded, output_type="pt")
    assert torch.isfinite(plus.images).all()
    assert all(float(w[-1].max()) < float(w[0].max()) for w in plus.loss_history)  # each window's loss falls


def test_the_cli_picks_the_painting_decoder(toy):
    from diffusers import AutoencoderTiny

    from gradop.models import ModelUnavailableError
    from gradop.runs import painting_decoder  # the CLI's --painting-decoder and the sweep's painting_decoder

    assert painting_decoder(toy, "model") is None
    assert painting_decoder(toy, "full") is toy.vae
    assert isinstance(painting_decoder(toy, "toy"), AutoencoderTiny)
    assert type(painting_decoder(toy, "toy-truncated")).__name__ == "TruncatedDecoder"
    with pytest.raises(ModelUnavailableError, match="painting decoder"):
        painting_decoder(toy, "/no/such/folder")
    with pytest.raises(TypeError, match="painting_decoder must be one of model, full, toy, toy-truncated, taesd"):
        painting_decoder(toy, 3)


# ---------------------------------------------------------------------- the NaN guard
def test_the_descent_stops_at_the_last_finite_latent():
    from gradop.optimize import optimize_latents

    torch.manual_seed(0)
    start, target = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 8, 8)
    calls = []

    def decode(z, poison_at=None):
        calls.append(1)
        out = torch.sigmoid(z)
        return out * float("nan") if poison_at is not None and len(calls) == poison_at else out

    identity = lambda x: x  # noqa: E731
    two, _ = optimize_latents(start, target, decode, identity, steps=2)
    _, three_losses = optimize_latents(start, target, decode, identity, steps=3)
    calls.clear()
    with pytest.warns(UserWarning, match="non-finite"):
        stopped, losses = optimize_latents(start, target, lambda z: decode(z, poison_at=4), identity, steps=12)
    # z_0..z_2 decode finitely, z_3 (made by the third step) does not: z_2 comes back, with its three losses
    assert torch.equal(stopped, two) and torch.equal(losses, three_losses)


def test_the_largest_learning_rate_allowed_still_gives_a_finite_image(pipe, painting):
    # lr = 1e30 threw |z| to 1e30 and ended in a misleading "half precision overflow?"; now anything above
    # checks.MAX_LR is refused up front (test_bad_input), and the largest allowed one runs through
    assert torch.isfinite(guided(pipe, painting, lr=1e10)).all()


@pytest.mark.parametrize("knob, where", [
    (dict(guidance_scale=1e30), "step 1 of 6 after the scheduler's step"),  # 1e30 x ε is finite once, then not
    (dict(callback_on_step_end=lambda pipe, i, t, tensors: {"latents": tensors["latents"] * float("nan")}),
     "step 0 of 6 as callback_on_step_end returned them"),
])
def test_latents_that_stop_being_finite_are_one_error_at_their_step(pipe, painting, knob, where):
    # fp32 models: the advice names the knobs, not half precision; output_type="latent" cannot return NaN either
    with pytest.raises(FloatingPointError, match=where) as caught:
        pipe.text2img("a red house", num_inference_steps=6, output_type="latent", generator=gen(0), **knob)
    assert "guidance_scale" in str(caught.value) and "half precision" not in str(caught.value)


def test_an_overflowing_half_precision_decoder_cannot_spoil_the_image(pipe, painting):
    # fp16 models on the CPU; the painting decoder overflows (an early layer scaled by 1e5 -> inf, then inf - inf = NaN)
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    overflowing = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4,
                                  decoder_block_out_channels=(8,) * 4, num_decoder_blocks=(1,) * 4).eval()
    with torch.no_grad():
        next(p for p in overflowing.decoder.parameters() if p.ndim == 4).mul_(1e5)
    overflowing.to(torch.float16)
    pipe.to(dtype=torch.float16)
    with pytest.warns(UserWarning, match="non-finite"):
        guarded = guided(pipe, painting, painting_decoder=overflowing)
    no_descent = pipe.gradop_plus("a red house", painting, 0.8, 3, 0, num_inference_steps=6, output_type="pt",
                                  generator=gen(0)).images
    assert torch.isfinite(guarded).all()
    assert torch.equal(guarded, no_descent)  # every window stopped before its first step: the latents were kept


# ---------------------------------------------------------------------- tiled decoding
def saved_for_backward_mb(function) -> float:
    """Megabytes autograd keeps for the backward pass while `function` runs forward (what memory has to hold)."""
    total = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: total.append(x.numel() * x.element_size()) or x, lambda x: x):
        function()
    return sum(total) / 2**20


def test_tiles_blend_back_exactly_for_a_decoder_that_sees_one_pixel():
    # a decoder without spatial context decodes a tile as it decodes the whole: blending must then be exact
    from gradop.optimize import decode_in_tiles

    def pointwise(z):
        return torch.sigmoid(torch.nn.functional.interpolate(z[:, :3] * 2 - z[:, 3:], scale_factor=4))

    torch.manual_seed(0)
    latents = torch.randn(2, 4, 40, 27, requires_grad=True)  # sizes that do not divide into tiles
    whole, tiled = pointwise(latents), decode_in_tiles(pointwise, latents, 16, 4)
    assert tiled.shape == whole.shape and (tiled - whole).abs().max() < 1e-6
    weights = torch.rand_like(whole)
    grad_whole, = torch.autograd.grad((whole * weights).sum(), latents)
    grad_tiled, = torch.autograd.grad((tiled * weights).sum(), latents)
    assert (grad_tiled - grad_whole).abs().max() < 1e-5
    assert torch.equal(decode_in_tiles(pointwise, latents, 40, 8), whole)  # one tile covers it: the plain decode


def test_tiled_guidance_keeps_one_tile_in_memory_and_stays_close(toy):
    from gradop.optimize import frozen

    torch.manual_seed(0)
    latents = torch.randn(1, 4, 32, 32, requires_grad=True)  # 128², 2x2 of the toy VAE's 16-latent tiles
    with frozen(toy.vae):
        whole = saved_for_backward_mb(lambda: decode_for_loss(toy.vae, latents))
        toy.vae.enable_tiling()
        try:
            tiled = saved_for_backward_mb(lambda: decode_for_loss(toy.vae, latents))
            assert tiled < 0.02 * whole, (tiled, whole)  # measured: 0.24 MB vs 67 MB (the tiles' inputs only)
            painting = Image.open(TOY_PAINTING).resize((128, 128))
            images = {tiling: None for tiling in (True, False)}
            for tiling in images:
                (toy.vae.enable_tiling if tiling else toy.vae.disable_tiling)()
                images[tiling] = toy.gradop_plus("a photo of a lake below snowy mountains", painting, generator=gen(0),
                                                 grad_steps_per_iter=24, lr=0.1,  # where it was measured
                                                 painting_decoder=toy.vae, output_type="pt").images
        finally:
            toy.vae.disable_tiling()
    from gradop.metrics import painting_distance

    # Each tile is decoded without its neighbours, so the descent differs locally (measured on this 128² painting
    # with the grain world's model: mean |Δ| 0.097 of [0, 1]; Adam steps every latent coordinate by about lr,
    # also where f sees almost nothing, and there the tiles' small differences flip the step) while the image
    # follows the painting as closely. Tiling is for images too large to decode whole.
    difference = (images[True] - images[False]).abs()
    distance = {tiling: painting_distance(image[0], painting) for tiling, image in images.items()}
    assert torch.isfinite(images[True]).all() and difference.mean() < 0.15
    assert distance[True] < 1.25 * distance[False]


def test_tiles_that_diffusers_cannot_put_back_together_are_a_clear_error(pipe, painting):
    # diffusers' tiled decode returns the wrong size when the tile is not a multiple of 4 (64² decoded as 70²)
    pipe.vae.enable_tiling()
    pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = 3, 24
    with pytest.raises(ValueError, match="tile_latent_min_size to a multiple of 4"):
        guided(pipe, painting)
    pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = 4, 32
    assert guided(pipe, painting).shape[-2:] == (64, 64)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_compiling_keeps_the_decoder_gradient(toy):
    # torch.compile on diffusers' whole Decoder returns a zero gradient for its input (torch 2.13, CPU); the
    # benchmark compiles it block by block, whose gradient must equal eager mode's
    from gradop.optimize import frozen

    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))

    def gradient():
        z = latents.clone().requires_grad_(True)
        decode_for_loss(toy.vae, z).square().mean().backward()
        return z.grad

    decoder = toy.vae.decoder
    blocks = decoder.mid_block, list(decoder.up_blocks)
    with frozen(toy.vae):
        eager = gradient()
        try:  # block by block, as benchmarks/run.py compiles it
            decoder.mid_block = torch.compile(blocks[0])
            for i, block in enumerate(blocks[1]):
                decoder.up_blocks[i] = torch.compile(block)
            compiled = gradient()
        finally:
            decoder.mid_block = blocks[0]
            for i, block in enumerate(blocks[1]):
                decoder.up_blocks[i] = block
    assert (compiled - eager).abs().max() < 1e-4 * eager.abs().max()


def test_the_old_keyword_guidance_decoder_still_works_with_a_warning(pipe, painting):
    with pytest.warns(FutureWarning, match="painting_decoder"):
        old = guided(pipe, painting, guidance_decoder=pipe.vae)
    assert torch.equal(old, guided(pipe, painting, painting_decoder=pipe.vae))
    with pytest.raises(TypeError, match="unexpected keyword argument 'guidance_decoderr'"):
        guided(pipe, painting, guidance_decoderr=pipe.vae)


def test_a_truncated_tiny_decoder_is_taesds_own_layers_up_to_an_upsampling_and_a_head(toy, tmp_path, capsys):
    """`TruncatedTinyDecoder.from_tiny`: TAESD's layers (its weights, by hand through `AutoencoderTiny`'s own
    modules) up to the upsampling it names, then a head, back to the full size; only the head distils."""
    from diffusers import AutoencoderTiny

    from gradop.models import load_painting_decoder
    from gradop.toy.distill import main as distill
    from gradop.truncated_decoder import TruncatedTinyDecoder

    torch.manual_seed(0)
    tiny = AutoencoderTiny(decoder_block_out_channels=(8, 8, 8, 8), encoder_block_out_channels=(8, 8, 8, 8)).eval()
    z = torch.randn(1, 4, 4, 4, requires_grad=True)
    layers = tiny.decoder.layers  # conv, act, then per stage: blocks, upsample, conv (the last stage: blocks, conv)
    for cut in (1, 2, 3):
        decoder = TruncatedTinyDecoder.from_tiny(tiny, cut)
        upsampling = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.Upsample)][-cut]
        with torch.no_grad():
            by_hand = layers[:upsampling](torch.tanh(z / 3) * 3)  # TAESD clamps its latents first
            torch.testing.assert_close(decoder.decoder.layers(torch.tanh(z / 3) * 3), by_hand, atol=0, rtol=0)
        assert by_hand.shape[-1] == 32 // 2 ** cut  # TAESD's 32² output at 4² latents, `cut` upsamplings short
        image = decoder.decode(z).sample
        assert image.shape == (1, 3, 32, 32)
        (gradient,) = torch.autograd.grad(image.square().mean(), z)
        assert gradient.abs().sum() > 0
    with pytest.raises(ValueError, match="upsamplings_cut must be between 1 and 3"):
        TruncatedTinyDecoder.from_tiny(tiny, 4)
    with pytest.raises(TypeError, match="tiny must be a diffusers AutoencoderTiny"):
        TruncatedTinyDecoder.from_tiny(torch.nn.Conv2d(4, 3, 1), 1)
    for config, message in [(dict(decoder_block_out_channels=(8, 8, 8)), "one entry per stage"),
                            (dict(decoder_block_out_channels=(8,), num_decoder_blocks=(1,)), "no upsampling to cut"),
                            (dict(upsampling_scaling_factor=0), "upsampling_scaling_factor must be a whole number")]:
        with pytest.raises(ValueError, match=message):
            TruncatedTinyDecoder(**config)

    # the toy's analogue: its small decoder cut at 32²; a few distillation steps learn the head alone
    out = tmp_path / "cut"
    assert distill(["--cut-tiny", "1", "--steps", "3", "--scenes", "8", "--batch", "4", "--out", str(out)]) == 0
    loaded = load_painting_decoder(str(out))
    assert isinstance(loaded, TruncatedTinyDecoder)
    small = load_painting_decoder("toy").state_dict()
    assert all(torch.equal(small[k], v) for k, v in loaded.state_dict().items() if not k.startswith("head."))
    # refused before any work: an experiment names its folder rather than overwrite a bundled one, and starts
    # from an AutoencoderTiny that upsamples as the VAE does
    from gradop.models import TOY_MODEL, TOY_PAINTING_DECODER

    for argv, message in [([], "--cut-tiny needs --out"), (["--out", str(TOY_PAINTING_DECODER)], "already holds a model"),
                          (["--out", str(TOY_PAINTING)], "--out must be a folder"),
                          (["--out", str(out), "--init", str(TOY_MODEL / "vae")], "config names AutoencoderKL"),
                          (["--out", str(out), "--cut-tiny", "3"], "--cut-tiny must be between 1 and 2")]:
        with pytest.raises(SystemExit):
            distill(["--cut-tiny", "1", "--steps", "3", *argv])
        assert message in capsys.readouterr().err
    plus = toy.gradop_plus("a photo of a lake below snowy mountains", Image.open(TOY_PAINTING), num_inference_steps=10,
                           grad_steps_per_iter=4, generator=gen(0), painting_decoder=loaded, output_type="pt")
    assert torch.isfinite(plus.images).all()
    assert all(float(w[-1].max()) < float(w[0].max()) for w in plus.loss_history)  # each window's loss falls
