"""Measure the toy model, its judge and the paper's claims on held-out scenes: `python -m gradop.toy.evaluate`.

Writes `<out>/report.md` and its figures. Scenes come from seeds `HELD_OUT_SEED` upward, which
training never saw. Every method runs as one batch over all scenes, each image with its own
generator, so the numbers are reproducible.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ..metrics import painting_distance, realism, semantic_accuracy
from ..notebook import timed
from ..regions import to_hex
from .judge import FLAT, JUDGE_CLASSES, judge_patches, load_judge, patch_labels
from .train import HELD_OUT_SEED, scenes_tensors, vae_reconstruct
from .world import CLASSES, PHRASES, make_scene


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def region_bindings(scene) -> dict:
    """{painted colour: phrase} for every class the caption names (the colour read off the painting)."""
    words = set(scene.caption.split())
    regions = {}
    for name in scene.named_classes:
        phrase = "mountains" if name == "mountain" else PHRASES[name]
        mask = scene.labels == CLASSES.index(name)
        if phrase in words and mask.sum() >= 16:
            regions[to_hex(np.median(scene.painting[mask], axis=0))] = phrase
    return regions


def evaluate(args) -> Path:
    from ..models import load_pipeline, model_label

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, device=args.device, dtype="fp32", verbose=True)
    pipe.set_progress_bar_config(disable=True)
    judge = load_judge(args.judge) if args.judge else load_judge()
    scenes = [make_scene(HELD_OUT_SEED + i) for i in range(args.scenes)]
    images, paintings, labels, captions = scenes_tensors(scenes)
    lines = [f"# Toy world report\n\n{len(scenes)} held-out scenes (seeds {HELD_OUT_SEED}…"
             f"{HELD_OUT_SEED + len(scenes) - 1}), 64×64, model `{model_label(pipe)}`, torch threads "
             f"{torch.get_num_threads()}.\n"]

    # 1. The VAE
    psnr = lambda a, b: (10 * torch.log10(1 / (a - b).square().flatten(1).mean(1))).mean().item()  # noqa: E731
    recon_images, recon_paintings = vae_reconstruct(pipe.vae, images), vae_reconstruct(pipe.vae, paintings)
    psnr_images, psnr_paintings = psnr(recon_images, images), psnr(recon_paintings, paintings)
    lines += ["## VAE", f"Reconstruction PSNR: scenes **{psnr_images:.1f} dB**, paintings {psnr_paintings:.1f} dB "
              "(target ≥ 25 dB).\n"]

    # 2. The judge: on held-out scenes and paintings as drawn, and as the VAE reconstructs them
    truth = patch_labels(labels)
    pure = truth >= 0
    verdicts = {kind: (judge_patches(judge, x), judge_patches(judge, p)) for kind, x, p in
                (("as drawn", images, paintings), ("VAE-reconstructed", recon_images, recon_paintings))}
    lines += ["## Judge", "Targets: real patches classified correctly ≥ 90 %, painting patches detected as flat "
              "paint ≥ 95 % (held-out scenes as drawn).\n",
              "| held-out patches | real, correct class | paint, detected | real, mistaken for paint | "
              + " | ".join(CLASSES) + " |", "|---" * (4 + len(CLASSES)) + "|"]
    for kind, (real, paint) in verdicts.items():
        per_class = [(real[truth == i] == i).float().mean().item() if (truth == i).any() else float("nan")
                     for i in range(len(CLASSES))]
        lines.append(f"| {kind} | **{(real[pure] == truth[pure]).float().mean():.1%}** | "
                     f"**{(paint == FLAT).float().mean():.1%}** | {(real == FLAT).float().mean():.1%} | "
                     + " | ".join(f"{v:.0%}" for v in per_class) + " |")
    lines.append("")

    # 3. Text-only samples, and the same measures on the held-out scenes themselves (the ceiling)
    text = pipe.text2img(captions, generator=_gens(len(scenes)), output_type="pt").images.cpu()

    def named_present(samples):
        """Share of (scene, named class) pairs whose class the judge finds in >= 5 % of the sample's patches."""
        found = [(v == CLASSES.index(name)).float().mean().item() >= 0.05
                 for s, v in zip(scenes, judge_patches(judge, samples)) for name in s.named_classes]
        return sum(found) / max(len(found), 1), len(found)
    (text_named, named), (real_named, _) = named_present(text), named_present(images)
    lines += ["## Text-only samples (the target subspace)",
              f"Realism (share of patches judged real): **{realism(text, judge).mean():.2f}** (target ≥ 0.8; "
              f"the held-out scenes themselves: {realism(images, judge).mean():.2f}, their VAE reconstructions: "
              f"{realism(recon_images, judge).mean():.2f}). Named classes present in ≥ 5 % of patches: "
              f"**{text_named:.0%}** of {named} (target ≥ 80 %; in the held-out scenes themselves: {real_named:.0%}).\n"]

    # 4. Speed on this machine
    t_text, _ = timed(lambda: pipe.text2img(captions[0], generator=_gens(1)[0]), repeats=5)
    t_plus, _ = timed(lambda: pipe.gradop_plus(captions[0], scenes[0].painting, generator=_gens(1)[0]), repeats=5)
    t_full, _ = timed(lambda: pipe.gradop_plus(captions[0], scenes[0].painting, generator=_gens(1)[0],
                                               painting_decoder=pipe.vae), repeats=5)
    lines += ["## Speed", f"64×64, 50 steps, {torch.get_num_threads()} threads: `text2img` **{t_text:.2f} s** "
              f"(target ≤ 1.5 s), `gradop_plus` with the released defaults **{t_plus:.2f} s** through the toy's "
              f"distilled painting decoder, {t_full:.2f} s through the full decoder (target ≤ 3 s).\n"]

    # 5. Realism and faithfulness of every method
    painting_list = [s.painting for s in scenes]
    runs = {"painting itself": lambda: paintings, "text only": lambda: text}
    for strength in (0.5, 0.6, 0.7, 0.8, 0.9):
        runs[f"SDEdit s={strength}"] = (lambda s=strength: pipe.sdedit(captions, painting_list, s, generator=_gens(len(scenes)),
                                                                        output_type="pt").images)
    runs["loopback 2×0.6"] = lambda: pipe.loopback(captions, painting_list, 0.6, 2, generator=_gens(len(scenes)),
                                                    output_type="pt").images
    for steps in (20, 40):
        runs[f"GradOP {steps} steps, s=0.6"] = (lambda n=steps: pipe.gradop(captions, painting_list, 0.6, n,
                                                                             generator=_gens(len(scenes)), output_type="pt").images)
    for steps in (0, 6, 12, 24):
        runs[f"GradOP+ N={steps}"] = (lambda n=steps: pipe.gradop_plus(captions, painting_list, grad_steps_per_iter=n,
                                                                        generator=_gens(len(scenes)), output_type="pt").images)
    runs["GradOP+ N=12, full decoder"] = lambda: pipe.gradop_plus(captions, painting_list, generator=_gens(len(scenes)),
                                                                painting_decoder=pipe.vae, output_type="pt").images
    results, outputs = {}, {}
    scale = pipe.config.painting_sigma_fraction  # faithfulness with the blur the optimisation used
    for name, run in runs.items():
        start = time.perf_counter()
        result = run().cpu().float()
        outputs[name] = result
        results[name] = (realism(result, judge).mean().item(),
                         painting_distance(result, paintings, sigma_fraction=scale).mean().item(),
                         time.perf_counter() - start)
        print(f"{name}: realism {results[name][0]:.2f}, faithfulness {results[name][1]:.4f}")
    lines += ["## Realism and faithfulness by method",
              "Realism: share of patches judged real (higher is better). Faithfulness: MSE(f(x), f(y)) with the "
              "released blur (lower is closer to the painting).\n",
              "| method | realism | faithfulness (MSE) | seconds for all |", "|---|---|---|---|"]
    lines += [f"| {n} | {r:.2f} | {f:.4f} | {t:.0f} |" for n, (r, f, t) in results.items()]

    # 6. Region semantics: semantic accuracy with and without phrase binding
    bindings = [region_bindings(s) for s in scenes]
    usable = [i for i, b in enumerate(bindings) if b][: args.region_scenes]  # one call per scene: each has its own binding
    sem = {}
    for label, kwargs in (("GradOP+", {}), ("GradOP+ with binding w'=0.4", {"region_weight": 0.4}),
                          ("GradOP+ with binding w'=1.0", {"region_weight": 1.0})):
        accs = []
        for i in usable:
            s = scenes[i]
            regions = bindings[i] if kwargs else None
            image = pipe.gradop_plus(s.caption, s.painting, generator=_gens(1, i)[0], output_type="pt",
                                     regions=regions, **kwargs).images.cpu()
            for name in s.named_classes:
                mask = torch.from_numpy(s.labels == CLASSES.index(name))
                accs.append(semantic_accuracy(image, mask, name, judge).item())
        sem[label] = np.nanmean(accs)
    sem["the held-out scene itself (ceiling)"] = np.nanmean([
        semantic_accuracy(images[i:i + 1], torch.from_numpy(scenes[i].labels == CLASSES.index(name)), name, judge).item()
        for i in usable for name in scenes[i].named_classes])
    lines += ["\n## Region semantics", f"Semantic accuracy (share of a named region's patches judged its class), "
              f"over {len(usable)} scenes and their named regions:\n", "| run | semantic accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in sem.items()]

    # 7. Figures
    _figures(out, results, outputs, paintings, images)
    lines += ["\n![realism against faithfulness](plane.png)\n", "![samples](samples.png)\n"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'report.md'}")
    return out / "report.md"


def _figures(out, results, outputs, paintings, images):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (r, f, _) in results.items():
        ax.scatter(f, r, s=30)
        ax.annotate(name, (f, r), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("painting distance MSE(f(x), f(y))  (lower = more faithful)")
    ax.set_ylabel("realism (share of patches judged real)")
    ax.set_title("Toy world: realism against faithfulness")
    fig.tight_layout()
    fig.savefig(out / "plane.png", dpi=120)
    plt.close(fig)

    columns = ["painting itself", "SDEdit s=0.6", "SDEdit s=0.8", "loopback 2×0.6", "GradOP 40 steps, s=0.6",
               "GradOP+ N=12", "text only"]
    rows = 6
    fig, axes = plt.subplots(rows, len(columns) + 1, figsize=(1.3 * (len(columns) + 1), 1.4 * rows))
    for r in range(rows):
        for c, name in enumerate(["scene (held out)"] + columns):
            image = images[r] if c == 0 else outputs[name][r]
            axes[r, c].imshow(image.permute(1, 2, 0).numpy())
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(name, fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gradop.toy.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--region-scenes", type=int, default=16, help="scenes for the region-semantics comparison")
    p.add_argument("--judge", default=None, help="judge weights (default: the bundled ones)")
    p.add_argument("--out", default="reports/toy")
    evaluate(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
