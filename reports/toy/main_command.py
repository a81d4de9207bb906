"""The README's first picture: what its main command makes, beside the painting and a text-only sample.

    python reports/toy/main_command.py        # writes reports/toy/main_command.png

Runs the command exactly as the README gives it (`gradop --img_path input-images/toy/lake_mountains.png`, the
toy model's declared GradOP+ defaults) in a temporary folder, then measures its output with the toy judge.
"""
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import PIL.Image
import torch

from gradop.metrics import painting_distance, realism, regions_kept
from gradop.models import load_pipeline
from gradop.notebook import hero_figure, load_examples, load_toy_judge, to_batch

ROOT = Path(__file__).resolve().parents[2]
PAINTING = ROOT / "input-images" / "toy" / "lake_mountains.png"
PROMPT = next(e.prompt for e in load_examples(PAINTING.parent) if e.name == PAINTING.stem)  # its manifest's, as the command reads it

with tempfile.TemporaryDirectory() as work:
    subprocess.run(["gradop", "--img_path", str(PAINTING)], cwd=work, check=True)
    made = PIL.Image.open(next(Path(work, "outputs").glob("*.png"))).convert("RGB")
pipe, judge = load_pipeline("toy", verbose=False), load_toy_judge()
text_only = pipe.text2img(PROMPT, generator=torch.Generator().manual_seed(0), output_type="pt").images
sigma = pipe.config.painting_sigma_fraction
painting = PIL.Image.open(PAINTING).convert("RGB")


def numbers(image):
    x = to_batch([image])
    kept = regions_kept(x, painting, sigma_fraction=sigma)[0]
    return (f"realism {realism(x, judge).item():.2f}, distance {painting_distance(x, painting, sigma_fraction=sigma).item():.4f}"
            f"\n{int(kept.sum())} of {len(kept)} painted regions kept")


fig = hero_figure({"painting\n" + textwrap.fill(f"“{PROMPT}”", 40): painting,
                   f"gradop --img_path …/lake_mountains.png\n{numbers(made)}": made,
                   f"text only, same prompt, seed 0\n{numbers(text_only[0])}": text_only[0]}, scale=3.4)
for ax in fig.axes:
    ax.title.set_fontsize(9)
fig.savefig(ROOT / "reports" / "toy" / "main_command.png", dpi=80, bbox_inches="tight")
print("wrote reports/toy/main_command.png:", numbers(made).replace("\n", ", "), "| text only:",
      numbers(text_only[0]).replace("\n", ", "), file=sys.stderr)
