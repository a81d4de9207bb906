"""Region semantics (method.md §4): colour masks, token lookup, the biased cross-attention, its invariants and effect."""
import json
import math
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
import torch.nn.functional as F
from conftest import draw_painting, gen
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from gradop import GradOPPipeline
from gradop.methods import get_method
from gradop.regions import (AttentionStore, biased_attention, extract_palette, parse_color, region_masks,
                            token_positions)
from gradop.testing import tiny_components

PROMPT = "a red ball on grass under sky"
RED, GREEN, BLUE = "#c82828", "#28a03c", "#5a96e6"  # the colours draw_painting uses
FAST = dict(num_inference_steps=10, output_type="np")
INPUT_IMAGES = Path(__file__).parent.parent / "input-images"


# ---------------------------------------------------------------------- masks and palettes
SCENE = [  # (colour, shape, coordinates on a 128x96 canvas); later shapes paint over earlier ones
    ((135, 197, 240), "rect", (0, 0, 128, 96)),
    ((79, 154, 58), "rect", (0, 60, 128, 96)),
    ((224, 112, 31), "ellipse", (20, 30, 70, 80)),
    ((255, 200, 20), "polygon", [(80, 10), (120, 40), (90, 70)]),
    ((40, 40, 40), "line", (5, 90, 120, 55)),
]


def draw_scene(scale, colors=True, noise=0.0, seed=0):
    """The scene at `scale`x: an RGB painting, or (colors=False) the label map; Lanczos-reduced to 128x96."""
    big = PIL.Image.new("RGB" if colors else "L", (128 * scale, 96 * scale), 0)
    draw = PIL.ImageDraw.Draw(big)
    for label, (color, shape, coords) in enumerate(SCENE):
        fill = color if colors else label
        if shape == "polygon":
            draw.polygon([(x * scale, y * scale) for x, y in coords], fill=fill)
        elif shape == "line":
            draw.line([c * scale for c in coords], fill=fill, width=6 * scale)
        else:
            (draw.rectangle if shape == "rect" else draw.ellipse)([c * scale for c in coords], fill=fill)
    if not colors:
        return big
    small = np.asarray(big.resize((128, 96), PIL.Image.LANCZOS), dtype=np.float64)
    small = small + np.random.default_rng(seed).normal(0, noise, small.shape)  # brush texture
    return PIL.Image.fromarray(np.clip(np.round(small), 0, 255).astype(np.uint8))


def true_regions():
    """Each label's region at 128x96: the pixels that are more than half that label at 4x."""
    labels = torch.from_numpy(np.array(draw_scene(4, colors=False))).long()
    onehot = F.one_hot(labels, len(SCENE)).permute(2, 0, 1).float()[None]
    return F.avg_pool2d(onehot, 4)[0] > 0.5


def iou(a, b):
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("noise", [0.0, 4.0])
def test_masks_of_antialiased_painting_match_true_regions(noise):
    painting = draw_scene(4, noise=noise)
    assert len(np.unique(np.asarray(painting).reshape(-1, 3), axis=0)) > 300  # really anti-aliased / textured
    truth = true_regions()
    masks = region_masks(painting, [color for color, _, _ in SCENE])
    ious = [iou(m, t) for m, t in zip(masks, truth)]
    # texture noise flips some edge pixels that are nearly 50/50 blends: a 6-pixel line loses most
    assert min(ious) >= (0.98 if noise == 0 else 0.97), ious
    # no pixel is claimed twice, and all but a sliver of junction pixels are assigned
    assert masks.sum(0).max() == 1 and masks.any(0).float().mean() > 0.99


@pytest.mark.parametrize("noise", [0.0, 4.0])
def test_extract_palette_finds_the_painted_colours_and_no_fringe(noise):
    painting = draw_scene(4, noise=noise)
    palette = extract_palette(painting, max_colors=8)
    assert len(palette) == len(SCENE)  # the fringe blends are not colours of their own
    found = np.array([parse_color(c) for c, _ in palette])
    for color, _, _ in SCENE:
        assert np.abs(found - color).max(1).min() <= 8, (color, palette)  # within 8/255 per channel
    truth = true_regions().float().mean((1, 2))
    shares = {parse_color(c): s for c, s in palette}
    for (color, _, _), share in zip(SCENE, truth):
        nearest = min(shares, key=lambda c: np.abs(np.subtract(c, color)).max())
        assert abs(shares[nearest] - float(share)) < 0.01
    assert [s for _, s in palette] == sorted((s for _, s in palette), reverse=True)


def test_extract_palette_on_the_bundled_paintings_finds_every_manifest_colour():
    manifest = json.loads((INPUT_IMAGES / "manifest.json").read_text())
    for name, entry in manifest.items():
        palette = extract_palette(INPUT_IMAGES / name, max_colors=8)
        found = np.array([parse_color(c) for c, _ in palette])
        assert len(palette) == len(entry["colors"]), (name, palette)
        for color in entry["colors"]:
            assert np.abs(found - parse_color(color)).max(1).min() <= 8, (name, color)


def test_unlisted_strokes_keep_their_pixels():
    painting = draw_scene(4)
    orange = region_masks(painting, [(224, 112, 31)])[0]
    assert iou(orange, true_regions()[2]) >= 0.98  # the yellow, sky and line strokes do not leak in
    far = region_masks(painting, ["#ff00ff"])[0]
    assert not far.any()  # a colour near nothing in the painting gets no pixels


def test_parse_color():
    assert parse_color("#2a7a2a") == (42, 122, 42) == parse_color("2A7A2A") == parse_color((42, 122, 42))
    assert parse_color("#fff") == (255, 255, 255) and parse_color(np.array([1, 2, 3], np.uint8).tolist()) == (1, 2, 3)
    for bad in ["#12345", "green", "#gggggg", (256, 0, 0), (1, 2), (1.5, 2, 3)]:
        with pytest.raises(ValueError, match="not a colour"):
            parse_color(bad, "regions key")
    with pytest.raises(TypeError, match="'#rrggbb' string"):
        parse_color(3, "regions key")


def test_token_positions(pipe):
    tok = pipe.tokenizer  # character level: "a red ball" -> <start> a</w> r e d</w> b a l l</w> <end>
    assert token_positions(tok, "a red ball", "ball") == [5, 6, 7, 8]
    assert token_positions(tok, "a red ball", "red ball") == [2, 3, 4, 5, 6, 7, 8]
    assert token_positions(tok, "a red ball and a red car", "red") == [2, 3, 4, 13, 14, 15]  # every occurrence
    assert token_positions(tok, "a red ball", "car") == []
    long = "a " * 80 + "ball"  # "ball" falls past the 77-token limit
    assert token_positions(tok, long, "ball") == []


# ---------------------------------------------------------------------- the biased attention itself
def test_biased_attention_matches_the_formula_by_hand():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    x, context = torch.randn(3, 20, 16), torch.randn(3, 7, 12)
    bias = torch.zeros(3, 20, 7)
    bias[:, :10, 2:4] = 1.0
    bias[1, 15:, 5] = -0.5

    class Binding:  # what biased_attention reads of a RegionBinding: w' log(1 + σ_t) = 0.5 · 1.4
        biased, bias_scale = True, 0.5 * 1.4

        def bias(self, num_queries, device):
            return bias

    out, probs = biased_attention(attn, x, context, Binding())

    with torch.no_grad():
        q = (x @ attn.to_q.weight.T).view(3, 20, 2, 8).transpose(1, 2)
        k = (context @ attn.to_k.weight.T).view(3, 7, 2, 8).transpose(1, 2)
        v = (context @ attn.to_v.weight.T).view(3, 7, 2, 8).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(8)
        eta = 0.7 * s.amax(dim=(-1, -2), keepdim=True)  # λ_t = w' log(1+σ) · max(QKᵀ/√d)
        p = torch.softmax(s + eta * bias[:, None], -1)
        ref = (p @ v).transpose(1, 2).reshape(3, 20, 16) @ attn.to_out[0].weight.T + attn.to_out[0].bias
        plain = AttnProcessor2_0()(attn, x, context)
        unbiased, _ = biased_attention(attn, x, context)
    torch.testing.assert_close(probs, p)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(unbiased, plain, atol=1e-6, rtol=1e-5)  # without bias it is the stock attention


# ---------------------------------------------------------------------- invariants in the pipeline
def run(pipe, method="gradop_plus", seed=0, **kwargs):
    extra = dict(grad_steps=3) if method == "gradop" else {}
    return get_method(method)(pipe, PROMPT, draw_painting(), generator=gen(seed), **FAST, **extra, **kwargs).images


@pytest.mark.parametrize("method", ["gradop_plus", "gradop", "sdedit", "loopback", "text2img"])
def test_every_method_binds_regions_and_weight_zero_changes_nothing(pipe, method):
    extra = dict(region_image=draw_painting()) if method == "text2img" else {}
    plain = run(pipe, method)
    bound = run(pipe, method, regions={RED: "ball", GREEN: ("grass", 0.5)}, **extra)
    off = run(pipe, method, regions={RED: "ball", GREEN: ("grass", 0.5)}, region_weight=0, **extra)
    not_yet = run(pipe, method, regions={RED: "ball"}, region_step_fraction=0.0, **extra)
    assert np.isfinite(bound).all() and np.abs(bound - plain).max() > 1e-3
    assert np.array_equal(off, plain) and np.array_equal(not_yet, plain)


def test_empty_region_changes_nothing_and_is_reported(pipe):
    one = run(pipe, regions={RED: "ball"})
    with pytest.warns(UserWarning, match="#ff00ff \\('grass'\\) covers no pixel of image"):
        two = run(pipe, regions={RED: "ball", "#ff00ff": "grass"})
    assert np.array_equal(one, two)  # the bias runs in both; the empty mask adds exactly nothing


def test_unconditional_branch_is_untouched(pipe):
    outputs = []
    hook = pipe.unet.register_forward_hook(lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple)
                                                                                      else out.sample))
    try:
        run(pipe)
        plain = outputs[0]
        outputs.clear()
        run(pipe, regions={RED: "ball", GREEN: "grass"}, region_weight=1.0)
        bound = outputs[0]
    finally:
        hook.remove()
    # the first UNet call sees the same latents: [unconditional; conditional] rows
    assert torch.equal(bound[:1], plain[:1])
    assert (bound[1:] - plain[1:]).abs().max() > 1e-4


def test_processors_are_restored_even_when_the_call_raises(pipe):
    before = pipe.unet.attn_processors
    run(pipe, regions={RED: "ball"})
    assert pipe.unet.attn_processors == before

    def fail(*args):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run(pipe, regions={RED: "ball"}, callback_on_step_end=fail)
    assert pipe.unet.attn_processors == before
    assert np.array_equal(run(pipe, regions={RED: "ball"}), run(pipe, regions={RED: "ball"}))  # usable again


def test_recording_attention_does_not_change_the_image(pipe):
    store = AttentionStore()
    assert np.array_equal(run(pipe, attention_store=store), run(pipe))
    maps = store.maps()
    assert sorted(maps) == [(4, 4), (8, 8)]  # both cross-attention resolutions of the tiny UNet
    for grid, m in maps.items():
        assert m.shape == (1, 77, *grid) and torch.allclose(m.sum(1), torch.ones(1, *grid), atol=1e-5)
    assert store.maps(size=(64, 64)).shape == (1, 77, 64, 64)
    store.reset()
    with pytest.raises(ValueError, match="store is empty"):
        store.maps()


# ---------------------------------------------------------------------- the effect
def mass_ratios(pipe, phrase, color, dtype=torch.float32, **kwargs):
    """Per resolution: mean attention of the phrase's tokens inside its region / outside it."""
    store = AttentionStore()
    run(pipe, attention_store=store, **kwargs)
    mask = region_masks(draw_painting(), [color])[0].float()[None, None]
    tokens = token_positions(pipe.tokenizer, PROMPT, phrase)
    ratios = {}
    for grid, maps in store.maps().items():
        inside = F.interpolate(mask, size=grid, mode="area")[0, 0] >= 0.5
        mass = maps[:, tokens].sum(1)  # [B, h, w]
        ratios[grid] = float(mass[:, inside].mean() / mass[:, ~inside].mean())
    return ratios


@pytest.mark.parametrize("phrase,color", [("ball", RED), ("grass", GREEN)])
def test_binding_moves_attention_into_the_region_at_every_resolution(pipe, phrase, color):
    plain = mass_ratios(pipe, phrase, color)
    bound = mass_ratios(pipe, phrase, color, regions={color: phrase}, region_weight=0.4)
    kept_out = mass_ratios(pipe, phrase, color, regions={color: (phrase, -1.0)}, region_weight=0.4)
    print(f"{phrase}: inside/outside attention ratio per resolution: plain {plain}, bound {bound}, negative {kept_out}")
    for grid in plain:
        assert bound[grid] > 1.1 * plain[grid]
        assert kept_out[grid] < plain[grid] / 1.1


def test_stronger_weight_binds_more(pipe):
    weak = mass_ratios(pipe, "ball", RED, regions={RED: "ball"}, region_weight=0.2)
    strong = mass_ratios(pipe, "ball", RED, regions={RED: "ball"}, region_weight=0.8)
    assert all(strong[g] > weak[g] for g in weak)


# ---------------------------------------------------------------------- schedulers, batches, dtypes
@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "dpm", "euler"])
def test_schedulers_and_batches(scheduler):
    pipe = GradOPPipeline(**tiny_components(scheduler=scheduler))
    pipe.set_progress_bar_config(disable=True)
    prompts = [PROMPT, "grass and a red ball"]
    gens = [gen(s) for s in range(4)]
    regions = {RED: "ball", GREEN: "grass"}
    batch = pipe.gradop_plus(prompts, draw_painting(), num_images_per_prompt=2, generator=gens, regions=regions,
                             **FAST).images
    plain = pipe.gradop_plus(prompts, draw_painting(), num_images_per_prompt=2, generator=[gen(s) for s in range(4)],
                             **FAST).images
    assert np.isfinite(batch).all() and np.abs(batch - plain).max() > 1e-3
    # image j of the batch is the single run with generator j: the bias is per image (float rounding aside: Adam's
    # normalised steps can turn a batched sum's last bit into a visible step, up to the README's 1 of 255)
    for j in (0, 3):
        single = pipe.gradop_plus(prompts[j // 2], draw_painting(), generator=gen(j), regions=regions, **FAST).images
        np.testing.assert_allclose(batch[j], single[0], atol=1 / 255)


def test_one_painting_per_prompt_gives_each_its_own_masks(pipe):
    flipped = draw_painting().transpose(PIL.Image.Transpose.FLIP_TOP_BOTTOM)
    both = pipe.gradop_plus([PROMPT, PROMPT], [draw_painting(), flipped], generator=[gen(0), gen(1)],
                            regions={RED: "ball"}, **FAST).images
    second = pipe.gradop_plus(PROMPT, flipped, generator=gen(1), regions={RED: "ball"}, **FAST).images
    np.testing.assert_allclose(both[1], second[0], atol=1e-4)


def test_bf16_binds_like_fp32(components):
    pipe = GradOPPipeline(**components).to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    plain = mass_ratios(pipe, "ball", RED)
    bound = mass_ratios(pipe, "ball", RED, regions={RED: "ball"})
    assert all(bound[g] > 1.1 * plain[g] for g in plain)
    image = run(pipe, regions={RED: "ball"})
    fp32 = GradOPPipeline(**tiny_components())
    fp32.set_progress_bar_config(disable=True)
    assert np.isfinite(image).all() and np.abs(image - run(fp32, regions={RED: "ball"})).mean() < 0.05


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,error,message", [
    (dict(regions={"#12345": "ball"}), ValueError, "regions key '#12345': '#12345' is not a colour"),
    (dict(regions={RED: "car"}), ValueError, r"the phrase 'car' .* is not whole words of the prompt .* whose words are \['a', 'red'"),
    (dict(regions={RED: "bal"}), ValueError, r"the phrase 'bal' .* is not whole words of the prompt .*; did you mean 'ball'\?"),
    (dict(regions={RED: ("ball", float("nan"))}), ValueError, "weight must be a finite number"),
    (dict(regions={RED: ("ball", float("inf"))}), ValueError, "weight must be a finite number"),
    (dict(regions={RED: "ball"}, region_weight=float("nan")), ValueError, "region_weight must be a finite number"),
    (dict(regions={RED: "ball"}, region_weight=float("inf")), ValueError, "region_weight must be a finite number"),
    (dict(regions={RED: "ball"}, region_step_fraction=1.5), ValueError, "region_step_fraction must be in"),
    (dict(regions=[RED, "ball"]), TypeError, "regions must be a dict"),
    (dict(regions={RED: ("ball",)}), TypeError, "must be a phrase or a \\(phrase, weight\\) pair"),
    (dict(regions={RED: " "}), ValueError, "the phrase is empty"),
    (dict(regions={RED: "ball", "#C82828": "sky"}), ValueError, "colour #c82828 is listed twice"),
    (dict(regions={RED: "a", GREEN: "b", BLUE: "a b"}, prompt="a b"), ValueError,
     "regions name 3 different phrases but the prompt 'a b' has only 2 tokens"),
    (dict(regions={RED: "ball"}, attention_store={}), TypeError, "attention_store must be a gradop.regions.AttentionStore"),
    (dict(regions={RED: "ball"}, region_image=[draw_painting()] * 3), ValueError, "region_image has 3 entries"),
])
def test_bad_region_input(pipe, kwargs, error, message):
    prompt = kwargs.pop("prompt", PROMPT)
    with pytest.raises(error, match=message):
        pipe.gradop_plus(prompt, draw_painting(), generator=gen(), **FAST, **kwargs)


def test_text2img_regions_need_a_painting(pipe):
    with pytest.raises(ValueError, match="pass region_image="):
        pipe.text2img(PROMPT, regions={RED: "ball"}, generator=gen(), **FAST)


def test_region_image_of_another_size_is_resized_and_said(pipe):
    big = draw_painting(128, 96)
    with pytest.warns(UserWarning, match="region_image is 128x96 but the output is 64x64; its region masks were resized"):
        resized = run(pipe, regions={RED: "ball"}, region_image=big)
    same = run(pipe, regions={RED: "ball"}, region_image=draw_painting())
    plain = run(pipe)
    # the same layout at another size binds nearly as the painting itself does
    assert np.abs(resized - same).mean() < 0.5 * np.abs(same - plain).mean()


def test_regions_do_not_leak_warnings_when_all_is_well(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = run(pipe, regions={RED: "ball", GREEN: "grass", BLUE: "sky"})
    assert image.shape == (1, 64, 64, 3)
