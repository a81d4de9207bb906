"""What the tutorial notebooks share: their configuration, the example paintings, and image grids.

    from gradop.notebook import setup, image_grid
    cfg = setup()      # reads GRADOP_MODEL (default "auto") and GRADOP_WORK_SIZE, loads the model
    cfg.examples       # paintings from input-images/ (toy/ for the toy model) with prompts and colour phrases
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
INPUT_IMAGES = REPOSITORY / "input-images"


@dataclass
class Example:
    """A painting from `input-images/` with the prompt and colour phrases its manifest gives."""
    name: str
    painting: PIL.Image.Image
    prompt: str
    regions: dict = field(default_factory=dict)


def load_examples(folder: str | Path, size: int | None = None) -> list[Example]:
    """Every painting listed in `folder/manifest.json`, resized (Lanczos) to `size` x `size` when given."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"folder must hold a manifest.json of paintings, but {manifest} does not exist")
    examples = []
    for name, entry in json.loads(manifest.read_text()).items():
        painting = PIL.Image.open(folder / name).convert("RGB")
        if size is not None:
            painting = painting.resize((size, size), PIL.Image.LANCZOS)
        examples.append(Example(Path(name).stem, painting, entry["prompt"], entry.get("colors", {})))
    return examples


@dataclass
class Config:
    """One notebook's set-up: the model, the size it works at, and the paintings that suit it."""
    pipe: object
    model: str
    is_toy: bool
    work_size: int
    device: torch.device
    examples: list[Example]
    judge: object = None  # the toy world's patch judge (gradop.metrics.realism's `judge`), None for other models

    def generator(self, seed: int = 0, n: int | None = None):
        """A CPU generator (the same images on every device), or `n` of them seeded seed, seed+1, ..."""
        if n is None:
            return torch.Generator("cpu").manual_seed(seed)
        return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def setup(model: str | None = None, work_size: int | None = None, device=None) -> Config:
    """Load the model a notebook runs on.

    Args:
        model: defaults to the `GRADOP_MODEL` environment variable, else ``"auto"``: Stable Diffusion v1.4
            when it can be had and a GPU is there, otherwise the bundled toy model.
        work_size: the image side to work at; defaults to `GRADOP_WORK_SIZE`, else the model's native size
            (64 for the toy model, 512 for Stable Diffusion v1).
    """
    from .models import is_toy_model, load_pipeline, model_label

    model = model or os.environ.get("GRADOP_MODEL", "auto")
    if model == "auto" and device is None and not torch.cuda.is_available():
        # Stable Diffusion takes minutes per image on a CPU (and a 4 GB download): notebooks would stall
        print("no GPU: using the toy model (set GRADOP_MODEL to a Stable Diffusion hub id or folder to insist)")
        model = "toy"
    pipe = load_pipeline(model, device=device)
    pipe.set_progress_bar_config(disable=True)  # each run takes seconds here; figures stay uncluttered
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    work_size = int(work_size or os.environ.get("GRADOP_WORK_SIZE", 0) or native)
    is_toy = is_toy_model(pipe)
    examples = load_examples(INPUT_IMAGES / "toy" if is_toy else INPUT_IMAGES, work_size)
    judge = load_toy_judge() if is_toy else None
    print(f"model: {model_label(pipe)} | work size {work_size}x{work_size} | device {pipe.device} | "
          f"{len(examples)} example paintings from {'input-images/toy' if is_toy else 'input-images'}")
    return Config(pipe, model, is_toy, work_size, pipe.device, examples, judge)


def to_array(image) -> np.ndarray:
    """[H, W, 3] in [0, 1] from a PIL image or a [3, H, W] tensor."""
    if isinstance(image, torch.Tensor):
        return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def to_batch(images) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] from PIL images (or anything `load_image` takes)."""
    from .metrics import to_batch as batch

    return batch(list(images))


def load_toy_judge():
    """The toy world's patch judge (`gradop.toy.judge`), for `gradop.metrics.realism` and `semantic_accuracy`.
    The notebook layer looks it up so that the library itself never imports the toy world."""
    from .toy.judge import load_judge

    return load_judge()


def image_grid(rows, row_titles=None, col_titles=None, scale: float = 2.0, title: str | None = None):
    """A matplotlib figure of images: `rows` is a list of lists of PIL images or [3, H, W] tensors (None leaves a
    gap). `scale` is inches per tile: 2.0 shows a 64x64 tile at about 3x at the inline backend's 100 dpi."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows + (0.3 if title else 0)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(row) and row[c] is not None:
                ax.imshow(to_array(row[c]), interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def timed(fn, repeats: int = 3, warmup: bool = True):
    """(median seconds of `repeats` runs after one warm-up run, the last result).

    `warmup=False` skips the warm-up: for long runs on a model that earlier calls have already warmed, where
    a warm-up would double the cost."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a whole number >= 1, got {repeats!r}")
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def report_rows(*starts: str, report: str = "reports/toy/report.md") -> str:
    """The lines of a markdown report of the repository (the toy's by default) that begin with one of `starts`,
    e.g. `report_rows("| method", "| GradOP+ N=12 |")` for a table's header and one row."""
    lines = (REPOSITORY / report).read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith(starts))


def loopback_every_loop(pipe, prompts, images, num_loops: int, strength: float = 0.6, generator=None,
                        num_inference_steps: int = 50, **kwargs) -> list[torch.Tensor]:
    """The images after each of `num_loops` loops of `pipe.loopback`, from one call: [B, 3, H, W] in [0, 1] per loop.

    Loop k of the call is exactly `pipe.loopback(..., num_loops=k)` (the same generator draws in the same order),
    so a curve over the loops costs one call with the most loops instead of one call per point."""
    ends = []

    def keep(pipe_, i, t, tensors):  # each loop ends at the schedule's last timestep: its latents are that loop's result
        if t == pipe_.scheduler.timesteps[-1]:
            ends.append(tensors["latents"])
        return tensors

    pipe.loopback(prompts, images, strength=strength, num_loops=num_loops, generator=generator, output_type="latent",
                  num_inference_steps=num_inference_steps, callback_on_step_end=keep, **kwargs)
    with torch.no_grad():  # decoded and post-processed as the pipeline's own output_type="pt"
        return [pipe.image_processor.postprocess(pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample.float(),
                                                 output_type="pt").cpu() for z in ends]
