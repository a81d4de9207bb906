"""How faithful an image is to a painting: distance in painting space."""
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


def painting_distance(image, painting, painting_function="gaussian") -> float:
    """Faithfulness MSE(f(x), f(y)) in [0, 1] pixel space (0 = identical paintings, lower is better).

    `painting` is resized to `image`'s size when they differ. `painting_function` as in the pipeline.
    """
    x = to_tensor01(image, "image")
    y = to_tensor01(painting, "painting", size=(x.shape[-1], x.shape[-2]))
    f = get_painting_function(painting_function, y)
    return float((f(x) - f(y)).square().mean())
