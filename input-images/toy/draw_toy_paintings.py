"""Draw the toy-world paintings (256x256 PNG) and their manifest, from held-out scene seeds.

These are paintings of the world the bundled toy model was trained on (`gradop.toy.world`), so
`gradop --img_path input-images/toy/<name>.png` gives a real result on any machine, offline.
The manifest gives each painting's prompt (the scene's caption) and the phrase of each painted
colour that the caption names, ready for `--region`.

    python input-images/toy/draw_toy_paintings.py
"""
import json
from pathlib import Path

import PIL.Image

from gradop.toy.evaluate import region_bindings
from gradop.toy.train import HELD_OUT_SEED
from gradop.toy.world import make_scene

HERE = Path(__file__).parent
SIZE = 256
PAINTINGS = {"lake_mountains.png": 16, "house_lake.png": 14, "forest_meadow.png": 9, "sunny_lake.png": 46}


def main():
    manifest = {}
    for name, offset in PAINTINGS.items():
        scene = make_scene(HELD_OUT_SEED + 500 + offset, SIZE)
        PIL.Image.fromarray(scene.painting).save(HERE / name, optimize=True)
        manifest[name] = {"prompt": scene.caption, "colors": region_bindings(scene)}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
