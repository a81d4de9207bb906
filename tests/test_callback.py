"""GradOP+ as a diffusers callback (`PaintingCallback`) on unmodified Stable Diffusion and SDXL pipelines, the
noise-schedule adapter, and `CallbackPipeline` (SDXL in the family). Tiny random components, offline."""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (AutoencoderKL, HeunDiscreteScheduler, EulerDiscreteScheduler,
                       DPMSolverSinglestepScheduler,
                       StableDiffusionPipeline, StableDiffusionXLPipeline)
from diffusers.callbacks import MultiPipelineCallbacks, SDXLCFGCutoffCallback

from gradop import CallbackPipeline, GradOPPipeline, PaintingCallback, load_pipeline
from gradop.methods import get_method
from gradop.noise_schedule import LatentScaling, NoiseSchedule, decode_latents
from gradop.optimize import decode_for_loss
from gradop.regions import AttentionStore, token_positions
from gradop.testing import tiny_components, tiny_sdxl_components, tiny_sdxl_pipeline

PROMPT = "a red house by a blue lake"
SIZE = 64


def painting(width=SIZE, height=SIZE) -> PIL.Image.Image:
    """A red square (left) on blue (right half) over green: a layout the random models never make by chance."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (40, 160, 60)
    image[:, width // 2:] = (40, 60, 200)
    image[height // 4:3 * height // 4, width // 8:width // 2] = (220, 30, 30)
    return PIL.Image.fromarray(image)


def run(pipe, callback=None, steps=10, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    if callback is not None:
        kwargs.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=callback.tensor_inputs)
    return pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=steps, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_pipeline()


# ---------------------------------------------------------------------- Stable Diffusion 1: the callback is GradOP+
def test_callback_on_diffusers_sd_pipeline_equals_gradop_plus():
    """diffusers' own StableDiffusionPipeline + PaintingCallback computes GradOPPipeline.gradop_plus: same start,
    same draws (one per window from the callback's generator), same windows."""
    components = tiny_components()
    ours = GradOPPipeline(**components)
    ours.set_progress_bar_config(disable=True)
    theirs = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                     requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    eps = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(5))
    reference = ours.gradop_plus(PROMPT, painting(), num_inference_steps=10, grad_steps_per_iter=3, latents=eps,
                                 generator=torch.Generator().manual_seed(1), output_type="np")
    # the release starts from zeros noised to t_0, √(1 − ᾱ_{t_0}) ε; diffusers from ε · init_noise_sigma (1 for DDIM)
    theirs.scheduler.set_timesteps(10)
    start = NoiseSchedule(theirs.scheduler).noise_to(torch.zeros_like(eps), eps, theirs.scheduler.timesteps[0])
    callback = PaintingCallback(painting(), num_iterative_steps=3, grad_steps_per_iter=3,
                                generator=torch.Generator().manual_seed(1))
    images = run(theirs, callback, latents=start)
    assert np.abs(images - reference.images).max() <= 1 / 255
    assert callback.optimized_timesteps == reference.optimized_timesteps == [701, 601, 501]
    for ours_losses, theirs_losses in zip(reference.loss_history, callback.loss_history, strict=True):
        torch.testing.assert_close(theirs_losses, ours_losses)


def test_no_iterative_steps_leaves_the_pipeline_unchanged_sd():
    components = tiny_components()
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    callback = PaintingCallback(painting(), num_iterative_steps=0, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(run(pipe, callback), run(pipe))
    assert callback.loss_history == [] and callback.optimized_timesteps == []


# ---------------------------------------------------------------------- SDXL
def test_sdxl_painting_loss_falls_in_every_window(sdxl):
    callback = PaintingCallback(painting(), strength=0.8, num_iterative_steps=3, grad_steps_per_iter=5,
                                generator=torch.Generator().manual_seed(1))
    images = run(sdxl, callback)
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()
    assert len(callback.loss_history) == 3 and callback.optimized_timesteps == [701, 601, 501]
    for losses in callback.loss_history:
        assert losses.shape == (5, 1) and losses[-1, 0] < losses[0, 0]


def test_sdxl_no_iterative_steps_is_bit_identical(sdxl):
    callback = PaintingCallback(painting(), num_iterative_steps=0, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(run(sdxl, callback), run(sdxl))


def test_sdxl_guided_is_closer_to_the_painting_than_unguided(sdxl):
    """The window's descent survives to the final image: its blurred colours are nearer the painting's."""
    from gradop.metrics import painting_distance

    callback = PaintingCallback(painting(), strength=0.9, num_iterative_steps=3, grad_steps_per_iter=10, lr=0.2,
                                generator=torch.Generator().manual_seed(1))
    guided, plain = run(sdxl, callback), run(sdxl)
    target = np.asarray(painting(), np.float32) / 255
    assert painting_distance(guided[0], target) < 0.8 * painting_distance(plain[0], target)


def test_composes_with_diffusers_callbacks(sdxl):
    """MultiPipelineCallbacks runs ours and diffusers' own; with K = 0 ours adds nothing to theirs."""
    cutoff = SDXLCFGCutoffCallback(cutoff_step_ratio=0.5)
    quiet = PaintingCallback(painting(), num_iterative_steps=0)
    both = MultiPipelineCallbacks([quiet, cutoff])
    assert np.array_equal(run(sdxl, both), run(sdxl, MultiPipelineCallbacks([cutoff])))
    guiding = PaintingCallback(painting(), num_iterative_steps=2, grad_steps_per_iter=2,
                               generator=torch.Generator().manual_seed(1))
    run(sdxl, MultiPipelineCallbacks([guiding, cutoff]))
    assert len(guiding.loss_history) == 2


def test_callback_pipeline_methods_on_sdxl(sdxl):
    """load_pipeline's SDXL family: the method table's names, GradOPPipeline's outputs."""
    pipe = CallbackPipeline(sdxl)
    settings = dict(height=SIZE, width=SIZE, num_inference_steps=10, output_type="np", grad_steps_per_iter=2)
    for name in ("gradop+", "sdedit", "text"):
        out = get_method(name)(pipe, PROMPT, painting(), generator=torch.Generator().manual_seed(0), **settings)
        assert out.images.shape == (1, SIZE, SIZE, 3) and np.isfinite(out.images).all()
        assert len(out.loss_history) == (3 if name == "gradop+" else 0)
    # SDEdit is diffusers' SDXL img2img, from the painting at the output size
    from diffusers import StableDiffusionXLImg2ImgPipeline

    img2img = StableDiffusionXLImg2ImgPipeline(**tiny_sdxl_components())
    img2img.set_progress_bar_config(disable=True)
    expected = img2img(PROMPT, image=painting(), strength=0.8, num_inference_steps=10, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images
    got = pipe.sdedit(PROMPT, painting(), strength=0.8, num_inference_steps=10, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(got, expected)
    for method in ("gradop", "loopback"):
        with pytest.raises(ValueError, match="gradop_plus, sdedit or text2img"):
            getattr(pipe, method)(PROMPT, painting())


def test_load_pipeline_reads_an_sdxl_folder(tmp_path, sdxl):
    sdxl.save_pretrained(tmp_path / "xl")
    pipe = load_pipeline(str(tmp_path / "xl"), device="cpu", verbose=False)
    assert isinstance(pipe, CallbackPipeline) and isinstance(pipe.pipeline, StableDiffusionXLPipeline)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the released sampler by default
    assert isinstance(load_pipeline("tiny-xl", verbose=False), CallbackPipeline)


def test_regions_move_sdxl_attention_into_their_region(sdxl):
    """Per resolution of SDXL's UNet, the bound phrase's attention inside its region / outside it rises with a
    positive weight and falls with a negative one (the tokens are both encoders', which sit side by side)."""
    import torch.nn.functional as F

    pipe = CallbackPipeline(sdxl)
    red = "#dc1e1e"
    positions = token_positions(sdxl.tokenizer, PROMPT, "house")
    mask = torch.from_numpy(np.all(np.asarray(painting()) == (220, 30, 30), axis=-1)).float()[None, None]

    def ratios(**regions):
        store = AttentionStore()
        pipe.text2img(PROMPT, height=SIZE, width=SIZE, num_inference_steps=4, output_type="np", region_image=painting(),
                      attention_store=store, generator=torch.Generator().manual_seed(0), **regions)
        result = {}
        for grid, maps in store.maps().items():
            inside = F.interpolate(mask, size=grid, mode="area")[0, 0] >= 0.5
            mass = maps[:, positions].sum(1)
            result[grid] = float(mass[:, inside].mean() / mass[:, ~inside].mean())
        return result

    plain = ratios()
    bound = ratios(regions={red: "house"}, region_weight=1.0)
    kept_out = ratios(regions={red: ("house", -1.0)}, region_weight=1.0)
    assert len(plain) == 2  # cross-attention at both of the tiny UNet's resolutions
    for grid in plain:
        assert bound[grid] > 1.1 * plain[grid] and kept_out[grid] < plain[grid] / 1.1, (plain, bound, kept_out)


# ---------------------------------------------------------------------- bad input
def test_bad_pipelines_and_paintings(sdxl):
    class NoCallbacks:
        def __call__(self, prompt):
            return prompt

    callback = PaintingCallback(painting())
    with pytest.raises(TypeError, match="callback_on_step_end"):
        callback.check_pipeline(NoCallbacks())
    without_vae = StableDiffusionXLPipeline(**{**tiny_sdxl_components(), "vae": None})
    with pytest.raises(ValueError, match="no vae"):
        callback.check_pipeline(without_vae)
    with pytest.raises(ValueError, match="aspect ratio"):
        run(sdxl, PaintingCallback(painting(width=2 * SIZE)))
    for scheduler in (HeunDiscreteScheduler.from_config(sdxl.scheduler.config),):  # (flow matching: test_flow)
        odd = StableDiffusionXLPipeline(**{**tiny_sdxl_components(), "scheduler": scheduler})
        with pytest.raises(ValueError, match="scheduler|model evaluations"):
            callback.check_pipeline(odd)
    # LMS keeps `derivatives` of the replaced trajectory and has no known restart: refused, not silently weaker
    # (diffusers' LMSDiscreteScheduler needs scipy, which gradop does not install: its state, on Euler's schedule)
    lms_like = EulerDiscreteScheduler.from_config(sdxl.scheduler.config)
    lms_like.derivatives = []
    with pytest.raises(ValueError, match="cannot restart.*ddim"):
        callback.check_pipeline(StableDiffusionXLPipeline(**{**tiny_sdxl_components(), "scheduler": lms_like}))
    # the singlestep DPM-Solver's second stage rebuilds from the sample before the window
    singlestep = DPMSolverSinglestepScheduler.from_config(sdxl.scheduler.config)
    with pytest.raises(ValueError, match="DPMSolverSinglestepScheduler builds its steps from earlier ones"):
        callback.check_pipeline(StableDiffusionXLPipeline(**{**tiny_sdxl_components(), "scheduler": singlestep}))
    with pytest.raises(ValueError, match="optimize_target='noisy'"):
        PaintingCallback(painting(), optimize_target="x0").check_pipeline(sdxl)
    with pytest.raises(ValueError, match="must end before the last step"):
        run(sdxl, PaintingCallback(painting(), strength=0.1, num_iterative_steps=3), steps=10)
    with pytest.raises(ValueError, match="strength"):
        PaintingCallback(painting(), strength=1.5)
    with pytest.raises(ValueError, match="CallbackPipeline"):
        GradOPPipeline.from_pipe(sdxl)


# ---------------------------------------------------------------------- the latent scaling
def test_latent_scaling_follows_the_vae_config():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        scaling_factor=1.5, shift_factor=0.25).eval()
    z = torch.randn(1, 4, 8, 8)
    expected = ((vae.decode(z / 1.5 + 0.25).sample + 1) / 2).clamp(0, 1)  # by hand: z_vae = z / s + shift
    torch.testing.assert_close(decode_for_loss(vae, z), expected)
    torch.testing.assert_close(decode_latents(vae, z), vae.decode(z / 1.5 + 0.25).sample)  # the pipelines' decode
    assert LatentScaling.of(vae).from_encoder(LatentScaling.of(vae).to_decoder(z)).sub(z).abs().max() < 1e-6
    half = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         force_upcast=True).eval().half()
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    with LatentScaling.of(half).decoding(half) as dtype:  # as PaintingGuide.descend runs the loss
        assert dtype == half.dtype == torch.float32
        decode_for_loss(half, z).mean().backward()
    assert half.dtype == torch.float16 and z.grad is not None and torch.isfinite(z.grad).all()
    undeclared = AutoencoderKL.from_config({**half.config, "_use_default_values": ["force_upcast"]})
    assert not LatentScaling.of(undeclared).force_upcast  # SD 1.x configs predate the key: diffusers ignores it there


# ---------------------------------------------------------------------- SDXL through the command, the sweep, the pad
@pytest.fixture
def painting_file(tmp_path):
    path = tmp_path / "painting.png"
    painting().save(path)
    return path


def test_sdxl_through_the_cli(tmp_path, painting_file, capsys):
    from gradop.cli import main

    fast = ["--model", "tiny-xl", "--img_path", str(painting_file), "--prompt", PROMPT, "--steps", "6",
            "--num_iterative_steps", "1", "--grad_steps_per_iter", "2"]
    assert main(fast + ["--output", str(tmp_path / "plus.png")]) == 0
    assert PIL.Image.open(tmp_path / "plus.png").size == (SIZE, SIZE)
    assert main(fast + ["--method", "gradop", "--output", str(tmp_path / "gradop.png")]) == 2
    assert "gradop_plus, sdedit or text2img" in capsys.readouterr().err and not (tmp_path / "gradop.png").exists()


def test_sdxl_through_the_sweep(tmp_path, painting_file):
    import json

    from gradop.sweep import main as sweep_main

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"model": "tiny-xl", "method": "sdedit", "fixed": {"num_inference_steps": 4},
                                "grid": {"painting": [str(painting_file)], "prompt": [PROMPT], "seed": [0, 1]}}))
    assert sweep_main([str(grid), "--out", str(tmp_path / "sweep")]) == 0
    assert len(list((tmp_path / "sweep").glob("*.png"))) == 2


@pytest.mark.parametrize("model", ["tiny-xl", "tiny-flux"])
def test_callback_pipelines_in_the_synthesis_panel(model):
    from gradop.widgets import ScribblePad, SynthesisPanel

    pipe = load_pipeline(model, verbose=False)
    pad = ScribblePad(width=SIZE, height=SIZE)
    pad.load_image(painting())
    panel = SynthesisPanel(pipe, pad, prompt=PROMPT, num_inference_steps=4, work_size=SIZE)
    assert list(panel.method.options) == ["GradOP+", "SDEdit", "Text only"]  # the methods SDXL and FLUX run here
    image = panel.synthesize("GradOP+")
    reference = pipe.gradop_plus(PROMPT, pad.image, 0.8, 3, 12, num_inference_steps=4, height=SIZE, width=SIZE,
                                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_sdxl_memory_levers_float16_tiled_checkpointed(monkeypatch):
    """SDXL's float16 VAE declares force_upcast: the painting loss decodes in float32 (no overflow), tiled (diffusers'
    enable_tiling: here 8-latent tiles of a 16x16 latent) and with gradient checkpointing; the VAE stays float16."""
    import gradop.optimize

    pipe = tiny_sdxl_pipeline().to(dtype=torch.float16)
    pipe.vae.enable_tiling()
    pipe.vae.enable_gradient_checkpointing()
    tiled, decoded_dtypes = [], []
    real = gradop.optimize.decode_in_tiles
    monkeypatch.setattr(gradop.optimize, "decode_in_tiles",
                        lambda decode, z, tile, overlap: (tiled.append(tile), real(decode, z, tile, overlap))[1])
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: decoded_dtypes.append(args[0].dtype))
    callback = PaintingCallback(painting(2 * SIZE, 2 * SIZE), num_iterative_steps=1, grad_steps_per_iter=3,
                                generator=torch.Generator().manual_seed(1))
    images = pipe(PROMPT, height=2 * SIZE, width=2 * SIZE, num_inference_steps=4, output_type="np",
                  generator=torch.Generator().manual_seed(0), callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=callback.tensor_inputs).images
    assert np.isfinite(images).all() and pipe.vae.dtype == torch.float16
    assert tiled and set(tiled) == {pipe.vae.tile_latent_min_size} and tiled[0] < 2 * SIZE // 8  # through tiles
    assert decoded_dtypes and set(decoded_dtypes) == {torch.float32}  # every decode upcast (the loss's and the last)
    for losses in callback.loss_history:
        assert torch.isfinite(losses).all() and losses[-1, 0] < losses[0, 0]


# ---------------------------------------------------------------------- runs that start late, the method marks, the wrapper
def test_callback_on_img2img_optimises_at_the_runs_own_timesteps():
    """img2img starts late, and DDIM keeps no begin index: the window and the re-noising levels are the run's own
    steps (the tail of the schedule), not the schedule's head."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**tiny_components(), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    callback = PaintingCallback(painting(), strength=0.8, num_iterative_steps=2, grad_steps_per_iter=2,
                                generator=torch.Generator().manual_seed(1))
    pipe(PROMPT, image=painting(), strength=0.8, num_inference_steps=10, output_type="np",
         generator=torch.Generator().manual_seed(0), callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=callback.tensor_inputs)
    run = pipe.scheduler.timesteps[10 - 8:]  # by hand: the last 8 of 10 steps (DDIM, leading, offset 1)
    assert run.tolist() == [701, 601, 501, 401, 301, 201, 101, 1]
    # k0 = int(8 (1 - 0.8)) = 1: after run steps 1 and 2, the latents at run[2] and run[3]
    assert callback.optimized_timesteps == [501, 401]


def test_region_steps_count_from_a_late_start(sdxl, monkeypatch):
    """On SDXL's img2img (SDEdit) the binding is told the run's own step index and length."""
    from gradop.regions import RegionBinding

    seen = []
    original = RegionBinding.start_step
    monkeypatch.setattr(RegionBinding, "start_step",
                        lambda self, index, steps, t: (seen.append((index, steps)), original(self, index, steps, t)))
    CallbackPipeline(sdxl).sdedit(PROMPT, painting(), strength=0.8, num_inference_steps=10, output_type="np",
                                  regions={"#dc1e1e": "house"}, region_step_fraction=0.5,
                                  generator=torch.Generator().manual_seed(0))
    assert seen == [(i, 8) for i in range(8)]


def test_the_synthesis_methods_are_the_method_tables():
    from gradop.methods import METHODS
    from gradop.pipeline import synthesis_methods

    assert set(synthesis_methods(GradOPPipeline)) == {m.attribute for m in METHODS.values()}
    assert set(synthesis_methods(CallbackPipeline)) == {"gradop_plus", "sdedit", "text2img"}
    for not_a_method in ("encode_prompt", "check_inputs", "gradop_plus_stroke2img", "__init__", 3):
        with pytest.raises(ValueError, match="method must be one of"):
            GradOPPipeline.check_inputs(not_a_method, PROMPT, painting())


def test_callback_pipeline_takes_a_diffusers_callbacks_own_tensor_inputs(sdxl):
    """A diffusers PipelineCallback names the tensors it needs (SDXL's CFG cut-off: prompt_embeds and more), as
    when it is passed to the pipeline itself."""
    cutoff = SDXLCFGCutoffCallback(cutoff_step_ratio=0.5)
    ours = CallbackPipeline(sdxl).text2img(PROMPT, height=SIZE, width=SIZE, num_inference_steps=10, output_type="np",
                                           callback_on_step_end=cutoff, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(ours.images, run(sdxl, cutoff))


def test_callback_pipeline_sets_the_pipelines_attributes(sdxl):
    from copy import deepcopy

    from gradop import make_scheduler

    pipe = CallbackPipeline(tiny_sdxl_pipeline())
    pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
    assert type(pipe.pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
    assert type(pipe.img2img.scheduler).__name__ == "EulerDiscreteScheduler"  # rebuilt from the new components
    decoder, calls = deepcopy(pipe.vae), []
    decoder.decoder.register_forward_hook(lambda *args: calls.append(1))
    pipe.painting_decoder = decoder  # the default of gradop_plus's painting_decoder, as on GradOPPipeline
    assert "painting_decoder" not in vars(pipe.pipeline)
    pipe.gradop_plus(PROMPT, painting(), num_inference_steps=6, grad_steps_per_iter=2, output_type="np")
    # one probe decode (check_painting_decoder: its output size), then K windows of N forward passes
    assert len(calls) == 1 + 3 * 2


def test_bad_input_found_by_probing(sdxl):
    """Each of these ran into diffusers or torch, or ran silently with a default, before it was checked."""
    from diffusers import AutoencoderTiny

    pipe = CallbackPipeline(sdxl)
    fast = dict(num_inference_steps=4, output_type="np")
    with pytest.raises(ValueError, match="runs no denoising step"):  # int(4 x 0.1) = 0 steps
        pipe.sdedit(PROMPT, painting(), strength=0.1, **fast)
    with pytest.raises(ValueError, match="image has 2 entries but prompt has 1"):
        pipe.sdedit(PROMPT, [painting(), painting()], strength=0.6, **fast)
    with pytest.raises(TypeError, match="takes no argument 'num_inference_step'"):  # misspelt: SDXL takes **kwargs
        pipe.gradop_plus(PROMPT, painting(), num_inference_step=4)
    with pytest.raises(TypeError, match="takes no argument 'strenght'"):
        pipe.sdedit(PROMPT, painting(), strenght=0.5, **fast)
    for latents in (torch.randn(1, 4, 4, 4), torch.randn(1, 3, 8, 8)):
        with pytest.raises(ValueError, match=r"latents must be a tensor of shape \(1, 4, 8, 8\)"):
            pipe.gradop_plus(PROMPT, painting(), latents=latents, **fast)
    sixteen = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                              num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4, latent_channels=16)
    with pytest.raises(ValueError, match="latents of 16 channels, but this pipeline's have 4"):
        run(sdxl, PaintingCallback(painting(), num_iterative_steps=2, grad_steps_per_iter=1, painting_decoder=sixteen))
    with pytest.raises(ValueError, match="must not be an empty list"):
        PaintingCallback(painting(), generator=[])
    two = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(ValueError, match="generator is a list of 2 but the batch has 1"):
        run(sdxl, PaintingCallback(painting(), num_iterative_steps=2, grad_steps_per_iter=1, generator=two))
    with pytest.raises(ValueError, match="aspect ratio"):  # 25 % wider than the painting: more than VAE rounding
        callback = PaintingCallback(painting(), num_iterative_steps=2, grad_steps_per_iter=1)
        sdxl(PROMPT, height=SIZE, width=SIZE + 16, num_inference_steps=4, callback_on_step_end=callback,
             callback_on_step_end_tensor_inputs=callback.tensor_inputs)
