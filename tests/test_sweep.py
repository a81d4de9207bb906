"""`gradop.sweep`: a grid split over 2 CPU processes by `accelerate launch`, and resuming without redoing jobs."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest

from gradop.sweep import expand, finished, main

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
            "grid": {"painting_decoder": ["model", "full", "toy", "toy-truncated"]}}
    grid_file, out = tmp_path / "grid.json", tmp_path / "out"
    grid_file.write_text(json.dumps(spec))
    assert main([str(grid_file), "--out", str(out)]) == 0, capsys.readouterr().err
    image = {j["painting_decoder"]: (out / j["image"]).read_bytes() for j in lines(out)}
    assert sorted(image) == ["full", "model", "toy", "toy-truncated"]
    assert image["model"] == image["toy-truncated"]  # the toy model's own choice: its truncated decoder
    assert image["toy"] != image["full"] != image["model"]  # each decoder steered its own descent

    spec["grid"]["painting_decoder"] = [3]
    grid_file.write_text(json.dumps(spec))
    assert main([str(grid_file), "--out", str(tmp_path / "bad")]) == 2
    assert "painting_decoder must be one of model, full, toy, toy-truncated, taesd" in capsys.readouterr().err


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


# ---------------------------------------------------------------- issue 34, items 4, 5, 7 and 16
TOY_SDEDIT = {"model": "toy", "method": "sdedit", "fixed": {"num_inference_steps": 2, "prompt": "a lake"},
              "grid": {"painting": GRID["grid"]["painting"], "seed": [0, 1]}}


def sweep(tmp_path, spec) -> int:
    (tmp_path / "grid.json").write_text(json.dumps(spec))
    return main([str(tmp_path / "grid.json"), "--out", str(tmp_path / "out")])


def test_a_model_that_cannot_load_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert sweep(tmp_path, TOY_SDEDIT | {"model": "nonexistent/model-id"}) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith("gradop.sweep: error: could not load model 'nonexistent/model-id'")
    assert "check the id" in last and not list((tmp_path / "out").iterdir())


def test_sweeps_sharing_an_output_folder_run_each_job_once(tmp_path, capsys):
    """Two sweeps on one --out ran every job twice (item 5). A job is claimed while it runs; the claim of a killed
    sweep goes with it (the operating system drops its lock), so a rerun is never blocked."""
    out = tmp_path / "out"
    out.mkdir()
    held, free = (job["id"] for job in expand(TOY_SDEDIT))
    holder = subprocess.Popen(  # another sweep, in the middle of job `held`
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from gradop.sweep import claim\n"
                               "with claim(Path(sys.argv[1]), sys.argv[2]) as mine:\n"
                               "    print(mine, flush=True); time.sleep(60)", str(out), held],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert sweep(tmp_path, TOY_SDEDIT) == 0
        assert "1 job(s) left to another sweep" in capsys.readouterr().err
        assert [line["id"] for line in lines(out)] == [free]
    finally:
        holder.kill()  # as kill -9: its claim is not released by its own code
        holder.wait()
    assert sweep(tmp_path, TOY_SDEDIT) == 0
    assert "2 jobs, 1 done, 1 to run" in capsys.readouterr().err
    assert sorted(line["id"] for line in lines(out)) == sorted([held, free])
    assert not list(out.glob(".*"))  # no claim left behind


def test_a_job_another_sweep_finished_meanwhile_is_not_run_again(tmp_path, capsys, monkeypatch):
    """A job is checked again once claimed: the other sweep may have finished it since this one started."""
    assert sweep(tmp_path, TOY_SDEDIT) == 0
    before, calls = lines(tmp_path / "out"), []

    def as_when_it_started(out):  # this sweep started before the other one finished both jobs
        calls.append(out)
        return set() if len(calls) == 1 else finished(out)

    monkeypatch.setattr("gradop.sweep.finished", as_when_it_started)
    assert sweep(tmp_path, TOY_SDEDIT) == 0
    assert "2 jobs, 0 done, 2 to run" in capsys.readouterr().err
    assert lines(tmp_path / "out") == before


def test_an_edited_painting_or_prompt_runs_its_job_again(tmp_path, capsys):
    """A job's id covers the painting file's content and the prompt it resolves to (item 7)."""
    painting = tmp_path / "p.png"
    painting.write_bytes(Path(GRID["grid"]["painting"][0]).read_bytes())
    (tmp_path / "manifest.json").write_text('{"p.png": {"prompt": "a lake"}}')
    spec = {"model": "toy", "method": "sdedit", "fixed": {"num_inference_steps": 2},
            "grid": {"painting": [str(painting)]}}
    assert sweep(tmp_path, spec) == 0 and sweep(tmp_path, spec) == 0
    assert "1 jobs, 1 done, 0 to run" in capsys.readouterr().err
    image = PIL.Image.open(painting).convert("RGB")
    image.putpixel((0, 0), (255, 0, 0))
    image.save(painting)
    assert sweep(tmp_path, spec) == 0
    assert "1 jobs, 0 done, 1 to run" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text('{"p.png": {"prompt": "a lake at night"}}')
    assert sweep(tmp_path, spec) == 0
    assert "1 jobs, 0 done, 1 to run" in capsys.readouterr().err
    assert [line["prompt"] for line in lines(tmp_path / "out")] == ["a lake", "a lake", "a lake at night"]


def test_a_folder_named_like_a_results_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "out" / "results-7.jsonl").mkdir(parents=True)
    assert sweep(tmp_path, TOY_SDEDIT) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("gradop.sweep: error:") and "results-7.jsonl" in err and "move it" in err


def test_a_grid_of_a_million_jobs_is_refused_at_once(tmp_path, capsys):
    """It took 41 s and 1.2 GB before a word (item 16): the size is counted from the lists' lengths first."""
    start = time.perf_counter()
    grid = {"painting": GRID["grid"]["painting"], "seed": list(range(1000)), "guidance_scale": list(range(1000))}
    assert sweep(tmp_path, TOY_SDEDIT | {"grid": grid}) == 2
    assert time.perf_counter() - start < 2
    err = capsys.readouterr().err
    assert "1,000,000 jobs" in err and "split it" in err and not (tmp_path / "out").exists()
