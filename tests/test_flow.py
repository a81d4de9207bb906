"""Flow-matching models: GradOP+ as a callback and region binding on unmodified Stable Diffusion 3 and FLUX
pipelines (tiny random components built offline), the flow-matching noise schedule, FLUX's latent packing, and the
joint-attention region processor against diffusers' own processors."""
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.utils.torch_utils import randn_tensor

from gradop import CallbackPipeline, PaintingCallback
from gradop.callback import LatentLayout
from gradop.noise_schedule import FlowMatchSchedule, NoiseSchedule
from gradop.optimize import PaintingGuide
from gradop.regions import (AttentionStore, JointRegionAttnProcessor, RegionBinding, attention_control,
                            region_bias, token_positions)
from gradop.testing import tiny_flux_pipeline, tiny_sd3_pipeline

PROMPT = "a photo of a forest and a lake"
SIZE = 64
FOREST, LAKE = (40, 120, 40), (60, 90, 200)
PIPELINES = {"sd3": tiny_sd3_pipeline, "sd3+t5": lambda: tiny_sd3_pipeline(t5=True), "flux": tiny_flux_pipeline}


def painting(width=SIZE, height=SIZE) -> PIL.Image.Image:
    """Forest on the left, lake on the right, with a yellow square: a layout the random models never make."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2], image[:, width // 2:] = FOREST, LAKE
    image[height // 4: height // 2, width // 4: width // 2] = (230, 210, 40)
    return PIL.Image.fromarray(image)


def run(pipe, callback=None, steps=10, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    if callback is not None and callback.size is None:
        callback.size = (SIZE, SIZE)  # FLUX's packed latents do not carry it
    if callback is not None:
        kwargs.setdefault("callback_on_step_end", callback)
        kwargs.setdefault("callback_on_step_end_tensor_inputs", callback.tensor_inputs)
    return pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=steps, output_type="np", **kwargs).images


@pytest.fixture(scope="module", params=list(PIPELINES))
def pipe(request):
    return PIPELINES[request.param]()


# ---------------------------------------------------------------------- the noise schedule, by hand
@pytest.mark.parametrize("dynamic", [False, True])
def test_flow_schedule_is_the_interpolation_and_matches_scale_noise(dynamic):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic)
    scheduler.set_timesteps(10, **({"mu": 0.8} if dynamic else {}))
    schedule = NoiseSchedule.of(scheduler)
    assert isinstance(schedule, FlowMatchSchedule)
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 16, 4, 4, generator=generator), torch.randn(2, 16, 4, 4, generator=generator)
    for index, timestep in enumerate(scheduler.timesteps):
        level = float(scheduler.sigmas[index])
        by_hand = (1 - level) * clean + level * noise  # z_σ = (1 − σ) z₀ + σ ε
        noised = schedule.noise_to(clean, noise, timestep)
        torch.testing.assert_close(noised, by_hand)
        torch.testing.assert_close(noised, scheduler.scale_noise(clean, timestep[None], noise))
        # the model's velocity v = ε − z₀ gives back z₀ = z_σ − σ v
        torch.testing.assert_close(schedule.predict_x0(noised, noise - clean, timestep), clean, atol=1e-5, rtol=0)
        assert schedule.sigma(timestep) == pytest.approx(min(level / max(1 - level, 1e-9), 14.6))
        assert schedule.decoder_latent(noised, timestep) is noised
    assert schedule.sigma(scheduler.timesteps[0]) == 14.6  # σ = 1 is pure noise: capped, not infinite


def test_schedulers_gradop_cannot_follow_are_refused():
    flow_dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        NoiseSchedule.of(flow_dpm)
    with pytest.raises(ValueError, match="denoises"):
        NoiseSchedule.of(FlowMatchEulerDiscreteScheduler(invert_sigmas=True))


def test_flux_packing_is_the_pipelines_own():
    latents = torch.randn(2, 16, 8, 12)
    layout = LatentLayout((8, 12))
    packed = layout.pack(latents)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 2, 16, 8, 12), rtol=0, atol=0)
    torch.testing.assert_close(layout.unpack(packed), latents, rtol=0, atol=0)
    torch.testing.assert_close(layout.unpack(packed), FluxPipeline._unpack_latents(packed, 64, 96, 8), rtol=0, atol=0)
    # packed latents do not carry their shape: the call's size (or a painting tensor, at the output size) gives it
    assert LatentLayout.of(packed, [painting()], (64, 96)).grid == (8, 12)
    assert LatentLayout.of(packed, torch.zeros(1, 3, 64, 96)).grid == (8, 12)
    assert LatentLayout.of(latents, [painting()]).grid is None
    with pytest.raises(ValueError, match=r"size=\(height, width\)"):
        LatentLayout.of(packed, [painting(96, 64)])
    with pytest.raises(ValueError, match="does not match the pipeline's 24 packed latent patches"):
        LatentLayout.of(packed, [painting()], (64, 64))


# ---------------------------------------------------------------------- GradOP+ as a callback
def test_no_iterative_steps_leaves_the_pipeline_unchanged(pipe):
    callback = PaintingCallback(painting(), num_iterative_steps=0, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(run(pipe, callback), run(pipe))
    assert callback.loss_history == [] and callback.optimized_timesteps == []


def test_the_loss_falls_and_each_window_ends_at_the_samplers_level(pipe, monkeypatch):
    """After window i the latent is z̃ re-noised to the sampler's own σ_{i+1}: scheduler.scale_noise(z̃, t_{i+1}, ε'),
    ε' the callback generator's next draw, evaluated by the scheduler itself at that moment of the run."""
    found = []
    descend = PaintingGuide.descend
    monkeypatch.setattr(PaintingGuide, "descend", lambda guide, start: found.append(descend(guide, start)) or found[-1])
    callback = PaintingCallback(painting(), strength=0.8, num_iterative_steps=3, grad_steps_per_iter=6,
                                generator=torch.Generator().manual_seed(7), size=(SIZE, SIZE))
    draws, checked = torch.Generator().manual_seed(7), []

    def spy(pipeline, step, timestep, tensors):
        returned = callback(pipeline, step, timestep, tensors)
        if len(found) > len(checked):  # this step optimised
            scheduler = pipeline.scheduler
            layout = LatentLayout.of(tensors["latents"], [painting()], (SIZE, SIZE))
            optimized = found[len(checked)]
            noise = randn_tensor(optimized.shape, generator=draws, dtype=torch.float32)
            t_next = scheduler.timesteps[step + 1]
            expected = scheduler.scale_noise(optimized, t_next[None], noise)
            by_hand = (1 - scheduler.sigmas[step + 1]) * optimized + scheduler.sigmas[step + 1] * noise
            torch.testing.assert_close(layout.unpack(returned["latents"]), expected)
            torch.testing.assert_close(expected, by_hand)
            checked.append(step)
        return returned

    images = run(pipe, callback_on_step_end=spy, callback_on_step_end_tensor_inputs=["latents"])
    assert checked == [1, 2, 3]  # k0 = int(10 · 0.2) = 1 (float truncation), K = 3
    assert len(callback.loss_history) == 3
    for losses in callback.loss_history:
        assert losses.shape == (6, 1) and float(losses[-1, 0]) < float(losses[0, 0])
    assert np.isfinite(images).all()


def test_gradop_plus_moves_the_image_toward_the_painting(pipe):
    """Windows late in the run (steps 7 and 8 of 10), so that a random model's last steps keep what the descent
    found: the output's blurred distance to the painting falls to about half (0.09 -> 0.04-0.05 for all three)."""
    target = np.asarray(painting(), np.float32) / 255
    plain = run(pipe)[0]
    guided = run(pipe, PaintingCallback(painting(), strength=0.3, num_iterative_steps=2, grad_steps_per_iter=30,
                                        generator=torch.Generator().manual_seed(1)))[0]
    blur = lambda image: F.avg_pool2d(torch.from_numpy(image).permute(2, 0, 1)[None], 8)  # noqa: E731
    distance = lambda image: float((blur(image) - blur(target)).square().mean())  # noqa: E731
    assert distance(guided) < 0.7 * distance(plain)


def test_x0_is_refused_where_the_pipeline_does_not_pass_it(pipe):
    with pytest.raises(ValueError, match="x̂₀.*optimize_target='noisy'"):
        PaintingCallback(painting(), optimize_target="x0").check_pipeline(pipe)


# ---------------------------------------------------------------------- CallbackPipeline and region binding
def test_method_names_work_on_flow_pipelines(pipe):
    wrapped = CallbackPipeline(pipe)
    settings = dict(num_inference_steps=6, output_type="np", generator=torch.Generator().manual_seed(0))
    guided = wrapped.gradop_plus(PROMPT, painting(), strength=0.8, num_iterative_steps=2, grad_steps_per_iter=2,
                                 **settings)
    assert guided.images.shape == (1, SIZE, SIZE, 3) and len(guided.loss_history) == 2
    assert wrapped.sdedit(PROMPT, painting(), strength=0.6, **settings).images.shape == (1, SIZE, SIZE, 3)
    assert wrapped.text2img(PROMPT, height=SIZE, width=SIZE, **settings).images.shape == (1, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="gradop_plus"):
        wrapped.gradop(PROMPT, painting())


def test_regions_bind_in_joint_attention(pipe):
    """Weight 0 is the plain pipeline bit for bit; with a weight the bound tokens' attention moves into their
    regions (the image-query → text-key probabilities, recorded on the conditional rows)."""
    wrapped = CallbackPipeline(pipe)
    regions = {FOREST: "forest", LAKE: "lake"}
    settings = dict(height=SIZE, width=SIZE, num_inference_steps=6, output_type="np", region_image=painting())
    plain = wrapped.text2img(PROMPT, generator=torch.Generator().manual_seed(0), **settings).images
    unweighted = wrapped.text2img(PROMPT, regions=regions, region_weight=0.0,
                                  generator=torch.Generator().manual_seed(0), **settings).images
    assert np.array_equal(plain, unweighted)

    stores = {weight: AttentionStore() for weight in (0.0, 1.0)}
    for weight, store in stores.items():
        wrapped.text2img(PROMPT, regions=regions, region_weight=weight, attention_store=store,
                         generator=torch.Generator().manual_seed(0), **settings)
    flux = hasattr(pipe, "_pack_latents")
    tokenizer = pipe.tokenizer_2 if flux else pipe.tokenizer
    left = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    left[:, : SIZE // 2] = True
    for phrase, inside in (("forest", left), ("lake", ~left)):
        positions = token_positions(tokenizer, PROMPT, phrase, 512 if flux else None)
        share = {}
        for weight, store in stores.items():
            maps = store.maps(size=(SIZE, SIZE))[0, positions].mean(0)  # [H, W]
            share[weight] = float(maps[inside].sum() / maps.sum())
        assert share[1.0] > share[0.0] + 0.1, (phrase, share)


def test_a_transformer_layer_that_cannot_be_biased_is_an_error_not_silence():
    pipe = tiny_sd3_pipeline()
    pipe.transformer.set_attn_processor(AttnProcessor2_0())  # not joint attention gradop can read
    binding = RegionBinding(torch.ones(1, 1, SIZE, SIZE), torch.ones(1, 1, 77), torch.ones(1), 1.0)
    with pytest.raises(ValueError, match="AttnProcessor2_0.*JointAttnProcessor2_0"):
        with attention_control(pipe.transformer, binding):
            pass


# ---------------------------------------------------------------------- the processor, on one tiny layer
def joint_layer():
    torch.manual_seed(0)
    return Attention(query_dim=32, heads=4, dim_head=8, added_kv_proj_dim=32, out_dim=32, context_pre_only=False,
                     bias=True, processor=JointAttnProcessor2_0()).eval()


def test_joint_processor_without_bias_is_diffusers_own():
    layer = joint_layer()
    image, text = torch.randn(2, 16, 32), torch.randn(2, 5, 32)  # CFG rows: unconditional, conditional
    reference = JointAttnProcessor2_0()(layer, image, text)
    binding = RegionBinding(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 5), torch.ones(1), 1.0)
    binding.sigma = 2.0  # an active step, but every mask is empty: W = 0
    ours = JointRegionAttnProcessor(JointAttnProcessor2_0(), binding, "sd3")(layer, image, text)
    for theirs, mine in zip(reference, ours):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    binding.sigma = None  # no bias this step: it *is* the wrapped processor
    inactive = JointRegionAttnProcessor(JointAttnProcessor2_0(), binding, "sd3")(layer, image, text)
    assert all(torch.equal(a, b) for a, b in zip(inactive, reference))


def test_joint_processor_biases_only_the_image_to_text_block_by_hand():
    """The biased layer equals attention computed from the layer's weights with scaled_dot_product_attention and an
    additive mask that is λ_t W on the image-query → text-key block and 0 elsewhere."""
    layer = joint_layer()
    image, text = torch.randn(1, 16, 32), torch.randn(1, 5, 32)
    masks = torch.zeros(1, 1, 4, 4)
    masks[..., :2] = 1  # the left half of the 4x4 query grid
    tokens = torch.zeros(1, 1, 5)
    tokens[..., 2] = 1  # bound to text token 2
    binding = RegionBinding(masks, tokens, torch.ones(1), region_weight=0.7)
    binding.sigma = 3.0
    check_by_hand(layer, image, text, masks, tokens, binding)


@torch.no_grad()
def check_by_hand(layer, image, text, masks, tokens, binding):
    ours_image, ours_text = JointRegionAttnProcessor(JointAttnProcessor2_0(), binding, "sd3")(layer, image, text)

    def heads(x):
        return x.view(1, -1, 4, 8).transpose(1, 2)

    query = heads(torch.cat([layer.to_q(image), layer.add_q_proj(text)], 1))
    key = heads(torch.cat([layer.to_k(image), layer.add_k_proj(text)], 1))
    value = heads(torch.cat([layer.to_v(image), layer.add_v_proj(text)], 1))
    scores = query @ key.transpose(-1, -2) / 8 ** 0.5
    block = scores[:, :, :16, 16:]
    weight = masks.flatten(2).transpose(1, 2) @ tokens  # W[i, j] = M[i] · 1[j bound], [1, 16, 5]
    mask = torch.zeros(1, 4, 21, 21)
    mask[:, :, :16, 16:] = 0.7 * np.log1p(3.0) * block.amax(dim=(-2, -1), keepdim=True).clamp_min(0) * weight[:, None]
    torch.testing.assert_close(mask[:, :, :16, 16:], region_bias(block, weight, 0.7 * np.log1p(3.0)))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2).reshape(1, 21, 32)
    torch.testing.assert_close(ours_image, layer.to_out[0](out[:, :16]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_text, layer.to_add_out(out[:, 16:]), atol=1e-5, rtol=1e-5)
    assert float(mask[:, :, :16, 16:].abs().sum()) > 0 and float(mask[:, :, 16:].abs().sum()) == 0


def test_flux_processor_without_bias_is_diffusers_own():
    pipe = tiny_flux_pipeline()
    blocks = {"double": pipe.transformer.transformer_blocks[0].attn, "single": pipe.transformer.single_transformer_blocks[0].attn}
    torch.manual_seed(0)
    text, image = torch.randn(1, 5, 32), torch.randn(1, 16, 32)
    positions = torch.cat([torch.zeros(5, 3), torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0),
                                                                         torch.arange(4.0), indexing="ij"), -1).reshape(16, 3)])
    rotary = pipe.transformer.pos_embed(positions)
    binding = RegionBinding(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 5), torch.ones(1), 1.0)
    binding.sigma = 2.0
    for name, layer in blocks.items():
        args = (image, text) if name == "double" else (torch.cat([text, image], 1), None)
        reference = layer.processor(layer, *args, None, rotary)
        ours = JointRegionAttnProcessor(layer.processor, binding, "flux")(layer, *args, None, rotary)
        pairs = zip(reference, ours) if isinstance(reference, tuple) else [(reference, ours)]
        for theirs, mine in pairs:
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- loading, the CLI, the sweep, the panel
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_load_pipeline_reads_sd3_and_flux_folders(tmp_path, name):
    from gradop import load_pipeline

    PIPELINES[name]().save_pretrained(tmp_path / name)
    pipe = load_pipeline(str(tmp_path / name), device="cpu", verbose=False)
    assert isinstance(pipe, CallbackPipeline) and type(pipe.pipeline).__name__ == \
        {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[name]
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # its own sampler, not DDIM
    with pytest.raises(ValueError, match="flow-matching models sample with their own"):
        load_pipeline(str(tmp_path / name), device="cpu", scheduler="pndm", verbose=False)
    out = pipe.gradop_plus(PROMPT, painting(), num_inference_steps=6, num_iterative_steps=1, grad_steps_per_iter=2,
                           height=SIZE, width=SIZE, output_type="np")
    assert out.images.shape == (1, SIZE, SIZE, 3) and len(out.loss_history) == 1


@pytest.fixture
def painting_file(tmp_path):
    path = tmp_path / "painting.png"
    painting().save(path)
    return path


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_flow_models_through_the_cli_and_the_sweep(tmp_path, painting_file, model, capsys):
    import json

    from gradop.cli import main
    from gradop.sweep import main as sweep_main

    fast = ["--model", model, "--img_path", str(painting_file), "--prompt", PROMPT, "--steps", "6",
            "--num_iterative_steps", "1", "--grad_steps_per_iter", "2"]
    assert main(fast + ["--output", str(tmp_path / "plus.png"), "--region", "#287828=forest"]) == 0
    assert PIL.Image.open(tmp_path / "plus.png").size == (SIZE, SIZE)
    assert main(fast + ["--scheduler", "unipc", "--output", str(tmp_path / "unipc.png")]) == 2
    assert "flow-matching" in capsys.readouterr().err and not (tmp_path / "unipc.png").exists()
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"model": model, "method": "sdedit", "fixed": {"num_inference_steps": 4},
                                "grid": {"painting": [str(painting_file)], "prompt": [PROMPT], "seed": [0, 1]}}))
    assert sweep_main([str(grid), "--out", str(tmp_path / "sweep")]) == 0
    assert len(list((tmp_path / "sweep").glob("*.png"))) == 2


# ---------------------------------------------------------------------- bad input
def test_flux_needs_the_calls_size_and_a_painting_of_its_aspect():
    flux = tiny_flux_pipeline()
    with pytest.raises(ValueError, match=r"size=\(height, width\)"):
        flux(PROMPT, height=SIZE, width=SIZE, num_inference_steps=4, callback_on_step_end=PaintingCallback(painting()),
             callback_on_step_end_tensor_inputs=["latents"])
    # a 4:1 painting at a square run: packed 4x4 patches could be 2x8, so the size must come from the call
    wrapped = CallbackPipeline(flux)
    with pytest.raises(ValueError, match="another aspect ratio"):
        wrapped.gradop_plus(PROMPT, painting(128, 32), height=SIZE, width=SIZE, num_inference_steps=4)
    wide = wrapped.gradop_plus(PROMPT, painting(128, 64), num_inference_steps=4, num_iterative_steps=1,
                               grad_steps_per_iter=1, output_type="np")
    assert wide.images.shape == (1, 64, 128, 3)


@pytest.mark.filterwarnings("ignore:region_image is 72x72")  # its masks follow the rounded size
def test_sizes_follow_the_transformers_patch_and_sd3s_position_limit():
    flux, sd3 = CallbackPipeline(tiny_flux_pipeline()), CallbackPipeline(tiny_sd3_pipeline())
    assert flux.size_step == sd3.size_step == 16
    for pipe in (flux, sd3):
        with pytest.warns(UserWarning, match="not a multiple of .* 16"):
            out = pipe.text2img(PROMPT, height=72, width=72, num_inference_steps=2, output_type="np",
                                regions={FOREST: "forest"}, region_image=painting(72, 72))
        assert out.images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="at most 512 pixels"):  # the tiny SD3 embeds 32 patches a side
        sd3.text2img(PROMPT, height=64, width=528, num_inference_steps=2)


def test_text_tokens_bad_input():
    sd3t5, flux = CallbackPipeline(tiny_sd3_pipeline(t5=True)), CallbackPipeline(tiny_flux_pipeline())
    settings = dict(region_image=painting(), num_inference_steps=2, output_type="np")
    # T5 is cased; the phrase is bound as the prompt writes it
    for pipe in (sd3t5, flux):
        store = AttentionStore()
        pipe.text2img("a photo of a Forest and a Lake", regions={FOREST: "forest"}, attention_store=store, **settings)
    with pytest.raises(ValueError, match=r"T5Tokenizer\w* does not see the phrase 'lake'"):
        sd3t5.text2img("a photo of a forest,lake", regions={LAKE: "lake"}, **settings)
    for pipe in (sd3t5, flux):
        with pytest.raises(TypeError, match="max_sequence_length"):
            pipe.text2img(PROMPT, regions={FOREST: "forest"}, max_sequence_length="64", **settings)
        with pytest.raises(ValueError, match="max_sequence_length must be >= 1"):
            pipe.text2img(PROMPT, regions={FOREST: "forest"}, max_sequence_length=0, **settings)
        with pytest.raises(ValueError, match="at most 512"):
            pipe.text2img(PROMPT, regions={FOREST: "forest"}, max_sequence_length=600, **settings)


def test_flux_refuses_a_negative_prompt_it_would_ignore():
    flux = CallbackPipeline(tiny_flux_pipeline())
    with pytest.raises(ValueError, match="true_cfg_scale > 1"):
        flux.text2img(PROMPT, negative_prompt="blurry", num_inference_steps=2)
    out = flux.text2img(PROMPT, negative_prompt="blurry", true_cfg_scale=2.0, num_inference_steps=2, output_type="np")
    assert np.isfinite(out.images).all()
