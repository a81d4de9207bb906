"""What the `gradop` command and the sweep (`gradop.sweep`) share when they turn a painting file into PNGs.

    prompt = default_prompt(Path("input-images/castle.png"))       # from the manifest.json beside it
    height, width = painting_size(pipe, painting, None, None)      # the one sizing rule
    decoder = painting_decoder(pipe, "toy")                        # a name -> the painting_decoder= to pass
    save_atomically(image, Path("outputs/castle.png"))             # never half a PNG under that name
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

PAINTING_DECODERS = ("model", "full", "toy", "toy-truncated", "taesd", "taesdxl", "taesd3", "taef1")  # or a folder/hub id


def default_prompt(img_path: Path) -> str | None:
    """The prompt the manifest beside a painting gives for it, if any."""
    manifest = img_path.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        prompt = json.loads(manifest.read_text()).get(img_path.name, {}).get("prompt")
    except (ValueError, AttributeError, OSError) as err:
        raise ValueError(f"'{manifest}' is not a manifest like {{\"{img_path.name}\": {{\"prompt\": \"...\"}}}} "
                         f"({err}); fix it, or pass --prompt") from None
    return prompt if isinstance(prompt, str) else None


def painting_size(pipe, painting, height, width) -> tuple[int | None, int | None]:
    """(height, width) for `painting` on `pipe` by the one sizing rule (`images.work_size`): one given side keeps
    the aspect ratio; the toy and tiny test models work a larger painting at their 64x64."""
    from .images import work_size
    from .models import is_toy_model
    from .testing import TINY_NAMES

    if painting is None:
        return height, width
    # the toy and tiny test models work a painting at their own small size (a 512² painting would take minutes)
    small = is_toy_model(pipe) or getattr(pipe, "name_or_path", None) in TINY_NAMES.values()
    native = native_size(pipe) if small else None
    return work_size(painting.size, height, width, native, pipe.vae_scale_factor)


def native_size(pipe) -> int:
    """The side of the images a pipeline makes by default: its `default_sample_size` (SDXL, SD3, FLUX) or its
    UNet's sample size, in latents, times the VAE factor."""
    latent = getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size
    return latent * pipe.vae_scale_factor


def check_painting_decoder_choice(choice, name: str = "painting_decoder") -> str:
    """A painting decoder's name as the CLI and the sweep take it, checked before any model loads."""
    if not isinstance(choice, str) or not choice.strip():
        raise TypeError(f"{name} must be one of {', '.join(PAINTING_DECODERS)}, a folder or a hub id, got {choice!r}")
    return choice


def painting_decoder(pipe, choice: str):
    """A painting decoder's name as the pipeline's `painting_decoder=`: "model" gives None (the model's own
    choice: its full VAE unless it ships a painting decoder, as the toy does), "full" the VAE (as released), "toy", "toy-truncated", "taesd",
    a folder or a hub id that `gradop.models.load_painting_decoder` loads on the pipeline's device and dtype."""
    from .models import load_painting_decoder

    if check_painting_decoder_choice(choice) == "model":
        return None
    if choice == "full":
        return pipe.vae
    return load_painting_decoder(choice, device=pipe.device, dtype=pipe.dtype)


def save_atomically(image, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a PNG under `path`.

    Only a kill -9 in the middle of a write can leave its hidden `.<name>.<random>.tmp` behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # open() with mode 0o666 lets the umask decide the permissions, as for any file the user writes
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cpu_threads_for_the_load() -> str | None:
    """On a CPU that other work keeps busy, use only the cores it leaves free, unless `OMP_NUM_THREADS` says how
    many: torch's threads wait for each other at every operation, so one that is descheduled stalls the rest (the
    README's main command on 2 busy cores: 165 s with 2 threads, 26 s with 1). Returns a line saying what it did."""
    import torch

    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return None
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    free = max(1, round(cores - load))
    if free >= torch.get_num_threads():
        return None
    torch.set_num_threads(free)
    return (f"the CPU is busy (load {load:.1f} on {cores} cores): using {free} torch thread(s) "
            "(set OMP_NUM_THREADS to choose)")
