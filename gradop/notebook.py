"""What the tutorial notebooks share: their configuration, the example paintings, and image grids.

    from gradop.notebook import setup, image_grid
    cfg = setup()      # reads GRADOP_MODEL (default "auto") and GRADOP_WORK_SIZE, loads the model
    cfg.examples       # paintings from input-images/ (toy/ for the toy model) with prompts and colour phrases

`input-images/` is the checkout's (not part of the installed package): found from the current directory upward,
or named by the `GRADOP_INPUT_IMAGES` environment variable.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .experiments import loopback_every_loop, timed  # noqa: F401 (the notebooks take them from here)

INPUT_IMAGES_VARIABLE = "GRADOP_INPUT_IMAGES"


def find_in_checkout(relative: str, variable: str | None = None) -> Path:
    """A file or folder of the gradop checkout (not of the installed package): `$variable` when that is set, else
    `relative` in the current directory or the nearest folder above it that has one (the notebooks run in
    `notebooks/`, so the checkout's top level). Raises `FileNotFoundError` saying where it looked and what to do."""
    if variable and os.environ.get(variable):
        path = Path(os.environ[variable]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{variable} is set to '{path}', which does not exist; point it at the "
                                    f"checkout's {relative}")
        return path
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / relative).exists():
            return folder / relative
    hint = f", or set {variable} to it" if variable else ""
    raise FileNotFoundError(f"no {relative} in {here} or any folder above it"
                            + (f", and {variable} is not set" if variable else "")
                            + f": run from the gradop checkout (or its notebooks/ folder){hint}")


def find_input_images() -> Path:
    """The example paintings: `$GRADOP_INPUT_IMAGES`, else `input-images/` in or above the current directory."""
    return find_in_checkout("input-images", INPUT_IMAGES_VARIABLE)


def __getattr__(name: str):
    if name == "INPUT_IMAGES":  # looked up when used, from the current directory: an installed package has none
        return find_input_images()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from .methods import get_method
    from .models import is_toy_model, load_pipeline, model_label
    from .runs import native_size

    model = model or os.environ.get("GRADOP_MODEL", "auto")
    if model == "auto" and device is None and not torch.cuda.is_available():
        # Stable Diffusion takes minutes per image on a CPU (and a 4 GB download): notebooks would stall
        print("no GPU: using the toy model (set GRADOP_MODEL to a Stable Diffusion hub id or folder to insist)")
        model = "toy"
    pipe = load_pipeline(model, device=device, verbose=False)  # its line would go to stderr: a pink box
    pipe.set_progress_bar_config(disable=True)  # each run takes seconds here; figures stay uncluttered
    native = native_size(pipe)
    work_size = int(work_size or os.environ.get("GRADOP_WORK_SIZE", 0) or native)
    is_toy = is_toy_model(pipe)
    input_images = find_input_images()
    examples = load_examples(input_images / "toy" if is_toy else input_images, work_size)
    judge = load_toy_judge() if is_toy else None
    print(f"model: {model_label(pipe)} | work size {work_size}x{work_size} | device {pipe.device} | "
          f"{len(examples)} example paintings from {'input-images/toy' if is_toy else 'input-images'}\n"
          f"defaults: {get_method('gradop+').describe_settings(pipe)}")
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
            else:  # a gap: no frame, but the row's title stays readable
                ax.spines[:].set_visible(False)
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def report_rows(*starts: str, report: str = "reports/toy/report.md", section: str | None = None,
                without: tuple[str, ...] = ()) -> str:
    """The lines of a markdown report of the repository (the toy's by default) that begin with one of `starts`,
    e.g. `report_rows("| method", "| GradOP+ N=12 |")` for a table's header and one row; with `section` (a
    heading's start, "## Free-form"), only the lines under that heading, up to the next heading of its level;
    `without` names columns to leave out (e.g. a timing column that means nothing to a reader)."""
    lines = find_in_checkout(report).read_text().splitlines()
    if section is not None:
        level = section.split(" ")[0] + " "
        heads = [i for i, line in enumerate(lines) if line.startswith(section)]
        if not heads:
            raise ValueError(f"{report} has no heading starting with {section!r}")
        end = next((i for i in range(heads[0] + 1, len(lines)) if lines[i].startswith(level)), len(lines))
        lines = lines[heads[0] + 1:end]
    kept = [line for line in lines if line.startswith(starts)]
    dropped, width = [], None  # the `without` columns' cell indices in the table under way, and its cell count
    for i, line in enumerate(kept):
        cells = line.split("|")
        names = [c.strip() for c in cells]
        if any(name in names for name in without):  # a header naming one: it decides for the rows of its table
            dropped, width = [names.index(name) for name in without if name in names], len(cells)
        elif len(cells) != width:  # a line of another table
            dropped, width = [], None
        kept[i] = "|".join(c for j, c in enumerate(cells) if j not in dropped)
    return "\n".join(kept)


def hero_figure(panels: dict, scale: float = 3.4, title: str | None = None):
    """The one large figure a notebook leads with: {title: image} side by side, each `scale` inches wide (>= 3 in,
    so that a 64x64 toy image shows its texture), e.g. painting | SDEdit | GradOP+ with realism and distance in
    the titles."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(scale * len(panels), scale + (0.6 if title else 0.35)),
                             squeeze=False)
    for ax, (name, image) in zip(axes[0], panels.items()):
        ax.imshow(to_array(image), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(name, fontsize=11)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


class X0Trajectory:
    """A `callback_on_step_end` that keeps x̂₀, the clean latent the model predicts, after every denoising step:

        trajectory = X0Trajectory()
        pipe.gradop_plus(prompt, painting, callback_on_step_end=trajectory,
                         callback_on_step_end_tensor_inputs=X0Trajectory.tensor_inputs)
        frames = trajectory.images(pipe)   # {timestep: [B, 3, H, W] in [0, 1]}, in the order of the steps

    Methods that start late (SDEdit) record only the steps they run; key frames by timestep to line them up."""

    tensor_inputs = ["pred_original_sample"]

    def __init__(self):
        self.latents: dict[int, torch.Tensor] = {}

    def __call__(self, pipe, step: int, timestep, tensors: dict) -> dict:
        self.latents[int(timestep)] = tensors["pred_original_sample"].detach().float().cpu()
        return tensors

    @torch.no_grad()
    def images(self, pipe) -> dict[int, torch.Tensor]:
        from .noise_schedule import decode_latents

        return {t: ((decode_latents(pipe.vae, z.to(pipe.device, pipe.vae.dtype)).float().cpu() + 1) / 2).clamp(0, 1)
                for t, z in self.latents.items()}
