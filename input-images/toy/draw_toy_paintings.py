"""Draw the toy-world paintings (256x256 PNG) and their manifest, from held-out scene seeds.

These are paintings of the world the bundled toy model was trained on (`gradop.toy.world`), so
`gradop --img_path input-images/toy/<name>.png` gives a real result on any machine, offline.
The manifest gives each painting's prompt ("a photo of" the scene's description) and the phrase
of each painted colour, ready for `--region`. Two paintings paint a forest and a meadow in one
green (two shades of one colour range): only their binding says which region is which.

    python input-images/toy/draw_toy_paintings.py
"""
import json
from pathlib import Path

import PIL.Image

from gradop.regions import to_hex
from gradop.toy.evaluate import region_bindings
from gradop.toy.train import HELD_OUT_SEED
from gradop.toy.world import make_scene

HERE = Path(__file__).parent
SIZE = 256
PAINTINGS = {"lake_mountains.png": HELD_OUT_SEED + 516, "house_lake.png": HELD_OUT_SEED + 583,
             "sunny_lake.png": HELD_OUT_SEED + 614, "forest_meadow.png": HELD_OUT_SEED + 100_293,
             "wood_by_a_beach.png": HELD_OUT_SEED + 100_053}
ONE_GREEN = ("forest_meadow.png", "wood_by_a_beach.png")  # a forest and a meadow in one colour range
# Seeds are picked so that each bound colour's mask is its class: where a lake and the sky are painted in close
# blues (one colour range), the lake's colour takes the sky too (house_lake was seed 512, sunny_lake 546).
# The one-green pairs are shades >= 20 apart in some channel, so that `extract_palette` finds both (forest_meadow
# was seed 100_031, whose greens were 7 apart and read as one).


def entry(name, scene):
    if name not in ONE_GREEN:
        return {"prompt": scene.prompt("photo"), "colors": region_bindings(scene)}
    green = {to_hex(scene.painted_color(c)): phrase for c, phrase in (("forest", "forest"), ("grass", "meadow"))}
    return {"prompt": "a photo of a forest and a meadow", "colors": green}


def main():
    manifest = {}
    for name, seed in PAINTINGS.items():
        scene = make_scene(seed, SIZE)
        PIL.Image.fromarray(scene.painting).save(HERE / name, optimize=True)
        manifest[name] = entry(name, scene)
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
