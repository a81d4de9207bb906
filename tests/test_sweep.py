"""`gradop.sweep`: a grid split over 2 CPU processes by `accelerate launch`, and resuming without redoing jobs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradop.sweep import expand, finished

ROOT = Path(__file__).resolve().parents[1]
# 4 steps: the release's strength 0.8 (the toy's own 0.5 would start the 3-step window past the last step)
GRID = {"model": "toy", "method": "gradop+", "fixed": {"num_inference_steps": 4, "height": 64, "width": 64, "strength": 0.8},
        "grid": {"painting": [str(ROOT / "input-images/toy/lake_mountains.png")], "seed": [0, 1],
                 "grad_steps_per_iter": [1, 2]}}


def launch(grid_file, out):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "gradop.sweep", str(grid_file), "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def lines(out):
    """Every complete result line (a line cut short by a crash is skipped, as the sweep skips it)."""
    parsed = []
    for path in sorted(out.glob("results-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pass
    return parsed


def test_expand_crosses_the_lists_with_stable_ids():
    jobs = expand(GRID)
    assert len(jobs) == 4 and len({j["id"] for j in jobs}) == 4
    assert {(j["seed"], j["grad_steps_per_iter"]) for j in jobs} == {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert [j["id"] for j in expand(json.loads(json.dumps(GRID)))] == [j["id"] for j in jobs]
    changed = json.loads(json.dumps(GRID))
    changed["fixed"]["num_inference_steps"] = 5  # other fixed arguments: other jobs
    assert not {j["id"] for j in expand(changed)} & {j["id"] for j in jobs}
    with pytest.raises(ValueError, match="grid"):
        expand({"grid": {"seed": []}})
    with pytest.raises(ValueError, match="method"):
        expand({"method": "img2img", "grid": {"seed": [0]}})


def test_two_processes_split_the_grid_and_a_rerun_does_only_what_is_missing(tmp_path):
    grid_file, out = tmp_path / "grid.json", tmp_path / "out"
    grid_file.write_text(json.dumps(GRID))
    log = launch(grid_file, out)
    assert "4 jobs, 0 done, 4 to run on 2 process(es)" in log
    first = lines(out)
    assert sorted(j["id"] for j in first) == sorted(j["id"] for j in expand(GRID))  # each job once
    assert {j["process"] for j in first} == {0, 1}  # both processes worked
    assert finished(out) == {j["id"] for j in first}

    # a crash: one job lost its image, another's line was cut short
    lost = first[0]["id"]
    (out / f"{lost}.png").unlink()
    results = out / f"results-{first[1]['process']}.jsonl"
    kept = [line for line in results.read_text().splitlines() if json.loads(line)["id"] != first[1]["id"]]
    results.write_text("\n".join(kept + ['{"id": "' + first[1]["id"]]) + "\n")
    untouched = {j["id"]: (out / f"{j['id']}.png").stat().st_mtime_ns for j in first[2:]}

    log = launch(grid_file, out)
    assert "4 jobs, 2 done, 2 to run" in log
    rerun = [j["id"] for j in lines(out) if j["id"] in (lost, first[1]["id"])]
    assert sorted(rerun) == sorted([lost, first[1]["id"], lost])  # the lost image's job: old line + new line
    assert {i: (out / f"{i}.png").stat().st_mtime_ns for i in untouched} == untouched  # finished jobs not redone
    assert finished(out) == {j["id"] for j in expand(GRID)}
    assert "0 to run" in launch(grid_file, out)


def test_a_painting_decoder_is_named_as_for_the_gradop_command(tmp_path, capsys):
    """`painting_decoder` takes the names of `gradop --painting-decoder`, loaded once per name (`gradop.runs`)."""
    from gradop.sweep import main

    spec = {"model": "toy", "method": "gradop+",
            "fixed": {"num_inference_steps": 4, "grad_steps_per_iter": 2, "strength": 0.8,
                      "painting": GRID["grid"]["painting"][0]},
            "grid": {"painting_decoder": ["model", "full", "toy"]}}
    grid_file, out = tmp_path / "grid.json", tmp_path / "out"
    grid_file.write_text(json.dumps(spec))
    assert main([str(grid_file), "--out", str(out)]) == 0, capsys.readouterr().err
    image = {j["painting_decoder"]: (out / j["image"]).read_bytes() for j in lines(out)}
    assert sorted(image) == ["full", "model", "toy"]
    assert image["model"] == image["full"]  # the toy model ships no small decoder: its own choice is the VAE
    assert image["toy"] != image["full"]  # the distilled decoder steered this one

    spec["grid"]["painting_decoder"] = [3]
    grid_file.write_text(json.dumps(spec))
    assert main([str(grid_file), "--out", str(tmp_path / "bad")]) == 2
    assert "painting_decoder must be one of model, full, toy, taesd" in capsys.readouterr().err


def test_an_output_folder_that_takes_no_file_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Before: every job ran, then every save failed (issue 34, item 3). Root ignores a read-only mode bit, so the
    folder's refusal is simulated where the sweep probes it."""
    import gradop.models
    import gradop.sweep

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(gradop.sweep.tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(gradop.models, "load_pipeline", no_model)
    spec = {"model": "toy", "method": "sdedit", "fixed": {"num_inference_steps": 2, "painting": GRID["grid"]["painting"][0]},
            "grid": {"seed": [0, 1]}}
    (tmp_path / "grid.json").write_text(json.dumps(spec))
    assert gradop.sweep.main([str(tmp_path / "grid.json"), "--out", str(tmp_path / "out")]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "cannot write there (Permission denied)" in err
