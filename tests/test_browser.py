"""A real browser: JupyterLab on 127.0.0.1 in headless Chromium (Debian's, driven by Playwright).

Opens notebook 5, runs it, draws a stroke on the scribble pad with the mouse, clicks Generate, and checks
that the kernel got the stroke and an image came back, and that the widgets read whole: button labels and a
70-character prompt are not cut off, light palette colours have a visible border. The screenshots are kept in
`test-artifacts/` (or `$GRADOP_TEST_ARTIFACTS`): the whole page, and `scribble_pad.png`, the pad and the panel after the run,
which notebook 5 shows (copy it to `notebooks/images/` when the widgets' look changes).
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "05_scribble_pad.ipynb"
DECLARED = json.loads((ROOT / "gradop" / "toy" / "model" / "model_index.json").read_text())["method_defaults"]
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[notebooks]')")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no browser: {CHROMIUM} is missing (Debian: apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a copy of notebook 5 (the browser saves into the copy), with its own config dirs."""
    work = tmp_path / "work"
    work.mkdir()
    notebook = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    for cell in notebook.cells:  # a copy without outputs: what appears below was computed in this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, work / NOTEBOOK)
    # the copy lives outside the checkout: name the checkout's example paintings (gradop.notebook.find_input_images)
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADOP_MODEL=os.environ.get("GRADOP_MODEL", "toy"),
               GRADOP_INPUT_IMAGES=str(ROOT / "input-images"))
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                 "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        env[name] = str(tmp_path / name.lower())
    # Render every cell (no lazy windowing, so outputs below the fold exist) and ask no news questions
    settings = tmp_path / "jupyterlab_settings_dir"
    for plugin, value in (("notebook-extension/tracker", '{"windowingMode": "none"}'),
                          ("apputils-extension/notification", '{"fetchNews": "false"}')):
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    port, token = free_port(), "gradop-browser-test"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "jupyterlab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"{url}/lab/tree/{NOTEBOOK}?token={token}&reset"
    server.terminate()
    server.wait(timeout=30)


def test_draw_a_stroke_and_generate_in_jupyterlab(jupyterlab):
    artifacts = Path(os.environ.get("GRADOP_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        try:
            page.goto(jupyterlab)
            page.locator(".jp-Notebook").wait_for(timeout=120_000)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
            # that indicator says idle before the kernel is attached, and Run All then runs nothing: wait for the
            # status bar's "Python 3 (ipykernel) | Idle" too
            page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for(timeout=120_000)
            page.locator(".jp-Cell").first.click()  # Run All acts on the notebook that has focus
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name=re.compile("^Run All Cells")).click()
            # the first code cell is queued or ran ([*] or [1]), not left at [ ]
            first_prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
            first_prompt.filter(has_text=re.compile(r"\[(\*|\d+)\]")).wait_for(timeout=60_000)
            # the notebook has run when its last checks are printed
            page.get_by_text("the copy's painting is identical: True").wait_for(timeout=int(os.environ.get("GRADOP_BROWSER_TIMEOUT", 600)) * 1000)
            status = page.get_by_text(re.compile(r"^\d+ stroke\(s\), \d+ points")).first
            before = int(status.inner_text().split()[0])

            page.locator("button[title^='sun']").click()  # the palette's sun; the notebook left the brush at 28
            canvas = page.locator(".jp-OutputArea canvas").last  # the top layer takes the mouse
            canvas.scroll_into_view_if_needed()
            box = canvas.bounding_box()
            # a sun low on the left, over the mountains, where the prompt alone never puts it: a small zig-zag blob
            sun = [(0.12 + 0.03 * (k % 3), 0.30 + 0.02 * k) for k in range(6)]
            page.mouse.move(box["x"] + sun[0][0] * box["width"], box["y"] + sun[0][1] * box["height"])
            page.mouse.down()
            for fx, fy in sun[1:]:
                page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=3)
            page.mouse.up()
            page.get_by_text(re.compile(rf"^{before + 1} stroke\(s\)")).first.wait_for(timeout=60_000)
            # the panel's status no longer shows the comparison's run as if it were of this painting
            page.get_by_text(f"painting: {before + 1} stroke(s)").wait_for(timeout=60_000)
            check_the_widgets_read_whole(page)

            page.get_by_role("button", name="Generate").click()
            strength = DECLARED["gradop_plus"]["strength"]  # the panel starts at the bundled model's own default
            done = page.get_by_text(re.compile(rf"GradOP\+ {re.escape(f'{strength:g}')}, seed 0[^:]*: done \({before + 1} stroke\(s\)"))
            done.wait_for(timeout=120_000)
            output = page.locator(".jp-OutputArea img.widget-image").first
            assert output.evaluate("img => img.complete && img.naturalWidth") > 0
            check_the_result_follows_the_sun(output, sun)
            page.screenshot(path=str(artifacts / "browser_scribble_pad.png"), full_page=True)
            # the pad and the panel after the run, side by side: what notebook 5 shows in place of live widgets
            import PIL.Image
            import PIL.ImageChops

            shots = []
            for i, name in ((1, "pad"), (2, "panel")):
                path = artifacts / f"scribble_pad_{name}.png"
                page.locator(".jp-CodeCell").nth(i).locator(".jp-OutputArea-output").last.screenshot(path=str(path))
                shot = PIL.Image.open(path).convert("RGB")  # an output area is the page's width: trim the white
                shots.append(shot.crop(PIL.ImageChops.difference(shot, PIL.Image.new("RGB", shot.size, "white")).getbbox()))
            both = PIL.Image.new("RGB", (sum(im.width for im in shots) + 16, max(im.height for im in shots)), "white")
            both.paste(shots[0], (0, 0))
            both.paste(shots[1], (shots[0].width + 16, 0))
            both.save(artifacts / "scribble_pad.png", optimize=True)
            check_a_long_prompt_shows_whole(page)
        except Exception:
            page.screenshot(path=str(artifacts / "browser_scribble_pad_failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def check_the_result_follows_the_sun(output, sun):
    """The large image is yellow where the sun was drawn (the screenshot's point: a drawn stroke the result follows).
    Its pixels are read in the page (the widget's src is a blob: URL)."""
    import numpy as np

    drawn = np.array(output.evaluate("""(img, box) => {
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth, canvas.height = img.naturalHeight;
        const context = canvas.getContext("2d");
        context.drawImage(img, 0, 0);
        const [x0, y0, x1, y1] = box.map((f, i) => Math.round(f * (i % 2 ? img.naturalHeight : img.naturalWidth)));
        const data = context.getImageData(x0, y0, x1 - x0 + 1, y1 - y0 + 1).data;
        const mean = [0, 0, 0];
        for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) mean[c] += data[i + c] / (data.length / 4);
        return mean.map(v => v / 255);
    }""", [min(x for x, _ in sun), min(y for _, y in sun), max(x for x, _ in sun), max(y for _, y in sun)]))
    sun_colour = np.array([0xff, 0xe1, 0x6e]) / 255
    assert np.linalg.norm(drawn - sun_colour) < 0.25, f"no sun where it was drawn: mean colour {drawn.round(2)}"


def check_the_widgets_read_whole(page):
    """Labels not cut to "Compare meth…" (ipywidgets' fixed button width), light palette colours outlined."""
    for name in ("Generate", "Compare methods", "Stop", "undo", "clear", "save PNG"):
        # by its text: the accessible name also holds the icon's glyph
        button = page.locator(".widget-button", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$"))
        widths = button.evaluate("b => [b.scrollWidth, b.clientWidth]")
        assert widths[0] <= widths[1], f"the {name!r} button cuts its label: {widths[0]}px of text in {widths[1]}px"
    snow = page.locator("button[title^='snow']")
    border = snow.evaluate("b => { const s = getComputedStyle(b); return [s.borderTopStyle, s.borderTopWidth, s.borderTopColor] }")
    assert border[0] == "solid" and border[1] != "0px" and border[2] != "rgb(255, 255, 255)", border


def check_a_long_prompt_shows_whole(page):
    """A 70-character prompt fits the prompt box (the old 560px box cut it)."""
    prompt = "a photo of a red house by a lake below snowy mountains in the sunshine"
    assert len(prompt) == 70
    box = page.locator(".widget-text", has=page.get_by_text("prompt", exact=True)).locator("input")
    box.fill(prompt)
    widths = box.evaluate("i => [i.scrollWidth, i.clientWidth]")
    assert widths[0] <= widths[1], f"the prompt box shows {widths[1]}px of a {widths[0]}px prompt"
