"""The `gradop` command: the released `run.py`'s flags and defaults, plus every knob of the pipeline.

    gradop --img_path input-images/castle.png --prompt "a photo of a castle by a lake" --method gradop+

Several images (`--num-images`) are made `--batch-size` at a time and each is written as soon as its batch
finishes, so an interrupted run keeps the finished ones. Image i is drawn from its own generator seeded with
`--seed` + i: it is the image `--seed <seed + i> --num-images 1` gives, whatever the batch size (up to float
rounding: batched arithmetic rounds differently, a pixel may differ by 1 of 255).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

from .methods import METHODS
from .runs import (cpu_threads_for_the_load, default_prompt, native_size, painting_decoder, painting_size,
                   save_atomically)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradop", description="Scribble-guided image synthesis (GradOP, GradOP+, SDEdit).")
    released = p.add_argument_group("as in the released run.py")
    released.add_argument("--method", choices=list(METHODS), default="gradop+")
    released.add_argument("--img_path", "--img-path", help="the stroke painting (required except for --method text)")
    released.add_argument("--prompt", help="what the image should show (default: the painting's prompt from the "
                                           "manifest.json beside it, when it is listed there)")
    released.add_argument("--seed", type=int, default=0, help="in [0, 2**64); image i of --num-images uses seed + i")
    released.add_argument("--strength", type=float, default=None,
                          help="default: the model's own (GradOP+: the release's 0.8 for Stable Diffusion, 0.5 for "
                               "the toy model; SDEdit and loopback 0.8; GradOP 0.6); printed before the run")
    released.add_argument("--num_iterative_steps", "--num-iterative-steps", type=int, default=None,
                          help="GradOP+'s K (default: the model's own; the release's 3). GradOP: with N, its budget K·N")
    released.add_argument("--grad_steps_per_iter", "--grad-steps-per-iter", type=int, default=None,
                          help="GradOP+'s N (default: the model's own; the release's 12, the toy model's 24)")
    more = p.add_argument_group("gradop's additions")
    more.add_argument("--model", default="auto", help="auto (Stable Diffusion v1.4 if it can be had, else the bundled toy "
                                                      "model), toy, tiny / tiny-xl / tiny-sd3 / tiny-flux (random test "
                                                      "models), a Stable Diffusion 1.x/2.x, SDXL, SD3 or FLUX hub id "
                                                      "or folder")
    more.add_argument("--scheduler", default="ddim", help="ddim (as released), pndm, dpm, euler, euler_a, unipc, ddpm")
    more.add_argument("--steps", type=int, default=50, help="denoising steps")
    more.add_argument("--guidance-scale", type=float, default=None,
                      help="classifier-free guidance weight (default: the model's own: 7.5 for Stable Diffusion "
                           "1.x/2.x as released, SDXL's 5, SD3's 7, FLUX's distilled 3.5)")
    more.add_argument("--negative-prompt", default=None)
    more.add_argument("--num-images", type=int, default=1)
    more.add_argument("--batch-size", type=int, default=4, help="images made at once (memory); each is written as "
                                                                "soon as its batch finishes")
    more.add_argument("--height", type=int, default=None, help="output height (alone: the width keeps the aspect ratio)")
    more.add_argument("--width", type=int, default=None, help="output width (alone: the height keeps the aspect ratio)")
    more.add_argument("--device", default="auto")
    more.add_argument("--dtype", default="auto", help="auto (fp16 on a GPU, fp32 on the CPU), fp32, fp16, bf16")
    more.add_argument("--region", action="append", metavar="COLOUR=PHRASE[:WEIGHT]",
                      help="what a painted colour becomes, e.g. --region '#2a7a2a=forest' --region '#3060c0=lake'; "
                           "the phrase must be in the prompt; a negative WEIGHT keeps the phrase out of the region")
    more.add_argument("--region-weight", type=float, default=0.4, help="strength of the region binding (0.1-1 is usual)")
    more.add_argument("--region-step-fraction", type=float, default=1.0,
                      help="the binding applies during this first fraction of the steps")
    more.add_argument("--num-loops", type=int, default=None, help="--method loopback: SDEdit passes (default 2)")
    more.add_argument("--painting-decoder", "--guidance-decoder", default="model",
                      help="the decoder GradOP's painting loss differentiates through: model (the model's own: the toy's "
                           "VAE decoder cut at 32² with a distilled head; Stable Diffusion's full VAE), full (the VAE, as "
                           "released), toy (distilled from the toy VAE: faster, less realistic), toy-truncated (the toy's "
                           "own, by name), taesd (SD 1), taesdxl (SDXL), taesd3 (SD3), taef1 (FLUX), or a folder "
                           "(--guidance-decoder is its old name)")
    more.add_argument("--output", default=None, help="output PNG path (default: outputs/<painting>_<method>_seed<seed>.png); "
                                                      "several images get _0, _1, ... before the suffix")
    return p


def parse_region_flags(flags) -> dict:
    """['#2a7a2a=forest', '#3060C0=lake:-0.5'] -> {'#2a7a2a': 'forest', '#3060c0': ('lake', -0.5)}."""
    from .colors import parse_color, to_hex

    regions = {}
    for flag in flags or []:
        color, sep, phrase = flag.partition("=")
        if not sep or not color.strip() or not phrase.strip():
            raise ValueError(f"--region must look like '#2a7a2a=forest' (or '#2a7a2a=forest:0.5' with a weight), got {flag!r}")
        color = to_hex(parse_color(color.strip(), "--region"))  # '#3060C0' and '#3060c0' are one colour
        if color in regions:
            raise ValueError(f"--region: colour {color} is listed twice; give each colour one phrase")
        head, colon, tail = phrase.rpartition(":")
        if colon:
            try:
                regions[color] = (head, float(tail))
            except ValueError:
                raise ValueError(f"--region {flag!r}: the weight after ':' must be a number, got {tail!r}") from None
        else:
            regions[color] = phrase
    return regions


def output_paths(args, count: int) -> list[Path]:
    if args.output is not None:
        if not args.output.strip():
            raise ValueError("--output is empty: give a .png path, or leave the flag out for the default "
                             "outputs/<painting>_<method>_seed<seed>.png")
        out = Path(args.output)
        if out.suffix.lower() != ".png":
            raise ValueError(f"--output must end in .png, got '{args.output}'")
    else:
        stem = Path(args.img_path).stem if args.img_path else "text"
        out = Path("outputs") / f"{stem}_{args.method.replace('+', 'plus')}_seed{args.seed}.png"
    paths = [out] if count == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]
    if args.img_path and Path(args.img_path).resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"--output '{args.output}' would overwrite the painting --img_path '{args.img_path}': "
                         "choose another output path")
    return paths


def check_writable(paths: list[Path]) -> list[Path]:
    """Fail before the model loads, not after the generation, when the outputs cannot be written. Returns the
    folders it created, deepest first."""
    for path in paths:
        if path.is_dir():
            raise ValueError(f"--output '{path}' is a directory; give a .png file path")
    folder, fix = paths[0].parent, "choose a .png path in a folder you can write to"
    created = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--output '{paths[0]}': cannot create the folder '{folder}' ({err.strerror}); {fix}") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"--output '{paths[0]}': cannot write in '{folder}' ({err.strerror}); {fix}") from None
    return created


def run(args) -> list[Path]:
    from . import checks
    from .images import load_image
    from .methods import get_method
    from .models import resolve_device, resolve_dtype
    from .pipeline import GradOPPipeline
    from .schedulers import make_scheduler

    method = get_method(args.method)
    if method.takes_painting and not args.img_path:
        raise ValueError(f"--img_path is required for --method {args.method}")
    # Fail fast on bad input, before a model that may take minutes to load: the painting, then the pipeline's checks
    painting = load_image(args.img_path, "--img_path") if args.img_path else None
    prompt = args.prompt or (default_prompt(Path(args.img_path)) if args.img_path else None)
    if prompt is None and not args.img_path:
        raise ValueError(f"--prompt is required for --method {args.method} (without a painting there is no "
                         "manifest to take one from)")
    if prompt is None:
        raise ValueError("--prompt is required (the painting is not listed in a manifest.json beside it)")
    checks.check_count(args.num_images, "--num-images", 1)
    paths = output_paths(args, args.num_images)
    regions = parse_region_flags(args.region)
    if regions and not args.img_path:
        raise ValueError("--region needs --img_path: the painting whose colours the regions name")
    settings = dict(strength=args.strength, num_iterative_steps=args.num_iterative_steps,
                    grad_steps_per_iter=args.grad_steps_per_iter, num_loops=args.num_loops,
                    num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                    negative_prompt=args.negative_prompt, num_images_per_prompt=args.num_images,
                    height=args.height, width=args.width, regions=regions or None, region_weight=args.region_weight,
                    region_step_fraction=args.region_step_fraction)
    flags = {"strength": "--strength", "num_iterative_steps": "--num_iterative_steps",
             "grad_steps_per_iter": "--grad_steps_per_iter", "num_loops": "--num-loops"}
    takes = set(method.uses) | ({"num_iterative_steps", "grad_steps_per_iter"} if method.attribute == "gradop" else set())
    ignored = [flag for key, flag in flags.items() if settings[key] is not None and key not in takes]
    if ignored:
        raise ValueError(f"--method {args.method} does not take {', '.join(ignored)}: leave "
                         f"{'it' if len(ignored) == 1 else 'them'} out, or pick a method that does")
    GradOPPipeline.check_inputs(method.attribute, prompt, **method.arguments(painting, **settings))
    checks.check_count(args.batch_size, "--batch-size", 1)
    if not 0 <= args.seed <= 2**64 - args.num_images:
        raise ValueError(f"--seed must be in [0, 2**64) (image i uses seed + i, so at most 2**64 - --num-images), "
                         f"got {args.seed}")
    resolve_dtype(args.dtype, resolve_device(args.device))
    make_scheduler(args.scheduler)
    created = check_writable(paths)
    try:
        return generate(args, method, settings, painting, prompt, paths)
    finally:  # a run that wrote nothing leaves no empty folder of its own making behind
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def generate(args, method, settings, painting, prompt, paths) -> list[Path]:
    """Load the model and write the images (`run` has checked everything that can be checked without it)."""
    import torch

    from .models import is_toy_model, load_pipeline

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, scheduler=args.scheduler)
    # only for a process of its own: called from Python (tests, notebooks), the choice would outlive the call
    threads = cpu_threads_for_the_load() if pipe.device.type == "cpu" and getattr(args, "own_process", False) else None
    if threads:
        print(f"gradop: {threads}", file=sys.stderr)
    settings["height"], settings["width"] = painting_size(pipe, painting, args.height, args.width)
    if painting is not None and args.height is None and args.width is None and settings["height"] is not None:
        native = native_size(pipe)
        print(f"gradop: the {'toy' if is_toy_model(pipe) else 'tiny test'} model works at {native}x{native}; painting "
              f"{painting.width}x{painting.height} is used at {settings['width']}x{settings['height']} "
              "(pass --height/--width to choose)", file=sys.stderr)
    if "painting_decoder" in method.uses:
        settings["painting_decoder"] = painting_decoder(pipe, args.painting_decoder)
    print(f"gradop: {method.describe_settings(pipe, **settings)}", file=sys.stderr)
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        # one generator per image, seeded seed + i: image i does not depend on the batch size
        generators = [torch.Generator("cpu").manual_seed(args.seed + i) for i in range(start, start + len(chunk))]
        out = method(pipe, prompt, painting, generator=generators, **{**settings, "num_images_per_prompt": len(chunk)})
        for image, path in zip(out.images, chunk):
            save_atomically(image, path)  # written as soon as its batch is done: a killed run keeps it
            _tell(f"wrote {path}")
    return paths


def _tell(line: str) -> None:
    """Print a result line on stdout. A reader that went away (`gradop ... | head -1`) must not stop the run: the
    images are the result; the rest of the lines (and the exit's flush) go to /dev/null."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning as one short line, without the source line Python prints under it."""
    text = " ".join(str(message).split())
    print(f"gradop: warning: {text if len(text) <= 300 else text[:297] + '...'}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.own_process = argv is None  # the `gradop` command, not a call from Python
    from .models import ModelUnavailableError

    try:
        with warnings.catch_warnings():  # restores warnings.showwarning for callers of main()
            warnings.showwarning = _show_warning
            run(args)
    # the user's to fix (a bad flag, a model that cannot load), and a non-finite image
    except (ValueError, TypeError, ModelUnavailableError, FloatingPointError) as err:
        print(f"gradop: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk filled up, the folder went away: the images written before are kept
        print(f"gradop: error: {err}; the images written before it are kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the images written so far are whole; the one being written is removed
        print("gradop: interrupted", file=sys.stderr)
        return 130
    return 0
