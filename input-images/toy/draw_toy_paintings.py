"""Draw the toy-world paintings (256x256 PNG) and their manifest, from held-out scene seeds.

These are paintings of the world the bundled toy model was trained on (`gradop.toy.world`), so
`gradop --img_path input-images/toy/<name>.png` gives a real result on any machine, offline.
Three are free layouts a band grammar never makes (`FREE`: a low sun, a diagonal path across a tilted
field, two houses below snowy peaks), where guidance is visible: the prompt alone gives another layout.
The manifest gives each painting's prompt ("a photo of" every painted object, `scribbles.naming_prompt`)
and the phrase of each painted colour whose strokes are its class, ready for `--region`. Two paintings
paint a forest and a meadow in one green (two shades of one colour range): only their binding says which
region is which.

    python input-images/toy/draw_toy_paintings.py
"""
import json
from pathlib import Path

import PIL.Image

from gradop.colors import region_masks
from gradop.regions import to_hex
from gradop.toy.evaluate import phrase_of
from gradop.toy.scribbles import naming_prompt
from gradop.toy.train import HELD_OUT_SEED
from gradop.toy.world import CLASSES, make_scene

HERE = Path(__file__).parent
SIZE = 256
PAINTINGS = {"lake_mountains.png": HELD_OUT_SEED + 516, "house_lake.png": HELD_OUT_SEED + 583,
             "sunny_lake.png": HELD_OUT_SEED + 614, "forest_meadow.png": HELD_OUT_SEED + 100_293,
             "wood_by_a_beach.png": HELD_OUT_SEED + 100_053,
             "low_sun.png": HELD_OUT_SEED + 400_058, "diagonal_path.png": HELD_OUT_SEED + 400_032,
             "two_houses.png": HELD_OUT_SEED + 400_026}
FREE = ("low_sun.png", "diagonal_path.png", "two_houses.png")  # drawn in the world's free layout family
NAMED_SHARE = 0.01  # the prompt names every object covering at least this share of the painting
ONE_GREEN = ("forest_meadow.png", "wood_by_a_beach.png")  # a forest and a meadow in one colour range
# Seeds are picked so that each bound colour's mask is its class: where a lake and the sky are painted in close
# blues (one colour range), the lake's colour takes the sky too (house_lake was seed 512, sunny_lake 546).
# The one-green pairs are shades >= 20 apart in some channel, so that `extract_palette` finds both (forest_meadow
# was seed 100_031, whose greens were 7 apart and read as one).


def scene_of(name):
    return make_scene(PAINTINGS[name], SIZE, family="free" if name in FREE else "band")


def bindings(scene, prompt) -> dict:
    """{painted colour: phrase} for every class the prompt names whose colour's strokes are that class (> 80 % of
    the colour's mask: a lake painted in the sky's blue is named but not bound, as its colour takes the sky too)."""
    words, colors = set(prompt.split()), {}
    for name in CLASSES:
        if name == "sky" or phrase_of(name) not in words or (scene.labels == CLASSES.index(name)).mean() < NAMED_SHARE:
            continue
        color = to_hex(scene.painted_color(name))
        mask = region_masks(scene.painting, [color])[0].numpy()
        if mask.any() and (scene.labels[mask] == CLASSES.index(name)).mean() > 0.8:
            colors[color] = phrase_of(name)
    return colors


def entry(name, scene):
    if name not in ONE_GREEN:
        prompt = naming_prompt(scene.labels, NAMED_SHARE)
        return {"prompt": prompt, "colors": bindings(scene, prompt)}
    green = {to_hex(scene.painted_color(c)): phrase for c, phrase in (("forest", "forest"), ("grass", "meadow"))}
    return {"prompt": naming_prompt(scene.labels, NAMED_SHARE), "colors": green}


def main():
    manifest = {}
    for name in PAINTINGS:
        scene = scene_of(name)
        PIL.Image.fromarray(scene.painting).save(HERE / name, optimize=True)
        manifest[name] = entry(name, scene)
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
