"""Time and memory of each method, and of each GradOP+ optimisation on its own, in one process.

    python benchmarks/run.py --config toy                    # the toy model, 64², 50 steps (CPU)
    python benchmarks/run.py --config sd-arch --quick        # SD v1's architecture, random weights, small (CPU)
    python benchmarks/run.py --config sd-arch --device cuda  # 512², 50 steps, fp16 (GPU)

Every variant runs on the same prompt, painting and seed: one warm-up, then the median of `--repeats`
timed runs. Peak memory is `torch.cuda.max_memory_allocated` on a GPU, and on a CPU the peak resident
memory above the level before the run (sampled every 2 ms). Ratios are to `text2img` in the same run.
The table is printed and appended, with device, versions, date and command, to benchmarks/RESULTS.md.

"released" is GradOP+ as the authors run it: fp32, the decoder's weights accumulating gradients, and
attention without a fused kernel (torch 1.x had none). "gradop" is GradOP+ as this package runs it by
default. The rows "+ X" are the released configuration with optimisation X alone. "guidance decoder" is a
small surrogate decoder used only inside the optimisation: the distilled one bundled with the toy model, or
TAESD's architecture for sd-arch.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

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
@contextlib.contextmanager
def configured(pipe, dtype=torch.float32, freeze_decoder=True, sdpa=True, channels_last=False, checkpointing=False,
               compile_unet=False):
    """Put `pipe` in one configuration for the duration, then restore it."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    saved_unet = pipe.unet
    saved_processors = [(model, dict(model.attn_processors)) for model in (pipe.unet, pipe.vae)]
    if pipe.dtype != dtype:
        pipe.to(dtype=dtype)
    pipe.freeze_decoder = freeze_decoder
    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if checkpointing:
        pipe.vae.enable_gradient_checkpointing()
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    try:
        yield pipe
    finally:
        pipe.unet = saved_unet
        for model, processors in saved_processors:
            model.set_attn_processor(processors)
            model.to(memory_format=torch.contiguous_format)
        if checkpointing:
            pipe.vae.disable_gradient_checkpointing()
        if pipe.dtype != torch.float32:
            pipe.to(dtype=torch.float32)
        pipe.freeze_decoder = True


def variants(fast_dtype, with_compile: bool):
    """name -> (method, configuration). The optimisation rows change one thing from "released"."""
    released = dict(freeze_decoder=False, sdpa=False)
    default = dict(dtype=fast_dtype, freeze_decoder=True, sdpa=True)
    rows = {
        "text2img": ("text2img", default),
        "sdedit 0.8": ("sdedit", default),
        "gradop+ released": ("gradop_plus", released),
        "gradop+ (gradop default)": ("gradop_plus", default),
        "+ frozen decoder": ("gradop_plus", released | dict(freeze_decoder=True)),
        "+ SDPA attention": ("gradop_plus", released | dict(sdpa=True)),
        "+ channels-last": ("gradop_plus", released | dict(channels_last=True)),
        "+ decoder checkpointing": ("gradop_plus", released | dict(checkpointing=True)),
    }
    if fast_dtype != torch.float32:
        rows[f"+ {str(fast_dtype).split('.')[1]}"] = ("gradop_plus", released | dict(dtype=fast_dtype))
    rows["+ guidance decoder"] = ("gradop_plus", released | dict(surrogate=True))
    rows["gradop default + guidance decoder"] = ("gradop_plus", default | dict(surrogate=True))
    if with_compile:
        rows["+ torch.compile (UNet)"] = ("gradop_plus", released | dict(compile_unet=True))
    return rows


# ---------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory of a block: CUDA's allocator counter, or on a CPU the sampled peak RSS above the start."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

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
        self._thread = threading.Thread(target=self._sample, daemon=True)
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
            self._thread.join()
            self.peak_mb = max(self._peak, self.rss_mb()) - self._start


def surrogate_decoder(config: str, pipe):
    """The small decoder GradOP+ can differentiate through: the bundled distilled one for the toy model,
    TAESD's architecture (random weights, same cost) for sd-arch."""
    from diffusers import AutoencoderTiny

    from gradop.models import load_guidance_decoder

    if config == "toy":
        return load_guidance_decoder("toy", device=pipe.device)
    torch.manual_seed(0)
    return AutoencoderTiny().to(pipe.device).eval()  # TAESD's default configuration


def measure(pipe, method, config, args, target, surrogate=None):
    config = dict(config)
    guidance = dict(guidance_decoder=surrogate) if config.pop("surrogate", False) else {}

    def call():
        generator = torch.Generator("cpu").manual_seed(0)
        common = dict(num_inference_steps=args.steps, generator=generator, height=args.size, width=args.size,
                      num_images_per_prompt=args.batch, output_type="pt")
        if method == "text2img":
            return pipe.text2img(PROMPT, **common)
        if method == "sdedit":
            return pipe.sdedit(PROMPT, target, 0.8, **common)
        return pipe.gradop_plus(PROMPT, target, 0.8, 3, args.grad_steps, **common, **guidance)

    with configured(pipe, **config):
        if guidance:
            guidance["guidance_decoder"].to(dtype=pipe.dtype)  # the surrogate runs in the models' dtype
        call()  # warm-up
        times, peaks = [], []
        for _ in range(args.repeats):
            with PeakMemory(pipe.device) as memory:
                start = time.perf_counter()
                output = call()
                if pipe.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            peaks.append(memory.peak_mb)
    return statistics.median(times), max(peaks), output.images.float().cpu()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["toy", "sd-arch"], default="toy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="sd-arch on a CPU: 128², 10 steps, N=4")
    p.add_argument("--size", type=int, default=None, help="image side (toy 64, sd-arch 512, quick 128)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (50; quick 10)")
    p.add_argument("--grad-steps", type=int, default=None, help="N, gradient steps per window (12; quick 4)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None,
                   help="the fast dtype (GPU default fp16; CPU default fp32)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile on the UNet")
    p.add_argument("--only", nargs="*", help="measure only these rows (text2img is always measured)")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = p.parse_args(argv)
    quick = args.quick and args.config == "sd-arch"
    args.size = args.size or (64 if args.config == "toy" else 128 if quick else 512)
    args.steps = args.steps or (10 if quick else 50)
    args.grad_steps = args.grad_steps if args.grad_steps is not None else (4 if quick else 12)
    device = torch.device(args.device)
    fast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]

    pipe = load(args.config, args.device)
    target = painting(args.size)
    rows = variants(fast, args.compile)
    if args.only:
        rows = {k: v for k, v in rows.items() if k == "text2img" or k in args.only}
    results, reference = {}, None
    surrogate = surrogate_decoder(args.config, pipe)
    for name, (method, config) in rows.items():
        seconds, peak, images = measure(pipe, method, config, args, target, surrogate)
        if name == "gradop+ released":
            reference = images
        # how far each GradOP+ variant's image is from the released configuration's (0 = identical)
        diff = float((images - reference).abs().max()) if reference is not None and method == "gradop_plus" else None
        results[name] = (seconds, peak, diff)
        print(f"{name:<28} {seconds:8.2f} s  {peak:9.0f} MB" + (f"  max|Δ| {diff:.2e}" if diff is not None else ""),
              flush=True)
    table = report(args, device, fast, results, argv)
    print(table)
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(table + "\n")
        print(f"appended to {HERE / 'RESULTS.md'}")
    return 0


def report(args, device, fast, results, argv) -> str:
    import diffusers

    base = results["text2img"][0]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}, " \
        f"{torch.get_num_threads()} threads"
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"\n## {args.config}, {args.size}², {args.steps} steps, batch {args.batch}, N={args.grad_steps} — "
        f"{datetime.date.today().isoformat()}",
        f"Device: {device.type} ({name}); torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"fast dtype {str(fast).split('.')[1]}; median of {args.repeats} runs after a warm-up.",
        f"Command: `{command.strip()}`\n",
        "| variant | seconds | × text2img | peak memory (MB) | max abs. difference to released |",
        "|---|---:|---:|---:|---:|",
    ]
    for row, (seconds, peak, diff) in results.items():
        lines.append(f"| {row} | {seconds:.2f} | {seconds / base:.2f} | {peak:.0f} | "
                     f"{'' if diff is None else f'{diff:.1e}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
