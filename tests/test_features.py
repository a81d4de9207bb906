"""Everything beyond the release: sizes, batches, schedulers, knobs, dtypes, outputs, callbacks."""
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import draw_painting, gen
from diffusers import StableDiffusionImg2ImgPipeline

from gradop import GradOPPipeline, make_scheduler
from gradop.methods import get_method
from gradop.painting import GaussianBlur, MedianPalette
from gradop.testing import tiny_components

FAST = dict(num_inference_steps=6, output_type="np")
GUIDE = dict(strength=0.8, num_iterative_steps=2, grad_steps_per_iter=3)


SETTINGS = {"gradop_plus": GUIDE, "gradop": dict(strength=0.5, grad_steps=3), "sdedit": dict(strength=0.8),
            "loopback": dict(strength=0.8, num_loops=2), "text2img": {}}


def run(pipe, method, painting, **kw):
    """`method` through the one method table (gradop.methods), with the small settings above."""
    sized = dict(height=painting.size[1], width=painting.size[0]) if method == "text2img" else {}
    settings = {**FAST, **SETTINGS[method], **sized, **kw}
    return get_method(method)(pipe, "a castle by a lake", painting, **settings)


METHODS = ["gradop_plus", "gradop", "sdedit", "loopback", "text2img"]


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "dpm", "euler"])
@pytest.mark.parametrize("method", METHODS)
def test_every_scheduler_on_every_method(scheduler, method, painting):
    pipe = GradOPPipeline(**tiny_components(scheduler=scheduler))
    pipe.set_progress_bar_config(disable=True)
    a = run(pipe, method, painting, generator=gen(1))
    b = run(pipe, method, painting, generator=gen(1))
    assert a.images.shape == (1, 64, 64, 3) and np.isfinite(a.images).all()
    np.testing.assert_array_equal(a.images, b.images)  # deterministic and reusable
    if method in ("gradop_plus", "gradop"):
        assert a.loss_history and all(torch.isfinite(h).all() for h in a.loss_history)


@pytest.mark.parametrize("method", ["gradop_plus", "sdedit", "loopback", "gradop"])
def test_non_square_sizes_and_target_resized_to_output(pipe, method):
    painting = draw_painting(80, 48)
    out = run(pipe, method, painting, generator=gen(0))
    assert out.images.shape == (1, 48, 80, 3)
    out = run(pipe, method, painting, generator=gen(0), height=32, width=96)
    assert out.images.shape == (1, 32, 96, 3)


def test_size_not_multiple_of_vae_factor_is_resized_with_a_warning(pipe):
    with pytest.warns(UserWarning, match="not a multiple of the VAE factor 8"):
        out = run(pipe, "gradop_plus", draw_painting(70, 61), generator=gen(0))
    assert out.images.shape == (1, 56, 64, 3)


@pytest.mark.parametrize("method", METHODS)
def test_generator_list_image_j_equals_single_run_j(pipe, painting, method):
    batch = run(pipe, method, painting, generator=[gen(10), gen(11)], num_images_per_prompt=2)
    assert batch.images.shape[0] == 2
    for j, seed in enumerate((10, 11)):
        single = run(pipe, method, painting, generator=gen(seed))
        np.testing.assert_allclose(batch.images[j], single.images[0], atol=2e-5)
    if method in ("gradop_plus", "gradop"):
        assert all(h.shape[1] == 2 for h in batch.loss_history)


def test_prompt_lists_and_images_per_prompt(pipe, painting):
    other = draw_painting(64, 64).transpose(PIL.Image.FLIP_LEFT_RIGHT)
    out = pipe.gradop_plus(["a fox", "a tiger"], [painting, other], **GUIDE, num_images_per_prompt=2,
                           generator=[gen(i) for i in range(4)], **FAST)
    assert out.images.shape == (4, 64, 64, 3)
    # image 2 is prompt "a tiger" with the flipped painting and generator 2
    alone = pipe.gradop_plus("a tiger", other, **GUIDE, generator=gen(2), **FAST)
    np.testing.assert_allclose(out.images[2], alone.images[0], atol=2e-5)
    out = pipe.text2img(["a fox", "a tiger"], num_images_per_prompt=3, generator=gen(0), **FAST)
    assert out.images.shape == (6, 64, 64, 3)


@pytest.mark.parametrize("output_type,kind,shape", [("pil", PIL.Image.Image, (64, 64)), ("np", np.ndarray, (1, 64, 64, 3)),
                                                    ("pt", torch.Tensor, (1, 3, 64, 64)), ("latent", torch.Tensor, (1, 4, 8, 8))])
def test_output_types(pipe, painting, output_type, kind, shape):
    out = pipe.gradop_plus("a castle", painting, **GUIDE, generator=gen(0), num_inference_steps=6, output_type=output_type)
    images = out.images
    if output_type == "pil":
        assert isinstance(images, list) and isinstance(images[0], kind) and images[0].size == shape
    else:
        assert isinstance(images, kind) and tuple(images.shape) == shape
    if output_type == "pt":
        assert 0 <= images.min() and images.max() <= 1


def test_guidance_negative_prompt_steps_and_eta_change_the_result(pipe, painting):
    base = run(pipe, "gradop_plus", painting, generator=gen(0)).images
    for kw in (dict(guidance_scale=3.0), dict(negative_prompt="blurry"), dict(num_inference_steps=8), dict(eta=0.5),
               dict(guidance_scale=1.0)):
        other = run(pipe, "gradop_plus", painting, generator=gen(0), **kw).images
        assert np.isfinite(other).all() and np.abs(other - base).max() > 1e-3, kw


def test_optimisation_knobs(pipe, painting):
    results = {}
    for name, kw in {"default": {}, "lr": dict(lr=0.3), "sgd": dict(optimizer="sgd"),
                     "adamw_class": dict(optimizer=torch.optim.AdamW), "median": dict(painting_function="median_palette"),
                     "callable": dict(painting_function=GaussianBlur(9, 2.0)), "blur_target": dict(blur_target=True),
                     "x0": dict(optimize_target="x0")}.items():
        out = pipe.gradop_plus("a castle", painting, strength=0.8, num_iterative_steps=2, grad_steps_per_iter=8,
                               generator=gen(0), **FAST, **kw)
        results[name] = out.images
        losses = out.loss_history[0][:, 0]
        assert torch.isfinite(losses).all()
        if name not in ("sgd",):  # Adam at lr 0.1+ reliably descends on the painting loss
            assert losses[-1] < losses[0], (name, losses)
    for name, images in results.items():
        if name != "default":
            assert np.abs(images - results["default"]).max() > 1e-4, name


def test_blurred_target_lets_the_loss_fall_further(pipe, painting):
    kw = dict(strength=0.8, num_iterative_steps=1, grad_steps_per_iter=30, generator=gen(0), **FAST)
    raw = pipe.gradop_plus("a lake", painting, **kw).loss_history[0][-1, 0]
    blurred = pipe.gradop_plus("a lake", painting, blur_target=True, **kw).loss_history[0][-1, 0]
    assert blurred < raw  # against the raw strokes the blurred decode can never match


def test_loss_history_shape_and_callback(pipe, painting):
    seen = []

    def callback(p, step, t, tensors):
        seen.append((step, int(t), tuple(tensors)))
        return {"latents": tensors["latents"] * 1.0}

    out = pipe.gradop_plus("a castle", painting, 0.8, 3, 4, generator=gen(0), num_inference_steps=10,
                           callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [s for s, _, _ in seen] == list(range(10)) and seen[0][2] == ("latents", "prompt_embeds")
    assert len(out.loss_history) == 3 and all(h.shape == (4, 1) for h in out.loss_history)
    # a callback that replaces the latents changes the outcome
    zeroed = pipe.text2img("a castle", generator=gen(0), num_inference_steps=4, output_type="np",
                           callback_on_step_end=lambda p, s, t, k: {"latents": k["latents"] * 0})
    normal = pipe.text2img("a castle", generator=gen(0), num_inference_steps=4, output_type="np")
    assert np.abs(zeroed.images - normal.images).max() > 1e-3


def test_progress_bar_reports_every_step(pipe, painting, capsys):
    pipe.set_progress_bar_config(disable=False)
    pipe.gradop_plus("a castle", painting, **GUIDE, generator=gen(0), num_inference_steps=6)
    err = capsys.readouterr().err
    assert "6/6" in err and "painting_loss" in err


def test_decoder_frozen_and_no_gradients_left(pipe, painting):
    for method in ("gradop_plus", "gradop"):
        run(pipe, method, painting, generator=gen(0))
    for model in (pipe.vae, pipe.unet, pipe.text_encoder):
        assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in pipe.vae.parameters())  # the user's flags are restored


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_components(painting, method):
    pipe = GradOPPipeline(**tiny_components()).to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = run(pipe, method, painting, generator=gen(0))
    assert out.images.dtype == np.float32 and np.isfinite(out.images).all()
    ref = run(GradOPPipeline(**tiny_components()), method, painting, generator=gen(0))
    assert np.abs(out.images - ref.images).mean() < 0.05  # bf16 tracks fp32
    for h in out.loss_history:
        assert h.dtype == torch.float32 and torch.isfinite(h).all()


def test_half_precision_latent_optimisation_runs_in_fp32(painting):
    pipe = GradOPPipeline(**tiny_components()).to(torch.float16)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    out = pipe.gradop_plus("a castle", painting, **GUIDE, generator=gen(0), num_inference_steps=6, output_type="latent")
    assert out.images.dtype == torch.float16 and torch.isfinite(out.images).all()
    assert set(seen) == {torch.float16}  # the decoder runs in its own dtype; the latent and Adam stay fp32
    assert all(h.dtype == torch.float32 for h in out.loss_history)


def test_gradop_rounds_move_toward_the_painting(pipe, painting):
    out = pipe.gradop("a castle", painting, 0.5, 20, 2, generator=gen(0), **FAST)
    assert len(out.loss_history) == 2
    for h in out.loss_history:
        assert h[-1, 0] < h[0, 0]


def test_loopback_is_diffusers_img2img_applied_to_its_own_output(pipe, components, painting):
    """Two loops against diffusers' own img2img: once on the painting, then again on its decoded output.

    Between the loops gradop decodes the latents, clamps them to [-1, 1] and encodes them again with no 8-bit
    rounding; the reference does the same with the VAE by hand, handing img2img the image as a [0, 1] tensor
    (it maps it back to [-1, 1]). One generator serves both passes, as in gradop: each pass draws the posterior
    sample, then the noise. Tolerance: the only difference is the float32 round trip x -> (x+1)/2 -> 2y-1 of the
    intermediate image (about 1e-7) carried through the second encode and sampling (measured 2e-6); 1e-5 is far
    below one 8-bit level (4e-3) and below what a wrong step would give (the second loop moves pixels by ~0.9).
    """
    ours = pipe.loopback("a castle", painting, 0.7, 2, generator=gen(4), **FAST).images
    img2img = StableDiffusionImg2ImgPipeline(**components, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    g, vae, steps = gen(4), components["vae"], FAST["num_inference_steps"]
    first = img2img("a castle", painting, strength=0.7, generator=g, num_inference_steps=steps,
                    output_type="latent").images
    with torch.no_grad():
        decoded = vae.decode(first / vae.config.scaling_factor).sample.clamp(-1, 1)
    reference = img2img("a castle", (decoded + 1) / 2, strength=0.7, generator=g, num_inference_steps=steps,
                        output_type="np").images
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
    once = pipe.loopback("a castle", painting, 0.7, 1, generator=gen(4), **FAST).images
    assert np.abs(ours - once).max() > 1e-3  # the second loop did change the image


def test_median_palette_is_differentiable_and_quantises(painting):
    x = torch.from_numpy(np.asarray(painting, np.float32) / 255).permute(2, 0, 1)[None]
    f = MedianPalette.from_paintings(x)
    y = f(x)
    # each output pixel sits (softly) on one of the painting's colours
    d = torch.cdist(y.flatten(2).transpose(1, 2), f.palette).min(-1).values
    assert d.median() < 0.02
    z = torch.rand_like(x, requires_grad=True)
    f(z).sum().backward()
    assert z.grad.abs().sum() > 0


def test_schedulers_by_name_keep_the_released_noise_schedule():
    for name in ("ddim", "pndm", "dpm", "euler", "euler_a", "unipc", "ddpm"):
        s = make_scheduler(name)
        assert s.config.beta_schedule == "scaled_linear" and s.config.beta_end == 0.012
    ddim = make_scheduler("ddim")
    ddim.set_timesteps(50)
    assert ddim.timesteps[:3].tolist() == [981, 961, 941] and ddim.timesteps[-1] == 1


# ---------------------------------------------------------------------- interrupting, and threads
@pytest.mark.parametrize("method", ["gradop_plus", "text2img", "loopback"])
def test_a_callback_interrupts_after_step_k_and_the_pipeline_is_reusable(pipe, painting, method):
    seen, captured = [], {}

    def stop_after_step_2(p, i, t, tensors):
        seen.append(i)
        captured[i] = tensors["latents"].clone()
        if i == 2:
            p._interrupt = True  # diffusers' convention
        return tensors

    stopped = run(pipe, method, painting, generator=gen(0), output_type="latent",
                  callback_on_step_end=stop_after_step_2).images
    assert seen == [0, 1, 2] and pipe.interrupt
    assert torch.equal(stopped, captured[2])  # what was there after step 2, not denoised further
    fresh = run(pipe, method, painting, generator=gen(0)).images
    again = run(pipe, method, painting, generator=gen(0)).images
    assert not pipe.interrupt and np.array_equal(fresh, again)  # the next call runs whole


def test_two_threads_on_one_pipeline_give_their_sequential_images(pipe, painting):
    from concurrent.futures import ThreadPoolExecutor

    jobs = [dict(generator=gen(0), num_inference_steps=10),
            dict(generator=gen(1), num_inference_steps=20, regions={"#c82828": "castle"}, region_weight=1.0)]

    def job(kwargs):
        kwargs = dict(kwargs, generator=gen(kwargs["generator"].initial_seed()))
        return pipe.gradop_plus("a castle by a lake", painting, 0.8, 2, 3, output_type="np", **kwargs).images

    sequential = [job(j) for j in jobs]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            together = list(pool.map(job, jobs))
            for alone, concurrent in zip(sequential, together):
                np.testing.assert_array_equal(alone, concurrent)
    assert all(p.requires_grad for p in pipe.vae.parameters())  # the decoder's flags are restored


def test_a_callback_that_returns_no_dict_is_a_clear_error(pipe, painting):
    # before: "TypeError: pop expected at most 2 arguments" from deep inside the loop
    with pytest.raises(TypeError, match="callback_on_step_end must return a dict"):
        run(pipe, "gradop_plus", painting, generator=gen(0), callback_on_step_end=lambda p, i, t, tensors: [tensors])
    assert np.isfinite(run(pipe, "gradop_plus", painting, generator=gen(0)).images).all()  # usable afterwards


def test_a_callback_that_returns_another_shape_is_a_clear_error(pipe, painting):
    # before: {"latents": latents[:, :, :8]} made an image of half the height without a word
    with pytest.raises(ValueError, match=r"returned 'latents' of shape .* at step 0; it must keep the shape"):
        run(pipe, "sdedit", painting, generator=gen(0),
            callback_on_step_end=lambda p, i, t, tensors: {"latents": tensors["latents"][:, :, :2]})
    with pytest.raises(ValueError, match="returned 'latents' of shape list"):
        run(pipe, "sdedit", painting, generator=gen(0), callback_on_step_end=lambda p, i, t, tensors: {"latents": [1]})
    assert np.isfinite(run(pipe, "sdedit", painting, generator=gen(0)).images).all()  # usable afterwards


def test_pndm_refuses_a_window_right_after_its_first_step(painting):
    # PLMS repeats its first timestep: a window after step 0 made the next two steps both start at 665 (one skipped)
    pipe = GradOPPipeline(**tiny_components(scheduler="pndm"))
    with pytest.raises(ValueError, match="PNDM's first two steps are one"):
        pipe.gradop_plus("a cat", painting, strength=0.9, num_iterative_steps=1, grad_steps_per_iter=2,
                         num_inference_steps=6)
    pipe.gradop_plus("a cat", painting, strength=0.7, num_iterative_steps=1, grad_steps_per_iter=2,
                     num_inference_steps=6)  # a window after step 1 is fine
