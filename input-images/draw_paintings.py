"""Draw the project's stroke paintings (512x512 PNG) and their manifest.

    python input-images/draw_paintings.py

Each painting is drawn at 2x with flat colours and then Lanczos-downsampled, so edges are
anti-aliased like a real scribble. The manifest gives each painting's prompt and what each
colour means (the region phrases of the region-semantics work).
"""
import json
from pathlib import Path

from PIL import Image, ImageDraw

S = 2  # supersampling factor
HERE = Path(__file__).parent


def canvas(top, bottom=None, horizon=0.6):
    img = Image.new("RGB", (512 * S, 512 * S), top)
    if bottom:
        ImageDraw.Draw(img).rectangle([0, int(512 * S * horizon), 512 * S, 512 * S], fill=bottom)
    return img, ImageDraw.Draw(img)


def box(*xy):
    return [v * S for v in xy]


def fox_tree():
    img, d = canvas("#87c5f0", "#4f9a3a", 0.68)
    d.rectangle(box(360, 180, 392, 360), fill="#6b4226")                    # trunk
    d.ellipse(box(290, 60, 470, 240), fill="#2f6e2a")                       # crown
    d.ellipse(box(110, 280, 280, 380), fill="#e0701f")                      # body
    d.polygon(box(250, 300, 330, 250, 310, 320), fill="#e0701f")            # head
    d.polygon(box(275, 262, 290, 225, 300, 258), fill="#e0701f")            # ear
    d.polygon(box(110, 320, 40, 270, 60, 350), fill="#e0701f")              # tail
    d.ellipse(box(30, 262, 62, 292), fill="#f4f1ea")                        # tail tip
    return img, "a photo of a red fox sitting beside a tree in a meadow", {
        "#87c5f0": "sky", "#4f9a3a": "grass", "#6b4226": "tree trunk", "#2f6e2a": "tree leaves",
        "#e0701f": "fox", "#f4f1ea": "white fur"}


def castle_lake():
    img, d = canvas("#9cc9ef", "#3466b0", 0.62)
    d.polygon(box(0, 320, 120, 200, 260, 318), fill="#5d6b7a")              # mountain
    d.rectangle(box(230, 170, 400, 320), fill="#b8aa96")                   # keep
    for x in (215, 300, 385):
        d.rectangle(box(x, 120, x + 35, 320), fill="#b8aa96")              # towers
        d.polygon(box(x - 5, 120, x + 17, 80, x + 40, 120), fill="#8a3b33")  # roofs
    d.rectangle(box(0, 318, 512, 345), fill="#3f7f3a")                     # shore
    return img, "a photo of a castle by a lake with mountains behind", {
        "#9cc9ef": "sky", "#3466b0": "lake", "#5d6b7a": "mountain", "#b8aa96": "castle",
        "#8a3b33": "roofs", "#3f7f3a": "grass"}


def landscape():
    img, d = canvas("#f2b36b", "#355e2e", 0.7)
    d.ellipse(box(330, 250, 420, 340), fill="#fff0a0")                     # sun
    d.polygon(box(0, 380, 150, 210, 290, 370, 400, 240, 512, 360, 512, 380), fill="#54487a")  # mountains
    d.polygon(box(120, 250, 150, 210, 180, 245), fill="#f4f4f8")           # snow
    d.rectangle(box(0, 420, 512, 460), fill="#4d8fc9")                     # river
    return img, "a beautiful landscape at sunset with mountains and a river", {
        "#f2b36b": "sunset sky", "#355e2e": "forest", "#fff0a0": "sun", "#54487a": "mountains",
        "#f4f4f8": "snow", "#4d8fc9": "river"}


def mouse():
    img, d = canvas("#e8dcc4", "#a37a4c", 0.72)
    d.ellipse(box(140, 250, 370, 400), fill="#8e8e8e")                     # body
    d.ellipse(box(320, 250, 420, 340), fill="#8e8e8e")                     # head
    d.ellipse(box(330, 200, 390, 265), fill="#f2a7b4")                     # ear
    d.line(box(150, 360, 60, 420, 20, 380), fill="#f2a7b4", width=10 * S)  # tail
    d.ellipse(box(392, 280, 404, 292), fill="#1c1c1c")                     # eye
    return img, "a photo of a small grey mouse on a wooden floor", {
        "#e8dcc4": "wall", "#a37a4c": "wooden floor", "#8e8e8e": "mouse", "#f2a7b4": "pink ears and tail",
        "#1c1c1c": "eye"}


def frog_rock():
    img, d = canvas("#7fb7a4", "#3c6e5c", 0.55)
    d.ellipse(box(80, 300, 440, 480), fill="#7d7a74")                      # rock
    d.ellipse(box(170, 200, 350, 330), fill="#f08cc0")                     # body
    d.ellipse(box(185, 170, 235, 220), fill="#f08cc0")                     # eye bumps
    d.ellipse(box(285, 170, 335, 220), fill="#f08cc0")
    d.ellipse(box(200, 182, 220, 202), fill="#1c1c1c")
    d.ellipse(box(300, 182, 320, 202), fill="#1c1c1c")
    return img, "a photo of a pink frog sitting on a rock by a pond", {
        "#7fb7a4": "background foliage", "#3c6e5c": "pond", "#7d7a74": "rock", "#f08cc0": "pink frog",
        "#1c1c1c": "eyes"}


def tiger():
    img, d = canvas("#c9d98f", "#8aa34a", 0.7)
    d.ellipse(box(90, 230, 380, 390), fill="#e38b2c")                      # body
    d.ellipse(box(330, 180, 450, 300), fill="#e38b2c")                     # head
    for x in range(130, 360, 45):
        d.line(box(x, 235, x + 20, 385), fill="#1f1a17", width=12 * S)     # stripes
    d.ellipse(box(355, 250, 425, 300), fill="#f4ede0")                     # muzzle
    d.rectangle(box(120, 370, 150, 450), fill="#e38b2c")                   # legs
    d.rectangle(box(310, 370, 340, 450), fill="#e38b2c")
    return img, "a photo of a tiger walking through tall grass", {
        "#c9d98f": "hazy background", "#8aa34a": "tall grass", "#e38b2c": "tiger", "#1f1a17": "black stripes",
        "#f4ede0": "white muzzle"}


PAINTINGS = {"fox_tree.png": fox_tree, "castle_lake.png": castle_lake, "landscape.png": landscape,
             "mouse.png": mouse, "frog_rock.png": frog_rock, "tiger.png": tiger}


def main():
    manifest = {}
    for name, draw in PAINTINGS.items():
        img, prompt, colors = draw()
        img.resize((512, 512), Image.LANCZOS).save(HERE / name, optimize=True)
        manifest[name] = {"prompt": prompt, "colors": colors}
        print(f"wrote {HERE / name}")
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
