"""Fine-tune a trained toy pipeline's UNet + text encoder on a changed world (probe only, not the recipe).
usage: toy_world_finetune_probe.py SRC_MODEL OUT_MODEL STEPS side vignette named [scenes [right]]; PAINTING=, SCRIBBLE= set the streak amplitudes.
It restates train.py's UNet loss and EMA: a `--init-from` option of gradop.toy.train should replace it."""
import os
import gradop.toy.world as _w
_w.BRUSH_STREAKS.update({k: float(os.environ[k.upper()]) for k in ("painting", "scribble") if k.upper() in os.environ})
import sys, copy, math, time, torch, numpy as np, torch.nn.functional as F
from gradop import GradOPPipeline
import gradop.toy.world as world
from gradop.toy.train import world_tensors, encode_posteriors
from diffusers import DDPMScheduler
from tqdm import tqdm
src, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
world.PHOTO_LIGHT = {"side": float(sys.argv[4]), "vignette": float(sys.argv[5])}
world.NAMED_MODALITY = float(sys.argv[6])
if len(sys.argv) > 8: world.RIGHT_MODALITY = float(sys.argv[8])
nscenes = int(sys.argv[7]) if len(sys.argv) > 7 else 4000
torch.manual_seed(0); torch.set_num_threads(2)
pipe = GradOPPipeline.from_pretrained(src)
vae, unet, te, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
data = world_tensors(world.make_scene(s) for s in tqdm(range(nscenes), desc="scenes"))
means, stds = encode_posteriors(vae, data["training"])
scale = vae.config.scaling_factor
ids = tok(data["captions"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
unet.train(); te.train(); unet.requires_grad_(True); te.requires_grad_(True)
ema, ema_t = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
params = list(unet.parameters()) + list(te.parameters())
opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0)
g = torch.Generator().manual_seed(1)
for step in (bar := tqdm(range(steps))):
    for pg in opt.param_groups: pg["lr"] = 3e-4 * 0.5 * (1 + math.cos(math.pi * step / steps))
    i = torch.randint(0, len(means), (32,), generator=g)
    flip = torch.rand(32, generator=g) < 0.5
    m, s, tk = means[i].clone(), stds[i].clone(), ids[i]
    m[flip] = m[flip].flip(-1); s[flip] = s[flip].flip(-1)
    lat = (m + s * torch.randn_like(s)) * scale
    drop = torch.rand(32) < 0.1
    tk = torch.where(drop[:, None], empty, tk)
    noise = torch.randn_like(lat); t = torch.randint(0, 1000, (32,))
    loss = F.mse_loss(unet(sched.add_noise(lat, noise, t), t, encoder_hidden_states=te(tk)[0]).sample, noise)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
    with torch.no_grad():
        for a, b in ((ema, unet), (ema_t, te)):
            for pa, pb in zip(a.parameters(), b.parameters()): pa.lerp_(pb, 1 - min(0.995, (1 + step) / (10 + step)))
    bar.set_postfix(loss=f"{loss.item():.4f}")
pipe2 = GradOPPipeline(vae=vae, text_encoder=ema_t.eval(), tokenizer=tok, unet=ema.eval(), scheduler=pipe.scheduler,
                       painting_sigma_fraction=pipe.config.painting_sigma_fraction)
pipe2.save_pretrained(out, safe_serialization=True)
print("wrote", out)
