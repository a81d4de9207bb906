"""The project's own stroke paintings: 512x512, each with a prompt and colours that are really in it."""
import json
from pathlib import Path

import numpy as np
import PIL.Image

FOLDER = Path(__file__).parent.parent / "input-images"


def test_paintings_and_manifest():
    manifest = json.loads((FOLDER / "manifest.json").read_text())
    assert len(manifest) >= 6
    for name, entry in manifest.items():
        image = PIL.Image.open(FOLDER / name)
        assert image.size == (512, 512) and image.mode == "RGB"
        assert isinstance(entry["prompt"], str) and entry["prompt"]
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        for color, meaning in entry["colors"].items():
            rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
            count = (np.abs(pixels - rgb).max(1) <= 8).sum()
            assert count >= 50, (name, color, meaning, count)  # a stroke, not a stray fringe pixel


def test_paintings_are_reproduced_by_the_script(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("draw_paintings", FOLDER / "draw_paintings.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "HERE", tmp_path)
    script.main()
    for name in script.PAINTINGS:
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / name)), np.asarray(PIL.Image.open(FOLDER / name)))
    assert json.loads((tmp_path / "manifest.json").read_text()) == json.loads((FOLDER / "manifest.json").read_text())
