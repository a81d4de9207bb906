"""The `gradop` command: runs, errors without tracebacks (exit 2), atomic outputs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import draw_painting

from gradop.cli import main, parse_region_flags

TINY = ["--model", "tiny", "--steps", "6", "--num_iterative_steps", "1", "--grad_steps_per_iter", "2"]
# the settings each method takes (a flag its method does not take is an error)
SETTINGS = {"gradop+": TINY[4:] + ["--strength", "0.5"], "gradop": TINY[4:] + ["--strength", "0.5"],
            "sdedit": ["--strength", "0.5"], "text": []}


@pytest.fixture
def stroke(tmp_path):
    path = tmp_path / "stroke.png"
    draw_painting(64, 48).save(path)
    return path


@pytest.mark.parametrize("method", ["gradop+", "gradop", "sdedit", "text"])
def test_methods_write_pngs(tmp_path, stroke, method, capsys):
    out = tmp_path / "out" / "result.png"
    assert main(TINY[:4] + SETTINGS[method] + ["--method", method, "--img_path", str(stroke), "--prompt", "a castle",
                                               "--output", str(out), "--num-images", "2", "--height", "32",
                                               "--width", "40"]) == 0
    printed = capsys.readouterr()
    paths = [tmp_path / "out" / "result_0.png", tmp_path / "out" / "result_1.png"]
    assert all(PIL.Image.open(p).size == (40, 32) for p in paths)
    assert all(f"wrote {p}" in printed.out for p in paths)
    assert "random weights" in printed.err
    assert sorted(os.listdir(tmp_path / "out")) == ["result_0.png", "result_1.png"]  # no temporary files left


def test_regions_change_the_image(tmp_path, stroke):
    plain, bound = tmp_path / "plain.png", tmp_path / "bound.png"
    common = TINY + ["--img_path", str(stroke), "--prompt", "a red ball on grass under sky"]
    assert main(common + ["--output", str(plain)]) == 0
    assert main(common + ["--output", str(bound), "--region", "#c82828=ball", "--region", "#28a03c=grass:0.5",
                          "--region-weight", "0.8"]) == 0
    difference = np.abs(np.asarray(PIL.Image.open(plain), float) - np.asarray(PIL.Image.open(bound), float))
    assert difference.max() > 2


def test_parse_region_flags():
    assert parse_region_flags(["#2a7a2a=forest", "#3060c0=deep lake:-0.5"]) == {
        "#2a7a2a": "forest", "#3060c0": ("deep lake", -0.5)}
    assert parse_region_flags(None) == {}


def test_default_output_and_manifest_prompt(tmp_path, stroke, monkeypatch, capsys):
    (stroke.parent / "manifest.json").write_text('{"stroke.png": {"prompt": "a castle by a lake"}}')
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--img_path", str(stroke)]) == 0
    assert (tmp_path / "outputs" / "stroke_gradopplus_seed0.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--img_path", "missing.png", "--prompt", "a"], "no file at 'missing.png'"),
    (["--img_path", "{stroke}", "--prompt", ""], "prompt"),
    (["--img_path", "{stroke}", "--prompt", "a", "--strength", "1.5"], "strength must be in [0, 1]"),
    (["--img_path", "{stroke}", "--prompt", "a", "--steps", "0"], "num_inference_steps must be >= 1"),
    (["--img_path", "{stroke}", "--prompt", "a", "--grad_steps_per_iter", "-2"], "grad_steps_per_iter must be >= 0"),
    (["--img_path", "{stroke}", "--prompt", "a", "--guidance-scale", "-1"], "guidance_scale"),
    (["--img_path", "{stroke}", "--prompt", "a", "--scheduler", "karras"], "scheduler must be one of"),
    (["--img_path", "{stroke}", "--prompt", "a", "--dtype", "fp8"], "dtype must be"),
    (["--img_path", "{stroke}", "--prompt", "a", "--device", "meta"], "device must be 'auto', 'cpu', 'cuda'"),
    (["--img_path", "{stroke}", "--prompt", "a", "--output", "x.jpg"], "--output must end in .png"),
    (["--prompt", "a"], "--img_path is required"),
    (["--img_path", "{stroke}", "--prompt", "a ball", "--region", "c82828"], "--region must look like '#2a7a2a=forest'"),
    (["--img_path", "{stroke}", "--prompt", "a ball", "--region", "#zz8228=ball"], "'#zz8228' is not a colour"),
    (["--img_path", "{stroke}", "--prompt", "a ball", "--region", "#c82828=ball:much"], "the weight after ':' must be"),
    (["--img_path", "{stroke}", "--prompt", "a ball", "--region", "#c82828=car"], "the phrase 'car'"),
    (["--img_path", "{stroke}", "--prompt", "a ball", "--region", "#c82828=ball", "--region-weight", "nan"],
     "region_weight must be a finite number"),
    (["--method", "text", "--prompt", "a ball", "--region", "#c82828=ball"], "--region needs --img_path"),
    (["--method", "sdedit", "--img_path", "{stroke}", "--prompt", "a", "--num_iterative_steps", "5"],
     "--method sdedit does not take --num_iterative_steps"),
    (["--img_path", "{stroke}", "--prompt", "a", "--num-images", "0"], "--num-images must be >= 1"),
    (["--method", "text"], "--prompt is required for --method text (without a painting"),
    (["--method", "text", "--prompt", "a", "--strength", "0.5", "--num-loops", "2"],
     "--method text does not take --strength, --num_iterative_steps, --grad_steps_per_iter, --num-loops"),
])
def test_user_errors_exit_2_without_traceback_or_file(tmp_path, stroke, capsys, args, message):
    out = tmp_path / "o.png"
    argv = TINY + [a.replace("{stroke}", str(stroke)) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("gradop: error:") and message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".o.png.*"))


def test_console_script_and_module_in_a_subprocess(tmp_path, stroke):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for cmd in (["gradop"], [sys.executable, "-m", "gradop"]):
        done = subprocess.run(cmd + ["--img_path", str(stroke), "--prompt", "a", "--strength", "2"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 2 and "strength must be in [0, 1]" in done.stderr and "Traceback" not in done.stderr
    out = tmp_path / "sub.png"
    done = subprocess.run([sys.executable, "-m", "gradop", *TINY, "--img_path", str(stroke), "--prompt", "a fox",
                           "--output", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and PIL.Image.open(out).size == (64, 48)


def test_auto_without_stable_diffusion_is_a_clear_message(tmp_path, stroke, monkeypatch, capsys):
    monkeypatch.setattr("gradop.models.TOY_MODEL", tmp_path / "no-toy-model")  # and no toy model to fall back on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(["--img_path", str(stroke), "--prompt", "a", "--output", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "Stable Diffusion v1.4" in err and "--model tiny" in err and "Traceback" not in err
    assert not (tmp_path / "a.png").exists()


def test_a_failed_run_leaves_no_folder_it_made(tmp_path, stroke, capsys):
    out = tmp_path / "new" / "deeper" / "o.png"
    # the window check needs the model's declared defaults, so it fails after the folder was made: it goes again
    assert main(TINY + ["--img_path", str(stroke), "--prompt", "a", "--steps", "1", "--output", str(out)]) == 2
    assert "optimisation window" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_the_output_never_overwrites_the_painting_and_hyphenated_flags_work(tmp_path, stroke, capsys):
    before = stroke.read_bytes()
    assert main(TINY + ["--img_path", str(stroke), "--prompt", "a", "--output", str(stroke)]) == 2
    assert "would overwrite the painting" in capsys.readouterr().err and stroke.read_bytes() == before
    out = tmp_path / "hyphens.png"
    assert main(["--model", "tiny", "--steps", "3", "--img-path", str(stroke), "--prompt", "a", "--num-iterative-steps",
                 "1", "--grad-steps-per-iter", "1", "--height", "32", "--width", "32", "--output", str(out)]) == 0
    assert out.is_file()


def test_help_answers_without_loading_the_libraries():
    """`gradop --help` used to take 8 s: importing gradop pulled in diffusers and transformers (issue 34, item 17)."""
    code = ("import sys, gradop.cli\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    import gradop  # the public names still load, on first use

    assert gradop.GradOPPipeline.__name__ == "GradOPPipeline" and "load_pipeline" in dir(gradop)


def test_an_empty_output_is_refused_not_replaced_by_the_default(tmp_path, stroke, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--img_path", str(stroke), "--prompt", "a", "--output", ""]) == 2
    assert "--output is empty" in capsys.readouterr().err and not (tmp_path / "outputs").exists()


def test_a_model_folder_with_a_damaged_weights_file_is_one_line_and_exit_2(tmp_path, stroke, capsys):
    """A bad safetensors header was a SafetensorError traceback and exit 1 (issue 34, item 4)."""
    import shutil

    from gradop.models import TOY_MODEL

    folder = shutil.copytree(TOY_MODEL, tmp_path / "model")
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a safetensors header")
    out = tmp_path / "o.png"
    assert main(["--model", str(folder), "--method", "sdedit", "--steps", "2", "--img_path", str(stroke),
                 "--prompt", "a", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"gradop: error: could not load model '{folder}'")
    assert "SafetensorError" in last and "copy or download the folder again" in last and not out.exists()


def test_a_reader_that_goes_away_does_not_stop_the_run(tmp_path, stroke):
    # `gradop ... | head -c0`: stdout closes at once; every image is still made, and no BrokenPipeError traceback
    out = tmp_path / "piped.png"
    done = _run_with_closed_stdout([sys.executable, "-m", "gradop", *TINY, "--img_path", str(stroke), "--prompt",
                                    "a fox", "--num-images", "2", "--batch-size", "1", "--output", str(out)])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert [PIL.Image.open(tmp_path / f"piped_{i}.png").size for i in range(2)] == [(64, 48)] * 2


def _run_with_closed_stdout(command):
    """Run `command` with its stdout a pipe whose reading end is already closed (as `| head -c0` leaves it)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        os.close(write_end)


def test_a_full_disk_is_one_line_and_keeps_the_images_written_before(tmp_path, stroke, capsys, monkeypatch):
    from gradop import runs

    saved = []

    def save_until_full(image, path):
        if saved:
            raise OSError(28, "No space left on device", str(path))
        runs.save_atomically(image, path)
        saved.append(path)

    monkeypatch.setattr("gradop.cli.save_atomically", save_until_full)
    out = tmp_path / "full.png"
    assert main(TINY + ["--img_path", str(stroke), "--prompt", "a fox", "--num-images", "2", "--batch-size", "1",
                        "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "gradop: error:")
    assert (tmp_path / "full_0.png").exists() and not (tmp_path / "full_1.png").exists()


def test_the_tiny_model_works_a_large_painting_at_its_own_small_size(tmp_path, capsys):
    big = tmp_path / "big.png"
    draw_painting(512, 384).save(big)
    out = tmp_path / "small.png"
    assert main(TINY + ["--img_path", str(big), "--prompt", "a fox", "--output", str(out)]) == 0
    assert PIL.Image.open(out).size == (64, 48)  # not 512x384 of noise, minutes on a CPU
    assert "tiny test model works at 64x64" in capsys.readouterr().err


def test_on_a_busy_cpu_torch_uses_the_cores_left_free(monkeypatch):
    import torch

    from gradop.runs import cpu_threads_for_the_load

    threads = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 2.0, 1.0))  # another job keeps ~3 cores busy
        assert "load 2.6 on 4 cores): using 1 torch thread" in cpu_threads_for_the_load()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(4)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))  # idle: as torch chose
        assert cpu_threads_for_the_load() is None and torch.get_num_threads() == 4
        monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's word wins
        monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
        assert cpu_threads_for_the_load() is None and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)
