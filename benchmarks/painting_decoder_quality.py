"""What a painting decoder costs GradOP+ on the toy model, against the full decoder: realism, faithfulness, time,
and how well its gradient agrees with the full decoder's.

    python benchmarks/painting_decoder_quality.py                       # the model's own and the small one, 64 scenes
    python benchmarks/painting_decoder_quality.py --decoder DIR ...     # also candidates (load_painting_decoder folders)
    python benchmarks/painting_decoder_quality.py --descent 24 12@0.2 8@0.3 --only-full   # fewer, larger steps
                                                               # (--only-full: without the small one)

GradOP+ at the model's declared strength and K, at each descent of `--descent` (N gradient steps per window, at
Adam's learning rate, 0.1 as released, or the one after "@"), on the report's held-out scenes
(seeds `HELD_OUT_SEED`..., never seen in training), the same generators for every decoder; batched, CPU. Each
figure: the mean and its 95 % bootstrap interval over the scenes. A decoder "keeps" the full decoder's quality at
an N when its realism and distance intervals overlap the full decoder's.

Gradient agreement: along the full decoder's own GradOP+ trajectories (every latent its descent visits, at the
largest N), the cosine between each decoder's latent gradient of the painting loss and the full decoder's,
g(D) = ∇_z mean((f(D(z)) − y)²), per image; mean and interval.
"""
import argparse
import datetime
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gradop.optimize as optimize
from gradop import load_pipeline
from gradop.metrics import painting_distance, realism
from gradop.models import load_painting_decoder
from gradop.painting import get_painting_function
from gradop.toy.evaluate import bootstrap, fmt
from gradop.toy.judge import load_judge
from gradop.toy.train import HELD_OUT_SEED, scenes_tensors
from gradop.toy.world import make_scene

HERE = Path(__file__).resolve().parent


def descent(text: str) -> tuple[int, float]:
    """ "N" or "N@lr" -> (N, Adam's learning rate; 0.1 as released)."""
    steps, at, lr = text.partition("@")
    try:
        steps, lr = int(steps), float(lr if at else 0.1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a descent is N or N@lr (e.g. 24 or 12@0.2), got {text!r}") from None
    if steps < 0 or not lr > 0:
        raise argparse.ArgumentTypeError(f"a descent needs N >= 0 and a learning rate > 0, got {text!r}")
    return steps, lr


def visited_latents(pipe, captions, paintings, generators, grad_steps: int, lr: float) -> list[torch.Tensor]:
    """Every latent the full decoder's descent visits in a GradOP+ run (`decode_for_loss`'s inputs)."""
    seen = []
    original = optimize.decode_for_loss

    def recording(decoder, latents):
        seen.append(latents.detach().clone())
        return original(decoder, latents)

    optimize.decode_for_loss = recording
    try:
        pipe.gradop_plus(captions, paintings, grad_steps_per_iter=grad_steps, lr=lr, painting_decoder=pipe.vae,
                         output_type="pt", generator=generators)
    finally:
        optimize.decode_for_loss = original
    return seen


def painting_gradient(decoder, latents, target, painting_function) -> torch.Tensor:
    """g(D) = ∇_z mean((f(D(z)) − y)²) per image, as GradOP+'s descent takes it (the same decode and loss)."""
    z = latents.detach().requires_grad_(True)
    with torch.enable_grad(), optimize.frozen(decoder):
        loss = (painting_function(optimize.decode_for_loss(decoder, z)) - target).square().flatten(1).mean(1).sum()
        (gradient,) = torch.autograd.grad(loss, z)
    return gradient


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=64)
    p.add_argument("--descent", type=descent, nargs="+", default=[(6, 0.1), (12, 0.1), (24, 0.1)],
                   help="N or N@lr: gradient steps per window, at Adam's learning rate (0.1 as released)")
    p.add_argument("--decoder", type=Path, nargs="*", default=[], help="candidate painting decoders (folders)")
    p.add_argument("--only-full", action="store_true", help="leave the bundled small decoder out (the full one, the model's own and any --decoder remain)")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    pipe = load_pipeline("toy", device="cpu", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    judge = load_judge()
    decoders = {"full decoder": pipe.vae}
    if pipe.painting_decoder is not None:  # the toy's own (its VAE's decoder cut at 32²), its default
        decoders["painting decoder (the model's own)"] = pipe.painting_decoder
    if not args.only_full:
        decoders["painting decoder (bundled small)"] = load_painting_decoder("toy")
    decoders |= {f"painting decoder ({path.name})": load_painting_decoder(str(path)) for path in args.decoder}
    scenes = [make_scene(HELD_OUT_SEED + i) for i in range(args.scenes)]
    _, paintings, _, captions = scenes_tensors(scenes)
    paintings = list(paintings.unbind())
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(len(scenes))]  # noqa: E731
    sigma = pipe.config.painting_sigma_fraction
    rows = {}
    for grad_steps, lr in args.descent:
        for name, decoder in decoders.items():
            start = time.perf_counter()
            images = pipe.gradop_plus(captions, paintings, grad_steps_per_iter=grad_steps, lr=lr,
                                      painting_decoder=decoder, output_type="pt", generator=generators()).images
            seconds = (time.perf_counter() - start) / len(scenes)
            rows[grad_steps, lr, name] = (bootstrap(realism(images, judge).numpy()),
                                      bootstrap(painting_distance(images, paintings, sigma_fraction=sigma).numpy()),
                                      seconds)
            real, distance, _ = rows[grad_steps, lr, name]
            print(f"N={grad_steps:<3} lr={lr:<5g} {name:<34} realism {fmt(real)}  distance {fmt(distance, 4)}  "
                  f"{seconds:.2f} s/image", flush=True)

    # gradient agreement along the full decoder's trajectories at the largest N
    target = torch.stack(paintings)
    painting_function = get_painting_function("gaussian", target, sigma)
    longest = max(args.descent)
    visited = visited_latents(pipe, captions, paintings, generators(), *longest) if len(decoders) > 1 else []
    cosines = {name: [] for name in decoders if name != "full decoder"}
    for latents in visited:
        full = painting_gradient(pipe.vae, latents, target, painting_function).flatten(1)
        for name in cosines:
            given = painting_gradient(decoders[name], latents, target, painting_function).flatten(1)
            cosines[name].append(F.cosine_similarity(given, full))
    agreement = {name: bootstrap(torch.stack(values).mean(0).numpy()) for name, values in cosines.items()}
    for name, stat in agreement.items():
        print(f"gradient cosine with the full decoder, {name}: {fmt(stat)}", flush=True)

    plus = pipe.config.method_defaults["gradop_plus"]
    lines = [f"\n## Painting decoders on the toy model — {datetime.date.today().isoformat()}",
             f"GradOP+ at the model's strength {plus['strength']} and K = {plus['num_iterative_steps']}, N and Adam's "
             "learning rate as listed, "
             f"on {args.scenes} held-out scenes (seeds {HELD_OUT_SEED}…), batched, CPU; mean [95 % bootstrap "
             "interval] over the scenes. Distance = MSE(f(x), f(y)); realism = the toy judge's photo share.",
             "Command: `python benchmarks/painting_decoder_quality.py "
             + " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in (("scenes", args.scenes),
                                     ("descent", [f"{n}@{lr:g}" if lr != 0.1 else str(n) for n, lr in args.descent]),
                                     ("decoder", [str(d) for d in args.decoder])) if v != [])
             + (" --only-full" if args.only_full else "") + "`\n",
             "| N | lr | loss through | realism | distance | s/image (batched) |", "|---:|---:|---|---:|---:|---:|"]
    for (grad_steps, lr, name), (real, distance, seconds) in rows.items():
        lines.append(f"| {grad_steps} | {lr:g} | {name} | {fmt(real)} | {fmt(distance, 4)} | {seconds:.2f} |")
    if agreement:
        lines += ["", f"Gradient cosine with the full decoder along its GradOP+ trajectories (N = {longest[0]}, lr "
                  f"{longest[1]:g}, {len(visited)} latents a scene): "
                  + "; ".join(f"{name} {fmt(stat)}" for name, stat in agreement.items())]
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
