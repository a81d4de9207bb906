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
   In the joint attention of SD3's and FLUX's transformers (`JointRegionAttnProcessor`) the same bias goes on the
   image-query → text-key block of their one softmax; σ_t is then flow matching's σ / (1 − σ).

`AttentionStore` records the per-token cross-attention maps of a run, for figures.
"""
from __future__ import annotations

import difflib
import math
import numbers
import re
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .colors import extract_palette, parse_color, region_masks, to_hex  # noqa: F401 (re-exported: gradop.regions.*)

# ---------------------------------------------------------------------- phrases and tokens
def token_positions(tokenizer, prompt: str, phrase: str, max_length: int | None = None) -> list[int]:
    """Positions of `phrase`'s tokens in the encoded `prompt` (CLIP's start-of-text token at 0; T5 has none).

    Every occurrence is bound: in "a red house next to a red car", "red" binds both. Put the
    phrase once in the prompt, or bind a longer phrase ("red car"), to bind one of them.
    Occurrences past the length limit (`max_length`, default the tokenizer's) are not found.
    """
    ids = tokenizer(prompt, truncation=True, max_length=max_length or tokenizer.model_max_length).input_ids
    target = tokenizer(phrase, add_special_tokens=False).input_ids
    positions = []
    for start in range(len(ids) - len(target) + 1):
        if target and ids[start:start + len(target)] == target:
            positions.extend(range(start, start + len(target)))
    return sorted(set(positions))


def _as_written(prompt: str, phrase: str) -> str:
    """`phrase` as the prompt writes it ("Forest" for "forest"): CLIP lower-cases, T5 does not."""
    found = re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", prompt, flags=re.IGNORECASE)
    return found.group(0) if found else phrase


def _in_tokens(tokenizer, prompt: str, phrase: str) -> bool:
    """Whether `phrase`'s tokens occur in the whole of `prompt`'s, the length limit aside."""
    words, target = tokenizer.tokenize(prompt), tokenizer.tokenize(phrase)
    return bool(target) and any(words[i:i + len(target)] == target for i in range(len(words) - len(target) + 1))


@dataclass(frozen=True)
class TokenSpan:
    """Where one tokenizer's tokens sit in the text sequence the attention layers see: SD 1 and SDXL see CLIP's 77;
    SD3 sees CLIP's 77 then T5's `max_sequence_length`; FLUX sees T5's alone."""

    tokenizer: object
    offset: int = 0
    length: int | None = None  # default: the tokenizer's model_max_length

    @property
    def size(self) -> int:
        return self.tokenizer.model_max_length if self.length is None else self.length


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
        self.text_length = tokens.shape[-1]  # T, the length of the text the attention layers see
        self.sigma: float | None = None  # σ_t of the current step while the bias applies, else None
        self.paused = False  # a repeated model call of the step (FLUX's true-CFG negative pass): left alone
        self._bias: dict[tuple, torch.Tensor] = {}  # W per (resolution, device)

    @classmethod
    def empty(cls, batch_size: int, size: tuple[int, int], store=None, text_length: int = 0) -> "RegionBinding":
        """No regions: only records attention (for an `AttentionStore`)."""
        return cls(torch.zeros(batch_size, 0, *size), torch.zeros(batch_size, 0, text_length), torch.zeros(0),
                   store=store)

    @property
    def biased(self) -> bool:
        return self.sigma is not None

    @property
    def bias_scale(self) -> float:
        """w' log(1 + σ_t) of the current step: λ_t = bias_scale · max(QKᵀ/√d)."""
        return self.region_weight * math.log1p(self.sigma)

    def start_step(self, index: int, num_steps: int, timestep) -> None:
        """Called by the sampling loop before each UNet evaluation: sets σ_t while the bias applies."""
        self.paused = False
        active = index < self.step_fraction * num_steps and self.masks.shape[1] and self.region_weight
        if not active:
            self.sigma = None
            return
        self.sigma = self.schedule.sigma(timestep)  # σ_t = √((1 − ᾱ_t) / ᾱ_t), or σ / (1 − σ) for flow matching

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
                 store=None, tolerance: float = 40.0, text_length: int | None = None) -> RegionBinding:
    """Masks, token indicators and weights of `regions` for a batch of `batch_size` images.

    `tokenizer` is the prompt's tokenizer, or a list of `TokenSpan`s where the text the attention sees joins
    several (SD3: CLIP's then T5's); every phrase must be words of the first span's tokens, and is bound wherever
    each span has it. `text_length` is the length of that text (default: where the last span ends).
    `paintings` (one for all prompts, or one per prompt) give the masks; a painting of another size
    than the output `size` has its masks resized, with a warning. Every phrase must be in every prompt.
    """
    spans = list(tokenizer) if isinstance(tokenizer, (list, tuple)) else [TokenSpan(tokenizer)]
    first = spans[0].tokenizer
    parsed = parse_regions(regions)
    phrases = {r.phrase for r in parsed}
    tokens = torch.zeros(len(prompts), len(parsed), text_length or max(s.offset + s.size for s in spans))
    for p, prompt in enumerate(prompts):
        available = len(first.tokenize(prompt))
        if len(phrases) > available:
            raise ValueError(f"regions name {len(phrases)} different phrases but the prompt {prompt!r} has only "
                             f"{available} tokens; each phrase must be words of the prompt")
        for k, region in enumerate(parsed):
            positions = token_positions(first, prompt, _as_written(prompt, region.phrase), spans[0].size)
            if not positions and _in_tokens(first, prompt, region.phrase):  # there, but cut off by the limit
                raise ValueError(f"regions: the phrase {region.phrase!r} is past the tokenizer's "
                                 f"{spans[0].size}-token limit in the prompt {prompt!r}; shorten the prompt")
            if not positions:  # "mountain" in "snowy mountains": a part of a word is no token sequence of the prompt
                near = difflib.get_close_matches(region.phrase, prompt.split(), n=1)
                raise ValueError(f"regions: the phrase {region.phrase!r} (colour {to_hex(region.color)}) is not "
                                 f"whole words of the prompt {prompt!r}"
                                 + (f"; did you mean {near[0]!r}?" if near else f", whose words are {prompt.split()}.")
                                 + " Bind words of the prompt, or add the phrase to it")
            for span in spans[1:]:  # T5 after CLIP (SD3): cased, and it may split the words otherwise
                found = token_positions(span.tokenizer, prompt, _as_written(prompt, region.phrase), span.size)
                if not found:
                    raise ValueError(f"regions: {type(span.tokenizer).__name__} does not see the phrase "
                                     f"{region.phrase!r} as words of the prompt {prompt!r} (it splits them otherwise, "
                                     "e.g. joined by punctuation), so it could only be bound on CLIP's tokens: write "
                                     "it as words with spaces around them, or shorten the prompt")
                tokens[p, k, [span.offset + j for j in found]] = 1
            tokens[p, k, [spans[0].offset + j for j in positions]] = 1

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


class JointRegionAttnProcessor:
    """Region binding in joint (MMDiT) attention, where image and text tokens attend to each other in one softmax:
    Stable Diffusion 3's `JointAttnProcessor2_0` (image tokens first) and FLUX's `FluxAttnProcessor` (text first;
    its single-stream blocks get both in one sequence). The paint-with-words bias goes on the image-query → text-key
    block only, with the UNet's λ_t (`region_bias`, the max taken over that block):

        softmax([Q_img K_imgᵀ | Q_img K_txtᵀ + λ_t W] / …),   text queries unchanged

    Without bias or recording it *is* the wrapped processor; with one, the conditional rows (the last
    `binding.batch_size`) are computed here, the rest by the wrapped processor. Self-attention over the image alone
    (SD3.5's second attention) has no text to bind and stays the wrapped processor's.
    """

    def __init__(self, processor, binding: RegionBinding, kind: str):
        self.processor, self.binding, self.kind = processor, binding, kind  # kind: "sd3" or "flux"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 *args, **kwargs):
        binding = self.binding

        def wrapped(rows):
            return self.processor(attn, hidden_states[rows], None if encoder_hidden_states is None else
                                  encoder_hidden_states[rows], attention_mask, image_rotary_emb, *args, **kwargs)

        image_only = self.kind == "sd3" and encoder_hidden_states is None
        if image_only or not (binding.biased or binding.store) or binding.paused:
            return wrapped(slice(None))
        if attention_mask is not None:  # a mask this softmax does not apply would be a silently different layer
            raise ValueError("regions cannot be combined with an attention mask in joint attention (passed through "
                             "joint_attention_kwargs); leave one of them out")
        split = hidden_states.shape[0] - binding.batch_size  # rows before this are the unconditional branch
        rows = slice(split, None)
        text = encoder_hidden_states[rows] if encoder_hidden_states is not None else None
        out, probs = self._attend(attn, hidden_states[rows], text, image_rotary_emb)
        if split:
            rest = wrapped(slice(None, split))
            out = tuple(torch.cat([a, b]) for a, b in zip(rest, out)) if isinstance(out, tuple) else torch.cat([rest, out])
        if binding.store is not None:
            binding.store.add(probs, binding.grid(probs.shape[-2]))
        return out

    def _attend(self, attn, hidden_states, text, rotary):
        """The layer's output for the conditional rows with the biased softmax, and its image → text probabilities."""
        binding, length = self.binding, self.binding.text_length
        if self.kind == "sd3":
            query, key, value = _sd3_qkv(attn, hidden_states, text)  # [B, heads, L, d], image tokens first
            num_image = hidden_states.shape[1]
            image, words = slice(0, num_image), slice(num_image, None)
        else:
            query, key, value = _flux_qkv(attn, hidden_states, text, rotary)  # text tokens first
            num_text = text.shape[1] if text is not None else length
            image, words = slice(num_text, None), slice(0, num_text)
        if key.shape[2] - query[:, :, image].shape[2] != length:
            raise ValueError(f"regions: this layer sees {key.shape[2] - query[:, :, image].shape[2]} text tokens but "
                             f"the binding was made for {length}; pass the same max_sequence_length to the pipeline")
        scale = getattr(attn, "scale", query.shape[-1] ** -0.5)  # FLUX's layers leave it to SDPA's default 1/√d
        scores = query.float() @ key.float().transpose(-1, -2) * scale  # QKᵀ/√d, [B, heads, L, L]
        if binding.biased:
            block = scores[:, :, image, words]
            scores[:, :, image, words] = block + region_bias(
                block, binding.bias(block.shape[-2], scores.device), binding.bias_scale)
        probs = scores.softmax(dim=-1)
        out = (probs.to(value.dtype) @ value).transpose(1, 2).flatten(2).to(query.dtype)  # [B, L, heads · d]
        return _joint_output(attn, out, image, words, text is not None, self.kind), probs[:, :, image, words]


def _sd3_qkv(attn, hidden_states, text):
    """Queries, keys and values of SD3's joint attention as `JointAttnProcessor2_0` makes them: [B, heads, L, d]."""
    batch = hidden_states.shape[0]

    def heads(x):
        return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

    query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
    query = attn.norm_q(query) if attn.norm_q is not None else query
    key = attn.norm_k(key) if attn.norm_k is not None else key
    text_query, text_key, text_value = heads(attn.add_q_proj(text)), heads(attn.add_k_proj(text)), heads(attn.add_v_proj(text))
    text_query = attn.norm_added_q(text_query) if attn.norm_added_q is not None else text_query
    text_key = attn.norm_added_k(text_key) if attn.norm_added_k is not None else text_key
    return (torch.cat([query, text_query], dim=2), torch.cat([key, text_key], dim=2),
            torch.cat([value, text_value], dim=2))


def _flux_qkv(attn, hidden_states, text, rotary):
    """Queries, keys and values of FLUX's attention as `FluxAttnProcessor` makes them, text tokens first, with rotary
    positions: [B, heads, L, d]."""
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    query, key, value, text_query, text_key, text_value = _get_qkv_projections(attn, hidden_states, text)
    query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))  # [B, L, heads, d]
    query, key = attn.norm_q(query), attn.norm_k(key)
    if attn.added_kv_proj_dim is not None:
        text_query, text_key, text_value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (text_query, text_key, text_value))
        text_query, text_key = attn.norm_added_q(text_query), attn.norm_added_k(text_key)
        query, key, value = (torch.cat([a, b], dim=1) for a, b in ((text_query, query), (text_key, key), (text_value, value)))
    if rotary is not None:
        query, key = apply_rotary_emb(query, rotary, sequence_dim=1), apply_rotary_emb(key, rotary, sequence_dim=1)
    return tuple(x.transpose(1, 2) for x in (query, key, value))


def _joint_output(attn, out, image: slice, words: slice, has_text_stream: bool, kind: str):
    """The attention output split and projected as the wrapped processor does: (image, text) for a two-stream
    block, the whole sequence for FLUX's single-stream blocks."""
    if not has_text_stream:
        return out
    image_out, text_out = out[:, image], out[:, words]
    image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
    if kind == "flux" or not attn.context_pre_only:
        text_out = attn.to_add_out(text_out.contiguous())
    return image_out, text_out


def _joint_kind(processor) -> str | None:
    """Which joint attention a processor computes, by its class (its own code is what `_sd3_qkv`/`_flux_qkv` read)."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    if type(processor) is JointAttnProcessor2_0:
        return "sd3"
    return "flux" if type(processor) is FluxAttnProcessor else None


@contextmanager
def attention_control(denoiser, binding: RegionBinding | None):
    """Install region processors on every text-attention layer of `denoiser` (a UNet's cross-attention, an MMDiT's
    joint attention); restore the originals on exit. A transformer layer whose attention this cannot bias exactly
    (another processor class) is a clear error, not a layer silently left unbound."""
    if binding is None:
        yield
        return
    originals = denoiser.attn_processors
    unet = any(getattr(m, "is_cross_attention", False) for m in denoiser.modules())
    wrapped = {}
    for name, processor in originals.items():
        if unet:
            layer = denoiser.get_submodule(name.removesuffix(".processor"))
            wrapped[name] = RegionAttnProcessor(processor, binding) if layer.is_cross_attention else processor
            continue
        kind = _joint_kind(processor)
        if kind is None:
            raise ValueError(f"regions: {type(denoiser).__name__}'s layer {name.removesuffix('.processor')} uses "
                             f"{type(processor).__name__}, whose attention gradop cannot bias; region binding works "
                             "with diffusers' own JointAttnProcessor2_0 (SD3) and FluxAttnProcessor (FLUX): call "
                             "transformer.set_default_attn_processor() or leave regions out")
        wrapped[name] = JointRegionAttnProcessor(processor, binding, kind)
    denoiser.set_attn_processor(wrapped)
    try:
        yield
    finally:
        denoiser.set_attn_processor(dict(originals))


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

