# A quick probe while designing the world (not part of the suite; `python -m gradop.toy.evaluate` is the report):
#   python benchmarks/toy_world_probe.py MODEL JUDGE SCENES [x0,blur,s9,cartoon] [OUT.json]
"""Probe a trained toy model on held-out scenes: modality shares of text-only, SDEdit over s, GradOP+ over N."""
import sys, time, json, torch
from gradop import GradOPPipeline
from gradop.metrics import realism, painting_distance
from gradop.toy.judge import load_judge
from gradop.toy.train import HELD_OUT_SEED, as_tensor
from gradop.toy.world import make_scene, MODALITIES

model, judge_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = sys.argv[4].split(",") if len(sys.argv) > 4 else []
torch.set_num_threads(2)
pipe = GradOPPipeline.from_pretrained(model)
pipe.set_progress_bar_config(disable=True)
judge = load_judge(judge_path)
sf = pipe.config.painting_sigma_fraction
scenes = [make_scene(HELD_OUT_SEED + i) for i in range(n)]
paint = [s.painting for s in scenes]
y = as_tensor(paint)
P = [s.prompt("photo") for s in scenes]
gens = lambda: [torch.Generator().manual_seed(i) for i in range(n)]
res = {}
def rep(name, x, mod="photo"):
    x = x.cpu().float()
    shares = {m: realism(x, judge, m).mean().item() for m in MODALITIES}
    d = painting_distance(x, y, sigma_fraction=sf).mean().item()
    res[name] = (shares, d)
    print(f"{name:34s} photo {shares['photo']:.2f} painting {shares['painting']:.2f} cartoon {shares['cartoon']:.2f}  dist {d:.4f}", flush=True)
t0 = time.time()
rep("photos (renders)", as_tensor([s.image for s in scenes]))
rep("scribbles", y)
for m in MODALITIES:
    rep(f"text 'a {m} of'", pipe.text2img([s.prompt(m) for s in scenes], generator=gens(), output_type="pt").images)
rep("text bare", pipe.text2img([s.description for s in scenes], generator=gens(), output_type="pt").images)
for s in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
    rep(f"SDEdit s={s}", pipe.sdedit(P, paint, s, generator=gens(), output_type="pt").images)
for N in (0, 12, 24):
    rep(f"GradOP+ N={N} full dec", pipe.gradop_plus(P, paint, grad_steps_per_iter=N, generator=gens(), output_type="pt", painting_decoder=pipe.vae).images)
for e in extra:
    if e == "x0":
        rep("GradOP+ N=12 x0", pipe.gradop_plus(P, paint, optimize_target="x0", generator=gens(), output_type="pt", painting_decoder=pipe.vae).images)
    if e == "blur":
        rep("GradOP+ N=12 blur_target", pipe.gradop_plus(P, paint, blur_target=True, generator=gens(), output_type="pt", painting_decoder=pipe.vae).images)
    if e == "s9":
        rep("GradOP+ N=12 s=0.9", pipe.gradop_plus(P, paint, strength=0.9, generator=gens(), output_type="pt", painting_decoder=pipe.vae).images)
    if e == "cartoon":
        rep("GradOP+ N=12 'a cartoon of'", pipe.gradop_plus([s.prompt("cartoon") for s in scenes], paint, generator=gens(), output_type="pt", painting_decoder=pipe.vae).images)
print(f"probe {time.time()-t0:.0f} s")
json.dump(res, open(sys.argv[5] if len(sys.argv) > 5 else "/work/scratch/probe.json", "w"), indent=1)
