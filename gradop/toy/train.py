"""Train the toy model and its judge from a seed: `python -m gradop.toy.train`.

Three stages, each resumable from its last checkpoint in `--work-dir`:

1. VAE — L1 on pixels and on pixel differences (texture) + a small KL term on scenes *and* paintings (GradOP decodes latents
   that look like both). Then the latent scale is set so latents have unit variance (SD's 0.18215).
2. UNet + text encoder — the epsilon objective on SD's noise schedule, captions dropped 10 % of
   the time for classifier-free guidance, an exponential moving average of the weights.
3. Judge — the patch classifier of `gradop.toy.judge`, on scenes and paintings as drawn and as the
   VAE reconstructs them.

The pipeline folder (safetensors) and the judge are written to `--out` (the package by default).
Losses go to `<work-dir>/log.jsonl`. Training scenes use seeds [0, --scenes); evaluation uses
seeds from `HELD_OUT_SEED` up, which training never sees.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .components import toy_components
from .judge import FLAT, PatchJudge, patch_labels
from .world import make_scene

HELD_OUT_SEED = 1_000_000
PACKAGE = Path(__file__).parent


def scenes_tensors(scenes):
    """Images and paintings of `scenes` as [N, 3, H, W] float in [0, 1], labels [N, H, W], captions."""
    images, paintings, labels, captions = [], [], [], []
    for s in scenes:
        images.append(s.image), paintings.append(s.painting), labels.append(s.labels), captions.append(s.caption)
    as_tensor = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return as_tensor(images), as_tensor(paintings), torch.from_numpy(np.stack(labels)), captions


@torch.no_grad()
def encode_posteriors(vae, images, batch_size=256):
    """[N, 3, H, W] in [0, 1] -> the VAE posterior's means and standard deviations (on the CPU)."""
    device = next(vae.parameters()).device
    stats = [vae.encode(images[i:i + batch_size].to(device) * 2 - 1).latent_dist for i in range(0, len(images), batch_size)]
    return torch.cat([s.mean for s in stats]).cpu(), torch.cat([s.std for s in stats]).cpu()


@torch.no_grad()
def decode_images(vae, latents, batch_size=256):
    """Unscaled latents -> [N, 3, H, W] images in [0, 1] (on the CPU)."""
    device = next(vae.parameters()).device
    return torch.cat([((vae.decode(latents[i:i + batch_size].to(device)).sample + 1) / 2).clamp(0, 1).cpu()
                      for i in range(0, len(latents), batch_size)])


def vae_reconstruct(vae, images, batch_size=256):
    """What the VAE makes of `images` ([0, 1]): its posterior mean, decoded."""
    return decode_images(vae, encode_posteriors(vae, images, batch_size)[0], batch_size)


class Stage:
    """A resumable training loop: model(s), optimiser, cosine schedule, checkpoints and a loss log."""

    def __init__(self, name, modules: dict, steps, lr, work_dir: Path, log, generator, warmup=100):
        self.name, self.modules, self.steps, self.work_dir, self.log = name, modules, steps, work_dir, log
        self.generator = generator  # draws the batches: saved with the checkpoint so a resumed run sees the same ones
        params = [p for m in modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1))))
        self.step = 0
        path = work_dir / f"{name}.pt"
        if path.is_file():
            state = torch.load(path, weights_only=False)
            for key, module in modules.items():
                module.load_state_dict(state["modules"][key])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.step = state["step"]
            torch.set_rng_state(state["rng"])
            if "batch_rng" in state:
                generator.set_state(state["batch_rng"])

    def save(self):
        state = dict(modules={k: m.state_dict() for k, m in self.modules.items()}, optimizer=self.optimizer.state_dict(),
                     schedule=self.schedule.state_dict(), step=self.step, rng=torch.get_rng_state(),
                     batch_rng=self.generator.get_state())
        tmp = self.work_dir / f"{self.name}.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.work_dir / f"{self.name}.pt")

    def run(self, loss_fn, after_step=None, every=200):
        bar = tqdm(total=self.steps, initial=self.step, desc=self.name)
        start = time.time()
        while self.step < self.steps:
            loss = loss_fn(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
            self.optimizer.step()
            self.schedule.step()
            self.step += 1
            if after_step is not None:
                after_step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.step % 20 == 0 or self.step == self.steps:
                self.log({"stage": self.name, "step": self.step, "loss": loss.item(), "seconds": time.time() - start})
            if self.step % every == 0 or self.step == self.steps:
                self.save()
        bar.close()


def train(args) -> None:
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log_file = (work / "log.jsonl").open("a")

    def log(record):
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    parts = toy_components(args.seed, tiny=args.tiny)
    vae, unet, text_encoder, tokenizer = (parts[k] for k in ("vae", "unet", "text_encoder", "tokenizer"))
    drawn = (make_scene(seed) for seed in tqdm(range(args.scenes), desc="drawing scenes", leave=False))
    images, paintings, labels, captions = scenes_tensors(drawn)
    gen = torch.Generator().manual_seed(args.seed)

    def batch_of(tensors, size):
        index = torch.randint(0, len(tensors[0]), (size,), generator=gen)
        flip = torch.rand(size, generator=gen) < 0.5  # mirror images: the grammar has no left/right
        out = []
        for t in tensors:
            b = t[index]
            b[flip] = b[flip].flip(-1)
            out.append(b.to(device))
        return out

    # 1. VAE
    vae.to(device).train()
    both = torch.cat([images, paintings])
    stage = Stage("vae", {"vae": vae}, args.vae_steps, 1e-3, work, log, gen)

    def vae_loss(step):
        (x,) = batch_of([both], args.batch_size)
        posterior = vae.encode(x * 2 - 1).latent_dist
        recon, x = vae.decode(posterior.sample(generator=None)).sample, x * 2 - 1
        # L1 on pixels and on their differences: the difference term keeps texture from being averaged away
        edges = lambda t: (t.diff(dim=-1), t.diff(dim=-2))  # noqa: E731
        texture = sum((a - b).abs().mean() for a, b in zip(edges(recon), edges(x)))
        return (recon - x).abs().mean() + texture + 1e-6 * posterior.kl().mean()

    stage.run(vae_loss)
    vae.eval().requires_grad_(False)
    means, stds = encode_posteriors(vae, images)
    vae.register_to_config(scaling_factor=float(1 / means.std()))

    # 2. UNet and text encoder, on cached latent means (plus the posterior's spread, sampled per step)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear")
    unet.to(device).train()
    text_encoder.to(device).train()
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    stage = Stage("unet", {"unet": unet, "text_encoder": text_encoder, "ema": ema, "ema_text": ema_text},
                  args.unet_steps, args.lr, work, log, gen)

    def ema_update(decay=0.999):
        with torch.no_grad():
            for target, source in ((ema, unet), (ema_text, text_encoder)):
                for pt, ps in zip(target.parameters(), source.parameters()):
                    pt.lerp_(ps, 1 - min(decay, (1 + stage.step) / (10 + stage.step)))

    scale = vae.config.scaling_factor

    def unet_loss(step):
        mean, std, tokens = batch_of([means, stds, ids], args.batch_size)
        latents = (mean + std * torch.randn_like(std)) * scale
        drop = torch.rand(len(tokens), device=device) < 0.1  # the unconditional prompt "" for guidance
        tokens = torch.where(drop[:, None], empty.to(device), tokens)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (len(latents),), device=device)
        noisy = noise_schedule.add_noise(latents, noise, t)
        prediction = unet(noisy, t, encoder_hidden_states=text_encoder(tokens)[0]).sample
        return F.mse_loss(prediction, noise)

    stage.run(unet_loss, after_step=ema_update)

    # 3. The judge, on scenes and paintings both as drawn and as the VAE reconstructs them
    recon_images, recon_paintings = decode_images(vae, means), vae_reconstruct(vae, paintings)
    judge = PatchJudge().to(device)
    targets = patch_labels(labels)
    stage = Stage("judge", {"judge": judge}, args.judge_steps, 2e-3, work, log, gen)

    def judge_loss(step):
        quarter = args.batch_size // 2
        x, rx, y, p, rp = batch_of([images, recon_images, targets, paintings, recon_paintings], quarter)
        logits = judge(torch.cat([x, rx, p, rp]))
        flat = torch.full_like(y, FLAT)
        return F.cross_entropy(logits, torch.cat([y, y, flat, flat]), ignore_index=-100)

    stage.run(judge_loss)

    # 4. Save: the pipeline folder (EMA weights) and the judge
    from safetensors.torch import save_file

    from ..pipeline import GradOPPipeline

    out = Path(args.out)
    pipe = GradOPPipeline(vae=vae.cpu(), text_encoder=ema_text.cpu().eval(), tokenizer=tokenizer,
                          unet=ema.cpu().eval(), scheduler=parts["scheduler"])
    pipe.save_pretrained(out / "model", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in judge.cpu().state_dict().items()}, str(out / "judge.safetensors"))
    print(f"wrote {out / 'model'} and {out / 'judge.safetensors'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gradop.toy.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=6000, help="training scenes (seeds 0..N-1)")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--judge-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="UNet/text-encoder learning rate")
    p.add_argument("--device", default="auto")
    p.add_argument("--work-dir", default="toy-train", help="checkpoints and log.jsonl (training resumes from them)")
    p.add_argument("--out", default=str(PACKAGE), help="where model/ and judge.safetensors are written")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration, for smoke tests")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
