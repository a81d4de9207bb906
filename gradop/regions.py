"""Region semantics: bind phrases of the prompt to painted colour regions (method.md §4).

The user says what each stroke colour becomes, ``{"#2a7a2a": "forest", "#3060c0": "lake"}``,
with no training, the eDiff-I "paint-with-words" way:

1. Masks from colours (`gradop.colors`: `extract_palette`, `region_masks`, re-exported here).
2. Tokens: the positions of each phrase in the tokenised prompt (`token_positions`).
3. Biased cross-attention on the conditional half of classifier-free guidance
   (`RegionAttnProcessor`, installed by `attention_control`; the bias is `region_bias`):

       softmax(QKᵀ/√d + λ_t W),   W[i, j] = Σ_k ρ_k M_k[i] 1[j ∈ tokens_k],
       λ_t = w' log(1 + σ_t) max(QKᵀ/√d),   σ_t = √((1 − ᾱ_t) / ᾱ_t)

   w' is `region_weight`, ρ_k a per-region weight (negative keeps a phrase *out* of a region).
   λ_t is eDiff-I's η_t, renamed here so it is not confused with DDIM's `eta`.

`AttentionStore` records the per-token cross-attention maps of a run, for figures.
"""
from __future__ import annotations

import difflib
import math
import numbers
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .colors import extract_palette, parse_color, region_masks, to_hex  # noqa: F401 (re-exported: gradop.regions.*)

# ---------------------------------------------------------------------- phrases and tokens
def token_positions(tokenizer, prompt: str, phrase: str) -> list[int]:
    """Positions of `phrase`'s tokens in the encoded `prompt` (start-of-text token at 0).

    Every occurrence is bound: in "a red house next to a red car", "red" binds both. Put the
    phrase once in the prompt, or bind a longer phrase ("red car"), to bind one of them.
    Occurrences past the tokenizer's length limit are not found.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    target = tokenizer(phrase, add_special_tokens=False).input_ids
    positions = []
    for start in range(len(ids) - len(target) + 1):
        if target and ids[start:start + len(target)] == target:
            positions.extend(range(start, start + len(target)))
    return sorted(set(positions))


def _in_tokens(tokenizer, prompt: str, phrase: str) -> bool:
    """Whether `phrase`'s tokens occur in the whole of `prompt`'s, the length limit aside."""
    words, target = tokenizer.tokenize(prompt), tokenizer.tokenize(phrase)
    return bool(target) and any(words[i:i + len(target)] == target for i in range(len(words) - len(target) + 1))


@dataclass(frozen=True)
class Region:
    color: tuple[int, int, int]
    phrase: str
    weight: float = 1.0  # ρ_k; below zero keeps the phrase out of the region


def parse_regions(regions) -> list[Region]:
    """`{colour: phrase}` or `{colour: (phrase, weight)}` -> `[Region]`, with clear errors."""
    if not isinstance(regions, Mapping):
        raise TypeError("regions must be a dict {colour: phrase} or {colour: (phrase, weight)}, "
                        f"e.g. {{'#2a7a2a': 'forest'}}; got {type(regions).__name__}")
    parsed = []
    for color, spec in regions.items():
        rgb = parse_color(color, f"regions key {color!r}")
        if isinstance(spec, str):
            phrase, weight = spec, 1.0
        elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
            phrase, weight = spec
        else:
            raise TypeError(f"regions[{color!r}] must be a phrase or a (phrase, weight) pair, got {spec!r}")
        if not phrase.strip():
            raise ValueError(f"regions[{color!r}]: the phrase is empty; name what the region becomes, e.g. 'forest'")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise ValueError(f"regions[{color!r}]: the weight must be a finite number (1 by default, "
                             f"negative to keep the phrase out), got {weight!r}")
        if any(r.color == rgb for r in parsed):
            raise ValueError(f"regions: colour {to_hex(rgb)} is listed twice")
        parsed.append(Region(rgb, phrase.strip(), float(weight)))
    return parsed


# ---------------------------------------------------------------------- what one call binds
def query_grid(size: tuple[int, int], num_queries: int) -> tuple[int, int]:
    """The (h, w) query grid of an attention layer over a `size` latent: `size` halved (rounding up, as strided
    convs do) until it holds `num_queries`."""
    h, w = size
    while h * w > num_queries:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != num_queries:
        raise ValueError(f"cannot place {num_queries} attention queries on a grid of the {tuple(size)} output")
    return h, w


class RegionBinding:
    """The bias of one pipeline call, and the state its processors read during the run.

    Args:
        masks (`torch.Tensor`): `[B, K, H, W]` in [0, 1], region k of image b at the output size.
        tokens (`torch.Tensor`): `[B, K, T]`, 1 where token j of image b's prompt names region k.
        weights (`torch.Tensor`): `[K]` per-region weights ρ_k.
        region_weight (`float`): the global weight w'.
        step_fraction (`float`): the bias applies during the first `step_fraction` of each pass's steps.
        schedule ([`~gradop.noise_schedule.NoiseSchedule`]): the sampler's noise schedule, for σ_t.
        store ([`AttentionStore`], *optional*): records the conditional branch's attention maps.
    """

    def __init__(self, masks, tokens, weights, region_weight=0.0, step_fraction=1.0, schedule=None, store=None):
        self.masks, self.tokens, self.weights = masks.float(), tokens.float(), weights.float()
        self.region_weight, self.step_fraction, self.store = float(region_weight), float(step_fraction), store
        self.schedule = schedule
        self.batch_size, self.size = masks.shape[0], tuple(masks.shape[-2:])
        self.sigma: float | None = None  # σ_t of the current step while the bias applies, else None
        self._bias: dict[tuple, torch.Tensor] = {}  # W per (resolution, device)

    @classmethod
    def empty(cls, batch_size: int, size: tuple[int, int], store=None) -> "RegionBinding":
        """No regions: only records attention (for an `AttentionStore`)."""
        return cls(torch.zeros(batch_size, 0, *size), torch.zeros(batch_size, 0, 0), torch.zeros(0), store=store)

    @property
    def biased(self) -> bool:
        return self.sigma is not None

    @property
    def bias_scale(self) -> float:
        """w' log(1 + σ_t) of the current step: λ_t = bias_scale · max(QKᵀ/√d)."""
        return self.region_weight * math.log1p(self.sigma)

    def start_step(self, index: int, num_steps: int, timestep) -> None:
        """Called by the sampling loop before each UNet evaluation: sets σ_t while the bias applies."""
        active = index < self.step_fraction * num_steps and self.masks.shape[1] and self.region_weight
        if not active:
            self.sigma = None
            return
        self.sigma = self.schedule.sigma(timestep)  # σ_t = √((1 − ᾱ_t) / ᾱ_t)

    def grid(self, num_queries: int) -> tuple[int, int]:
        """The (h, w) query grid of a layer (`query_grid`)."""
        return query_grid(self.size, num_queries)

    def bias(self, num_queries: int, device) -> torch.Tensor:
        """W at a layer's resolution, `[B, N, T]`: Σ_k ρ_k M_k[i] 1[j ∈ tokens_k]."""
        key = (num_queries, str(device))
        if key not in self._bias:
            masks = F.interpolate(self.masks, size=self.grid(num_queries), mode="area").flatten(2)  # [B, K, N]
            self._bias[key] = torch.einsum("bkn,k,bkt->bnt", masks, self.weights, self.tokens).to(device)
        return self._bias[key]


def bind_regions(regions, prompts: list[str], tokenizer, paintings: list, names: list[str], batch_size: int,
                 size: tuple[int, int], *, region_weight: float, step_fraction: float, schedule,
                 store=None, tolerance: float = 40.0) -> RegionBinding:
    """Masks, token indicators and weights of `regions` for a batch of `batch_size` images.

    `paintings` (one for all prompts, or one per prompt) give the masks; a painting of another size
    than the output `size` has its masks resized, with a warning. Every phrase must be in every prompt.
    """
    parsed = parse_regions(regions)
    phrases = {r.phrase for r in parsed}
    tokens = torch.zeros(len(prompts), len(parsed), tokenizer.model_max_length)
    for p, prompt in enumerate(prompts):
        available = len(tokenizer.tokenize(prompt))
        if len(phrases) > available:
            raise ValueError(f"regions name {len(phrases)} different phrases but the prompt {prompt!r} has only "
                             f"{available} tokens; each phrase must be words of the prompt")
        for k, region in enumerate(parsed):
            positions = token_positions(tokenizer, prompt, region.phrase)
            if not positions and _in_tokens(tokenizer, prompt, region.phrase):  # there, but cut off by the limit
                raise ValueError(f"regions: the phrase {region.phrase!r} is past the tokenizer's "
                                 f"{tokenizer.model_max_length}-token limit in the prompt {prompt!r}; shorten the prompt")
            if not positions:  # "mountain" in "snowy mountains": a part of a word is no token sequence of the prompt
                near = difflib.get_close_matches(region.phrase, prompt.split(), n=1)
                raise ValueError(f"regions: the phrase {region.phrase!r} (colour {to_hex(region.color)}) is not "
                                 f"whole words of the prompt {prompt!r}"
                                 + (f"; did you mean {near[0]!r}?" if near else f", whose words are {prompt.split()}.")
                                 + " Bind words of the prompt, or add the phrase to it")
            tokens[p, k, positions] = 1

    masks = []
    for painting, name in zip(paintings, names):
        painting_masks = region_masks(painting, [r.color for r in parsed], tolerance)
        warn_empty_regions(painting_masks, parsed, name)
        painting_masks = painting_masks[None].float()
        if tuple(painting_masks.shape[-2:]) != tuple(size):
            (h, w), (out_h, out_w) = painting_masks.shape[-2:], size
            warnings.warn(f"{name} is {w}x{h} but the output is {out_w}x{out_h}; its region masks were resized to "
                          "the output size", stacklevel=4)
            painting_masks = F.interpolate(painting_masks, size=tuple(size), mode="bilinear", antialias=True)
        masks.append(painting_masks[0])
    masks = torch.stack(masks).repeat_interleave(batch_size // len(masks), dim=0)
    tokens = tokens.repeat_interleave(batch_size // len(prompts), dim=0)
    weights = torch.tensor([r.weight for r in parsed])
    return RegionBinding(masks, tokens, weights, region_weight, step_fraction, schedule, store)


def warn_empty_regions(masks: torch.Tensor, regions: list[Region], name: str) -> None:
    """Colours that cover no pixel of a painting are kept (they change nothing there) and said."""
    for mask, region in zip(masks, regions):
        if not mask.any():
            warnings.warn(f"regions: colour {to_hex(region.color)} ({region.phrase!r}) covers no pixel of {name}; "
                          "it has no effect there (gradop.regions.extract_palette lists the painting's colours)",
                          stacklevel=5)


# ---------------------------------------------------------------------- attention
def region_bias(scores: torch.Tensor, bias: torch.Tensor, scale) -> torch.Tensor:
    """λ_t W, the term added to the attention scores: λ_t = w' log(1 + σ_t) max(QKᵀ/√d).

    `scores` `[B, heads, N, T]` are QKᵀ/√d; `bias` `[B, N, T]` is W; `scale` is w' log(1 + σ_t), one
    number or `[B]`, one per image (the toy's training draws them per image). The max is taken per image
    and head, and as 0 if negative, so a positive weight always raises the bound tokens.
    """
    peak = scores.amax(dim=(-2, -1), keepdim=True).clamp_min(0)  # max(QKᵀ/√d)
    scale = torch.as_tensor(scale, dtype=scores.dtype, device=scores.device).reshape(-1, 1, 1, 1)
    return scale * peak * bias[:, None].to(scores)


def biased_attention(attn, hidden_states, encoder_hidden_states, binding=None, temb=None):
    """Cross-attention of one diffusers `Attention` layer, with probabilities, biased by `binding` if given.

    Returns `(output, probs)`, probs `[B, heads, N, T]` = softmax(QKᵀ/√d + λ_t W) (see `region_bias`).
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    spatial = hidden_states.shape if hidden_states.ndim == 4 else None
    if spatial is not None:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query, key, value = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
    batch, head_dim = query.shape[0], key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    scores = query.float() @ key.float().transpose(-1, -2) * attn.scale  # QKᵀ/√d, [B, heads, N, T]
    if binding is not None and binding.biased:
        scores = scores + region_bias(scores, binding.bias(scores.shape[-2], scores.device), binding.bias_scale)
    probs = scores.softmax(dim=-1)

    out = (probs.to(value.dtype) @ value).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
    out = attn.to_out[1](attn.to_out[0](out))
    if spatial is not None:
        out = out.transpose(-1, -2).reshape(spatial)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor, probs


class RegionAttnProcessor:
    """Wraps a cross-attention layer's own processor (e.g. `AttnProcessor2_0`).

    Without bias or recording it *is* the wrapped processor. With a bias, the unconditional rows
    of the classifier-free-guidance batch still go through the wrapped processor untouched, and
    only the conditional rows (the last `binding.batch_size`) get the biased attention.
    """

    def __init__(self, processor, binding: RegionBinding):
        self.processor, self.binding = processor, binding

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        binding = self.binding
        if encoder_hidden_states is None or attention_mask is not None or not (binding.biased or binding.store):
            return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kw)
        split = hidden_states.shape[0] - binding.batch_size  # rows before this are the unconditional branch
        num_queries = hidden_states[0, 0].numel() if hidden_states.ndim == 4 else hidden_states.shape[1]
        if binding.biased:
            cond, probs = biased_attention(attn, hidden_states[split:], encoder_hidden_states[split:], binding, temb)
            out = cond if split == 0 else torch.cat([
                self.processor(attn, hidden_states[:split], encoder_hidden_states[:split], None, temb), cond])
        else:  # record only: the output stays the wrapped processor's own
            out = self.processor(attn, hidden_states, encoder_hidden_states, None, temb, *args, **kw)
            probs = biased_attention(attn, hidden_states[split:], encoder_hidden_states[split:], temb=temb)[1]
        if binding.store is not None:
            binding.store.add(probs, binding.grid(num_queries))
        return out


@contextmanager
def attention_control(unet, binding: RegionBinding | None):
    """Install `RegionAttnProcessor`s on every cross-attention layer of `unet`; restore the originals on exit."""
    if binding is None:
        yield
        return
    originals = unet.attn_processors
    wrapped = {name: RegionAttnProcessor(processor, binding)
               if getattr(unet.get_submodule(name.removesuffix(".processor")), "is_cross_attention", False)
               else processor for name, processor in originals.items()}
    unet.set_attn_processor(wrapped)
    try:
        yield
    finally:
        unet.set_attn_processor(dict(originals))


class AttentionStore:
    """Per-token cross-attention maps of the conditional branch, for figures.

    Pass one as `attention_store=` to any pipeline method; afterwards `maps()` holds, for each
    resolution, the attention probabilities averaged over heads, layers and denoising steps.
    Calls accumulate until `reset()`.

        store = AttentionStore()
        pipe.gradop_plus(prompt, painting, regions={"#2a7a2a": "forest"}, attention_store=store)
        maps = store.maps(size=(64, 64))               # [B, T, 64, 64]
        forest = maps[0, token_positions(pipe.tokenizer, prompt, "forest")].mean(0)
    """

    def __init__(self):
        self._sums: dict[tuple[int, int], torch.Tensor] = {}
        self._counts: dict[tuple[int, int], int] = {}

    def add(self, probs: torch.Tensor, grid: tuple[int, int]) -> None:
        """Record `[B, heads, N, T]` probabilities of one layer at its (h, w) grid."""
        mean = probs.detach().float().mean(1).cpu()  # over heads, [B, N, T]
        self._sums[grid] = self._sums[grid] + mean if grid in self._sums else mean
        self._counts[grid] = self._counts.get(grid, 0) + 1

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return sorted(self._sums, reverse=True)

    def maps(self, size: tuple[int, int] | None = None):
        """`{(h, w): [B, T, h, w]}` averages per resolution, or with `size` their mean resized to it, `[B, T, *size]`."""
        if not self._sums:
            raise ValueError("the attention store is empty: pass it as attention_store= to a pipeline call first")
        per_grid = {grid: (self._sums[grid] / self._counts[grid]).transpose(1, 2).unflatten(2, grid)
                    for grid in self.resolutions}
        if size is None:
            return per_grid
        return torch.stack([F.interpolate(m, size=tuple(size), mode="bilinear") for m in per_grid.values()]).mean(0)

