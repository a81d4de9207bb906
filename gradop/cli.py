"""The `gradop` command: the released `run.py`'s flags and defaults, plus every knob of the pipeline.

    gradop --img_path input-images/castle.png --prompt "a photo of a castle by a lake" --method gradop+
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

METHODS = ("gradop+", "gradop", "sdedit", "text")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradop", description="Scribble-guided image synthesis (GradOP, GradOP+, SDEdit).")
    released = p.add_argument_group("as in the released run.py")
    released.add_argument("--method", choices=METHODS, default="gradop+")
    released.add_argument("--img_path", help="the stroke painting (required except for --method text)")
    released.add_argument("--prompt", help="what the image should show (default: the painting's prompt from "
                                           "input-images/manifest.json when it is listed there)")
    released.add_argument("--seed", type=int, default=0)
    released.add_argument("--strength", type=float, default=0.8)
    released.add_argument("--num_iterative_steps", type=int, default=3)
    released.add_argument("--grad_steps_per_iter", type=int, default=12)
    more = p.add_argument_group("gradop's additions")
    more.add_argument("--model", default="auto", help="auto (Stable Diffusion v1.4 if it can be had, else the bundled toy "
                                                      "model), toy, tiny (random test model), a hub id or a folder")
    more.add_argument("--scheduler", default="ddim", help="ddim (as released), pndm, dpm, euler, euler_a, unipc, ddpm")
    more.add_argument("--steps", type=int, default=50, help="denoising steps")
    more.add_argument("--guidance-scale", type=float, default=7.5)
    more.add_argument("--negative-prompt", default=None)
    more.add_argument("--num-images", type=int, default=1)
    more.add_argument("--height", type=int, default=None)
    more.add_argument("--width", type=int, default=None)
    more.add_argument("--device", default="auto")
    more.add_argument("--dtype", default="auto", help="auto (fp16 on a GPU, fp32 on the CPU), fp32, fp16, bf16")
    more.add_argument("--region", action="append", metavar="COLOUR=PHRASE[:WEIGHT]",
                      help="what a painted colour becomes, e.g. --region '#2a7a2a=forest' --region '#3060c0=lake'; "
                           "the phrase must be in the prompt; a negative WEIGHT keeps the phrase out of the region")
    more.add_argument("--region-weight", type=float, default=0.4, help="strength of the region binding (0.1-1 is usual)")
    more.add_argument("--region-step-fraction", type=float, default=1.0,
                      help="the binding applies during this first fraction of the steps")
    more.add_argument("--guidance-decoder", default="model",
                      help="the decoder GradOP's optimisation differentiates through: model (the model's own: the toy's "
                           "distilled one, Stable Diffusion's full VAE), full (the VAE, as released), taesd, or a folder")
    more.add_argument("--output", default=None, help="output PNG path (default: outputs/<painting>_<method>_seed<seed>.png); "
                                                      "several images get _0, _1, ... before the suffix")
    return p


def default_prompt(img_path: Path) -> str | None:
    """The prompt the manifest beside a painting gives for it, if any."""
    import json

    manifest = img_path.parent / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
        return entries.get(img_path.name, {}).get("prompt")
    return None


def parse_region_flags(flags) -> dict:
    """['#2a7a2a=forest', '#3060c0=lake:-0.5'] -> {'#2a7a2a': 'forest', '#3060c0': ('lake', -0.5)}."""
    regions = {}
    for flag in flags or []:
        color, sep, phrase = flag.partition("=")
        if not sep or not color.strip() or not phrase.strip():
            raise ValueError(f"--region must look like '#2a7a2a=forest' (or '#2a7a2a=forest:0.5' with a weight), got {flag!r}")
        head, colon, tail = phrase.rpartition(":")
        if colon:
            try:
                regions[color.strip()] = (head, float(tail))
            except ValueError:
                raise ValueError(f"--region {flag!r}: the weight after ':' must be a number, got {tail!r}") from None
        else:
            regions[color.strip()] = phrase
    return regions


def output_paths(args, count: int) -> list[Path]:
    if args.output:
        out = Path(args.output)
        if out.suffix.lower() != ".png":
            raise ValueError(f"--output must end in .png, got '{args.output}'")
    else:
        stem = Path(args.img_path).stem if args.img_path else "text"
        out = Path("outputs") / f"{stem}_{args.method.replace('+', 'plus')}_seed{args.seed}.png"
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def toy_size(pipe, args) -> tuple[int | None, int | None]:
    """The toy model works at 64x64: a larger painting is worked at that scale (said), others at their own size."""
    from .images import load_image, scaled_size

    if not getattr(pipe, "model_name", "").startswith("toy") or not args.img_path:
        return None, None
    native, factor = pipe.unet.config.sample_size * pipe.vae_scale_factor, pipe.vae_scale_factor
    w, h = load_image(args.img_path, "--img_path").size
    if max(w, h) <= native:
        return None, None
    height, width = scaled_size(w, h, native, factor)
    print(f"gradop: the toy model works at {native}x{native}; painting {w}x{h} is used at {width}x{height} "
          "(pass --height/--width to choose)", file=sys.stderr)
    return height, width


def guidance_decoder(pipe, choice: str) -> dict:
    """--guidance-decoder as the pipeline's keyword: {} keeps the model's own choice."""
    from .models import load_guidance_decoder

    if choice == "model":
        return {}
    if choice == "full":
        return {"guidance_decoder": pipe.vae}
    return {"guidance_decoder": load_guidance_decoder(choice, device=pipe.device, dtype=pipe.dtype)}


def save_atomically(image, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args) -> list[Path]:
    from . import checks
    from .images import load_image
    from .models import load_pipeline, resolve_device, resolve_dtype
    from .regions import parse_regions
    from .schedulers import make_scheduler

    if args.method != "text" and not args.img_path:
        raise ValueError(f"--img_path is required for --method {args.method}")
    prompt = args.prompt or (default_prompt(Path(args.img_path)) if args.img_path else None)
    if prompt is None:
        raise ValueError("--prompt is required (the painting is not listed in a manifest.json beside it)")
    paths = output_paths(args, args.num_images)
    # Fail fast on bad input, before a model that may take minutes to load
    if args.img_path:
        load_image(args.img_path, "--img_path")
    checks.check_fraction(args.strength, "strength")
    checks.check_count(args.steps, "num_inference_steps", 1)
    checks.check_count(args.num_images, "num_images_per_prompt", 1)
    checks.check_count(args.num_iterative_steps, "num_iterative_steps")
    checks.check_count(args.grad_steps_per_iter, "grad_steps_per_iter")
    checks.check_guidance(args.guidance_scale)
    regions = parse_region_flags(args.region)
    parse_regions(regions)
    checks.check_finite(args.region_weight, "--region-weight")
    checks.check_fraction(args.region_step_fraction, "--region-step-fraction")
    if regions and not args.img_path:
        raise ValueError("--region needs --img_path: the painting whose colours the regions name")
    resolve_dtype(args.dtype, resolve_device(args.device))
    make_scheduler(args.scheduler)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, scheduler=args.scheduler)
    guidance = guidance_decoder(pipe, args.guidance_decoder) if args.method in ("gradop+", "gradop") else {}
    generator = torch.Generator("cpu").manual_seed(args.seed)
    height, width = toy_size(pipe, args) if args.height is None and args.width is None else (args.height, args.width)
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt,
                  num_images_per_prompt=args.num_images, height=height, width=width, generator=generator,
                  regions=regions or None, region_weight=args.region_weight,
                  region_step_fraction=args.region_step_fraction)
    if args.method == "gradop+":
        out = pipe.gradop_plus(prompt, args.img_path, args.strength, args.num_iterative_steps, args.grad_steps_per_iter,
                               **common, **guidance)
    elif args.method == "gradop":
        out = pipe.gradop(prompt, args.img_path, args.strength, args.grad_steps_per_iter * max(args.num_iterative_steps, 1),
                          **common, **guidance)
    elif args.method == "sdedit":
        out = pipe.sdedit(prompt, args.img_path, args.strength, **common)
    else:
        out = pipe.text2img(prompt, region_image=args.img_path if regions else None, **common)
    for image, path in zip(out.images, paths):
        save_atomically(image, path)
        print(f"wrote {path}")
    return paths


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .models import ModelUnavailableError

    try:
        run(args)
    except (ValueError, TypeError) as err:
        print(f"gradop: error: {err}", file=sys.stderr)
        return 2
    except ModelUnavailableError as err:
        print(f"gradop: {err}", file=sys.stderr)
        return 3
    return 0
