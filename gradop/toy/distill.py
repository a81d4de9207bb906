"""Distil the toy VAE's decoder into a cheaper one that GradOP+'s painting loss differentiates through instead
of the full decoder (`painting_decoder=`).

    python -m gradop.toy.distill --truncated 1 --steps 600 --scenes 1000   # the toy's own: model/painting_decoder/ (6 min)
    python -m gradop.toy.distill          # the small opt-in one, gradop/toy/painting_decoder/ (a few minutes)
    python -m gradop.toy.distill --cut-tiny 1 --out DIR   # the small one cut at 32², TAESD's design for SD (3 min)

With `--truncated K` it is a `TruncatedDecoder`: the VAE's own decoder, frozen, up to its K-th up block, and a
learnt head. K = 1 (32² for the toy) is the model's default painting decoder: written into the model folder
(`--model`, the bundled one by default) and declared in its model_index.json, so that `load_pipeline("toy")`
carries it (`python -m gradop.toy.train` runs this as its last stage). Its realism and distance stay within the full
decoder's intervals (benchmarks/RESULTS.md). Without `--truncated` it is an `AutoencoderTiny` (TAESD's class), opt-in
(`load_painting_decoder("toy")`): faster, but its gradients cost realism (judged photo 0.68 against 0.96 at N = 24).
With `--cut-tiny K --out DIR` it is a `TruncatedTinyDecoder`: that small decoder (or `--init`'s), frozen, without
its last K upsamplings, and a learnt head (with `--learn-trunk`, the trunk learns too, from the small decoder's
weights): the toy's analogue of TAESD cut short for Stable Diffusion. Its gradient agrees with the full decoder's
as the whole small one's does (cosine 0.56 against 0.57), and it costs realism (benchmarks/RESULTS.md).

The optimisation decodes *noisy* latents (GradOP+ works on z_t early in the schedule), so the student
learns the teacher on z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε at every noise level, not only on clean latents.
Loss: L1 on the images plus L1 on their blurred versions (the toy's painting function: what the painting loss
compares); the truncated decoder's on the blurred ones only, as its output is blurred by construction. The latents come from every modality's renders (GradOP+ decodes photos, paintings and cartoons alike).

With `--gradient-weight` w > 0 the student also learns what GradOP+ takes from it, the latent gradient of the
painting loss, for a probe painting y (a scribble of another scene, as GradOP+ pulls a sample toward strokes it
did not come from):

    g(D) = ∇_z mean((f(D(z)) − y)²),    loss += w · mean(1 − cos(g(student), g(teacher)))

so that the descent through the student moves z the way the full decoder would (the images alone matched, the
student's gradients had cost GradOP+ realism: see above).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler
from tqdm.auto import tqdm

from ..models import TOY_MODEL, TOY_PAINTING_DECODER
from ..painting import GaussianBlur
from ..truncated_decoder import TruncatedDecoder, TruncatedTinyDecoder
from .components import IMAGE_SIZE, PAINTING_SIGMA_FRACTION
from .train import as_tensor, decode_images, encode_posteriors
from .world import MODALITIES, make_scene

TRUNCATED_CLASS = ["gradop.truncated_decoder", "TruncatedDecoder"]  # its entry in a pipeline's model_index.json


def tiny_decoder(scaling_factor: float) -> AutoencoderTiny:
    """4x upsampling like the toy VAE; a minimal encoder (unused, but the class needs one)."""
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8), num_encoder_blocks=(1, 1, 1),
        decoder_block_out_channels=(16, 16, 16), num_decoder_blocks=(1, 1, 1),
        latent_channels=4, scaling_factor=scaling_factor)


def painting_gradient(decoder, latents, paintings, blur, scale: float, create_graph: bool = False) -> torch.Tensor:
    """∇_z mean((f(D(z)) − y)²) per image, at the pipeline's scaled latents z (GradOP+'s descent direction)."""
    z = latents.detach().requires_grad_(True)
    with torch.enable_grad():
        decoded = ((decoder.decode(z / scale).sample + 1) / 2).clamp(0, 1)
        loss = (blur(decoded) - paintings).square().flatten(1).mean(1).sum()
        (gradient,) = torch.autograd.grad(loss, z, create_graph=create_graph)
    return gradient


def write_json(path: Path, config: dict) -> None:
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def distill(args, declare: bool = False) -> Path:
    """Train the student the arguments describe and save it to `args.out`; with `declare`, also name it in
    `args.model`'s model_index.json as the pipeline's painting decoder."""
    torch.manual_seed(args.seed)
    teacher = AutoencoderKL.from_pretrained(args.model / "vae").eval().requires_grad_(False)
    scale = teacher.config.scaling_factor
    alphas_cumprod = DDIMScheduler.from_pretrained(args.model / "scheduler").alphas_cumprod
    scenes = [make_scene(seed) for seed in tqdm(range(args.scenes), desc="scenes")]
    images = as_tensor([s.renders[MODALITIES[i % len(MODALITIES)]] for i, s in enumerate(scenes)])  # every modality
    scribbles = as_tensor([s.painting for s in scenes])  # the probes y of the gradient term
    means, stds = encode_posteriors(teacher, images)
    cut = args.truncated or args.cut_tiny  # cut short: its head learns (--learn-trunk: all), on blurred images
    if cut:
        student = (TruncatedDecoder.from_vae(teacher, kept_up_blocks=args.truncated) if args.truncated else
                   TruncatedTinyDecoder.from_tiny(AutoencoderTiny.from_pretrained(args.init or TOY_PAINTING_DECODER),
                                                  upsamplings_cut=args.cut_tiny)).requires_grad_(False)
        learnt = list(student.parameters()) if args.learn_trunk else student.head_parameters()
        for parameter in learnt:
            parameter.requires_grad_(True)
    else:
        student = AutoencoderTiny.from_pretrained(args.init) if args.init else tiny_decoder(scale)
        learnt = list(student.decoder.parameters())
    optimizer = torch.optim.Adam(learnt, lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    blur = GaussianBlur.for_size(IMAGE_SIZE, IMAGE_SIZE, PAINTING_SIGMA_FRACTION)  # the toy's painting function
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in (bar := tqdm(range(args.steps), desc="distil")):
        index = torch.randint(len(means), (args.batch,), generator=generator)
        z0 = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scale
        # z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, in the pipeline's scaled latent space; t = 0 half of the time would
        # waste steps, so t is uniform over the schedule
        alpha_bar = alphas_cumprod[torch.randint(1000, (args.batch,), generator=generator)].view(-1, 1, 1, 1)
        zt = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * torch.randn(z0.shape, generator=generator)
        target = decode_images(teacher, zt / scale)
        output = ((student.decode(zt / scale).sample + 1) / 2).clamp(0, 1)
        # a cut decoder's output is blurred by construction: it is held to what the painting loss sees
        loss = F.l1_loss(blur(output), blur(target)) + (0 if cut else F.l1_loss(output, target))
        if args.gradient_weight:
            probes = scribbles[torch.randint(len(scribbles), (args.batch,), generator=generator)]
            wanted = painting_gradient(teacher, zt, probes, blur, scale)
            given = painting_gradient(student, zt, probes, blur, scale, create_graph=True)
            loss = loss + args.gradient_weight * (1 - F.cosine_similarity(given.flatten(1), wanted.flatten(1))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    student.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(args.out, safe_serialization=True)
    if not cut:  # AutoencoderTiny saves an alias `block_out_channels` its own loader then warns about
        config = json.loads((args.out / "config.json").read_text())
        config.pop("block_out_channels", None)
        write_json(args.out / "config.json", config)
    if declare:  # the model's own: declare it, so that loading the model loads this
        index = args.model / "model_index.json"
        write_json(index, json.loads(index.read_text()) | {"painting_decoder": TRUNCATED_CLASS})
    print(f"distilled in {(time.perf_counter() - start) / 60:.1f} min, final loss {loss.item():.4f}; wrote {args.out}")
    return args.out


def check_tiny_source(p: argparse.ArgumentParser, args) -> None:
    """`--init` (else the bundled small decoder) must be an AutoencoderTiny folder that upsamples as the VAE
    does, with more upsamplings than `--cut-tiny` cuts."""
    source = args.init or TOY_PAINTING_DECODER
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as err:
        p.error(f"--init must be a folder of an AutoencoderTiny (its config.json and weights), got {source} ({err})")
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderTiny":
        kind = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        p.error(f"--init must be a folder of an AutoencoderTiny; {source}'s config names {kind}")
    upsamplings = len(config.get("num_decoder_blocks", (3, 3, 3, 1))) - 1
    factor = config.get("upsampling_scaling_factor", 2) ** upsamplings
    wanted = 2 ** (len(AutoencoderKL.load_config(args.model / "vae")["block_out_channels"]) - 1)
    if factor != wanted:
        p.error(f"--init's decoder upsamples by {factor}, the VAE's by {wanted}: distil from one that matches")
    if args.cut_tiny > upsamplings:
        p.error(f"--cut-tiny must be between 1 and {upsamplings} (--init's decoder upsamples {upsamplings} "
                f"time{'s' if upsamplings > 1 else ''}), got {args.cut_tiny}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=TOY_MODEL,
                   help="the pipeline folder whose VAE is distilled (default: the bundled toy model)")
    p.add_argument("--out", type=Path, default=None, help="default: gradop/toy/painting_decoder/, or with --truncated "
                   "the model's own <model>/painting_decoder/ (declared in its model_index.json)")
    p.add_argument("--scenes", type=int, default=3000, help="training scenes (seeds 0 up; never the held-out ones)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="start from this decoder (e.g. the bundled one, to "
                   "fine-tune it on gradients) instead of random weights")
    p.add_argument("--truncated", type=int, default=0, metavar="K",
                   help="distil a TruncatedDecoder instead: the VAE decoder's first K up blocks and a learnt head "
                        "(toy: K = 1 stops at 32², where the painting blur keeps 6 %% of the Nyquist frequency)")
    p.add_argument("--cut-tiny", type=int, default=0, metavar="K",
                   help="distil a TruncatedTinyDecoder (needs --out): the small decoder (--init's, else the bundled "
                        "one) without its last K upsamplings, and a learnt head (toy: K = 1 stops at 32²)")
    p.add_argument("--learn-trunk", action="store_true",
                   help="with --cut-tiny: the trunk learns too (starting from the small decoder's weights)")
    p.add_argument("--gradient-weight", type=float, default=0.0,
                   help="weight of matching the teacher's painting-loss gradient (0: images only, as bundled)")
    args = p.parse_args(argv)
    if args.truncated < 0:
        p.error(f"--truncated must be 0 (an AutoencoderTiny) or a number of up blocks kept, got {args.truncated}")
    if args.truncated and (args.init or args.cut_tiny):
        p.error("--truncated starts from the VAE itself; --init and --cut-tiny start from an AutoencoderTiny: pass one")
    if args.cut_tiny < 0:
        p.error(f"--cut-tiny must be 0 (none) or a number of upsamplings cut, got {args.cut_tiny}")
    if args.learn_trunk and not args.cut_tiny:
        p.error("--learn-trunk goes with --cut-tiny (a TruncatedDecoder's trunk is the VAE's own, kept frozen)")
    if args.cut_tiny and args.out is None:
        p.error("--cut-tiny needs --out: it is an experiment, not one of the bundled decoders")
    for part, config in (("vae", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (args.model / part / config).is_file():
            p.error(f"--model must be a pipeline folder with {part}/{config} (e.g. gradop/toy/model), got {args.model}")
    if args.init or args.cut_tiny:  # the AutoencoderTiny it starts from, checked before minutes of scenes
        check_tiny_source(p, args)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        p.error(f"--out must be a folder (it is made if missing), got the file {args.out}")
    if args.cut_tiny and (args.out / "config.json").is_file():  # an experiment replaces only its own kind
        kind = json.loads((args.out / "config.json").read_text()).get("_class_name")
        if kind != "TruncatedTinyDecoder":
            p.error(f"--out {args.out} already holds a model ({kind}): give --cut-tiny a folder of its own")
    if args.out is None and not args.truncated and args.model.resolve() != TOY_MODEL.resolve():
        p.error("--model other than the bundled toy model needs --out: the small decoder's default folder is the "
                "package's gradop/toy/painting_decoder/")
    args.out = args.out or (args.model / "painting_decoder" if args.truncated else TOY_PAINTING_DECODER)
    declare = bool(args.truncated) and args.out.resolve() == (args.model / "painting_decoder").resolve()
    if declare:  # checked before minutes of training, not after
        try:
            index = json.loads((args.model / "model_index.json").read_text())
        except (OSError, ValueError) as err:
            p.error(f"--model needs a model_index.json holding a JSON object to declare its painting decoder in ({err})")
        if not isinstance(index, dict):
            p.error(f"--model's model_index.json must hold a JSON object, got a {type(index).__name__}")
    if args.truncated:  # the VAE's decoder must have more up blocks than are kept
        blocks = len(AutoencoderKL.load_config(args.model / "vae")["block_out_channels"])
        if args.truncated >= blocks:
            p.error(f"--truncated must be between 1 and {blocks - 1} (the toy VAE's decoder has {blocks} up blocks), "
                    f"got {args.truncated}")
    distill(args, declare)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
