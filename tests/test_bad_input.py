"""Every kind of bad input gets a ValueError/TypeError that names the argument and the fix."""
import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import gen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradop import GradOPPipeline, load_pipeline, make_scheduler
from gradop.images import load_image
from gradop.testing import tiny_components

FAST = dict(num_inference_steps=6, num_iterative_steps=1, grad_steps_per_iter=1, output_type="np")


def plus(pipe, image, prompt="a castle", **kw):
    return pipe.gradop_plus(prompt, image, generator=gen(0), **{**FAST, **kw})


def test_missing_file(pipe, tmp_path):
    with pytest.raises(ValueError, match=r"image: no file at .*nope\.png.*check the path"):
        plus(pipe, str(tmp_path / "nope.png"))


def test_not_an_image(pipe, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels")
    with pytest.raises(ValueError, match=r"image: .*notes\.png' is not an image"):
        plus(pipe, path)


def test_wrong_type(pipe):
    with pytest.raises(TypeError, match="image must be a file path, PIL image"):
        plus(pipe, 42)


def _modes():
    rgba = PIL.Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))
    p = PIL.Image.new("RGB", (64, 64), (30, 200, 30)).convert("P", palette=PIL.Image.ADAPTIVE)
    p_transparent = p.copy()
    p_transparent.info["transparency"] = 0
    i16 = PIL.Image.fromarray(np.full((64, 64), 65535 // 2, np.uint16))
    return {"P": p, "P+transparency": p_transparent, "L": PIL.Image.new("L", (64, 64), 128),
            "LA": PIL.Image.new("LA", (64, 64), (128, 0)), "RGBA": rgba, "I;16": i16,
            "CMYK": PIL.Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "1": PIL.Image.new("1", (64, 64), 1)}


def _expected_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """The RGB painting each mode should become, by PIL's own rules (transparency composited on white;
    16-bit greys scaled to 8 bits), computed independently of gradop.images."""
    if image.mode == "I;16":
        return PIL.Image.fromarray((np.asarray(image, np.float64) * 255 / 65535).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_image_mode_becomes_rgb_and_runs(pipe, mode):
    image = _modes()[mode]
    out = plus(pipe, image)
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    # the painting the pipeline used is the expected RGB one: same result as passing that RGB image
    np.testing.assert_array_equal(out.images, plus(pipe, _expected_rgb(image)).images)


def test_conversions_are_the_expected_colours():
    modes = _modes()
    rgba = np.asarray(load_image(modes["RGBA"]))
    assert (rgba[:, 40] == 255).all() and (rgba[:, 0] == (0, 0, 255)).all()  # transparent -> white, opaque kept
    assert (np.asarray(load_image(modes["LA"])) == 255).all()  # fully transparent grey -> white canvas
    assert np.asarray(load_image(modes["I;16"]))[0, 0].tolist() == [127, 127, 127]  # 16-bit rescaled
    assert np.asarray(load_image(modes["CMYK"]))[0, 0].tolist() == [255, 0, 0]


def test_arrays_and_tensors(pipe):
    assert plus(pipe, np.full((64, 64, 3), 0.5, np.float32)).images.shape == (1, 64, 64, 3)
    assert plus(pipe, torch.full((3, 64, 64), 0.5)).images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"array must hold values in \[0, 1\]"):
        plus(pipe, np.full((64, 64, 3), 3.0))
    with pytest.raises(ValueError, match="NaN"):
        plus(pipe, np.full((64, 64, 3), np.nan))
    with pytest.raises(ValueError, match="tensor image must be"):
        plus(pipe, torch.zeros(5, 64, 64))


@pytest.mark.parametrize("size", [(4, 64), (64, 7)])
def test_smaller_than_one_latent_pixel(pipe, size):
    with pytest.raises(ValueError, match="smaller than one latent pixel; use an image at least 8x8"):
        plus(pipe, PIL.Image.new("RGB", size))


def test_larger_than_4096(pipe):
    with pytest.raises(ValueError, match="largest supported side is 4096"):
        plus(pipe, PIL.Image.new("RGB", (4100, 16)))
    with pytest.raises(ValueError, match="height must be between"):
        plus(pipe, PIL.Image.new("RGB", (64, 64)), height=5000)
    with pytest.raises(TypeError, match="width must be an integer"):
        plus(pipe, PIL.Image.new("RGB", (64, 64)), width=64.0)


@pytest.mark.parametrize("prompt,error,match", [
    ("", ValueError, "prompt must not be empty"), ("   ", ValueError, "prompt must not be empty"),
    ([""], ValueError, "prompt must not be empty"), (None, TypeError, "prompt must be a string"),
    (3, TypeError, "prompt must be a string"), ([], TypeError, "prompt must be a string"),
    (["ok", 5], TypeError, "prompt must be a string"),
])
def test_bad_prompts(pipe, painting, prompt, error, match):
    with pytest.raises(error, match=match):
        plus(pipe, painting, prompt=prompt)
    with pytest.raises(error, match=match):
        pipe.text2img(prompt)


def test_batch_mismatches(pipe, painting):
    with pytest.raises(ValueError, match="image has 3 entries but prompt has 2"):
        plus(pipe, [painting] * 3, prompt=["a", "b"])
    with pytest.raises(ValueError, match="generator is a list of 3 but the batch has 4"):
        pipe.gradop_plus(["a", "b"], painting, num_images_per_prompt=2, generator=[gen(i) for i in range(3)])
    with pytest.raises(ValueError, match="negative_prompt has 1 entries but prompt has 2"):
        pipe.sdedit(["a", "b"], painting, negative_prompt=["x"])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        pipe.text2img("a", generator=3)


def test_overlong_prompt_is_truncated_with_a_warning(pipe, painting):
    long = "a castle by a lake " * 10  # 190 characters: far over 77 tokens for the character tokenizer
    with pytest.warns(UserWarning, match="longer than the tokenizer's 77 tokens and was truncated"):
        assert plus(pipe, painting, prompt=long).images.shape == (1, 64, 64, 3)
    with pytest.warns(UserWarning, match="truncated"):
        embeds = pipe.encode_prompt(long, do_classifier_free_guidance=False)
    tok = pipe.tokenizer  # by hand: start token, the first 75 tokens, end token
    ids = tok.convert_tokens_to_ids(["<|startoftext|>"] + tok.tokenize(long)[:75] + ["<|endoftext|>"])
    with torch.no_grad():
        expected = pipe.text_encoder(torch.tensor([ids]))[0]
    torch.testing.assert_close(embeds, expected)


@pytest.mark.parametrize("value,error", [(1.3, ValueError), (-0.1, ValueError), (math.nan, ValueError), ("0.8", TypeError)])
def test_strength_outside_unit_interval(pipe, painting, value, error):
    with pytest.raises(error, match="strength must"):
        plus(pipe, painting, strength=value)
    with pytest.raises(error, match="strength must"):
        pipe.sdedit("a", painting, strength=value)


@pytest.mark.parametrize("name,value,error", [
    ("num_inference_steps", 0, ValueError), ("num_inference_steps", -3, ValueError), ("num_inference_steps", 2.5, TypeError),
    ("num_iterative_steps", -1, ValueError), ("grad_steps_per_iter", 1.5, TypeError), ("grad_steps_per_iter", True, TypeError),
    ("num_images_per_prompt", 0, ValueError),
])
def test_bad_step_counts(pipe, painting, name, value, error):
    with pytest.raises(error, match=name):
        plus(pipe, painting, **{name: value})


def test_optimisation_window_past_the_last_step(pipe, painting):
    with pytest.raises(ValueError, match=r"optimisation window \(steps 9\.\.11\) must end before the last step 9"):
        pipe.gradop_plus("a", painting, strength=0.05, num_iterative_steps=3, num_inference_steps=10)


@pytest.mark.parametrize("lr, message", [(0, "> 0"), (-0.1, "> 0"), (math.nan, "> 0"), (math.inf, "> 0"),
                                         (1e30, "at most 1e\\+10"), (1e300, "at most 1e\\+10")])
def test_bad_learning_rate(pipe, painting, lr, message):
    # 1e300 passed once, then overflowed inside Adam's first step ("cannot be converted to type float")
    with pytest.raises(ValueError, match=f"lr must be .*{message}"):
        plus(pipe, painting, lr=lr)


@pytest.mark.parametrize("optimizer, reason", [(torch.optim.LBFGS, "closure"), (torch.optim.SparseAdam, "dense gradients")])
def test_an_optimizer_class_the_descent_cannot_step_fails_before_the_run(pipe, painting, optimizer, reason):
    # LBFGS's step wants a closure, SparseAdam sparse gradients: both used to pass and then fail in the first window
    with pytest.raises(TypeError, match=f"optimizer={optimizer.__name__} cannot run the latent descent.*{reason}"):
        GradOPPipeline.check_inputs("gradop_plus", "a castle", image=painting, optimizer=optimizer)


@pytest.mark.parametrize("function, error, message", [
    (lambda images: images.mean(1), ValueError, r"returned shape \(1, 64, 64\) on cpu for images of shape \(1, 3, 64"),
    (lambda images: images.detach(), TypeError, "without a gradient"),
    (lambda images: images > 0.5, TypeError, "torch.bool tensor"),
    (lambda images: images.detach().numpy(), TypeError, "must return a tensor, got ndarray"),
    (lambda images: None, TypeError, "must return a tensor, got NoneType"),
])
def test_a_painting_function_that_returns_no_painting_is_an_error(pipe, painting, function, error, message):
    # [B, H, W] broadcast silently against the [B, 3, H, W] target; the others failed deep inside torch
    with pytest.raises(error, match=f"painting_function {message}" if "must" in message else message):
        plus(pipe, painting, painting_function=function)


def test_negative_guidance(pipe, painting):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        plus(pipe, painting, guidance_scale=-1)


def test_unknown_names(pipe, painting):
    with pytest.raises(ValueError, match="painting_function must be one of .*gaussian.*median_palette"):
        plus(pipe, painting, painting_function="watercolour")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        plus(pipe, painting, optimizer="lbfgs2")
    with pytest.raises(ValueError, match="optimize_target must be 'noisy'"):
        plus(pipe, painting, optimize_target="clean")
    with pytest.raises(ValueError, match="output_type must be one of"):
        plus(pipe, painting, output_type="jpeg")
    with pytest.raises(ValueError, match="scheduler must be one of .*ddim.*euler"):
        make_scheduler("karras")
    with pytest.raises(ValueError, match="scheduler must be one of"):
        load_pipeline("tiny", scheduler="karras", verbose=False)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs may only name"):
        plus(pipe, painting, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"])


def test_second_order_scheduler_refused_for_guided_sampling(painting):
    from diffusers import HeunDiscreteScheduler

    components = tiny_components()
    components["scheduler"] = HeunDiscreteScheduler.from_config(components["scheduler"].config)
    pipe = GradOPPipeline(**components)
    with pytest.raises(ValueError, match="GradOP\\+ needs a one-evaluation scheduler"):
        plus(pipe, painting)


MODES = ["RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK", "1", "I", "F"]


@pytest.mark.filterwarnings("ignore:.*not a multiple of the VAE factor")  # resizing is the expected outcome here
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.one_of(st.integers(1, 96), st.integers(4097, 4200)), height=st.integers(1, 96),
       mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_property_clean_error_or_finite_image_of_the_right_size(pipe, width, height, mode, seed):
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "I;16":
        image = PIL.Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode != "RGB":
        image = image.convert(mode)
    try:
        out = pipe.gradop_plus("a photo", image, generator=gen(seed), num_inference_steps=3, num_iterative_steps=1,
                               grad_steps_per_iter=1, output_type="np")
    except (ValueError, TypeError) as err:
        assert min(width, height) < 8 or max(width, height) > 4096, err
        assert "image" in str(err)
        return
    assert out.images.shape == (1, height // 8 * 8, width // 8 * 8, 3)
    assert np.isfinite(out.images).all()


def test_a_dark_16_bit_grey_is_read_on_the_16_bit_scale(tmp_path):
    # all values <= 255 in a 16-bit PNG are *dark*, not 8-bit: 150 of 65535 is 0.6 of 255, not 150
    dark = PIL.Image.fromarray(np.full((16, 16), 150, np.uint16))
    dark.save(tmp_path / "dark16.png")
    assert PIL.Image.open(tmp_path / "dark16.png").mode.startswith("I;16")
    assert np.asarray(load_image(tmp_path / "dark16.png"))[0, 0].tolist() == [1, 1, 1]  # round(150 * 255 / 65535)
    # one bright pixel no longer flips the scale of the rest
    values = np.full((16, 16), 150, np.uint16)
    values[0, 0] = 300
    PIL.Image.fromarray(values).save(tmp_path / "mixed16.png")
    assert np.asarray(load_image(tmp_path / "mixed16.png"))[5, 5].tolist() == [1, 1, 1]
