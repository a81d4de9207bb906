"""from_pretrained / from_pipe / load_pipeline, all offline."""
import numpy as np
import pytest
from conftest import gen
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline

from gradop import GradOPPipeline, load_pipeline
from gradop.models import ModelUnavailableError
from gradop.testing import tiny_components


@pytest.fixture
def sd_folder(tmp_path):
    """A Stable Diffusion-style folder (as diffusers saves it), shipped with SD's PNDM scheduler."""
    c = tiny_components()
    c["scheduler"] = PNDMScheduler.from_config(c["scheduler"].config, skip_prk_steps=True)
    sd = StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(tmp_path / "sd", safe_serialization=True)
    return tmp_path / "sd"


def test_from_pretrained_uses_released_ddim_and_safetensors(sd_folder):
    assert list((sd_folder / "unet").glob("*.safetensors"))
    pipe = GradOPPipeline.from_pretrained(sd_folder)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    cfg = pipe.scheduler.config
    assert (cfg.clip_sample, cfg.set_alpha_to_one, cfg.steps_offset, cfg.timestep_spacing) == (False, False, 1, "leading")
    # same weights: same image as the in-memory pipeline
    mem = GradOPPipeline(**tiny_components())
    a = pipe.text2img("a fox", generator=gen(0), num_inference_steps=4, output_type="np").images
    b = mem.text2img("a fox", generator=gen(0), num_inference_steps=4, output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_from_pretrained_scheduler_by_object_or_name(sd_folder):
    euler = EulerDiscreteScheduler.from_pretrained(sd_folder, subfolder="scheduler")
    assert GradOPPipeline.from_pretrained(sd_folder, scheduler=euler).scheduler is euler
    assert isinstance(GradOPPipeline.from_pretrained(sd_folder, scheduler="euler").scheduler, EulerDiscreteScheduler)


def test_from_pipe_shares_components(sd_folder):
    sd = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None)
    pipe = GradOPPipeline.from_pipe(sd)
    assert pipe.unet is sd.unet and pipe.vae is sd.vae and isinstance(pipe.scheduler, DDIMScheduler)
    assert isinstance(sd.scheduler, PNDMScheduler)  # the original pipeline is left as it was


def test_load_pipeline_folder_and_tiny(sd_folder, capsys):
    pipe = load_pipeline(str(sd_folder), device="cpu")
    assert isinstance(pipe, GradOPPipeline) and str(sd_folder) in capsys.readouterr().err
    pipe = load_pipeline("tiny", dtype="bf16")
    assert "random weights" in capsys.readouterr().err and pipe.unet.dtype.is_floating_point


def test_auto_offline_says_stable_diffusion_is_missing(monkeypatch, tmp_path):
    """Without SD and without the toy model (e.g. a stripped install); with it, auto falls back (test_toy.py)."""
    monkeypatch.setattr("gradop.models.TOY_MODEL", tmp_path / "no-toy-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="Stable Diffusion v1.4 .* is not available here.*--model tiny"):
        load_pipeline("auto")


def test_bad_model_device_dtype():
    with pytest.raises(ValueError, match="not a folder, and not a hub id"):
        load_pipeline("./no/such/folder")
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        load_pipeline("tiny", dtype="fp8")
    with pytest.raises(ValueError, match="device must be"):
        load_pipeline("tiny", device="toaster")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'"):
        load_pipeline("tiny", device="meta")  # a real torch device, but one that holds no values


def test_a_model_index_that_is_not_an_object_names_the_file(tmp_path):
    """It was "pop expected at most 1 argument" (issue 34, item 16)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("[]")
    with pytest.raises(ModelUnavailableError, match=r"model_index.json holds a JSON list, not an object"):
        load_pipeline(str(tmp_path / "model"))


def test_auto_probing_for_stable_diffusion_keeps_the_libraries_quiet(monkeypatch, capsys):
    """Online, diffusers warns "Couldn't connect to the Hub ..." before gradop's own one line: the probe now runs
    with diffusers' and transformers' warnings off (their handlers write past pytest's capture, so the level the
    probe ran at is what is checked), and their levels are restored after it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from gradop.models import SD_V1_4
    from gradop.pipeline import GradOPPipeline

    original, levels_seen = GradOPPipeline.from_pretrained, []

    def unavailable(name, *args, **kwargs):  # Stable Diffusion cannot be had; the toy model loads as before
        if name == SD_V1_4:
            levels_seen.append((diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()))
            raise OSError("no network")
        return original(name, *args, **kwargs)

    monkeypatch.setattr(GradOPPipeline, "from_pretrained", staticmethod(unavailable))
    monkeypatch.setattr("gradop.models._offline", lambda: False)
    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    pipe = load_pipeline("auto")
    assert "using the bundled toy model" in capsys.readouterr().err and pipe is not None
    assert levels_seen == [(diffusers_logging.ERROR, transformers_logging.ERROR)] * 2  # the cache, then the Hub
    assert (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()) == before
