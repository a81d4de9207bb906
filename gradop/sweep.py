"""A grid of prompts x seeds x hyperparameters, split across processes or GPUs with Hugging Face accelerate.

    accelerate launch --multi_gpu --num_processes 2 -m gradop.sweep grid.json --out sweep/   # 2 GPUs, or 2 CPU processes
    python -m gradop.sweep grid.json --out sweep/                                  # one process

`grid.json` names the model, the method and fixed arguments, and the lists to cross:

    {"model": "toy", "method": "gradop+", "fixed": {"num_inference_steps": 50},
     "grid": {"painting": ["input-images/toy/lake_mountains.png"], "seed": [0, 1],
              "strength": [0.6, 0.8], "grad_steps_per_iter": [6, 12]}}

A painting's prompt comes from the manifest beside it unless the grid lists `prompt`. Every job writes
`<job id>.png` (atomically) and then one JSON line to `results-<process>.jsonl`; a job whose line and image
both exist is done, so a rerun (with any number of processes) does only what is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

METHODS = {"gradop+": "gradop_plus", "gradop": "gradop", "sdedit": "sdedit", "text": "text2img"}


def expand(spec: dict) -> list[dict]:
    """Every combination of the grid's lists, each with a stable id (a hash of its parameters)."""
    if not isinstance(spec.get("grid"), dict) or not spec["grid"]:
        raise ValueError('the sweep file needs a "grid": {name: [values, ...]} to cross')
    if spec.get("method", "gradop+") not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {spec.get('method')!r}")
    names = sorted(spec["grid"])
    for name in names:
        if not isinstance(spec["grid"][name], list) or not spec["grid"][name]:
            raise ValueError(f"grid[{name!r}] must be a non-empty list, got {spec['grid'][name]!r}")
    jobs = []
    for values in itertools.product(*(spec["grid"][n] for n in names)):
        params = dict(zip(names, values))
        key = json.dumps([spec.get("model", "toy"), spec.get("method", "gradop+"), spec.get("fixed", {}), params],
                         sort_keys=True)
        jobs.append({"id": hashlib.sha1(key.encode()).hexdigest()[:12], **params})
    return jobs


def finished(out: Path) -> set[str]:
    """Ids of the jobs with both a result line (any process's file) and their image."""
    done = set()
    for path in out.glob("results-*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                job_id = json.loads(line)["id"]
            except (ValueError, KeyError):
                continue  # a line cut short by a crash: that job runs again
            if (out / f"{job_id}.png").is_file():
                done.add(job_id)
    return done


def run_job(pipe, spec: dict, job: dict):
    import torch

    from .cli import default_prompt

    params = {k: v for k, v in job.items() if k != "id"}
    painting = params.pop("painting", None)
    prompt = params.pop("prompt", None) or (default_prompt(Path(painting)) if painting else None)
    if prompt is None:
        raise ValueError(f"job {job['id']}: no prompt (list 'prompt' in the grid, or use manifest paintings)")
    generator = torch.Generator("cpu").manual_seed(int(params.pop("seed", 0)))
    kwargs = {**spec.get("fixed", {}), **params, "generator": generator}
    method = getattr(pipe, METHODS[spec.get("method", "gradop+")])
    out = method(prompt, **kwargs) if method.__name__ == "text2img" else method(prompt, painting, **kwargs)
    return prompt, out.images[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gradop.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("grid", type=Path, help="the sweep's JSON file")
    p.add_argument("--out", type=Path, required=True, help="folder for images and results-*.jsonl")
    args = p.parse_args(argv)
    from accelerate import PartialState

    from .cli import save_atomically
    from .models import load_pipeline

    try:
        spec = json.loads(args.grid.read_text())
        jobs = expand(spec)
    except (OSError, ValueError) as err:
        print(f"gradop.sweep: error: {err}", file=sys.stderr)
        return 2
    import torch

    # on a machine without GPUs, processes started by `accelerate launch --multi_gpu` talk over gloo
    state = PartialState(cpu=not torch.cuda.is_available())
    args.out.mkdir(parents=True, exist_ok=True)
    done = finished(args.out)
    pending = [job for job in jobs if job["id"] not in done]
    if state.is_main_process:
        print(f"gradop.sweep: {len(jobs)} jobs, {len(done & {j['id'] for j in jobs})} done, {len(pending)} to run "
              f"on {state.num_processes} process(es)", file=sys.stderr)
    mine = pending[state.process_index::state.num_processes]
    if mine:
        pipe = load_pipeline(spec.get("model", "toy"), device=state.device, verbose=state.is_main_process)
        pipe.set_progress_bar_config(disable=True)
        results = args.out / f"results-{state.process_index}.jsonl"
        for job in mine:
            start = time.perf_counter()
            prompt, image = run_job(pipe, spec, job)
            save_atomically(image, args.out / f"{job['id']}.png")  # the image first: a line means a whole image
            with open(results, "a") as f:
                f.write(json.dumps({**job, "prompt": prompt, "seconds": round(time.perf_counter() - start, 3),
                                    "process": state.process_index, "image": f"{job['id']}.png"}) + "\n")
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
