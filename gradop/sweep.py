"""A grid of prompts x seeds x hyperparameters, split across processes or GPUs with Hugging Face accelerate.

    accelerate launch --multi_gpu --num_processes 2 -m gradop.sweep grid.json --out sweep/   # 2 GPUs, or 2 CPU processes
    python -m gradop.sweep grid.json --out sweep/                                  # one process

`grid.json` names the model, the method (`gradop.methods`), fixed settings, and the lists to cross:

    {"model": "toy", "method": "gradop+", "fixed": {"num_inference_steps": 50},
     "grid": {"painting": ["input-images/toy/lake_mountains.png"], "seed": [0, 1],
              "strength": [0.6, 0.8], "grad_steps_per_iter": [6, 12]}}

`fixed` and `grid` take `painting`, `prompt`, `seed` and any setting of the method; `painting_decoder` is a
name as the `gradop` command's `--painting-decoder` takes it (model, full, toy, toy-truncated, taesd, a folder or a hub id).
A painting's prompt comes from the manifest beside it unless `prompt` is given; paintings are sized as by the
`gradop` command (`gradop.runs` holds what the two share). The
whole file is checked before the model loads (a bad key or value: one line naming the job, exit 2); a grid
of more than `MAX_JOBS` is refused. Every job writes `<job id>.png` (atomically) and then one JSON line to
`results-<process>.jsonl`; a job whose line and image both exist is done, so a rerun (with any number of
processes) does only what is missing. A job's id covers its settings, the painting file's content and its
prompt: an edited painting or manifest makes new jobs. Sweeps that share `--out` run each job once (a job is
claimed while it runs). A job that fails while running is reported in one line and the others go on; the
process then exits with 2.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no claims, so two sweeps sharing --out may both run a job
    fcntl = None

SPEC_KEYS = ("model", "method", "fixed", "grid")
# Days of work at seconds a job; a larger grid is a slip (it took minutes and gigabytes before a word)
MAX_JOBS = 100_000
# The sweep makes one PNG per job, seeded by the job's `seed`: these stay its own
RESERVED = ("generator", "num_images_per_prompt", "output_type", "return_dict")


@dataclass
class Job:
    """One combination of the grid, checked and ready to run."""
    id: str
    params: dict  # the grid's values, as written to the results line
    prompt: str
    painting: object  # the loaded painting (PIL image) or None
    seed: int
    settings: dict  # the method's settings: fixed and grid values less painting, prompt and seed


def expand(spec, sources: dict | None = None) -> list[dict]:
    """Every combination of the grid's lists, each with its id (`job_id`).

    Checks the file's structure: a JSON object with only `SPEC_KEYS`, a known method and model name, `fixed`
    an object and `grid` an object of non-empty lists, no key in both, at most `MAX_JOBS` combinations (counted
    before any is made). `sources` keeps what `painting_source` read, for the caller."""
    from .methods import get_method
    from .models import check_model_name

    if not isinstance(spec, dict):
        raise ValueError(f'the sweep file must hold one JSON object {{"grid": {{...}}, ...}}, got a {type(spec).__name__}')
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"the sweep file has unknown key(s) {', '.join(map(repr, unknown))}; it takes {', '.join(SPEC_KEYS)}")
    check_model_name(spec.get("model", "toy"))
    get_method(spec.get("method", "gradop+"))
    fixed, grid = spec.get("fixed", {}), spec.get("grid")
    if not isinstance(fixed, dict):
        raise ValueError(f'"fixed" must be an object {{name: value}}, got {fixed!r}')
    if not isinstance(grid, dict) or not grid:
        raise ValueError('the sweep file needs a "grid": {name: [values, ...]} to cross')
    names = sorted(grid)
    for name in names:
        if not isinstance(grid[name], list) or not grid[name]:
            raise ValueError(f"grid[{name!r}] must be a non-empty list, got {grid[name]!r}")
    both = sorted(set(fixed) & set(grid))
    if both:
        raise ValueError(f"{', '.join(map(repr, both))} is in both \"fixed\" and \"grid\"; keep it in one")
    count = math.prod(len(grid[n]) for n in names)
    if count > MAX_JOBS:
        sizes = " x ".join(f"{n} {len(grid[n])}" for n in names)
        raise ValueError(f"the grid makes {count:,} jobs ({sizes}), more than a sweep takes ({MAX_JOBS:,}); "
                         "split it into several sweep files (they may share --out)")
    sources = {} if sources is None else sources
    jobs = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values))
        jobs.append({"id": job_id(spec, params, sources), **params})
    return jobs


def job_id(spec, params: dict, sources: dict) -> str:
    """A job's identity, which decides whether it is done: a hash of the model, method, settings, the painting
    file's content and the prompt it resolves to (so an edited painting or manifest runs it again)."""
    fixed = spec.get("fixed", {})
    digest, prompt = painting_source({**fixed, **params}, sources)
    key = json.dumps([spec.get("model", "toy"), spec.get("method", "gradop+"), fixed, params, digest, prompt],
                     sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def painting_source(settings: dict, sources: dict) -> tuple[str | None, str | None]:
    """(a hash of the painting file's bytes, the job's prompt: its own, else the manifest's beside the painting),
    each file read once (`sources`: path -> (hash, manifest prompt)). A file that cannot be read gives
    (None, None): `prepare` reports it."""
    from .runs import default_prompt

    path = settings.get("painting")
    if isinstance(path, str) and path not in sources:
        try:
            sources[path] = hashlib.sha1(Path(path).read_bytes()).hexdigest(), default_prompt(Path(path))
        except OSError:
            sources[path] = None, None
    digest, manifest_prompt = sources.get(path, (None, None)) if isinstance(path, str) else (None, None)
    prompt = settings.get("prompt")
    return digest, manifest_prompt if prompt is None else prompt


def prepare(spec) -> list[Job]:
    """`expand`, then every job checked as the `gradop` command checks its flags, before any model loads:
    the painting file, the prompt, the seed, and the method's settings (`GradOPPipeline.check_inputs`).
    Raises a `ValueError` naming the job and the key."""
    from .images import load_image
    from .methods import get_method
    from .pipeline import GradOPPipeline
    from .runs import check_painting_decoder_choice

    sources, paintings = {}, {}  # each file read once
    grid = expand(spec, sources)
    method = get_method(spec.get("method", "gradop+"))
    jobs = []
    for job in grid:
        params = {k: v for k, v in job.items() if k != "id"}
        settings = {**spec.get("fixed", {}), **params}
        shown = ", ".join(f"{k}={_short(Path(v).name if k == 'painting' and isinstance(v, str) else v)}"
                          for k, v in params.items())
        try:
            prompt = painting_source(settings, sources)[1]
            path, _, seed = (settings.pop(k, None) for k in ("painting", "prompt", "seed"))
            if path is not None and not isinstance(path, str):
                raise ValueError(f"painting must be a file path (a string), got {path!r}")
            if path is not None and path not in paintings:
                paintings[path] = load_image(path, "painting")
            if method.takes_painting and path is None:
                raise ValueError(f"method {method.name} needs a painting: list \"painting\" in fixed or grid")
            if prompt is None:
                raise ValueError("prompt: none given, and the painting is not in a manifest.json beside it; "
                                 "list \"prompt\" in fixed or grid")
            seed = 0 if seed is None else seed
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
                raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
            reserved = [k for k in RESERVED if k in settings]
            if reserved:
                raise ValueError(f"{reserved[0]} is set by the sweep itself (one PNG per job, seeded by \"seed\")")
            painting = paintings.get(path)
            if settings.get("painting_decoder") is not None:
                check_painting_decoder_choice(settings["painting_decoder"])
            GradOPPipeline.check_inputs(method.attribute, prompt, **method.arguments(painting, **settings))
        except (ValueError, TypeError) as err:
            raise ValueError(f"job {job['id']} ({shown}): {err}") from None
        jobs.append(Job(job["id"], params, prompt, painting, seed, settings))
    return jobs


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def finished(out: Path) -> set[str]:
    """Ids of the jobs with both a result line (any process's file) and their image. A results file that cannot
    be read (a folder of that name, no permission) is a `ValueError` naming it."""
    done = set()
    for path in out.glob("results-*.jsonl"):
        try:
            text = path.read_text(errors="replace")
        except OSError as err:
            raise ValueError(f"cannot read '{path}' ({err.strerror}): the sweep keeps its results in files of "
                             "that name; move it out of --out, or fix its permissions") from None
        for line in text.splitlines():
            try:
                job_id = json.loads(line)["id"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that job runs again
            if isinstance(job_id, str) and (out / f"{job_id}.png").is_file():
                done.add(job_id)
    return done


@contextlib.contextmanager
def claim(out: Path, job_id: str):
    """Yields whether this process may run the job: True while it holds the lock on `<out>/.<job id>.lock`, False
    when another sweep on `out` holds it. The operating system drops the lock of a killed process, so a claim
    never outlives its sweep; the file goes when the job ends."""
    if fcntl is None:
        yield True
        return
    path = out / f".{job_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the file is still the one at `path`: its holder did not end the job and remove it meanwhile
            held = os.fstat(fd).st_ino == os.stat(path).st_ino
        except (BlockingIOError, FileNotFoundError):
            pass
        yield held
    finally:
        if held:
            path.unlink(missing_ok=True)  # while still locked: a sweep that opened it now finds it gone
        os.close(fd)


def append_line(path: Path, record: dict) -> None:
    """Append `record` as one JSON line in a single write, on a fresh line: a line an earlier crash cut short
    (no newline) is closed first, so this one is not glued onto it (`finished` skips the cut one)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
    finally:
        os.close(fd)


def run_job(pipe, method, job: Job, decoders: dict | None = None):
    """The job's image, sized by the `gradop` command's rule (`runs.painting_size`), its `painting_decoder` name
    turned into a decoder as the command's `--painting-decoder` (`runs.painting_decoder`; loaded once per name
    when the caller keeps `decoders`)."""
    import torch

    from .runs import painting_decoder, painting_size

    settings = dict(job.settings)
    settings["height"], settings["width"] = painting_size(pipe, job.painting, settings.get("height"),
                                                          settings.get("width"))
    choice = settings.get("painting_decoder")
    if choice is not None and "painting_decoder" in method.uses:
        decoders = {} if decoders is None else decoders
        if choice not in decoders:
            decoders[choice] = painting_decoder(pipe, choice)
        settings["painting_decoder"] = decoders[choice]
    generator = torch.Generator("cpu").manual_seed(job.seed)
    return method(pipe, job.prompt, job.painting, generator=generator, **settings).images[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gradop.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("grid", type=Path, help="the sweep's JSON file")
    p.add_argument("--out", type=Path, required=True, help="folder for images and results-*.jsonl")
    args = p.parse_args(argv)
    args.own_process = argv is None  # `python -m gradop.sweep`, not a call from Python
    try:
        return _sweep(args)
    except KeyboardInterrupt:  # finished images and lines are whole; a rerun does the rest
        print("gradop.sweep: interrupted", file=sys.stderr)
        return 130


def _sweep(args) -> int:
    from accelerate import PartialState

    from .methods import declared_defaults, get_method
    from .model_defaults import naming_declared_defaults
    from .models import ModelUnavailableError, load_pipeline
    from .pipeline import GradOPPipeline
    from .runs import cpu_threads_for_the_load, save_atomically

    try:
        try:
            spec = json.loads(args.grid.read_text())
        except ValueError as err:
            raise ValueError(f"{args.grid} is not JSON ({err})") from None
        except OSError as err:
            raise ValueError(f"cannot read {args.grid} ({err.strerror})") from None
        jobs = prepare(spec)
        args.out.mkdir(parents=True, exist_ok=True)
        try:  # before the model loads: a folder that takes no file would fail every job only after it ran
            with tempfile.TemporaryFile(dir=args.out):
                pass
        except OSError as err:
            raise ValueError(f"--out '{args.out}': cannot write there ({err.strerror}); choose a folder you can "
                             "write to") from None
        done = finished(args.out)
    except (OSError, ValueError, TypeError) as err:
        print(f"gradop.sweep: error: {err}", file=sys.stderr)
        return 2
    import torch

    # on a machine without GPUs, processes started by `accelerate launch --multi_gpu` talk over gloo
    state = PartialState(cpu=not torch.cuda.is_available())
    pending = [job for job in jobs if job.id not in done]
    if state.is_main_process:
        print(f"gradop.sweep: {len(jobs)} jobs, {len(done & {j.id for j in jobs})} done, {len(pending)} to run "
              f"on {state.num_processes} process(es)", file=sys.stderr)
    mine = pending[state.process_index::state.num_processes]
    failed = taken = 0
    if mine:
        try:
            pipe = load_pipeline(spec.get("model", "toy"), device=state.device, verbose=state.is_main_process)
        except ModelUnavailableError as err:
            print(f"gradop.sweep: error: {err}", file=sys.stderr)
            return 2
        # only for a process of its own: called from Python (tests, notebooks), the choice would outlive the call
        threads = (cpu_threads_for_the_load()
                   if pipe.device.type == "cpu" and getattr(args, "own_process", False) else None)
        if threads and state.is_main_process:
            print(f"gradop.sweep: {threads}", file=sys.stderr)
        pipe.set_progress_bar_config(disable=True)
        method = get_method(spec.get("method", "gradop+"))
        # settings a job leaves out take the model's declared defaults (else the release's): say which, and record them
        defaults = {k: v for k, v in method.defaults_for(pipe).items() if k in declared_defaults(pipe, method.attribute)}
        if state.is_main_process:
            print(f"gradop.sweep: unless a job sets them, {method.describe_settings(pipe)}", file=sys.stderr)
        # with the defaults known, a job whose window they push past the last step fails now, not one by one later
        refused = []
        for job in mine:
            filled = {**job.settings, **{k: v for k, v in defaults.items() if job.settings.get(k) is None}}
            try:
                with naming_declared_defaults(pipe, method.attribute, **job.settings):
                    GradOPPipeline.check_inputs(method.attribute, job.prompt,
                                                **method.arguments(job.painting, pipe=pipe, **filled))
            except (ValueError, TypeError) as err:
                refused.append(f"gradop.sweep: error: job {job.id} ({job.params}): {err}")
        if refused:
            print("\n".join(refused), file=sys.stderr)
            return 2
        results = args.out / f"results-{state.process_index}.jsonl"
        decoders = {}  # painting decoders by name, each loaded once
        for job in mine:
            with claim(args.out, job.id) as held:
                if not held or job.id in finished(args.out):  # another sweep on --out runs it, or has run it
                    taken += 1
                    continue
                start = time.perf_counter()
                try:
                    image = run_job(pipe, method, job, decoders)
                    save_atomically(image, args.out / f"{job.id}.png")  # the image first: a line means a whole image
                except Exception as err:  # noqa: BLE001 — one bad job must not stop the others; a rerun retries it
                    failed += 1
                    print(f"gradop.sweep: job {job.id} failed: {type(err).__name__}: {' '.join(str(err).split())}",
                          file=sys.stderr)
                    continue
                used = {k: v if job.settings.get(k) is None else job.settings[k] for k, v in defaults.items()}
                append_line(results, {"id": job.id, **job.params, "prompt": job.prompt, "settings used": used,
                                      "seconds": round(time.perf_counter() - start, 3),
                                      "process": state.process_index, "image": f"{job.id}.png"})
    state.wait_for_everyone()
    if taken:
        print(f"gradop.sweep: {taken} job(s) left to another sweep in '{args.out}' (running or done there)",
              file=sys.stderr)
    if failed:
        print(f"gradop.sweep: {failed} of {len(mine)} job(s) failed (above); a rerun retries them", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
