"""Painting functions and the faithfulness metric against hand-computed values."""
import numpy as np
import pytest
import PIL.Image
import torch
import torch.nn.functional as F
from test_reproduction import hand_blur

from gradop.metrics import painting_distance
from gradop.painting import GaussianBlur, dominant_colors


def test_gaussian_blur_is_the_released_kernel():
    x = torch.rand(2, 3, 48, 40)
    torch.testing.assert_close(GaussianBlur()(x), hand_blur(x), atol=1e-5, rtol=0)


def test_gaussian_blur_fits_small_images():
    x = torch.rand(1, 3, 8, 12)  # reflect padding of 17 would not fit: the kernel shrinks to 15
    r = torch.arange(15, dtype=torch.float32) - 7
    g = torch.exp(-r**2 / 98)
    g = g / g.sum()
    k = (g[:, None] * g[None]).expand(3, 1, 15, 15)
    torch.testing.assert_close(GaussianBlur()(x), F.conv2d(F.pad(x, (7,) * 4, mode="reflect"), k, groups=3),
                               atol=1e-5, rtol=0)


def test_painting_distance_hand_values():
    a = PIL.Image.new("RGB", (32, 32), (255, 0, 0))
    b = PIL.Image.new("RGB", (32, 32), (0, 0, 0))
    assert painting_distance(a, a) == 0
    # blur of a constant is the constant: MSE = mean over channels of (1 - 0)^2, (0)^2, (0)^2 = 1/3
    assert abs(painting_distance(a, b) - 1 / 3) < 1e-6
    assert abs(painting_distance(a, b.resize((64, 64))) - 1 / 3) < 1e-6  # painting resized to the image
    noisy = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    grey = PIL.Image.new("RGB", (32, 32), (128, 128, 128))
    # the released blur (sigma 7; "gaussian" at 32x32 is sigma 0.44) removes most of the noise: the painting
    # distance is far below the pixel MSE
    pixel_mse = ((np.asarray(noisy) / 255 - 128 / 255) ** 2).mean()
    assert painting_distance(noisy, grey, GaussianBlur(35, 7)) < 0.1 * pixel_mse


def test_dominant_colors_shares():
    img = np.zeros((3, 10, 10), np.float32)
    img[0, :, :7] = 1.0  # 70 % red, 30 % black
    colors, shares = dominant_colors(torch.from_numpy(img), max_colors=3)
    assert colors[0].tolist() == [1, 0, 0] and colors[1].tolist() == [0, 0, 0]
    assert torch.allclose(shares, torch.tensor([0.7, 0.3])) and colors.shape == (3, 3)


def test_regions_kept_by_hand():
    from gradop.metrics import regions_kept

    # one grey painting, two regions (top and bottom half): f of a constant is the constant, so a region's
    # blurred colour moves by the shift painted into it, less what the blur leaks across the border
    painting = torch.full((1, 3, 64, 64), 0.5)
    top = torch.zeros(64, 64, dtype=torch.bool)
    top[:32] = True
    masks = torch.stack([top, ~top])
    shifted = lambda delta: torch.cat([painting[..., :32, :], painting[..., 32:, :] + delta], -2)  # noqa: E731
    assert regions_kept(painting, painting, masks).tolist() == [[True, True]]
    # bottom + 0.15 in every channel: |Δ| = √3 · 0.15 = 0.26 > 0.2, not kept; + 0.1: 0.17, kept
    assert regions_kept(shifted(0.15), painting, masks).tolist() == [[True, False]]
    assert regions_kept(shifted(0.1), painting, masks).tolist() == [[True, True]]
    assert regions_kept(shifted(0.15), painting, masks, tolerance=0.3).tolist() == [[True, True]]
    # a batch: one row per image; regions under min_share are left out
    small = torch.zeros(64, 64, dtype=torch.bool)
    small[:4, :4] = True  # 0.4 % of the image
    kept = regions_kept(torch.cat([painting, shifted(0.15)]), painting, torch.cat([masks, small[None]]))
    assert kept.tolist() == [[True, True], [True, False]]
    # without masks, the painting's stroke colours are the regions
    two = painting.clone()
    two[..., 32:, :] = torch.tensor([0.1, 0.6, 0.2])[:, None, None]
    assert regions_kept(two, two).shape == (1, 2)
    assert sorted(regions_kept(painting, two)[0].tolist()) == [False, True]  # the grey half kept, the green not
    with pytest.raises(ValueError, match="masks must be"):
        regions_kept(painting, painting, masks[:, :10])


def test_detail_by_hand():
    from gradop.metrics import detail

    flat = torch.full((1, 3, 16, 16), 0.3)
    # a 0/1 checkerboard: every pixel's 4 edge neighbours differ and its 4 diagonal ones agree, so the 3x3
    # Laplacian (8 neighbours - 8 x centre) is ±4 everywhere (the reflected border continues the pattern): 4·255
    board = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(1, 3, 16, 16)
    assert detail(torch.cat([flat, board])).tolist() == pytest.approx([0.0, 4 * 255])


@pytest.mark.parametrize("images, error, message", [
    (torch.full((1, 3, 8, 8), 200.0), ValueError, r"must be in \[0, 1\], got values in \[200, 200\]: divide 0-255"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, "float tensor in \\[0, 1\\], got torch.uint8"),
    (torch.zeros(1, 4, 8, 8), ValueError, r"\[B, 3, H, W\] RGB"),
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN or infinite"),
    ([], ValueError, "images is empty"),
    ([PIL.Image.new("RGB", (8, 8)), PIL.Image.new("RGB", (9, 8))], ValueError, "different sizes"),
])
def test_metrics_refuse_images_they_would_misread(images, error, message):
    from gradop.metrics import detail, regions_kept

    with pytest.raises(error, match=message):
        detail(images)
    with pytest.raises(error, match=message):
        regions_kept(images, PIL.Image.new("RGB", (8, 8)))


@pytest.mark.parametrize("setting, message", [
    (dict(tolerance=-1), "tolerance must be a distance >= 0"), (dict(tolerance=float("nan")), "tolerance"),
    (dict(tolerance="0.2"), "tolerance"), (dict(min_share=2), r"min_share must be in \[0, 1\]"),
])
def test_regions_kept_checks_its_settings(setting, message):
    from gradop.metrics import regions_kept

    with pytest.raises((TypeError, ValueError), match=message):
        regions_kept(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), **setting)


def test_an_empty_mask_is_no_region():
    from gradop.metrics import detail, regions_kept

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0] = True
    assert regions_kept(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), masks, min_share=0).tolist() == [[True]]
    with pytest.raises(ValueError, match="at least 2x2"):
        detail(torch.zeros(1, 3, 1, 1))
