"""How much evidence of "photo, not painting" a noised latent keeps, split by what the painting function sees.

    python benchmarks/toy_world_evidence.py MODEL_DIR [SCENES]

For held-out scenes, take the photo x and the scribble y of the same scene and split their difference with the
model's painting function f: coarse = f(x - y) (what GradOP's loss sees) and fine = (x - y) - coarse (what it is
blind to). Encode y, y + coarse and y + fine with the model's VAE. Noised to strength s (the SDEdit start
t = timesteps[n - int(n·s)]), a latent difference Δ is worth 0.5·SNR_t·|Δ|² nats to an ideal denoiser that knows
both candidates (SNR_t = ᾱ_t / (1 - ᾱ_t)): an upper bound on what the UNet can use to tell them apart.
"Coherent" keeps only Δ's mean over each region of the label map: the part that does not depend on knowing the
texture's exact pixels, which a denoiser that does not know them can still use.

GradOP+ can beat SDEdit only on what the painting function is blind to (its descent puts in what f sees), so the
domain shift GradOP+ escapes is bounded by the "fine" rows: if they are small at s = 0.5-0.7, no training of the
UNet makes SDEdit there keep a painting look that GradOP+ loses.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from gradop.models import load_pipeline
from gradop.painting import get_painting_function
from gradop.toy.world import make_scene


def region_means(delta: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Δ [C, h, w] replaced by its mean over each region of `labels` (read at the latent's grid)."""
    grid = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=delta.shape[-2:], mode="nearest")[0, 0]
    out = torch.zeros_like(delta)
    for region in grid.unique():
        inside = grid == region
        out[:, inside] = delta[:, inside].mean(1, keepdim=True)
    return out


@torch.no_grad()
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    model, count = argv[0], int(argv[1]) if len(argv) > 1 else 16
    pipe = load_pipeline(model)
    scenes = [make_scene(1_000_000 + i) for i in range(count)]
    as01 = lambda arrays: torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    x, y = as01([s.renders["photo"] for s in scenes]), as01([s.painting for s in scenes])
    f = get_painting_function("gaussian", y, pipe.config.painting_sigma_fraction)
    coarse = f(x - y)
    fine = (x - y) - coarse
    encode = lambda im: pipe.vae.encode(im.clamp(0, 1) * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor  # noqa: E731
    z = encode(y)
    deltas = {"fine": encode(y + fine) - z, "coarse": encode(y + coarse) - z}
    energy = {}
    for part, delta in deltas.items():
        energy[part] = delta.square().sum((1, 2, 3)).mean().item()
        energy[part + " coherent"] = torch.stack([region_means(d, s.labels) for d, s in zip(delta, scenes)]
                                                 ).square().sum((1, 2, 3)).mean().item()
    scheduler = pipe.scheduler
    scheduler.set_timesteps(50)
    rows = {}
    for s in (0.5, 0.6, 0.7, 0.8):
        t = scheduler.timesteps[50 - int(50 * s)]
        ab = float(scheduler.alphas_cumprod[t])
        rows[s] = {part: 0.5 * ab / (1 - ab) * e for part, e in energy.items()}
        print(f"s = {s}  t = {int(t)}  " + "  ".join(f"{k}: {v:.2f} nats" for k, v in rows[s].items()))
    if len(argv) > 2:
        with open(argv[2], "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
