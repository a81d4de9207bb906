"""Train the toy model and its judge from a seed: `python -m gradop.toy.train`.

Five stages; the first four resume from their last checkpoint in `--work-dir`:

1. VAE — L1 on pixels and on pixel differences, a texture-energy term per orientation (random-phase
   texture is kept in amplitude and direction, not averaged away) and a small KL term, on every modality's renders and on the
   scribbles (GradOP decodes latents that look like all of them). Then the latent scale is set so
   latents have unit variance (SD's 0.18215).
2. Judge — the modality-and-class patch classifier of `gradop.toy.judge`, on every modality's
   renders and the scribbles (as paintings), as drawn and as the VAE reconstructs them, each
   modality weighed equally; then validated on held-out renders (printed and logged). It needs only
   the VAE, so UNet checkpoints can be probed with it while the UNet trains.
3. UNet + text encoder — the epsilon objective on SD's noise schedule over each scene in its own
   modality with its caption (`gradop.toy.world`: photos, paintings and cartoons, the modality
   named in only part of the captions), captions dropped 10 % of the time for classifier-free
   guidance, an exponential moving average of the weights. Half of these scenes are free layouts
   (`world.training_family`: objects anywhere, tilted horizons): GradOP can only find layouts the
   model makes, and users scribble these. Stages 1-2 learn textures and see band layouts only.
4. Binding — a short fine-tune of the UNet and text encoder with `gradop.regions`' paint-with-words
   bias on the true class masks of half of each batch, so that a phrase turned up in a region
   decides what the region becomes, as Stable Diffusion's cross-attention learns from its captions
   (`TrainingBinding`).
5. The painting decoder — the VAE's decoder up to 32² with a distilled head (`gradop.toy.distill --truncated 1`,
   6 min), what GradOP+'s painting loss differentiates through by default.

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
from diffusers import AutoencoderKL, DDPMScheduler
from tqdm.auto import tqdm

from ..regions import biased_attention, query_grid
from .components import GRADOP_PLUS_DEFAULTS, PAINTING_SIGMA_FRACTION, toy_components
from .judge import PatchJudge, load_judge, patch_labels
from .world import CLASSES, MODALITIES, PHRASES, make_scene, training_family

HELD_OUT_SEED = 1_000_000
PACKAGE = Path(__file__).parent


def as_tensor(arrays) -> torch.Tensor:
    """A list of [H, W, 3] uint8 arrays -> [N, 3, H, W] float in [0, 1]."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def scenes_tensors(scenes):
    """Photos and scribbles of `scenes` as [N, 3, H, W] float in [0, 1], labels [N, H, W], photo prompts."""
    scenes = list(scenes)
    return (as_tensor([s.image for s in scenes]), as_tensor([s.painting for s in scenes]),
            torch.from_numpy(np.stack([s.labels for s in scenes])), [s.prompt("photo") for s in scenes])


def world_tensors(scenes) -> dict:
    """Everything training needs from `scenes`: each modality's renders, the scribbles, labels,
    each scene's own training image (its modality) and caption."""
    scenes = list(scenes)
    data = {m: as_tensor([s.renders[m] for s in scenes]) for m in MODALITIES}
    data["scribble"] = as_tensor([s.painting for s in scenes])
    data["labels"] = torch.from_numpy(np.stack([s.labels for s in scenes]))
    data["training"] = as_tensor([s.training_image for s in scenes])
    data["captions"] = [s.caption for s in scenes]
    return data


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


def texture_energy(images: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """Local texture amplitude per orientation: [N, 4C, H/cell, W/cell], the mean |x(p + d) - x(p)| per `cell`x`cell`
    cell for the steps d = right, down, down-right and down-left. Phase-free (random-phase grain cannot be matched
    pixel by pixel) but not orientation-free: vertical blades no longer pass for horizontal ripples."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    here = padded[..., 1:-1, 1:-1]
    steps = (padded[..., 1:-1, 2:], padded[..., 2:, 1:-1], padded[..., 2:, 2:], padded[..., 2:, :-2])
    return torch.cat([F.avg_pool2d((there - here).abs(), cell) for there in steps], 1)


# ---------------------------------------------------------------------- what a word turned up in a region does
# Stable Diffusion's cross-attention learns from its captions that a pixel becomes the word it attends to, which
# is what makes a paint-with-words binding decide content. The toy's UNet does not learn it from its data: its
# attention is near-uniform (text2img "a photo of a forest and a meadow": every pixel gives "forest" 0.015 of its
# attention, forest and meadow pixels alike; 1/77 = 0.013), it reads the caption as an average and decides the
# layout in its convolutions, so binding hardly changed a region (a forest region bound to "forest" judged forest
# 0.12 against 0.05 unbound). Terms asking the attention to localise lost the domain shift (issue 14, stops 25-26:
# binding 0.45 but text-only photo realism 0.37; or SDEdit s = 0.6 judged photo 0.78-0.97 instead of 0.11). What
# works is to show the UNet the bias itself: stage 4 fine-tunes it with `gradop.regions`' bias on the true class
# masks of part of each batch, so a word turned up in a region is what the region is, and the UNet learns to
# follow it. Stop 27 (the report, 24 held-out one-green scenes, w' = 1): forest and meadow regions judged their
# bound class 0.73 each (0.49 unbound), but swapping the phrases moved the majority in only 67 % of regions: in the
# world a meadow is always the field around a wood, so "forest" on the field moved it part-way. Stop 28 adds the
# "wood" layout family (the field a wood around a meadow clearing) to stage 4's data (`--binding-wood-scenes`):
# bound 0.82 / 0.86, swap 75 %, with GradOP+ through the full decoder. (Stop 27 also fixed `random_batch`, which
# had reversed half of the captions' token ids.)
WORD_CLASSES = {phrase: CLASSES.index(name) for name, phrase in PHRASES.items()}  # "meadow" -> grass, ...
BINDING_WEIGHT_RANGE = (0.2, 2.0)  # w' drawn log-uniformly per image in stage 4; the report binds at 0.4 and 1
BINDING_NEGATIVE_SHARE = 0.3  # of the bound images, those whose words are also kept out of the other pixels (ρ = -1)


def caption_word_classes(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """[N, T] the class each token of the encoded captions `ids` names (`PHRASES`), -1 for every other token."""
    classes = torch.full_like(ids, -1)
    for word, c in WORD_CLASSES.items():
        classes[ids == tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)[0])] = c
    return classes


class TrainingBinding:
    """`gradop.regions`' bias on a training batch, in the form `biased_attention` reads: image b's class words
    turned up on its true class masks, W[i, j] = Σ_c M_c[i] 1[j names c], and where `negative`, also kept out of
    the other pixels (ρ = -1 there); `bias_scale` [B] is w'_b log(1 + σ_t) per image, 0 for an unbound image.

    `class_masks` [B, C, h, w] are the class shares at the latent size; `word_classes` [B, T] (-1: no class)."""

    biased = True

    def __init__(self, class_masks, word_classes, negative, bias_scale):
        named = (word_classes >= 0).float()[..., None]
        self.words = F.one_hot(word_classes.clamp_min(0), class_masks.shape[1]).float() * named  # [B, T, C]
        self.class_masks, self.negative, self.bias_scale = class_masks, negative.float(), bias_scale
        self._bias = {}  # per layer resolution: the toy UNet's cross-attention layers share two (16², 8²)

    def bias(self, num_queries: int, device) -> torch.Tensor:
        key = (num_queries, str(device))
        if key not in self._bias:
            grid = query_grid(tuple(self.class_masks.shape[-2:]), num_queries)
            masks = F.interpolate(self.class_masks, size=grid, mode="area").flatten(2)  # [B, C, N] at that grid
            inside = torch.einsum("bcn,btc->bnt", masks, self.words)
            outside = torch.einsum("bcn,btc->bnt", 1 - masks, self.words)
            self._bias[key] = (inside - self.negative[:, None, None] * outside).to(device)
        return self._bias[key]


class TrainingBindingProcessor:
    """Cross-attention processor for stage 4: the layer's own computation (`biased_attention`) with the bias
    of the current batch, `self.binding`."""

    def __init__(self):
        self.binding: TrainingBinding | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return biased_attention(attn, hidden_states, encoder_hidden_states, self.binding, temb=temb)[0]


@torch.no_grad()
def validate_judge(judge, vae, scenes: int = 64, family: str = "band") -> dict:
    """The judge on held-out renders of layout `family`, as drawn and as `vae` reconstructs them: the share of
    patches judged in the right modality, per render kind, and of pure photo patches judged the right class."""
    held_out = world_tensors(make_scene(HELD_OUT_SEED + i, family=family) for i in range(scenes))
    truth = patch_labels(held_out["labels"])
    result = {}
    for kind in (*MODALITIES, "scribble"):
        want = MODALITIES.index("painting" if kind == "scribble" else kind)
        for how, images in (("as drawn", held_out[kind]), ("VAE", vae_reconstruct(vae, held_out[kind]))):
            result[f"{kind} {how}: modality"] = (judge.modality_verdicts(images) == want).float().mean().item()
            if kind == "photo":
                pure = truth >= 0
                result[f"{kind} {how}: class"] = (judge.verdicts(images)[pure] == truth[pure]).float().mean().item()
    return result


def random_batch(tensors, size: int, generator: torch.Generator, device="cpu") -> list[torch.Tensor]:
    """The same `size` random rows of each of `tensors`, half of them mirrored left to right (the world's grammar
    has no left or right). Only tensors of 3 or more dims are mirrored (images, latents, label maps): the token
    ids of captions and per-image labels are not (flipping their last dim would reverse a caption's words)."""
    index = torch.randint(0, len(tensors[0]), (size,), generator=generator)
    flip = torch.rand(size, generator=generator) < 0.5
    out = []
    for t in tensors:
        b = t[index]
        if b.ndim >= 3:
            b[flip] = b[flip].flip(-1)
        out.append(b.to(device))
    return out


class Stage:
    """A resumable training loop: model(s), optimiser, cosine schedule, checkpoints and a loss log."""

    def __init__(self, name, modules: dict, steps, lr, work_dir: Path, log, seed, warmup=100):
        self.name, self.modules, self.steps, self.work_dir, self.log = name, modules, steps, work_dir, log
        # Each stage draws its batches and noise from its own seed, so changing one stage (the judge's length, say)
        # leaves the others bit for bit as they were; both states are checkpointed, so a resumed run continues them
        self.generator = generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
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
    def batch_of(tensors, size):
        return random_batch(tensors, size, stage.generator, device)

    # The VAE and the judge learn textures, which do not depend on where things stand: they train on the band
    # layouts alone (so adding the free family left them as they were, bit for bit). The UNet learns layouts: it
    # trains on the mix of `training_family`, band and free.
    if args.vae_from and args.judge_from:
        band = None
    else:
        count = args.scenes if not args.vae_from else min(args.scenes, args.judge_scenes)
        band = world_tensors(make_scene(seed) for seed in tqdm(range(count), desc="drawing band scenes", leave=False))

    # 1. VAE, on every modality and the scribbles
    if args.vae_from:
        vae = AutoencoderKL.from_pretrained(Path(args.vae_from) / "vae")  # its scaling factor comes with it
    else:
        vae.to(device).train()
        everything = torch.cat([band[m] for m in MODALITIES] + [band["scribble"]])
        stage = Stage("vae", {"vae": vae}, args.vae_steps, 1e-3, work, log, args.seed)

        def vae_loss(step):
            (x,) = batch_of([everything], args.vae_batch_size)
            posterior = vae.encode(x * 2 - 1).latent_dist
            recon, x = vae.decode(posterior.sample(generator=None)).sample, x * 2 - 1
            # L1 on pixels and on their differences, and on the local texture energy: random-phase texture (grass
            # blades, ripples) cannot be matched pixel by pixel, so L1 alone averages it away and a photo comes
            # back looking painted; matching its amplitude per 4x4 cell keeps it (the role of SD's perceptual loss).
            # Per orientation: matched as one isotropic amplitude, every class came back with the sky's horizontal
            # lines (`evaluate.texture_kept` on the report's 64 held-out photos, forest / meadow: 0.06 / 0.04; per
            # orientation 0.66 / 0.57 at 1,500 steps, 0.87 / 0.95 at 3,000)
            edges = lambda t: (t.diff(dim=-1), t.diff(dim=-2))  # noqa: E731
            sharpness = sum((a - b).abs().mean() for a, b in zip(edges(recon), edges(x)))
            texture = (texture_energy(recon) - texture_energy(x)).abs().mean()
            return (recon - x).abs().mean() + sharpness + args.vae_texture_weight * texture + 1e-6 * posterior.kl().mean()

        stage.run(vae_loss)
        del everything
        band_means, _ = encode_posteriors(vae, band["training"])
        vae.register_to_config(scaling_factor=float(1 / band_means.std()))  # latents of unit variance
    vae.to(device).eval().requires_grad_(False)

    # 2. The judge: modality and class of every patch, on renders (the scribbles count as paintings) as drawn and
    #    as the VAE reconstructs them. A subset of the scenes is plenty for a patch classifier. It needs only the
    #    VAE, so it is trained before the UNet: UNet checkpoints can be probed with it while the UNet trains.
    torch.manual_seed(args.seed + 1)  # the judge's initial weights, from its own seed too
    judge = PatchJudge().to(device)
    if args.judge_from:
        judge = load_judge(args.judge_from).to(device)
    else:
        n = min(len(band["captions"]), args.judge_scenes)
        kinds = [(band[m][:n], MODALITIES.index(m)) for m in MODALITIES] + [(band["scribble"][:n], MODALITIES.index("painting"))]
        judge_images = torch.cat([x for x, _ in kinds] + [vae_reconstruct(vae, x) for x, _ in kinds])
        judge_modality = torch.cat([torch.full((n,), m) for _, m in kinds] * 2)
        judge_classes = patch_labels(band["labels"][:n]).repeat(2 * len(kinds), 1, 1)
        # the scribbles double the paintings: weigh each modality equally, or "painting" becomes the default verdict
        counts = torch.bincount(judge_modality, minlength=len(MODALITIES)).float()
        balance = (counts.sum() / (len(MODALITIES) * counts)).to(device)
        stage = Stage("judge", {"judge": judge}, args.judge_steps, 2e-3, work, log, args.seed + 1)

        def judge_loss(step):
            x, m, y = batch_of([judge_images, judge_modality, judge_classes], 2 * args.batch_size)
            modality_logits, class_logits = judge(x)
            # the modality term weighs 3x: the class term is ambiguous on paintings by design (one green, two classes)
            # and stays large, and at 1x it drowned the modality term (held-out photos judged photo 0.88 at 1500 steps)
            return (3 * F.cross_entropy(modality_logits, m[:, None, None].expand(-1, *y.shape[1:]), weight=balance)
                    + F.cross_entropy(class_logits, y, ignore_index=-100))

        stage.run(judge_loss)
        del judge_images, judge_modality, judge_classes
    judge.eval().requires_grad_(False)
    del band
    for family in ("band", "free"):
        validation = validate_judge(judge, vae, family=family)
        log({"stage": f"judge validation ({family})", **validation})
        print(f"judge on held-out {family} renders (share of patches right; targets: modality >= 0.95, photo class "
              ">= 0.90):\n  " + "\n  ".join(f"{k}: {v:.3f}" for k, v in validation.items()))

    drawn = (make_scene(seed, family=training_family(seed)) for seed in tqdm(range(args.scenes), desc="drawing scenes",
                                                                             leave=False))
    world = world_tensors(drawn)
    captions = world["captions"]
    means, stds = encode_posteriors(vae, world["training"])

    # 3. UNet and text encoder, on cached latent means (plus the posterior's spread, sampled per step)
    def tokenize(texts):
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    ids = tokenize(captions)
    empty = tokenize([""])

    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear")
    unet.to(device).train()
    text_encoder.to(device).train()
    own_processors = dict(unet.attn_processors)
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    stage = Stage("unet", {"unet": unet, "text_encoder": text_encoder, "ema": ema, "ema_text": ema_text},
                  args.unet_steps, args.lr, work, log, args.seed + 2)

    def ema_update(decay=0.999):
        with torch.no_grad():
            for target, source in ((ema, unet), (ema_text, text_encoder)):
                for pt, ps in zip(target.parameters(), source.parameters()):
                    pt.lerp_(ps, 1 - min(decay, (1 + stage.step) / (10 + stage.step)))

    scale = vae.config.scaling_factor
    processor = TrainingBindingProcessor()  # stage 4's cross-attention

    def denoising_loss(mean, std, tokens, binding=None):
        """The epsilon objective on a batch, captions dropped 10 % of the time (the unconditional prompt "" for
        guidance); `binding(t, dropped)` gives the batch's `TrainingBinding` once its timesteps are drawn."""
        latents = (mean + std * torch.randn_like(std)) * scale
        drop = torch.rand(len(tokens), device=device) < 0.1
        tokens = torch.where(drop[:, None], empty.to(device), tokens)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (len(latents),), device=device)
        if binding is not None:
            processor.binding = binding(t, drop)
        prediction = unet(noise_schedule.add_noise(latents, noise, t), t, encoder_hidden_states=text_encoder(tokens)[0])
        return F.mse_loss(prediction.sample, noise)

    stage.run(lambda step: denoising_loss(*batch_of([means, stds, ids], args.batch_size)), after_step=ema_update)

    # 4. Binding: a fine-tune from the EMA weights with the region bias of `gradop.regions` on the true class masks
    #    of a share of the images (`TrainingBinding`), w' drawn per image, σ_t of its timestep
    if args.binding_steps:
        # Its data also holds the world's other layout, a wood over the field around a meadow clearing (family "wood"),
        # so that where a green region lies does not say what it is: only the bias does
        labels = world["labels"]
        if args.binding_wood_scenes:
            woods = world_tensors(make_scene(seed, family="wood") for seed in
                                  tqdm(range(args.binding_wood_scenes), desc="drawing woods", leave=False))
            wood_means, wood_stds = encode_posteriors(vae, woods["training"])
            means, stds = torch.cat([means, wood_means]), torch.cat([stds, wood_stds])
            ids = torch.cat([ids, tokenize(woods["captions"])])
            labels = torch.cat([labels, woods["labels"]])
        word_classes = caption_word_classes(tokenizer, ids)
        class_masks = F.avg_pool2d(F.one_hot(labels, len(CLASSES)).permute(0, 3, 1, 2).float(),
                                   labels.shape[-1] // means.shape[-1])  # [N, C, h, w]
        unet.load_state_dict(ema.state_dict())
        text_encoder.load_state_dict(ema_text.state_dict())
        unet.set_attn_processor({name: processor if ".attn2." in name else own
                                 for name, own in own_processors.items()})
        stage = Stage("binding", {"unet": unet, "text_encoder": text_encoder, "ema": ema, "ema_text": ema_text},
                      args.binding_steps, args.binding_lr, work, log, args.seed + 3)
        alphas_cumprod = noise_schedule.alphas_cumprod.to(device)
        log_low, log_high = (math.log(w) for w in BINDING_WEIGHT_RANGE)

        def binding_loss(step):
            mean, std, tokens, masks, words = batch_of([means, stds, ids, class_masks, word_classes], args.batch_size)
            n = len(tokens)
            bound = torch.rand(n, device=device) < args.binding_share
            negative = torch.rand(n, device=device) < BINDING_NEGATIVE_SHARE
            region_weight = torch.empty(n, device=device).uniform_(log_low, log_high).exp()  # w', log-uniform

            def binding(t, dropped):  # bias_scale = w' log(1 + σ_t), σ_t = √((1 − ᾱ_t) / ᾱ_t); 0 where unbound
                sigma = ((1 - alphas_cumprod[t]) / alphas_cumprod[t]).sqrt()
                return TrainingBinding(masks, words, negative, region_weight * torch.log1p(sigma) * (bound & ~dropped))

            return denoising_loss(mean, std, tokens, binding)

        stage.run(binding_loss, after_step=lambda: ema_update(0.995))
        processor.binding = None

    # 5. Save: the pipeline folder (EMA weights, the layers' own attention processors back) and the judge
    from safetensors.torch import save_file
    ema.set_attn_processor(dict(own_processors))

    from ..pipeline import GradOPPipeline

    out = Path(args.out)
    pipe = GradOPPipeline(vae=vae.cpu(), text_encoder=ema_text.cpu().eval(), tokenizer=tokenizer,
                          unet=ema.cpu().eval(), scheduler=parts["scheduler"],
                          painting_sigma_fraction=PAINTING_SIGMA_FRACTION,
                          method_defaults={"gradop_plus": GRADOP_PLUS_DEFAULTS})
    pipe.save_pretrained(out / "model", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in judge.cpu().state_dict().items()}, str(out / "judge.safetensors"))
    print(f"wrote {out / 'model'} and {out / 'judge.safetensors'}")

    # 6. Stage 5, the painting decoder: the VAE's decoder cut at 32² and a head distilled on what the painting loss
    # sees (gradop.toy.distill), written into model/ and declared there
    # (its own process: distill imports this module's data helpers)
    import subprocess
    import sys

    budget = ["--steps", "2", "--scenes", "8", "--batch", "4"] if args.tiny else ["--steps", "600", "--scenes", "1000"]
    subprocess.run([sys.executable, "-m", "gradop.toy.distill", "--truncated", "1", "--model", str(out / "model"),
                    "--seed", str(args.seed), *budget], check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gradop.toy.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=9000, help="training scenes (seeds 0..N-1)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch-size", type=int, default=16)
    p.add_argument("--vae-texture-weight", type=float, default=4.0, help="weight of the texture-energy term")
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--judge-steps", type=int, default=3000)
    p.add_argument("--judge-scenes", type=int, default=1000, help="scenes whose renders train the judge")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="UNet/text-encoder learning rate")
    p.add_argument("--binding-steps", type=int, default=1500,
                   help="steps of stage 4, the fine-tune with the region bias (0: skip it)")
    p.add_argument("--binding-share", type=float, default=0.5, help="share of each stage-4 batch trained with the bias")
    p.add_argument("--binding-lr", type=float, default=3e-4, help="stage 4's learning rate")
    p.add_argument("--binding-wood-scenes", type=int, default=3000,
                   help="scenes of the wood-around-a-clearing layout added to stage 4's data (seeds 0..N-1)")
    p.add_argument("--vae-from", default=None,
                   help="a pipeline folder whose vae/ to use instead of training stage 1 (e.g. gradop/toy/model: the "
                        "defaults reproduce it, stages 1-2 see band layouts only)")
    p.add_argument("--judge-from", default=None, help="judge weights to use instead of training stage 2")
    p.add_argument("--device", default="auto")
    p.add_argument("--work-dir", default="toy-train", help="checkpoints and log.jsonl (training resumes from them)")
    p.add_argument("--out", default=str(PACKAGE), help="where model/ and judge.safetensors are written")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration, for smoke tests")
    args = p.parse_args(argv)
    if not 0 <= args.binding_share <= 1:  # (NaN fails this too)
        p.error(f"--binding-share must be between 0 and 1, got {args.binding_share}")
    if args.binding_wood_scenes < 0:
        p.error(f"--binding-wood-scenes must be 0 or more, got {args.binding_wood_scenes}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
