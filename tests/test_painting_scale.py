"""The Gaussian painting function scales with the image: σ = 7·side/512 on the shorter side, kernel the odd
integer nearest 5σ (at least 3), or a model's own `painting_sigma_fraction`. Expected values are hand-computed."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import draw_painting, gen
from diffusers import StableDiffusionPipeline

from gradop import GradOPPipeline, load_pipeline
from gradop.metrics import painting_distance
from gradop.painting import GaussianBlur, ScaledGaussianBlur, get_painting_function
from gradop.testing import tiny_components


def hand_blur(x, size, sigma):
    """Normalised 1-D Gaussian, reflect border, along the width then the height, written out with conv2d."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-r**2 / (2 * torch.tensor(sigma) ** 2))
    g = g / g.sum()
    x = F.pad(x, (size // 2,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(3, 1, 1, size), groups=3)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(3, 1, size, 1), groups=3)


def noise(height, width, seed=0):
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_512_is_exactly_the_release():
    for height, width in ((512, 512), (512, 768), (768, 512)):  # shorter side 512
        blur = GaussianBlur.for_size(height, width)
        assert (blur.kernel_size, blur.sigma) == (35, 7.0)
    x = noise(512, 512)
    torch.testing.assert_close(get_painting_function("gaussian", x)(x), hand_blur(x, 35, 7.0), atol=0, rtol=0)


@pytest.mark.parametrize("height,width,kernel,sigma", [
    (64, 64, 5, 0.875),  # 7·64/512 = 0.875; 5σ = 4.375 -> 5
    (72, 56, 3, 0.765625),  # shorter side 56: 7·56/512; 5σ = 3.83 -> 3
    (256, 256, 17, 3.5),  # 5σ = 17.5 -> 17
    (1024, 768, 53, 10.5),  # 5σ = 52.5 -> 53
    (8, 8, 3, 0.109375),  # 5σ = 0.55 -> 1, raised to 3
])
def test_scaled_kernel_and_sigma(height, width, kernel, sigma):
    blur = GaussianBlur.for_size(height, width)
    assert (blur.kernel_size, blur.sigma) == (kernel, sigma)


def test_64_blur_against_hand_conv2d_and_repr():
    x = noise(64, 64)
    blur = get_painting_function("gaussian", x)
    assert repr(blur) == "GaussianBlur(kernel_size=5, sigma=0.875)"
    torch.testing.assert_close(blur(x), hand_blur(x, 5, 0.875), atol=0, rtol=0)
    # a declared fraction: 5/64 of 64 is σ 5, 5σ = 25
    blur = get_painting_function("gaussian", x, sigma_fraction=5 / 64)
    assert (blur.kernel_size, blur.sigma) == (25, 5.0)
    torch.testing.assert_close(blur(x), hand_blur(x, 25, 5.0), atol=0, rtol=0)


def test_explicit_blur_is_used_as_is_and_sizeless_gaussian_scales_per_input():
    x = noise(64, 64)
    released = GaussianBlur(35, 7)
    assert get_painting_function(released, x, sigma_fraction=0.1) is released
    sizeless = get_painting_function("gaussian")
    assert isinstance(sizeless, ScaledGaussianBlur)
    torch.testing.assert_close(sizeless(x), hand_blur(x, 5, 0.875), atol=0, rtol=0)


def test_painting_distance_uses_the_rule():
    x, y = noise(64, 64, 1), noise(64, 64, 2)
    scaled = float((hand_blur(x, 5, 0.875) - hand_blur(y, 5, 0.875)).square().mean())
    released = float((hand_blur(x, 35, 7.0) - hand_blur(y, 35, 7.0)).square().mean())
    assert float(painting_distance(x, y)) == pytest.approx(scaled, rel=1e-5)
    assert float(painting_distance(x, y, GaussianBlur(35, 7))) == pytest.approx(released, rel=1e-5)
    assert scaled > 10 * released  # the finer blur keeps more of the noise
    declared = painting_distance(x, y, sigma_fraction=5 / 64)
    assert float(declared) == float(painting_distance(x, y, GaussianBlur(25, 5.0)))


def test_config_round_trips_and_folders_without_it_load(tmp_path):
    pipe = GradOPPipeline(**tiny_components(), painting_sigma_fraction=0.05)
    assert pipe.config.painting_sigma_fraction == 0.05
    pipe.save_pretrained(tmp_path / "declared")
    assert json.loads((tmp_path / "declared" / "model_index.json").read_text())["painting_sigma_fraction"] == 0.05
    assert GradOPPipeline.from_pretrained(tmp_path / "declared").config.painting_sigma_fraction == 0.05
    loaded = load_pipeline(str(tmp_path / "declared"), device="cpu", verbose=False)
    assert loaded.config.painting_sigma_fraction == 0.05
    assert GradOPPipeline.from_pipe(pipe).config.painting_sigma_fraction == 0.05
    assert GradOPPipeline.from_pipe(pipe, painting_sigma_fraction=0.1).config.painting_sigma_fraction == 0.1
    # a folder saved before the setting existed (the key removed), and a Stable Diffusion folder: None
    index = tmp_path / "declared" / "model_index.json"
    index.write_text(json.dumps({k: v for k, v in json.loads(index.read_text()).items()
                                 if k != "painting_sigma_fraction"}))
    assert GradOPPipeline.from_pretrained(tmp_path / "declared").config.painting_sigma_fraction is None
    sd = StableDiffusionPipeline(**tiny_components(), safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)
    sd.save_pretrained(tmp_path / "sd")
    assert GradOPPipeline.from_pretrained(tmp_path / "sd").config.painting_sigma_fraction is None
    assert GradOPPipeline.from_pipe(sd).config.painting_sigma_fraction is None


def test_declared_fraction_changes_gradop_plus_like_the_explicit_blur():
    def run(fraction=None, **kwargs):
        pipe = GradOPPipeline(**tiny_components(), painting_sigma_fraction=fraction)
        pipe.set_progress_bar_config(disable=True)
        return pipe.gradop_plus("a fox", draw_painting(), grad_steps_per_iter=3, num_inference_steps=10,
                                generator=gen(0), output_type="np", **kwargs).images

    declared = run(5 / 64)  # σ 5, kernel 25 at 64x64
    np.testing.assert_array_equal(declared, run(painting_function=GaussianBlur(25, 5.0)))
    assert np.abs(declared - run()).max() > 1 / 255  # the default σ 0.875 at 64x64 differs


@pytest.mark.parametrize("value", [0, -0.01, 0.5, 0.7, math.nan, math.inf])
def test_bad_fraction_is_a_value_error_naming_it(value, tmp_path):
    with pytest.raises(ValueError, match="painting_sigma_fraction"):
        GradOPPipeline(**tiny_components(), painting_sigma_fraction=value)
    with pytest.raises(ValueError, match="sigma_fraction"):
        painting_distance(noise(64, 64), noise(64, 64), sigma_fraction=value)


def test_bad_fraction_type_and_bad_saved_value(tmp_path):
    for value in ("0.05", True):
        with pytest.raises(TypeError, match="painting_sigma_fraction"):
            GradOPPipeline(**tiny_components(), painting_sigma_fraction=value)
    GradOPPipeline(**tiny_components()).save_pretrained(tmp_path)
    index = tmp_path / "model_index.json"
    assert json.loads(index.read_text())["painting_sigma_fraction"] is None  # saved as null, loaded as None
    assert GradOPPipeline.from_pretrained(tmp_path).config.painting_sigma_fraction is None
    index.write_text(json.dumps(json.loads(index.read_text()) | {"painting_sigma_fraction": 0.9}))
    with pytest.raises(ValueError, match="painting_sigma_fraction must be .* 0.5"):
        GradOPPipeline.from_pretrained(tmp_path)
