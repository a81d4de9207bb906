"""Turning whatever the user hands us into an RGB PIL image, with clear errors.

Real stroke paintings arrive as PNGs with alpha, palettes, 16-bit greys, CMYK JPEGs, numpy
arrays or tensors. Everything becomes 8-bit RGB here, once, so the pipeline never sees odd modes.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

MAX_SIDE = 4096  # larger images exhaust memory long before they finish; refuse them up front


def load_image(image, name: str = "image") -> PIL.Image.Image:
    """Return `image` (a path, binary file, PIL image, HxW[xC] array or [C,H,W] tensor) as an RGB PIL image.

    Files are turned upright by their EXIF orientation. Transparent pixels are composited on white (a
    painting's empty canvas). Floats are read as [0, 1]; integers as 0..255, or as 16-bit 0..65535 when
    larger (as 16-bit PNGs). Raises `ValueError`/`TypeError` naming `name` otherwise.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open(Path(image), name)
    elif hasattr(image, "read"):  # an uploaded file's bytes (io.BytesIO)
        image = _open(image, name)
    elif isinstance(image, np.ndarray):
        image = _from_array(image, name)
    elif isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f"{name}: a tensor image must be [C, H, W] with C in 1, 3, 4; got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0)
        image = _from_array((image if not image.is_floating_point() else image.float()).numpy(), name)
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(f"{name} must be a file path, PIL image, numpy array or torch tensor, "
                        f"got {type(image).__name__}")
    return _to_rgb(image, name)


def _open(file, name: str) -> PIL.Image.Image:
    """Open a path or binary file: the size is checked from the header before decoding; EXIF rotation applied."""
    if isinstance(file, Path) and file.is_dir():
        raise ValueError(f"{name}: '{file}' is a directory; pass the painting's file inside it")
    if isinstance(file, Path) and not file.is_file():
        raise ValueError(f"{name}: no file at '{file}'; check the path")
    label = f"'{file}'" if isinstance(file, Path) else "the file"
    too_large = f"the largest supported side is {MAX_SIDE} pixels, resize it first"
    unreadable = f"{name}: {label} is not an image that can be read ({{}}); pass a PNG or JPEG painting"
    try:
        with warnings.catch_warnings():
            # PIL warns past MAX_IMAGE_PIXELS and raises past twice that: far beyond MAX_SIDE either way
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(file)  # reads the header only
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise ValueError(f"{name}: {label} claims over {PIL.Image.MAX_IMAGE_PIXELS} pixels; {too_large}") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(unreadable.format(err)) from None
    with image:  # closes the file, whatever happens
        if max(image.size) > MAX_SIDE:  # a few bytes can claim 30000x30000: refuse before decoding
            raise ValueError(f"{name}: {label} is {image.size[0]}x{image.size[1]}; {too_large}")
        try:
            image.load()
            # Phone photos are stored sideways with an EXIF orientation tag: use them as viewers show them (a copy)
            return PIL.ImageOps.exif_transpose(image)
        except (OSError, SyntaxError) as err:
            raise ValueError(unreadable.format(err)) from None


def _from_array(array: np.ndarray, name: str) -> PIL.Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{name}: an array image must be HxW, HxWx3 or HxWx4; got shape {array.shape}")
    if array.dtype.kind in "iu" and array.dtype != np.uint8:
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 65535:
            raise ValueError(f"{name}: a {array.dtype} array must hold 0..255 (8-bit) or 0..65535 (16-bit) values, "
                             f"got [{low}, {high}]; or pass floats in [0, 1]")
        # as for 16-bit PNGs: values past 255 mean the 16-bit range (65535 / 255 = 257)
        array = (np.round(array / 257) if high > 255 else array).astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.dtype.kind not in "fb":
            raise TypeError(f"{name}: an array image must hold floats or integers, got dtype {array.dtype}")
        dtype, array = array.dtype, np.asarray(array, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: the array contains NaN or infinite values")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"{name}: a {dtype} array must hold values in [0, 1], got "
                             f"[{array.min():.3g}, {array.max():.3g}]; pass uint8 for 0..255 data")
        array = np.round(array * 255).astype(np.uint8)
    return PIL.Image.fromarray(array)


def _to_rgb(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        # a 16-bit grey (I;16, as a 16-bit PNG loads) spans 0..65535 by its mode, whatever its values: a dark image
        # is not an 8-bit one. 32-bit "I" says no range: over 255 it is taken as 16-bit. Float greys are taken as
        # [0, 1] when they fit there.
        top = values.max(initial=0)
        scale = (255 / 65535 if mode.startswith("I;16") or top > 255 else 255 if mode == "F" and top <= 1 else 1)
        grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(grey).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"{name}: image mode '{mode}' cannot be converted to RGB ({err}); "
                         "save the painting as an RGB PNG") from None


def check_side(value, name: str, factor: int) -> int:
    """Validate an explicit `height`/`width` and round it down to a multiple of the VAE factor."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer number of pixels, got {value!r}")
    if not factor <= value <= MAX_SIDE:
        raise ValueError(f"{name} must be between {factor} (one latent pixel) and {MAX_SIDE}, got {value}")
    return round_to_factor(int(value), name, factor)


def round_to_factor(side: int, name: str, factor: int) -> int:
    if side % factor:
        warnings.warn(f"{name} {side} is not a multiple of the VAE factor {factor}; "
                      f"using {side - side % factor}", stacklevel=4)
    return side - side % factor


def scaled_size(width: int, height: int, longest: int, factor: int) -> tuple[int, int]:
    """(height, width) scaled so the longer side is `longest`, each rounded down to a multiple of `factor` (>= factor)."""
    scale = longest / max(width, height)
    return tuple(max(factor, int(side * scale) // factor * factor) for side in (height, width))


def work_size(size, height=None, width=None, native=None, factor: int = 8) -> tuple:
    """(height, width) to run a painting of `size` (w, h) at: the one sizing rule of the CLI and the sweep.

    Both sides given: as given. One given: the other keeps the painting's aspect ratio (a multiple of `factor`).
    Neither: `(None, None)`, the painting's own size, unless its longer side exceeds `native` (a model trained
    at one size, like the toy's 64): then `scaled_size` to it.
    """
    w, h = size
    if height is None and width is None:
        return scaled_size(w, h, native, factor) if native and max(w, h) > native else (None, None)
    if width is None and isinstance(height, int):
        width = max(factor, w * height // h // factor * factor)
    elif height is None and isinstance(width, int):
        height = max(factor, h * width // w // factor * factor)
    return height, width


def output_size(image: PIL.Image.Image, height, width, factor: int, name: str = "image") -> tuple[int, int]:
    """(height, width) of the output: explicit values, else the image's own size, as multiples of `factor`."""
    w, h = image.size
    if min(w, h) < factor:
        raise ValueError(f"{name} is {w}x{h}, smaller than one latent pixel; "
                         f"use an image at least {factor}x{factor} pixels")
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"{name} is {w}x{h}; the largest supported side is {MAX_SIDE} pixels, resize it first")
    height = check_side(height, "height", factor) if height is not None else round_to_factor(h, f"{name} height", factor)
    width = check_side(width, "width", factor) if width is not None else round_to_factor(w, f"{name} width", factor)
    return height, width
