import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch

from gradop import GradOPPipeline
from gradop.testing import tiny_components


def draw_painting(width=64, height=64) -> PIL.Image.Image:
    """A small stroke painting: sky, grass, a red blob, drawn anti-aliased (2x then Lanczos down)."""
    big = PIL.Image.new("RGB", (2 * width, 2 * height), (90, 150, 230))
    d = PIL.ImageDraw.Draw(big)
    d.rectangle([0, height, 2 * width, 2 * height], fill=(40, 160, 60))
    d.ellipse([width // 2, height // 2, width + width // 2, height + height // 3], fill=(200, 40, 40))
    return big.resize((width, height), PIL.Image.LANCZOS)


@pytest.fixture
def components():
    return tiny_components(seed=0)


@pytest.fixture
def pipe(components):
    p = GradOPPipeline(**components)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def painting():
    return draw_painting()


def gen(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


def as_uint8(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images]).astype(np.int16)
