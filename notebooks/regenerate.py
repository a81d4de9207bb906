"""Re-run the tutorial notebooks in place on the toy model, CPU, offline: the committed outputs come from here.

    python notebooks/regenerate.py                 # all five
    python notebooks/regenerate.py 02_the_optimisation.ipynb

Each notebook runs top to bottom in a fresh `python3` kernel; then widget state and run timestamps are
dropped (readers see the figures; widgets need a live kernel anyway) and the size is checked (<= 2 MB).
Every random draw goes through seeded generators, so a rerun gives the same figures on the same machine.
"""
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
MAX_BYTES = 2 * 2**20


def slowest_cells(notebook, count: int = 6) -> list[tuple[float, int]]:
    """(seconds, cell index) of the slowest code cells, from the run's own timestamps (before they are dropped)."""
    times = []
    for index, cell in enumerate(notebook.cells):
        stamps = cell.metadata.get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            begin, end = (datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            times.append(((end - begin).total_seconds(), index))
    return sorted(times, reverse=True)[:count]


def shrink_png(output, limit: int = 150_000) -> None:
    """A figure whose PNG is over `limit` bytes (base64) is re-encoded with an adaptive 256-colour palette: a third
    of the size, but a small region's colour can shift (colour is what the painting distance measures), so it is
    the last resort of a notebook over 2 MB."""
    import base64
    import io

    import PIL.Image

    data = output.get("data", {})
    if len(data.get("image/png", "")) > limit:
        image = PIL.Image.open(io.BytesIO(base64.b64decode(data["image/png"]))).convert("RGB")
        buffer = io.BytesIO()
        image.quantize(256, method=PIL.Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
        data["image/png"] = base64.b64encode(buffer.getvalue()).decode()


def regenerate(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    os.environ.update(HF_HUB_OFFLINE="1", GRADOP_MODEL="toy")  # the kernel inherits these
    os.environ.pop("GRADOP_WORK_SIZE", None)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - start
    print(f"{path.name}: slowest cells " + ", ".join(f"{i} ({t:.0f} s)" for t, i in slowest_cells(notebook)), flush=True)
    notebook.metadata.pop("widgets", None)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        # a widget's view (a progress bar, a slider) cannot show without the state dropped above: its text stand-in
        # would read "0%" forever, so the view goes too (a live kernel draws it again)
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    nbformat.write(notebook, path)
    if path.stat().st_size > MAX_BYTES:  # photo-like tiles compress badly: only then the palette
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                shrink_png(output)
        nbformat.write(notebook, path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path.name} is {size / 2**20:.1f} MB, over the 2 MB limit: shrink its figures")
    return seconds


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb"))
    for name in names:
        seconds = regenerate(HERE / name)
        print(f"{name}: {seconds:.0f} s, {(HERE / name).stat().st_size / 2**20:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
