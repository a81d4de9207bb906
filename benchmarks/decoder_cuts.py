"""What one step of GradOP+'s descent costs through each candidate painting decoder at Stable Diffusion's
architecture (random weights: cost only, no gradient agreement), and what that makes of GradOP+'s time.

    python benchmarks/decoder_cuts.py --size 256 --text-only 33.1 --steps 12   # sd-arch --quick's descent

One step is ∇_z mean((f(D(z)) − y)²): a decoder forward and its backward to the latent (weights frozen), f the
painting blur (σ = 7 px at 512², scaled). The blur keeps nothing a 64² image cannot hold at σ ≥ 3.5 px, so the
candidates stop at a lower resolution and upsample bilinearly:

* the full VAE decoder (as released) and `TruncatedDecoder.from_vae(vae, 1)` (the toy's own design: its trunk is
  the VAE's 512-channel layers, costly at any resolution);
* TAESD's architecture (`AutoencoderTiny`, the baseline) whole, and cut before its last one or two upsamplings
  with a head to RGB (`TruncatedTinyDecoder`, its head untrained: a design's cost, not a painting decoder to use).

With `--text-only T` (seconds of text-only sampling, from benchmarks/run.py) it prints the GradOP+ / text-only
ratio each implies: (T + steps · step) / T, GradOP+'s only excess over text-only being its descent.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from run import sd_arch_vae  # noqa: E402

from gradop.painting import RELEASED_SIGMA_FRACTION, GaussianBlur  # noqa: E402
from gradop.truncated_decoder import TruncatedDecoder, TruncatedTinyDecoder  # noqa: E402


def step_ms(decode, latent_side: int, blur, target, repeats: int) -> float:
    """Median milliseconds of one forward+backward to the latent, after a warm-up."""
    times = []
    for run in range(repeats + 1):
        z = torch.randn(1, 4, latent_side, latent_side, requires_grad=True)
        start = time.perf_counter()
        (blur(decode(z)) - target).square().mean().backward()
        if run:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side (a multiple of 64)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=12, help="descent steps per image, K·N (sd-arch --quick: 3 × 4)")
    p.add_argument("--text-only", type=float, default=None, help="seconds of text-only sampling, for the ratios")
    args = p.parse_args(argv)
    if args.size < 64 or args.size % 64:
        p.error(f"--size must be a positive multiple of 64, got {args.size}")
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae, tiny = sd_arch_vae().eval().requires_grad_(False), AutoencoderTiny().eval().requires_grad_(False)
    truncated = TruncatedDecoder.from_vae(vae, 1).eval().requires_grad_(False)
    halved, quartered = (TruncatedTinyDecoder.from_tiny(tiny, n).eval().requires_grad_(False) for n in (1, 2))
    candidates = {"TAESD's architecture": lambda z: tiny.decoder(z),  # first: the baseline of the ratios
                  f"TAESD cut at {args.size // 2}²": lambda z: halved.decode(z).sample,
                  f"TAESD cut at {args.size // 4}²": lambda z: quartered.decode(z).sample,
                  "full VAE decoder": lambda z: vae.decode(z).sample,
                  "TruncatedDecoder.from_vae(vae, 1)": lambda z: truncated.decode(z).sample}
    blur = GaussianBlur.for_size(args.size, args.size, RELEASED_SIGMA_FRACTION)
    target = torch.rand(1, 3, args.size, args.size)
    print(f"{args.size}², {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"| painting decoder | ms per descent step | × TAESD's | {args.steps} steps (s) |"
          + (" GradOP+ × text-only |" if args.text_only else ""))
    print("|---|---:|---:|---:|" + ("---:|" if args.text_only else ""))
    baseline = None
    for name, decode in candidates.items():
        ms = step_ms(decode, args.size // 8, blur, target, args.repeats)
        baseline = baseline or ms
        seconds = args.steps * ms / 1000
        ratio = f" {(args.text_only + seconds) / args.text_only:.2f} |" if args.text_only else ""
        print(f"| {name} | {ms:.0f} | {ms / baseline:.2f} | {seconds:.2f} |{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
