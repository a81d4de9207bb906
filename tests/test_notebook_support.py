"""`gradop.notebook`: the configuration, examples and figures the tutorial notebooks share."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import PIL.Image
import pytest
import torch
from conftest import gen

from gradop.notebook import image_grid, load_examples, setup, timed

ROOT = Path(__file__).resolve().parents[1]
INPUT_IMAGES = ROOT / "input-images"


def test_examples_come_from_the_manifest_resized():
    manifest = json.loads((INPUT_IMAGES / "toy" / "manifest.json").read_text())
    examples = load_examples(INPUT_IMAGES / "toy", size=64)
    assert [e.name + ".png" for e in examples] == list(manifest)
    for e in examples:
        assert e.painting.size == (64, 64) and e.painting.mode == "RGB"
        assert e.prompt == manifest[e.name + ".png"]["prompt"]
        assert all(phrase in e.prompt for phrase in e.regions.values())


def test_a_folder_without_a_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="manifest.json"):
        load_examples(tmp_path)


def test_input_images_are_found_from_the_working_directory_not_the_package(tmp_path, monkeypatch):
    """An installed package has no input-images/: the notebooks' folder (or any below the checkout) finds the
    checkout's, GRADOP_INPUT_IMAGES names another, and elsewhere the error says both ways."""
    import gradop.notebook as nb

    monkeypatch.delenv("GRADOP_INPUT_IMAGES", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")  # where the notebooks run
    assert nb.INPUT_IMAGES == nb.find_input_images() == INPUT_IMAGES
    assert nb.report_rows("| method").startswith("| method")  # the checkout's report, found the same way
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no input-images in .* and GRADOP_INPUT_IMAGES is not set"):
        nb.find_input_images()
    (tmp_path / "mine" / "toy").mkdir(parents=True)
    monkeypatch.setenv("GRADOP_INPUT_IMAGES", str(tmp_path / "mine"))
    assert nb.find_input_images() == tmp_path / "mine"
    monkeypatch.setenv("GRADOP_INPUT_IMAGES", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="GRADOP_INPUT_IMAGES is set to .*nowhere.*, which does not exist"):
        nb.find_input_images()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_auto_without_a_gpu_uses_the_toy_model_and_its_paintings(monkeypatch, capsys):
    monkeypatch.delenv("GRADOP_MODEL", raising=False)
    monkeypatch.delenv("GRADOP_INPUT_IMAGES", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")
    monkeypatch.setenv("GRADOP_WORK_SIZE", "32")
    cfg = setup()
    assert cfg.is_toy and cfg.work_size == 32
    assert {e.name for e in cfg.examples} == {p.stem for p in (INPUT_IMAGES / "toy").glob("*.png")}
    assert all(e.painting.size == (32, 32) for e in cfg.examples)
    assert "no GPU: using the toy model" in capsys.readouterr().out
    assert [g.initial_seed() for g in cfg.generator(5, 3)] == [5, 6, 7]


def test_image_grid_lays_out_rows_and_titles():
    red = PIL.Image.new("RGB", (8, 8), (255, 0, 0))
    fig = image_grid([[red, torch.zeros(3, 8, 8)], [red]], row_titles=["a", "b"], col_titles=["x", "y"])
    axes = fig.axes
    assert len(axes) == 4 and axes[0].get_title() == "x" and axes[2].get_ylabel() == "b"
    assert axes[0].images[0].get_array()[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert not axes[3].images and not any(s.get_visible() for s in axes[3].spines.values())  # a gap: empty, unframed
    gap_first = image_grid([[None, red]], row_titles=["r"]).axes[0]
    assert gap_first.axison and gap_first.get_ylabel() == "r"  # a row that starts with a gap keeps its title visible


def test_timed_runs_once_to_warm_up_then_repeats():
    import time

    calls = []

    def work():  # the warm-up call is slow, the timed ones 20 ms: the median must ignore the warm-up
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.02)
        return len(calls)

    seconds, result = timed(work, repeats=3)
    assert len(calls) == 4 and result == 4 and 0.015 <= seconds < 0.2


def test_timed_without_warm_up_runs_exactly_the_repeats():
    calls = []
    seconds, result = timed(lambda: calls.append(1) or len(calls), repeats=1, warmup=False)
    assert calls == [1] and result == 1 and seconds >= 0
    with pytest.raises(ValueError, match="repeats"):
        timed(lambda: None, repeats=0)


def test_every_loop_of_one_loopback_call_is_the_call_with_that_many_loops(pipe, painting):
    from conftest import gen
    from gradop.notebook import loopback_every_loop

    every = loopback_every_loop(pipe, "a photo", painting, 3, strength=0.5, generator=gen(0), num_inference_steps=6)
    assert len(every) == 3
    for k in (1, 3):
        alone = pipe.loopback("a photo", painting, strength=0.5, num_loops=k, generator=gen(0), num_inference_steps=6,
                              output_type="pt").images
        torch.testing.assert_close(every[k - 1], alone, atol=1e-6, rtol=0)
    assert not torch.equal(every[0], every[2])  # the loops do change the image


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
def test_every_notebook_runs_on_a_model_other_than_the_toy(name, tmp_path, monkeypatch):
    """What a Stable Diffusion user runs: each notebook top to bottom on the tiny random SD-shaped model
    (`GRADOP_MODEL=tiny`), so every non-toy branch executes: no judge, the paintings of input-images/,
    the release's painting scale. Its numbers mean nothing; that it runs without an error is the test."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    for key, value in {"HF_HUB_OFFLINE": "1", "GRADOP_MODEL": "tiny", "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    for key in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    first = "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    assert "model: tiny" in first and "input-images" in first and "input-images/toy" not in first


def test_the_trajectory_keeps_x0_at_every_step_each_method_runs(pipe, painting):
    from gradop.notebook import X0Trajectory

    runs = {"gradop_plus": dict(num_iterative_steps=1, grad_steps_per_iter=1), "sdedit": dict(strength=0.5)}
    recorded = {}
    for method, settings in runs.items():
        trajectory = X0Trajectory()
        out = getattr(pipe, method)("a photo", painting, num_inference_steps=6, generator=gen(0), output_type="pt",
                                    callback_on_step_end=trajectory,
                                    callback_on_step_end_tensor_inputs=X0Trajectory.tensor_inputs, **settings)
        frames = trajectory.images(pipe)
        recorded[method] = list(frames)
        assert all(f.shape == out.images.shape and 0 <= f.min() and f.max() <= 1 for f in frames.values())
    timesteps = pipe.get_timesteps(6).tolist()
    assert recorded["gradop_plus"] == timesteps  # one frame per step, keyed by its timestep
    assert recorded["sdedit"] == timesteps[3:]  # SDEdit at 0.5 runs the last 3 of 6
    # the last frame is x̂₀ of the last step: what the final latent decodes to, up to the scheduler's last update
    assert (frames[timesteps[-1]] - out.images).abs().mean() < 0.1


def test_report_rows_can_keep_to_one_section(tmp_path):
    from gradop.notebook import report_rows

    report = tmp_path / "r.md"
    report.write_text("# R\n## A\n| method | x |\n| text only | 1 |\n## B\n| method | y |\n| text only | 2 |\n")
    assert report_rows("| method", "| text only", report=str(report)).count("text only") == 2
    assert report_rows("| method", "| text only", report=str(report), section="## B") == "| method | y |\n| text only | 2 |"
    with pytest.raises(ValueError, match="no heading starting with '## C'"):
        report_rows("| method", report=str(report), section="## C")


def test_report_rows_can_leave_out_a_column(tmp_path):
    from gradop.notebook import report_rows

    report = tmp_path / "r.md"
    report.write_text("| method | d | seconds |\n|---|---|---|\n| SDEdit | 0.1 | 3 |\n| two | columns |\n")
    assert report_rows("| method", "|---", "| SDEdit", "| two", report=str(report), without=("seconds",)) == \
        "| method | d |\n|---|---|\n| SDEdit | 0.1 |\n| two | columns |"  # another table's line is left whole
    assert report_rows("| SDEdit", report=str(report), without=("seconds",)) == "| SDEdit | 0.1 | 3 |"  # no header
