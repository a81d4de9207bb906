"""A model declares its own GradOP+ defaults (`config.method_defaults`); Stable Diffusion keeps the release's."""
import pytest
import torch
from conftest import gen

from gradop import GradOPPipeline
from gradop.cli import main
from gradop.methods import METHOD_DEFAULTS, declared_defaults, get_method
from gradop.testing import tiny_components

PROMPT = "a red ball on grass"
DECLARED = {"gradop_plus": {"strength": 0.6, "grad_steps_per_iter": 2, "lr": 0.3}, "gradop": {"strength": 0.5}}


def _declaring(**components):
    p = GradOPPipeline(**tiny_components(seed=0), method_defaults=DECLARED)
    p.set_progress_bar_config(disable=True)
    return p


def test_settings_left_out_take_the_models_declared_defaults(painting):
    pipe = _declaring()
    common = dict(num_inference_steps=10, height=32, width=32, output_type="pt")
    implicit = pipe.gradop_plus(PROMPT, painting, generator=gen(), **common)
    explicit = pipe.gradop_plus(PROMPT, painting, 0.6, 3, 2, lr=0.3, generator=gen(), **common)
    released = pipe.gradop_plus(PROMPT, painting, 0.8, 3, 12, lr=0.1, generator=gen(), **common)
    assert torch.equal(implicit.images, explicit.images)
    # Adam's declared lr is the one the descent takes: the release's 0.1 ends elsewhere
    assert not torch.equal(implicit.images, pipe.gradop_plus(PROMPT, painting, 0.6, 3, 2, lr=0.1, generator=gen(),
                                                             **common).images)
    # the window starts at k0 = int(10 (1 - 0.6)) = 4: after steps 4, 5, 6, not the release's 2, 3, 4
    timesteps = pipe.get_timesteps(10).tolist()
    assert implicit.optimized_timesteps == [timesteps[i + 1] for i in (4, 5, 6)]
    assert len(implicit.loss_history[0]) == 2  # N = 2 steps in each window
    assert not torch.equal(implicit.images, released.images)
    # GradOP's declared strength too
    a = pipe.gradop(PROMPT, painting, grad_steps=2, generator=gen(), **common).images
    b = pipe.gradop(PROMPT, painting, 0.5, 2, generator=gen(), **common).images
    assert torch.equal(a, b)


def test_a_declaration_is_saved_with_the_model_and_sd_declares_none(tmp_path, pipe):
    declaring = _declaring()
    declaring.save_pretrained(tmp_path / "model")
    loaded = GradOPPipeline.from_pretrained(tmp_path / "model")
    assert loaded.config.method_defaults == DECLARED
    assert declared_defaults(loaded, "gradop_plus") == {"strength": 0.6, "num_iterative_steps": 3, "grad_steps_per_iter": 2,
                                                        "lr": 0.3}
    # a pipeline that declares nothing (as Stable Diffusion's) runs the release's 0.8 / 3 / 12
    assert pipe.config.method_defaults is None
    assert declared_defaults(pipe, "gradop_plus") == METHOD_DEFAULTS["gradop_plus"] == {
        "strength": 0.8, "num_iterative_steps": 3, "grad_steps_per_iter": 12, "lr": 0.1}
    method = get_method("gradop+")
    assert method.defaults_for(pipe)["strength"] == 0.8 and method.defaults_for(loaded)["strength"] == 0.6
    assert method.describe_settings(loaded) == \
        "GradOP+ at strength 0.6, K 3, N 2, lr 0.3 (strength, N, lr: the model's own default)"
    assert method.describe_settings(pipe) == "GradOP+ at strength 0.8, K 3, N 12"  # the release's lr goes unsaid
    assert method.describe_settings(pipe, lr=0.2) == "GradOP+ at strength 0.8, K 3, N 12, lr 0.2"
    assert get_method("sdedit").defaults_for(loaded)["strength"] == 0.8  # SDEdit declares nothing


@pytest.mark.parametrize("declared, error, message", [
    ([0.6], TypeError, "method_defaults must be a dict"),
    ({"sdedit": {"strength": 0.5}}, ValueError, "declares defaults for"),
    ({"gradop_plus": {"eta": 0.5}}, ValueError, r"may set \['strength'"),
    ({"gradop": {"lr": 0.5}}, ValueError, r"may set \['strength'\]"),
    ({"gradop_plus": {"lr": -1}}, ValueError, r"method_defaults\['gradop_plus'\]\['lr'\]"),
    ({"gradop_plus": {"strength": 1.5}}, ValueError, r"method_defaults\['gradop_plus'\]\['strength'\]"),
    ({"gradop_plus": {"grad_steps_per_iter": -1}}, ValueError, "grad_steps_per_iter"),
    ({"gradop_plus": {"strength": 0}}, ValueError, "must be > 0: at 0 there is no step left"),
])
def test_bad_declarations_are_refused_when_the_pipeline_is_built(declared, error, message):
    with pytest.raises(error, match=message):
        GradOPPipeline(**tiny_components(seed=0), method_defaults=declared)


def test_the_cli_says_which_defaults_it_used(tmp_path, painting, capsys):
    _declaring().save_pretrained(tmp_path / "model")
    painting.save(tmp_path / "p.png")
    common = ["--model", str(tmp_path / "model"), "--img_path", str(tmp_path / "p.png"), "--prompt", PROMPT,
              "--steps", "10", "--height", "32", "--width", "32"]
    assert main(common + ["--output", str(tmp_path / "a.png")]) == 0
    assert "GradOP+ at strength 0.6, K 3, N 2, lr 0.3 (strength, N, lr: the model's own default)" in capsys.readouterr().err
    assert main(common + ["--output", str(tmp_path / "b.png"), "--strength", "0.8"]) == 0
    assert "GradOP+ at strength 0.8, K 3, N 2, lr 0.3 (N, lr: the model's own default)" in capsys.readouterr().err


def test_the_pad_panel_starts_at_the_models_defaults():
    from gradop.widgets import ScribblePad, SynthesisPanel

    panel = SynthesisPanel(_declaring(), ScribblePad(64, 40))
    assert (panel.strength.value, panel.num_iterative_steps.value, panel.grad_steps_per_iter.value) == (0.6, 3, 2)
    assert "strength 0.6, K 3, N 2, lr 0.3 (strength, N, lr: the model's own default)" in panel.defaults_note.value
    panel.method.value = "SDEdit"
    assert panel.strength.value == 0.8  # SDEdit's own
    panel.method.value = "GradOP"
    assert panel.strength.value == 0.5  # the model's declared GradOP strength


def test_the_sweep_records_the_defaults_each_job_ran_with(tmp_path, painting, capsys):
    import json

    from gradop.sweep import main as sweep

    _declaring().save_pretrained(tmp_path / "model")
    painting.save(tmp_path / "p.png")
    spec = {"model": str(tmp_path / "model"), "method": "gradop+",
            "fixed": {"num_inference_steps": 10, "height": 32, "width": 32, "prompt": PROMPT,
                      "painting": str(tmp_path / "p.png")},
            "grid": {"seed": [0], "grad_steps_per_iter": [1, None]}}
    (tmp_path / "grid.json").write_text(json.dumps(spec))
    assert sweep([str(tmp_path / "grid.json"), "--out", str(tmp_path / "out")]) == 0
    assert "the model's own default" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "out" / "results-0.jsonl").read_text().splitlines()]
    used = sorted((line["settings used"]["grad_steps_per_iter"], line["settings used"]["strength"]) for line in lines)
    assert used == [(1, 0.6), (2, 0.6)]


def test_numpy_numbers_in_a_declaration_are_saved_as_json(tmp_path):
    import json

    import numpy as np

    declared = {"gradop_plus": {"strength": np.float32(0.5), "num_iterative_steps": np.int64(2)}}
    pipe = GradOPPipeline(**tiny_components(seed=0), method_defaults=declared)
    pipe.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "model_index.json").read_text())["method_defaults"]
    assert saved == {"gradop_plus": {"strength": 0.5, "num_iterative_steps": 2}}
    assert GradOPPipeline.from_pretrained(tmp_path / "model").config.method_defaults == saved


def test_a_window_error_from_declared_defaults_names_them(painting):
    pipe = _declaring()  # strength 0.6: k0 = int(4 * 0.4) = 1, window 1..3 reaches the last step of 4
    with pytest.raises(ValueError, match=r"must end before the last step 3.*\(strength=0\.6, num_iterative_steps=3: the model's defaults, used"):
        pipe.gradop_plus(PROMPT, painting, num_inference_steps=4, height=32, width=32, generator=gen())
    with pytest.raises(ValueError, match=r"last step 3: raise strength, or lower num_iterative_steps, or add steps$"):
        pipe.gradop_plus(PROMPT, painting, 0.6, 3, num_inference_steps=4, height=32, width=32, generator=gen())


def test_gradop_takes_k_or_n_alone_as_its_budget(painting):
    pipe, gradop = _declaring(), get_method("gradop")
    assert gradop.arguments(painting, pipe=pipe, grad_steps_per_iter=5)["grad_steps"] == 15  # K: the declared 3
    assert gradop.arguments(painting, pipe=pipe, num_iterative_steps=2)["grad_steps"] == 4  # N: the declared 2
    assert gradop.arguments(painting, num_iterative_steps=2)["grad_steps"] == 24  # without a pipe: the release's N
    assert "grad_steps" not in gradop.arguments(painting)
    with pytest.raises(ValueError, match="grad_steps_per_iter must be >= 0"):
        gradop.arguments(painting, grad_steps_per_iter=-1)


def test_describing_settings_refuses_what_would_not_run():
    pipe, method = _declaring(), get_method("gradop+")
    with pytest.raises(TypeError, match="takes no setting 'strenght'"):
        method.describe_settings(pipe, strenght=0.3)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        method.describe_settings(pipe, strength=5)
    with pytest.raises(TypeError, match="strength must be a number"):
        method.describe_settings(pipe, strength="abc")
    assert "deprecated" not in get_method("sdedit").parameters


def test_a_sweep_whose_declared_defaults_cannot_run_stops_before_any_job(tmp_path, painting, capsys):
    import json

    from gradop.sweep import main as sweep

    _declaring().save_pretrained(tmp_path / "model")
    painting.save(tmp_path / "p.png")
    spec = {"model": str(tmp_path / "model"), "method": "gradop+",
            "fixed": {"num_inference_steps": 4, "height": 32, "width": 32, "prompt": PROMPT, "painting": str(tmp_path / "p.png")},
            "grid": {"seed": [0, 1]}}
    (tmp_path / "grid.json").write_text(json.dumps(spec))
    assert sweep([str(tmp_path / "grid.json"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("must end before the last step 3") == 2 and "strength=0.6" in err and "failed" not in err
    assert not list((tmp_path / "out").glob("*.png"))
