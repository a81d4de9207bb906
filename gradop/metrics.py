"""Faithfulness (distance to the painting in painting space) and, on the toy world, realism and semantic accuracy."""
from __future__ import annotations

import functools

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


def painting_distance(image, painting, painting_function="gaussian") -> float:
    """Faithfulness MSE(f(x), f(y)) in [0, 1] pixel space (0 = identical paintings, lower is better).

    `painting` is resized to `image`'s size when they differ. `painting_function` as in the pipeline.
    """
    x = to_tensor01(image, "image")
    y = to_tensor01(painting, "painting", size=(x.shape[-1], x.shape[-2]))
    f = get_painting_function(painting_function, y)
    return float((f(x) - f(y)).square().mean())


# ---------------------------------------------------------------------- the toy world's judge
def _batch01(images) -> torch.Tensor:
    """A [B, 3, H, W] tensor in [0, 1] from a tensor, or one image / a list of anything `load_image` takes."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return images.float().clamp(0, 1)
    images = images if isinstance(images, (list, tuple)) else [images]
    return torch.cat([to_tensor01(im, f"images[{i}]") for i, im in enumerate(images)])


@functools.lru_cache(maxsize=1)
def _bundled_judge():
    from .toy.judge import load_judge

    return load_judge()


def _judge(judge):
    return _bundled_judge() if judge is None else judge


def realism(images, judge=None) -> torch.Tensor:
    """Per image, the share of its 8x8 patches the toy judge takes for a real texture (not flat paint).

    For toy-world images (the judge knows that world only). 1 = every patch looks real.
    """
    from .toy.judge import FLAT, judge_patches

    verdicts = judge_patches(_judge(judge), _batch01(images))
    return (verdicts != FLAT).float().flatten(1).mean(1)


def semantic_accuracy(images, masks, class_name: str, judge=None) -> torch.Tensor:
    """Per image, the share of the patches mostly inside `masks` ([B, H, W] or [H, W] bool) judged `class_name`.

    NaN for an image whose mask covers no patch.
    """
    from .toy.judge import JUDGE_CLASSES, PATCH, judge_patches

    if class_name not in JUDGE_CLASSES:
        raise ValueError(f"class_name must be one of {JUDGE_CLASSES}, got {class_name!r}")
    images = _batch01(images)
    masks = torch.as_tensor(masks).bool()
    masks = masks.expand(len(images), *masks.shape[-2:]) if masks.ndim == 2 else masks
    inside = torch.nn.functional.avg_pool2d(masks[:, None].float(), PATCH)[:, 0] > 0.5
    hits = (judge_patches(_judge(judge), images) == JUDGE_CLASSES.index(class_name)) & inside
    return hits.flatten(1).sum(1) / inside.flatten(1).sum(1)  # 0/0 -> NaN
