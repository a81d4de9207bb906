"""Time and memory of each method, and of each GradOP+ optimisation on its own, in one process.

    python benchmarks/run.py --config toy                              # the toy model, 64², 50 steps (CPU)
    python benchmarks/run.py --config sd-arch --quick                  # SD v1's architecture, random weights, 256² (CPU)
    python benchmarks/run.py --config sd-arch --device cuda            # 512², 50 steps, fp16 (GPU)
    python benchmarks/run.py --config sd-arch --device cuda --batches 1 4 8   # images per second
    python benchmarks/run.py --config sd-arch --decoder-memory --size 1024    # one decoder step: plain/checkpointed/tiled

Every variant runs on the same prompt, painting and seed: a warm-up (see `measure`), then `--repeats` rounds over
all variants (interleaved, so that drifting machine speed hits every row alike), and the median. Peak memory is
`torch.cuda.max_memory_allocated` on a GPU; on a CPU, the peak resident memory above the start of the call,
sampled every 2 ms in a child process (see `cpu_peaks`). Ratios are to `text2img` in the same run. The table
is printed and appended, with device, versions, date and command, to benchmarks/RESULTS.md.

"released" is GradOP+ as the authors run it: fp32, the full decoder with its weights accumulating gradients,
and attention without a fused kernel (torch 1.x had none). "gradop default" is GradOP+ as this package runs
it by default (through the full decoder, frozen). The rows "+ X" are the released
configuration with optimisation X alone. "painting decoder" is a small surrogate decoder used only inside
the optimisation: the distilled one bundled with the toy model, or TAESD's architecture for sd-arch.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
PROMPT = "a photo of a lake near a meadow and snowy mountains"


# ---------------------------------------------------------------------- models
def sd_arch_pipeline():
    """Stable Diffusion v1's exact architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from gradop import GradOPPipeline, released_ddim_scheduler
    from gradop.testing import tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, hidden_act="quick_gelu"))
    for model in (unet, vae, text_encoder):
        model.eval()
    return GradOPPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=released_ddim_scheduler())


def load(config: str, device: str):
    from gradop import load_pipeline

    pipe = load_pipeline("toy", device="cpu", verbose=False) if config == "toy" else sd_arch_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def painting(size: int):
    from gradop.notebook import INPUT_IMAGES, load_examples

    return next(e for e in load_examples(INPUT_IMAGES / "toy", size) if e.name == "lake_mountains").painting


# ---------------------------------------------------------------------- configurations
_COMPILED = {}  # module -> its torch.compile wrapper, kept so that repeated configurations reuse the compiled code


@contextlib.contextmanager
def configured(pipe, dtype=torch.float32, sdpa=True, channels_last=False, checkpointing=False, tile=None,
               compile_models=False):
    """Put `pipe` in one configuration for the duration, then restore it. `tile`: latent tile size for tiled
    decoding (diffusers' `enable_tiling` with that size); `compile_models`: torch.compile the UNet and decoder."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    saved_unet = pipe.unet
    saved_tiles = pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size
    saved_processors = [(model, dict(model.attn_processors)) for model in (pipe.unet, pipe.vae)]
    if pipe.dtype != dtype:
        pipe.to(dtype=dtype)
    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if checkpointing:
        pipe.vae.enable_gradient_checkpointing()
    if tile:
        pipe.vae.enable_tiling()
        pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = tile, tile * pipe.vae_scale_factor
    decoder = pipe.vae.decoder
    saved_blocks = decoder.mid_block, list(decoder.up_blocks)
    if compile_models:
        pipe.unet = _COMPILED.setdefault(pipe.unet, torch.compile(pipe.unet))
        # The decoder block by block: compiled whole, diffusers' `Decoder` gives its input a zero gradient
        # (torch 2.13, CPU; tests/test_performance.py checks the blocks' gradient)
        decoder.mid_block = _COMPILED.setdefault(decoder.mid_block, torch.compile(decoder.mid_block))
        for i, block in enumerate(saved_blocks[1]):
            decoder.up_blocks[i] = _COMPILED.setdefault(block, torch.compile(block))
    try:
        yield pipe
    finally:
        pipe.unet = saved_unet
        decoder.mid_block = saved_blocks[0]
        for i, block in enumerate(saved_blocks[1]):
            decoder.up_blocks[i] = block
        for model, processors in saved_processors:
            model.set_attn_processor(processors)
            model.to(memory_format=torch.contiguous_format)
        if checkpointing:
            pipe.vae.disable_gradient_checkpointing()
        pipe.vae.disable_tiling()
        pipe.vae.tile_latent_min_size, pipe.vae.tile_sample_min_size = saved_tiles
        if pipe.dtype != torch.float32:
            pipe.to(dtype=torch.float32)


def variants(fast_dtype, pipe, tile: int, with_compile: bool):
    """name -> (method, configuration, painting decoder). The "+ X" rows change one thing from "released".
    painting decoder: "full" (the VAE, as released), "model" (the pipeline's default) or "surrogate"."""
    released = dict(freeze_decoder=False, sdpa=False)
    default = dict(dtype=fast_dtype, freeze_decoder=True, sdpa=True)
    rows = {
        "text2img": ("text2img", default, None),
        "sdedit 0.8": ("sdedit", default, None),
        "gradop+ released": ("gradop_plus", released, "full"),
        "gradop+ (gradop default)": ("gradop_plus", default, "model"),
    }
    rows["gradop default + painting decoder"] = ("gradop_plus", default, "surrogate")
    rows |= {
        "+ frozen decoder": ("gradop_plus", released | dict(freeze_decoder=True), "full"),
        "+ SDPA attention": ("gradop_plus", released | dict(sdpa=True), "full"),
        "+ channels-last": ("gradop_plus", released | dict(channels_last=True), "full"),
        "+ decoder checkpointing": ("gradop_plus", released | dict(checkpointing=True), "full"),
        f"+ tiled decoding ({tile}-latent tiles)": ("gradop_plus", released | dict(tile=tile), "full"),
        "+ painting decoder": ("gradop_plus", released, "surrogate"),
    }
    if fast_dtype != torch.float32:
        rows[f"+ {str(fast_dtype).split('.')[1]}"] = ("gradop_plus", released | dict(dtype=fast_dtype), "full")
    if with_compile:
        rows["+ torch.compile"] = ("gradop_plus", released | dict(compile_models=True), "full")
        rows["gradop default + torch.compile"] = ("gradop_plus", default | dict(compile_models=True), "model")
    return rows


# ---------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory of a block: CUDA's allocator counter, or on a CPU the sampled peak RSS above the start."""

    def __init__(self, device: torch.device, sample: bool = True):
        # sample=False: no sampling thread (its GIL wake-ups every 2 ms slow Python-heavy code; timing runs on
        # a CPU leave memory to `cpu_peaks`)
        self.device, self.sample, self.peak_mb = device, sample, 0.0

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._start, self._peak, self._running = self.rss_mb(), 0.0, True
        self._thread = threading.Thread(target=self._sample, daemon=True) if self.sample else None
        if self._thread:
            self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self._peak = max(self._peak, self.rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._running = False
            if self._thread:
                self._thread.join()
            self.peak_mb = max(self._peak, self.rss_mb()) - self._start


def surrogate_decoder(config: str, pipe):
    """The small decoder GradOP+ can differentiate through: the bundled distilled one for the toy model,
    TAESD's architecture (random weights, same cost) for sd-arch."""
    from diffusers import AutoencoderTiny

    if config == "toy":
        from gradop.models import load_painting_decoder

        return load_painting_decoder("toy", device=pipe.device)  # distilled from the toy VAE
    torch.manual_seed(0)
    return AutoencoderTiny().to(pipe.device).eval()  # TAESD's default configuration


def run_once(pipe, row, args, target, surrogate, batch: int):
    """One timed call of a row (configured, on the same seed): (seconds, peak MB, images)."""
    from gradop.methods import get_method

    method, config, decoder = row
    config = dict(config)
    settings = dict(strength=0.8, num_iterative_steps=3, grad_steps_per_iter=args.grad_steps,
                    num_inference_steps=args.steps, generator=torch.Generator("cpu").manual_seed(0),
                    height=args.size, width=args.size, num_images_per_prompt=batch, output_type="pt")
    if method == "gradop_plus":
        settings["freeze_decoder"] = config.pop("freeze_decoder", True)
    else:
        config.pop("freeze_decoder", None)
    with configured(pipe, **config):
        if decoder == "full":
            settings["painting_decoder"] = pipe.vae
        elif decoder == "surrogate":
            if surrogate.dtype != pipe.dtype:
                surrogate.to(dtype=pipe.dtype)  # the surrogate runs in the models' dtype
            settings["painting_decoder"] = surrogate
        call = partial(get_method(method), pipe, PROMPT, target, **settings)
        seconds, peak, output = timed_call(call, pipe.device, sample=args.peaks_only)
    return seconds, peak, output.images.float().cpu()


def timed_call(call, device: torch.device, sample: bool):
    """(seconds, peak MB, call()) of one call, a GPU synchronised before the clock stops."""
    with PeakMemory(device, sample) as memory:
        start = time.perf_counter()
        result = call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mb, result


def measure(pipe, rows, args, target, surrogate, batch: int | None = None):
    """name -> (median seconds, peak MB, images). A warm-up round, then `repeats` rounds over all rows:
    interleaved, so a machine whose speed drifts during the run slows every row alike and ratios stay fair.
    On a GPU every row warms up (kernel choice per dtype and layout); on a CPU the first row's call warms the
    shared caches, and only torch.compile rows (whose first call compiles) need their own."""
    timings = {name: [] for name in rows}
    peaks = {name: [] for name in rows}
    images = {}
    for round_ in tqdm(range(args.repeats + 1), desc=f"rounds (batch {batch or args.batch})", leave=False):
        for i, (name, row) in enumerate(rows.items()):
            if not round_ and i and pipe.device.type == "cpu" and not row[1].get("compile_models"):
                continue
            seconds, peak, images[name] = run_once(pipe, row, args, target, surrogate, batch or args.batch)
            if round_:  # round 0 is the warm-up (and torch.compile's compilation)
                timings[name].append(seconds)
                peaks[name].append(peak)
    return {name: (statistics.median(timings[name]), max(peaks[name]), images[name]) for name in rows}


def cpu_peaks(argv) -> dict:
    """name -> peak MB, measured in a child process with glibc's mmap threshold fixed, so that freed blocks go
    back to the system and the peak resident memory above the start is each call's own. (Timings are taken
    without it: fixed, it makes every large allocation a fresh mapping, 2x slower here.)"""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--peaks-only", "--no-append"]
    done = subprocess.run(command, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peaks_only(pipe, rows, args, target, surrogate) -> dict:
    """The child of `cpu_peaks`: one call per row, each its own peak (after one call that allocates what is
    allocated once)."""
    run_once(pipe, next(iter(rows.values())), args, target, surrogate, args.batch)
    return {name: run_once(pipe, row, args, target, surrogate, args.batch)[1] for name, row in rows.items()}


def decoder_memory(pipe, args, dtype) -> dict:
    """Forward + backward through the full decoder alone at `--size` (what one gradient step costs):
    frozen weights; + gradient checkpointing; + tiled decoding. name -> (median seconds, peak MB)."""
    from gradop.optimize import decode_for_loss, frozen

    latents = torch.randn(1, pipe.vae.config.latent_channels, args.size // pipe.vae_scale_factor,
                          args.size // pipe.vae_scale_factor, generator=torch.Generator().manual_seed(0))
    latents = latents.to(pipe.device, dtype)
    results = {}
    for name, config in {"frozen decoder": {}, "+ decoder checkpointing": dict(checkpointing=True),
                         f"+ tiled decoding ({args.tile}-latent tiles)": dict(tile=args.tile)}.items():
        def step():
            decode_for_loss(pipe.vae, latents.clone().requires_grad_(True)).square().mean().backward()

        with configured(pipe, dtype=dtype, **config), frozen(pipe.vae):
            # a child measuring peaks takes the first call (see cpu_peaks); timing runs drop the warm-up
            calls = [timed_call(step, pipe.device, sample=args.peaks_only)
                     for _ in range(1 if args.peaks_only else args.repeats + 1)]
        measured = calls if args.peaks_only else calls[1:]
        results[name] = (statistics.median(c[0] for c in measured), max(c[1] for c in measured))
        print(f"decoder {name:<32} {results[name][0]:8.2f} s  {results[name][1]:9.0f} MB", flush=True,
              file=sys.stderr)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["toy", "sd-arch"], default="toy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="sd-arch on a CPU: 256², 10 steps, N=4")
    p.add_argument("--size", type=int, default=None, help="image side (toy 64, sd-arch 512, quick 256)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (50; quick 10)")
    p.add_argument("--grad-steps", type=int, default=None, help="N, gradient steps per window (12; quick 4)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="*", help="images per second at these batch sizes instead (e.g. 1 4 8)")
    p.add_argument("--decoder-memory", action="store_true",
                   help="instead: one decoder forward+backward at --size, plain / checkpointed / tiled")
    p.add_argument("--tile", type=int, default=None, help="latent tile side for tiled decoding (default: 2x2 tiles)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None,
                   help="the fast dtype (GPU default fp16; CPU default fp32)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (UNet and decoder)")
    p.add_argument("--only", nargs="*", help="measure only these rows (text2img is always measured)")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    p.add_argument("--peaks-only", action="store_true", help=argparse.SUPPRESS)  # the child of cpu_peaks
    args = p.parse_args(argv)
    quick = args.quick and args.config == "sd-arch"
    args.size = args.size or (64 if args.config == "toy" else 256 if quick else 512)
    args.steps = args.steps or (10 if quick else 50)
    args.grad_steps = args.grad_steps if args.grad_steps is not None else (4 if quick else 12)
    device = torch.device(args.device)
    fast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]

    pipe = load(args.config, args.device)
    # default: 2x2 tiles overlapping by a quarter tile; a multiple of 4, which diffusers' tiled decode needs
    args.tile = args.tile or 4 * math.ceil(0.6 * args.size / pipe.vae_scale_factor / 4)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.decoder_memory:
        results = decoder_memory(pipe, args, fast)
        if args.peaks_only:
            print(json.dumps({name: peak for name, (_, peak) in results.items()}))
            return 0
        if device.type == "cpu":
            peaks = cpu_peaks(argv)
            results = {name: (seconds, peaks[name]) for name, (seconds, _) in results.items()}
        table = decoder_report(args, device, results, argv)
    else:
        target = painting(args.size)
        surrogate = surrogate_decoder(args.config, pipe)
        rows = variants(fast, pipe, args.tile, args.compile)
        if args.only:
            unknown = sorted(set(args.only) - set(rows))
            if unknown:
                raise SystemExit(f"--only: no row named {unknown}; the rows are {sorted(rows)}")
            rows = {k: v for k, v in rows.items() if k == "text2img" or k in args.only}
        if args.batches is not None:
            rows = {k: v for k, v in rows.items() if k in ("text2img", "gradop+ (gradop default)",
                                                          "gradop default + painting decoder")}
        if args.peaks_only:
            print(json.dumps(peaks_only(pipe, rows, args, target, surrogate)))
            return 0
        if args.batches:
            results = {batch: measure(pipe, rows, args, target, surrogate, batch) for batch in args.batches}
            table = batch_report(args, device, fast, results, argv)
        else:
            results = measure(pipe, rows, args, target, surrogate)
            if device.type == "cpu":
                peaks = cpu_peaks(argv)
                results = {name: (seconds, peaks[name], images) for name, (seconds, _, images) in results.items()}
            table = report(args, device, fast, results, argv)
    print(table)
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(table + "\n")
        print(f"appended to {HERE / 'RESULTS.md'}")
    return 0


def header(args, device, argv, what: str, fast=None, interleaved=True) -> list[str]:
    import diffusers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}, " \
        f"{torch.get_num_threads()} threads"
    command = "python benchmarks/run.py " + shlex.join(argv)
    dtype = f"fast dtype {str(fast).split('.')[1]}; " if fast is not None else ""
    return [
        f"\n## {args.config}, {what} — {datetime.date.today().isoformat()}",
        f"Device: {device.type} ({name}); torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{dtype}median of {args.repeats} runs after a warm-up{', the rows interleaved' if interleaved else ''}.",
        f"Command: `{command.strip()}`\n",
    ]


def report(args, device, fast, results, argv) -> str:
    base = results["text2img"][0]
    reference = results.get("gradop+ released", (None, None, None))[2]
    lines = header(args, device, argv, f"{args.size}², {args.steps} steps, batch {args.batch}, N={args.grad_steps}", fast)
    lines += ["| variant | seconds | × text2img | peak memory (MB) | max abs. difference to released |",
              "|---|---:|---:|---:|---:|"]
    for row, (seconds, peak, images) in results.items():
        # how far each GradOP+ variant's image is from the released configuration's (0 = identical)
        diff = "" if reference is None or row in ("text2img", "sdedit 0.8") else \
            f"{float((images - reference).abs().max()):.1e}" if images.shape == reference.shape else "other size"
        lines.append(f"| {row} | {seconds:.2f} | {seconds / base:.2f} | {peak:.0f} | {diff} |")
    return "\n".join(lines)


def batch_report(args, device, fast, results, argv) -> str:
    lines = header(args, device, argv, f"throughput, {args.size}², {args.steps} steps, N={args.grad_steps}", fast)
    batches = list(results)
    lines += ["| variant | " + " | ".join(f"images/s at batch {b} (× text2img)" for b in batches) + " |",
              "|---|" + "---:|" * len(batches)]
    for row in next(iter(results.values())):
        cells = []
        for batch in batches:
            seconds, base = results[batch][row][0], results[batch]["text2img"][0]
            cells.append(f"{batch / seconds:.2f} ({seconds / base:.2f})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decoder_report(args, device, results, argv) -> str:
    lines = header(args, device, argv, f"one decoder forward+backward at {args.size}²", interleaved=False)
    lines += ["| decoder | seconds | peak memory (MB) |", "|---|---:|---:|"]
    lines += [f"| {row} | {seconds:.2f} | {peak:.0f} |" for row, (seconds, peak) in results.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
