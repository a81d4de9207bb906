"""Loading a pipeline by name: Stable Diffusion (hub id or folder), the bundled toy model, or tiny random weights."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from .testing import (TINY, TINY_FLUX, TINY_NAMES, TINY_SD3, TINY_XL, tiny_flux_pipeline, tiny_pipeline,
                      tiny_sd3_pipeline, tiny_sdxl_pipeline)

SD_V1_4 = "CompVis/stable-diffusion-v1-4"
TOY_MODEL = Path(__file__).parent / "toy" / "model"
TOY_PAINTING_DECODER = TOY_MODEL.parent / "painting_decoder"  # distilled from the toy VAE (opt-in: load_painting_decoder)
TOY_TRUNCATED_DECODER = TOY_MODEL / "painting_decoder"  # the toy model's own: its VAE's decoder cut at 32², a head
TAESD = "madebyollin/taesd"  # the tiny decoder for Stable Diffusion v1 latents
TAESDXL = "madebyollin/taesdxl"  # the same architecture, for SDXL latents
TAESD3 = "madebyollin/taesd3"  # over 16 latent channels, for Stable Diffusion 3 latents
TAEF1 = "madebyollin/taef1"  # over 16 latent channels, for FLUX latents
# model_index.json's `_class_name` -> the family it belongs to: GradOPPipeline (SD 1.x/2.x) or a CallbackPipeline
SD_CLASSES = ("GradOPPipeline", "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
CALLBACK_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusion3Pipeline",
                    "StableDiffusion3Img2ImgPipeline", "FluxPipeline", "FluxImg2ImgPipeline")
FLOW_CLASSES = ("StableDiffusion3", "Flux")  # the flow-matching families among CALLBACK_CLASSES (by name prefix)
NAMES = ("auto", "toy", *TINY_NAMES)  # the models `load_pipeline` knows by name
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded on this machine (offline, not downloaded, ...)."""


def resolve_device(device=None) -> torch.device:
    """`None`/"auto": CUDA when present, else Apple's MPS, else the CPU."""
    given = device
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # e.g. "meta": holds no values to compute with
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {given!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return device


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """`None`/"auto": fp16 on a GPU, fp32 on the CPU (where fp16 is slow); or a name / torch dtype."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")


def load_pipeline(model: str = "auto", device=None, dtype=None, scheduler: str = "ddim", verbose: bool = True):
    """A ready pipeline: a `GradOPPipeline` for Stable Diffusion 1.x/2.x and the toy model, a `CallbackPipeline`
    (the same method names) for SDXL, Stable Diffusion 3 and FLUX.

    Args:
        model: ``"auto"`` (Stable Diffusion v1.4 from the local cache, or downloaded when online; else the
            toy model, saying so), ``"toy"`` (the bundled toy-world model: offline, seconds on a CPU),
            ``"tiny"`` / ``"tiny-xl"`` / ``"tiny-sd3"`` / ``"tiny-flux"`` (random weights shaped like SD 1 / SDXL /
            SD3 / FLUX, for tests: outputs are noise), a local pipeline folder or a hub id (Stable Diffusion
            1.x/2.x, SDXL, Stable Diffusion 3 or FLUX).
        device, dtype: see `resolve_device`, `resolve_dtype`.
        scheduler: a name from `gradop.schedulers.SCHEDULERS`; ``"ddim"`` is the released configuration. Flow-matching
            models (SD3, FLUX) keep their own Euler sampler, DDIM's flow-matching counterpart (``"ddim"`` or
            ``"euler"``).
        verbose: print which model was loaded.
    """
    from .pipeline import GradOPPipeline

    check_model_name(model)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if model == "tiny":
        pipe = tiny_pipeline(scheduler=scheduler)
    elif model == "tiny-xl":
        pipe = _callback_pipeline(tiny_sdxl_pipeline(), scheduler)
    elif model == "tiny-sd3":
        pipe = _callback_pipeline(tiny_sd3_pipeline(), scheduler)
    elif model == "tiny-flux":
        pipe = _callback_pipeline(tiny_flux_pipeline(), scheduler)
    elif model == "toy":
        pipe = _load_toy(scheduler)
    elif model == "auto":
        try:
            pipe = _load_stable_diffusion(dtype, scheduler)
        except ModelUnavailableError as err:
            if not TOY_MODEL.is_dir():
                raise
            if verbose:
                print(f"gradop: {str(err).split(':')[0]}; using the bundled toy model instead "
                      "(pass --model with a Stable Diffusion folder or hub id for real photos)", file=sys.stderr)
            pipe = _load_toy(scheduler)
            dtype = torch.float32 if device.type == "cpu" else dtype
    else:
        local_only = _offline() or Path(model).is_dir()
        with loading("model", model):
            family, config = _pipeline_class(model, local_only)
        if family in CALLBACK_CLASSES:
            import diffusers

            cls = getattr(diffusers, family.replace("Img2Img", ""))
            if family.startswith(FLOW_CLASSES):
                check_flow_scheduler(scheduler, cls.__name__)  # before minutes of loading
            # a folder saved without T5 (SD3 runs without it: text_encoder_3=None) says so by leaving it out
            absent = {name: None for name in ("text_encoder_3", "tokenizer_3")
                      if family.startswith("StableDiffusion3") and config.get(name, [None])[0] is None}
            with loading("model", model):
                loaded = cls.from_pretrained(model, dtype=dtype, local_files_only=local_only, **absent)
            pipe = _callback_pipeline(loaded, scheduler)
        else:
            with loading("model", model):
                pipe = GradOPPipeline.from_pretrained(model, dtype=dtype, scheduler=scheduler,
                                                      local_files_only=local_only)
    pipe = pipe.to(device) if pipe.dtype == dtype else pipe.to(device=device, dtype=dtype)
    if verbose:
        small = f"; GradOP's painting loss goes through its painting_decoder ({type(pipe.painting_decoder).__name__}; " \
                "pass painting_decoder=pipe.vae for the full VAE)" if pipe.painting_decoder is not None else ""
        print(f"gradop: model {model_label(pipe)} on {device} ({str(dtype).replace('torch.', '')}){small}",
              file=sys.stderr)
    return pipe


def _pipeline_class(model: str, local_only: bool) -> tuple[str, dict]:
    """The pipeline class a folder or hub id declares (model_index.json), checked to be one gradop serves, and
    the model_index itself."""
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(model, local_files_only=local_only)
    if not isinstance(config, dict):
        raise ModelUnavailableError(
            f"could not load model '{model}': its model_index.json holds a JSON {type(config).__name__}, not an "
            'object {"_class_name": ..., "unet": [...], ...}; give a diffusers pipeline folder or hub id')
    name = config.get("_class_name", "")
    if name not in SD_CLASSES + CALLBACK_CLASSES:
        raise ModelUnavailableError(
            f"could not load model '{model}': it is a {name or 'pipeline of unknown class'}; gradop serves Stable "
            f"Diffusion 1.x/2.x ({', '.join(SD_CLASSES)}), SDXL, SD3 and FLUX ({', '.join(CALLBACK_CLASSES)}). For another "
            "text-to-image pipeline, pass gradop.PaintingCallback as its callback_on_step_end")
    return name, config


def _callback_pipeline(pipeline, scheduler: str):
    """A diffusers pipeline with the named sampler (the released DDIM by default) on its own noise schedule; a
    flow-matching model (SD3, FLUX) keeps its own Euler sampler, the flow-matching counterpart of DDIM (η = 0)."""
    from .callback_pipeline import CallbackPipeline
    from .schedulers import make_scheduler

    if hasattr(pipeline.scheduler, "scale_noise"):
        check_flow_scheduler(scheduler, type(pipeline).__name__)
    else:
        pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=pipeline.name_or_path in TINY_NAMES.values())
    return CallbackPipeline(pipeline)


def check_flow_scheduler(scheduler: str, pipeline_name: str) -> None:
    """Flow-matching models keep their own sampler: the scheduler names that mean it, or a clear error."""
    if scheduler not in ("ddim", "euler"):
        raise ValueError(f"scheduler {scheduler!r} is not for {pipeline_name}: flow-matching models sample with their "
                         "own FlowMatchEulerDiscreteScheduler (DDIM's flow-matching counterpart); use the default "
                         "scheduler 'ddim' or 'euler'")


def check_model_name(model) -> str:
    """`model` as `load_pipeline` takes it, checked without loading: a `NAMES` entry, a folder or "owner/name"."""
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be one of {', '.join(NAMES)}, a folder or a hub id, got {model!r}")
    hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and all(model.split("/"))
    if model not in NAMES and not Path(model).is_dir() and not hub_id:
        raise ValueError(f"model must be one of {', '.join(NAMES)}, a pipeline folder or a hub id: '{model}' is "
                         "not a folder, and not a hub id of the form 'owner/name'")
    return model


def is_toy_model(pipe) -> bool:
    """Whether `pipe` was loaded from the bundled toy model's folder (diffusers' `name_or_path`)."""
    name = getattr(pipe, "name_or_path", None)
    return bool(name) and Path(name).resolve() == TOY_MODEL.resolve()


def model_label(pipe) -> str:
    """What a pipeline is, for messages and figures: the toy model, the tiny test model, or its `name_or_path`."""
    if is_toy_model(pipe):
        return "toy (the bundled toy-world model)"
    name = getattr(pipe, "name_or_path", None) or "a pipeline built in code"
    if name == TINY:
        return "tiny (random weights for testing: outputs are noise)"
    shapes = {TINY_XL: ("tiny-xl", "SDXL"), TINY_SD3: ("tiny-sd3", "Stable Diffusion 3"), TINY_FLUX: ("tiny-flux", "FLUX")}
    if name in shapes:
        return f"{shapes[name][0]} (random weights shaped like {shapes[name][1]}, for testing: outputs are noise)"
    return f"{name} (Stable Diffusion v1.4)" if name == SD_V1_4 else name


@contextlib.contextmanager
def loading(what: str, name: str):
    """The one way a model or painting decoder that fails to load is reported: a `ModelUnavailableError` in one
    line naming it, the cause, and what to do (a damaged weights file raised a SafetensorError traceback)."""
    try:
        yield
    except ModelUnavailableError:
        raise
    except Exception as err:  # noqa: BLE001 — whatever the libraries raise, the model cannot be had
        cause = " ".join(str(err).split())
        cause = cause if len(cause) <= 300 else cause[:297] + "..."
        if Path(name).is_dir():
            fix = "its files may be damaged or incomplete: copy or download the folder again"
        else:
            fix = "check the id, or " + ("download it once online (HF_HUB_OFFLINE is set)" if _offline()
                                          else "check the network")
        raise ModelUnavailableError(f"could not load {what} '{name}' ({type(err).__name__}: {cause}); {fix}, "
                                    f"or choose another {what} (toy is bundled)") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load_toy(scheduler):
    from .pipeline import GradOPPipeline

    if not TOY_MODEL.is_dir():
        raise ModelUnavailableError(f"the toy model is missing from {TOY_MODEL}; reinstall gradop, or train it "
                                    "with `python -m gradop.toy.train`")
    # It loads in a fraction of a second: no loading bars (in a notebook they become widgets)
    with loading("model", str(TOY_MODEL)), _quiet_loading():
        return GradOPPipeline.from_pretrained(TOY_MODEL, scheduler=scheduler, local_files_only=True)


@contextlib.contextmanager
def _quiet_loading():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    shown = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown[0]:
            diffusers_logging.enable_progress_bar()
        if shown[1]:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_libraries():
    """diffusers' and transformers' warnings silenced (errors still raise) while `auto` probes for a model."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _load_stable_diffusion(dtype, scheduler):
    from .pipeline import GradOPPipeline

    attempts = [True] if _offline() else [True, False]  # the local cache first, then the Hub
    last = None
    for local_only in attempts:
        try:
            with _quiet_libraries():  # their "Couldn't connect to the Hub ..." would come before our one line
                return GradOPPipeline.from_pretrained(SD_V1_4, dtype=dtype, scheduler=scheduler,
                                                      local_files_only=local_only)
        except Exception as err:  # noqa: BLE001 — any failure here means "not available", reported below
            last = err
    raise ModelUnavailableError(
        f"Stable Diffusion v1.4 ({SD_V1_4}) is not available here: not in the local Hugging Face cache"
        + (" and HF_HUB_OFFLINE is set" if _offline() else " and it could not be downloaded")
        + f" ({type(last).__name__}). Download it once online (about 4 GB), pass a local pipeline folder "
        "with --model, or use the bundled toy model (--model toy; --model tiny is random weights)."
    )


def load_painting_decoder(name: str = "toy", device=None, dtype=None):
    """A small decoder for GradOP's painting loss (`painting_decoder=`): diffusers' `AutoencoderTiny`, or a folder
    of `gradop.truncated_decoder.TruncatedDecoder` (the VAE's decoder cut at a lower resolution, with a head) or
    `TruncatedTinyDecoder` (TAESD's, cut the same way).

    Args:
        name: ``"toy"`` (distilled from the toy model's VAE, bundled: `python -m gradop.toy.distill`),
            ``"toy-truncated"`` (the toy model's own: its VAE's decoder up to 32², with a distilled head,
            `TruncatedDecoder`),
            ``"taesd"`` (madebyollin/taesd, for Stable Diffusion v1/v2 latents), ``"taesdxl"`` (madebyollin/taesdxl,
            for SDXL latents), ``"taesd3"`` (madebyollin/taesd3, SD3), ``"taef1"`` (madebyollin/taef1, FLUX); where
            their weights are in the local cache or can be downloaded; or a hub id or a folder.
    """
    from diffusers import AutoencoderTiny

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be 'toy', 'toy-truncated', 'taesd', 'taesdxl', 'taesd3', 'taef1', a hub id or a "
                        f"folder, got {name!r}")
    source = {"toy": TOY_PAINTING_DECODER, "toy-truncated": TOY_TRUNCATED_DECODER, "taesd": TAESD, "taesdxl": TAESDXL,
              "taesd3": TAESD3, "taef1": TAEF1}.get(name, name)
    with loading("painting decoder", str(source)):
        local = _offline() or Path(source).is_dir()
        from . import truncated_decoder  # decoders cut short, with a head: the VAE's or TAESD's

        class_name = AutoencoderTiny.load_config(source, local_files_only=local).get("_class_name")
        kind = {"TruncatedDecoder": truncated_decoder.TruncatedDecoder,
                "TruncatedTinyDecoder": truncated_decoder.TruncatedTinyDecoder}.get(class_name, AutoencoderTiny)
        decoder = kind.from_pretrained(source, local_files_only=local)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    decoder = decoder.to(device)  # (diffusers warns at a dtype cast, even to the dtype it already has)
    return (decoder if decoder.dtype == dtype else decoder.to(dtype=dtype)).eval()
