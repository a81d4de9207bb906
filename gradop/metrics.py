"""Faithfulness (distance to the painting in painting space) and, given a patch judge, realism and semantic accuracy.

The judge is passed in: the library knows no particular world. The toy world's is
`gradop.toy.judge.load_judge()`; any object with the same three members works (see `realism`).
"""
from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .images import load_image
from .painting import get_painting_function


def to_tensor01(image, name: str = "image", size: tuple[int, int] | None = None) -> torch.Tensor:
    """Any image `load_image` accepts, as a [1, 3, H, W] float tensor in [0, 1], optionally Lanczos-resized to (w, h)."""
    pil = load_image(image, name)
    if size is not None and pil.size != size:
        pil = pil.resize(size, PIL.Image.LANCZOS)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def to_batch(images, name: str = "images", size: tuple[int, int] | None = None) -> torch.Tensor:
    """A [B, 3, H, W] float tensor in [0, 1] from a [B, 3, H, W] tensor (used as it is, clamped) or from one
    image / a list of anything `load_image` takes (each Lanczos-resized to `size` = (w, h) if given)."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        if images.shape[1] != 3:
            raise ValueError(f"{name} must be [B, 3, H, W] RGB tensors, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {images.dtype}: use images.float() / 255")
        if not torch.isfinite(images).all():
            raise ValueError(f"{name} hold NaN or infinite values")
        low, high = float(images.min()), float(images.max())
        if low < -0.01 or high > 1.01:  # the slack is rounding; a 0-255 or [-1, 1] image is a mistake to name
            raise ValueError(f"{name} must be in [0, 1], got values in [{low:g}, {high:g}]: divide 0-255 images by "
                             "255, map [-1, 1] ones with (x + 1) / 2")
        if size is not None and tuple(images.shape[-2:]) != (size[1], size[0]):
            raise ValueError(f"{name} are {tuple(images.shape[-2:])} images; expected (h, w) = {(size[1], size[0])}")
        return images.float().clamp(0, 1)
    images = images if isinstance(images, (list, tuple)) else [images]
    if not len(images):
        raise ValueError(f"{name} is empty: give at least one image")
    tensors = [to_tensor01(im, f"{name}[{i}]", size) for i, im in enumerate(images)]
    sizes = sorted({tuple(t.shape[-2:]) for t in tensors})
    if len(sizes) > 1:
        raise ValueError(f"{name} have different sizes {sizes} (h, w): resize them to one size first")
    return torch.cat(tensors)


def _is_batch(images) -> bool:
    return isinstance(images, (list, tuple)) or (isinstance(images, torch.Tensor) and images.ndim == 4)


def painting_distance(images, paintings, painting_function="gaussian", sigma_fraction=None):
    """Faithfulness MSE(f(x), f(y)) in [0, 1] pixel space (0 = identical paintings, lower is better).

    One image and one painting give a float; a batch (a [B, 3, H, W] tensor or a list) gives a `[B]` tensor,
    with one painting for all images or one each. Paintings given as files or PIL images are resized to the
    images' size. `painting_function` as in the pipeline, by the same rule, so faithfulness is measured with the
    blur the optimisation used: `"gaussian"` is the released blur at the images' scale, σ = 7·side/512 on the
    shorter side, or `sigma_fraction`·side (pass the model's `pipe.config.painting_sigma_fraction`).
    """
    x = to_batch(images, "image")
    y = to_batch(paintings, "painting", size=(x.shape[-1], x.shape[-2]))
    if len(y) not in (1, len(x)):
        raise ValueError(f"{len(y)} paintings for {len(x)} images: give one painting for all, or one per image")
    f = get_painting_function(painting_function, y, sigma_fraction)
    distances = (f(x) - f(y)).square().flatten(1).mean(1)
    return distances if _is_batch(images) else float(distances[0])


def _check_judge(judge, who: str, needs: str = "verdicts") -> None:
    if judge is None or not callable(getattr(judge, needs, None)):
        raise TypeError(f"{who} needs a patch judge with {needs}(images), e.g. gradop.toy.judge.load_judge() "
                        f"for toy-world images; got {type(judge).__name__}")


def realism(images, judge, modality: str = "photo") -> torch.Tensor:
    """Per image, the share of its patches `judge` places in `modality` (1 = every patch looks like a photo).

    `judge` has `modality_verdicts(images) -> [B, h, w]` modality indices of its patches for [B, 3, H, W]
    images in [0, 1] and `modalities` (their names): e.g. the toy world's `gradop.toy.judge.load_judge()`
    (photo / painting / cartoon), valid for toy-world images only.
    """
    _check_judge(judge, "realism", "modality_verdicts")
    if modality not in judge.modalities:
        raise ValueError(f"modality must be one of {tuple(judge.modalities)}, got {modality!r}")
    verdicts = judge.modality_verdicts(to_batch(images))
    return (verdicts == judge.modalities.index(modality)).float().flatten(1).mean(1)


def semantic_accuracy(images, masks, class_name: str, judge) -> torch.Tensor:
    """Per image, the share of the patches mostly inside `masks` ([B, H, W] or [H, W] bool) judged `class_name`.

    `judge` has `verdicts(images) -> [B, h, w]` class indices, `classes` and `patch` (its patch side in pixels). NaN for an image whose mask covers no patch.
    """
    _check_judge(judge, "semantic_accuracy")
    if class_name not in judge.classes:
        raise ValueError(f"class_name must be one of {tuple(judge.classes)}, got {class_name!r}")
    images = to_batch(images)
    masks = torch.as_tensor(masks).bool()
    masks = masks.expand(len(images), *masks.shape[-2:]) if masks.ndim == 2 else masks
    inside = torch.nn.functional.avg_pool2d(masks[:, None].float(), judge.patch)[:, 0] > 0.5
    hits = (judge.verdicts(images) == judge.classes.index(class_name)) & inside
    return hits.flatten(1).sum(1) / inside.flatten(1).sum(1)  # 0/0 -> NaN


def regions_kept(images, painting, masks=None, tolerance: float = 0.2, min_share: float = 0.03,
                 painting_function="gaussian", sigma_fraction=None) -> torch.Tensor:
    """Which painted regions an image kept: `[B, R]` booleans, True where the mean colour of f(image) over the
    region is within `tolerance` (Euclidean, RGB in [0, 1]) of the region's painted colour (the painting's mean
    there). `masks` `[R, H, W]` booleans name the regions (a world's label map); by default they are the
    painting's stroke colours (`colors.region_masks` of `colors.extract_palette`). Regions under `min_share` of
    the image are left out. f as in `painting_distance`. One painting for all images."""
    from .checks import check_fraction
    from .colors import extract_palette, region_masks

    check_fraction(min_share, "min_share")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a distance >= 0 between RGB colours in [0, 1] (e.g. 0.2), got {tolerance!r}")
    x = to_batch(images, "images")
    y = to_batch(painting, "painting", size=(x.shape[-1], x.shape[-2]))
    if len(y) != 1:
        raise ValueError(f"regions_kept takes one painting for all images, got {len(y)}")
    if masks is None:
        pixels = (y[0].permute(1, 2, 0) * 255).round().byte().numpy()
        masks = region_masks(pixels, [c for c, _ in extract_palette(pixels, 16)])
    masks = torch.as_tensor(masks).bool()
    if masks.ndim != 3 or tuple(masks.shape[-2:]) != tuple(x.shape[-2:]):
        raise ValueError(f"masks must be [R, H, W] booleans at the images' size {tuple(x.shape[-2:])}, "
                         f"got {tuple(masks.shape)}")
    masks = masks[masks.flatten(1).float().mean(1) >= max(min_share, 1 / masks[0].numel())]  # an empty mask is none
    f = get_painting_function(painting_function, y, sigma_fraction)
    weights = masks.flatten(1).float() / masks.flatten(1).sum(1, keepdim=True)  # [R, HW] averages over each region
    painted = weights @ y.flatten(2)[0].T  # [R, 3]
    made = torch.einsum("rp,bcp->brc", weights, f(x).flatten(2))  # [B, R, 3]
    return (made - painted).norm(dim=-1) <= tolerance


def detail(images) -> torch.Tensor:
    """Fine detail of each image, `[B]`: the mean |Laplacian| (kornia's 3x3, unnormalised) of its RGB on the 0-255
    scale. A flat painting scores low, a textured photo high: what a "flat" output lacks."""
    import kornia

    x = to_batch(images, "images") * 255
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"detail needs images of at least 2x2 pixels, got {tuple(x.shape[-2:])}")
    return kornia.filters.laplacian(x, 3, normalized=False).abs().flatten(1).mean(1)
