"""What the toy model's distilled painting decoder costs in faithfulness and realism, against the full decoder.

    python benchmarks/painting_decoder_quality.py            # 32 held-out scenes; appends a table to RESULTS.md

GradOP+ at the defaults on held-out toy-world scenes (never seen in training), the same seeds, with the
full VAE decoder (the default, as released) and with the distilled one (the opt-in speed-up,
`load_painting_decoder("toy")`) inside the optimisation.
"""
import argparse
import datetime
import time
from pathlib import Path

import torch

from gradop import load_pipeline
from gradop.models import load_painting_decoder
from gradop.metrics import painting_distance, realism
from gradop.toy.judge import load_judge
from gradop.toy.train import HELD_OUT_SEED, scenes_tensors
from gradop.toy.world import make_scene

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    pipe = load_pipeline("toy", device="cpu", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    judge = load_judge()
    small = load_painting_decoder("toy", device=pipe.device, dtype=pipe.dtype)  # distilled from the toy VAE: opt-in
    scenes = [make_scene(HELD_OUT_SEED + i) for i in range(args.scenes)]
    _, paintings, _, captions = scenes_tensors(scenes)
    rows = {}
    for name, extra in (("full decoder", dict(painting_decoder=pipe.vae)), ("painting decoder", dict(painting_decoder=small)),
                        ("text only (N=0)", dict(grad_steps_per_iter=0))):
        start = time.perf_counter()
        images = pipe.gradop_plus(captions, list(paintings.unbind()), output_type="pt",
                                  generator=[torch.Generator().manual_seed(i) for i in range(len(scenes))], **extra).images
        seconds = (time.perf_counter() - start) / len(scenes)
        distance = painting_distance(images, paintings, sigma_fraction=pipe.config.painting_sigma_fraction)
        rows[name] = (float(distance.mean()), float(realism(images, judge).mean()), seconds)
        print(f"{name:<18} faithfulness {rows[name][0]:.4f}  realism {rows[name][1]:.3f}  {seconds:.2f} s/image", flush=True)
    full = rows["full decoder"][0]
    lines = [f"\n## Guidance decoder quality, toy model — {datetime.date.today().isoformat()}",
             f"GradOP+ defaults (K=3, N=12, strength 0.8) on {args.scenes} held-out scenes (seeds {HELD_OUT_SEED}…), "
             "batched, CPU. Faithfulness = MSE(f(x), f(y)) with the released blur (lower is better); realism = the "
             "toy judge's share of real-looking patches.",
             f"Command: `python benchmarks/painting_decoder_quality.py --scenes {args.scenes}`\n",
             "| optimisation through | faithfulness | vs full decoder | realism | s/image (batched) |", "|---|---:|---:|---:|---:|"]
    for name, (faith, real, seconds) in rows.items():
        lines.append(f"| {name} | {faith:.4f} | {faith / full:.2f}× | {real:.3f} | {seconds:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
