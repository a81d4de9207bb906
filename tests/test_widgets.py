"""The scribble pad and the synthesis panel, driven as the browser drives them: canvas mouse events and
button clicks. The painting is checked pixel by pixel against geometry computed here with numpy."""
import datetime
import json

import numpy as np
import PIL.Image
import pytest
import torch

from gradop.regions import parse_color
from gradop.widgets import PANEL_METHODS, TOY_PALETTE, ScribblePad, SynthesisPanel

from conftest import gen

RED, BLUE = "#c82828", "#2040d0"


def drag(pad, points):
    """A press-drag-release of the mouse, as ipycanvas delivers it."""
    pad.on_mouse_down(*points[0])
    for p in points[1:]:
        pad.on_mouse_move(*p)
    pad.on_mouse_up(*points[-1])


def distance_to_polyline(size, points):
    """Per pixel centre, the Euclidean distance to the polyline through `points` (numpy, independent of PIL)."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    best = np.full((h, w), np.inf)
    for (x0, y0), (x1, y1) in zip(points, points[1:] or points):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        best = np.minimum(best, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return best


def assert_stroke(image, points, size, color, background):
    """Pixels well inside the stroke have its colour, pixels well outside the background's: 1 px of slack."""
    pixels = np.asarray(image)
    dist = distance_to_polyline(image.size, points)
    inside, outside = dist <= size / 2 - 1, dist > size / 2 + 1
    assert inside.sum() > 0 and outside.sum() > 0
    assert (pixels[inside] == parse_color(color)).all()
    assert (pixels[outside] == background).all()


@pytest.fixture
def pad():
    return ScribblePad(width=96, height=64, brush_size=6)


def background_of(pad):
    return np.asarray(pad.image)[0, 0].tolist()


def test_a_drag_becomes_one_stroke_rasterised_where_the_mouse_went(pad):
    background = background_of(pad)
    pad.set_color(RED)
    points = [(10, 20), (40, 22), (70, 45)]
    pad.on_mouse_move(5, 5)  # moving without a press draws nothing
    drag(pad, points)
    assert len(pad.strokes) == 1 and pad.strokes[0].points == [tuple(map(float, p)) for p in points]
    assert pad.image.size == (96, 64)
    assert_stroke(pad.image, points, 6, RED, background)
    assert pad.colors == [RED] and "1 stroke(s), 3 points" in pad.status.value


def test_a_click_paints_a_dot_and_brush_size_sets_its_width(pad):
    background = background_of(pad)
    pad.set_color(BLUE)
    pad.brush.value = 12
    drag(pad, [(48, 32)])
    assert_stroke(pad.image, [(48, 32)], 12, BLUE, background)


def test_palette_buttons_and_picker_choose_the_colour_and_later_strokes_cover_earlier(pad):
    palette_row = pad.children[0].children
    grass = list(TOY_PALETTE).index("grass")
    palette_row[grass].click()  # what the browser's click does
    drag(pad, [(10, 32), (86, 32)])
    pad.color_picker.value = BLUE
    drag(pad, [(48, 5), (48, 60)])
    assert [s.color for s in pad.strokes] == [TOY_PALETTE["grass"], BLUE]
    pixels = np.asarray(pad.image)
    assert tuple(pixels[32, 48]) == parse_color(BLUE)  # the crossing shows the later stroke
    assert tuple(pixels[32, 15]) == parse_color(TOY_PALETTE["grass"])


def test_eraser_restores_the_background_even_over_a_loaded_image(pad, painting):
    pad.load_image(painting)
    under = np.asarray(pad.image).copy()
    np.testing.assert_array_equal(under, np.asarray(painting.resize((96, 64), PIL.Image.LANCZOS)))
    pad.set_color(RED)
    pad.brush.value = 10
    drag(pad, [(10, 32), (86, 32)])
    assert (np.asarray(pad.image)[32, 10:87] == parse_color(RED)).all()
    pad.eraser.value = True
    drag(pad, [(30, 32), (60, 32)])
    after = np.asarray(pad.image)
    erased = distance_to_polyline(pad.size, [(30, 32), (60, 32)]) <= 4
    np.testing.assert_array_equal(after[erased], under[erased])
    assert (after[32, 10:20] == parse_color(RED)).all()  # outside the eraser the stroke stays
    assert RED in pad.colors  # the eraser is not a colour


def test_undo_redo_and_clear(pad):
    blank = np.asarray(pad.image).copy()
    drag(pad, [(10, 10), (20, 10)])
    one = np.asarray(pad.image).copy()
    pad.set_color(RED)
    drag(pad, [(10, 40), (80, 40)])
    two = np.asarray(pad.image).copy()
    pad.undo()
    np.testing.assert_array_equal(np.asarray(pad.image), one)
    pad.redo()
    np.testing.assert_array_equal(np.asarray(pad.image), two)
    pad.clear_button.click()
    np.testing.assert_array_equal(np.asarray(pad.image), blank)
    assert pad.strokes == []
    pad.undo_button.click()  # a clear is undoable: no stroke is ever lost
    np.testing.assert_array_equal(np.asarray(pad.image), two)
    pad.undo()
    drag(pad, [(5, 60), (6, 60)])  # a new stroke after undo drops the redo branch
    pad.redo()
    assert len(pad.strokes) == 2 and pad.strokes[1].points[0] == (5.0, 60.0)
    for _ in range(5):
        pad.undo()  # more undos than changes: stops at the empty pad
    assert pad.strokes == []


def test_stroke_history_json_round_trip(pad):
    pad.set_color(RED)
    drag(pad, [(10, 20), (30.5, 40.25), (60, 10)])
    pad.eraser.value = True
    drag(pad, [(20, 30), (25, 30)])
    pad.eraser.value = False
    pad.bindings[RED] = "house"
    text = pad.to_json()
    data = json.loads(text)
    assert data["strokes"][1]["erase"] is True and data["strokes"][0]["points"][1] == [30.5, 40.25]
    other = ScribblePad(width=96, height=64)
    other.from_json(text)
    assert other.strokes == pad.strokes and other.regions == {RED: "house"}
    np.testing.assert_array_equal(np.asarray(other.image), np.asarray(pad.image))


def test_bad_stroke_history_and_bad_arguments_are_clear_errors(pad):
    with pytest.raises(ValueError, match="stroke history"):
        pad.from_json('{"strokes": [{"color": "#zzzzzz"}]}')
    with pytest.raises(ValueError, match="pad"):
        pad.from_json(ScribblePad(width=32, height=32).to_json())
    with pytest.raises(ValueError, match="width"):
        ScribblePad(width=0)
    with pytest.raises(ValueError, match="palette"):
        ScribblePad(palette={"sky": "not a colour"})
    with pytest.raises(ValueError, match=r"\.png"):
        pad.save("painting.jpg")


def test_save_writes_the_rasterised_painting(pad, tmp_path):
    drag(pad, [(10, 10), (50, 50)])
    path = pad.save_path.value = str(tmp_path / "scribble.png")
    pad.save_button.click()
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), np.asarray(pad.image))


def test_upload_loads_the_background_and_a_bad_file_keeps_the_strokes(pad, painting):
    import io

    drag(pad, [(10, 10), (50, 50)])
    buffer = io.BytesIO()
    painting.save(buffer, format="PNG")
    upload = dict(type="image/png", last_modified=datetime.datetime(2026, 1, 1))  # the fields the browser sends with a file
    pad.upload.value = ({"name": "p.png", "size": len(buffer.getvalue()), "content": memoryview(buffer.getvalue())} | upload,)
    assert np.asarray(pad.image)[63, 95].tolist() == np.asarray(painting.resize((96, 64), PIL.Image.LANCZOS))[63, 95].tolist()
    pad.upload.value = ({"name": "broken.png", "size": 9, "content": memoryview(b"not a png")} | upload,)
    assert "could not load broken.png" in pad.status.value and len(pad.strokes) == 1


def test_regions_are_the_painted_colours_with_a_phrase(pad):
    pad.set_color(RED)
    drag(pad, [(10, 10), (50, 10)])
    pad.bindings.update({RED: " house ", BLUE: "lake"})  # blue is not painted: not a region
    assert pad.regions == {RED: "house"}
    text_field = pad.binding_box.children[0].children[1]
    text_field.value = "barn"  # typing in the binding row updates the model
    assert pad.regions == {RED: "barn"}
    pad.bind({"#C82828": "shed"})  # binding from code shows in the row
    assert pad.regions == {RED: "shed"} and pad.binding_box.children[0].children[1].value == "shed"
    with pytest.raises(TypeError, match="phrase"):
        pad.bind({RED: 3})


# ---------------------------------------------------------------------- the synthesis panel
@pytest.fixture
def panel(pipe, pad):
    pad.set_color(RED)
    drag(pad, [(10, 40), (80, 40)])
    return SynthesisPanel(pipe, pad, prompt="a red house", num_inference_steps=4, work_size=64)


def test_generate_equals_the_pipeline_called_directly(panel, pipe, pad):
    panel.seed.value = 3
    panel.generate_button.click()  # runs in a background thread, as in JupyterLab
    panel.wait(120)
    assert panel.last_error is None and len(panel.images) == 1
    assert panel.progress.value == 4 and "done" in panel.status.value
    assert len(panel.output.value) > 0 and len(panel.gallery.children) == 1
    assert (panel.work_width, panel.work_height) == (64, 40)  # 96x64 scaled to a longer side of 64, multiples of 8
    reference = pipe.gradop_plus("a red house", pad.image, 0.8, 3, 12, num_inference_steps=4, height=40, width=64,
                                 generator=gen(3)).images[0]
    np.testing.assert_array_equal(np.asarray(panel.images[0]), np.asarray(reference))


def test_panel_passes_the_bindings_as_regions(panel, pipe, pad):
    pad.bindings[RED] = "house"
    panel.method.value = "SDEdit"
    image = panel.generate()
    reference = pipe.sdedit("a red house", pad.image, 0.8, num_inference_steps=4, height=40, width=64, generator=gen(0),
                            regions={RED: "house"}, region_weight=0.4).images[0]
    unbound = pipe.sdedit("a red house", pad.image, 0.8, num_inference_steps=4, height=40, width=64,
                          generator=gen(0)).images[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))
    assert not np.array_equal(np.asarray(image), np.asarray(unbound))


def test_an_error_shows_in_the_panel_and_the_strokes_stay(panel, pad):
    before = (list(pad.strokes), np.asarray(pad.image).copy())
    pad.bindings[RED] = "castle"  # not in the prompt
    assert panel.generate() is None
    assert isinstance(panel.last_error, ValueError) and "castle" in panel.status.value
    assert not panel.generate_button.disabled  # the panel is usable again
    assert pad.strokes == before[0]
    np.testing.assert_array_equal(np.asarray(pad.image), before[1])
    pad.bindings[RED] = ""
    assert panel.generate() is not None and panel.last_error is None


def test_compare_runs_every_method_on_the_same_seed(panel):
    images = panel.compare()
    assert all(im is not None for im in images)
    assert len(panel.gallery.children) == 5
    assert len(images) == len(PANEL_METHODS) == 5  # every method of gradop.methods
    assert len({np.asarray(im).tobytes() for im in images}) == 5  # five different methods, five different images
    captions = [tile.children[1].value for tile in panel.gallery.children]
    for caption, expected in zip(captions, ("GradOP+ 0.8,", "GradOP 0.6,", "SDEdit 0.8,", "Loopback 0.8,", "Text only,")):
        assert expected in caption, captions  # each method at its own default strength (the pipeline's signature)
    with pytest.raises(ValueError, match="method"):
        panel.synthesize("img2img")


def test_each_result_shows_the_regions_it_kept_and_with_a_judge_its_realism(pipe, pad):
    """The panel's figures are the metrics' own on the image and the painting the run was given."""
    from gradop.metrics import painting_distance, realism, regions_kept
    from gradop.toy.judge import load_judge

    pad.set_color(RED)
    drag(pad, [(10, 40), (80, 40)])
    judge = load_judge()
    panel = SynthesisPanel(pipe, pad, prompt="a red house", num_inference_steps=4, work_size=64, judge=judge)
    painting = pad.image
    image = panel.generate()
    kept = regions_kept(image, painting, sigma_fraction=pipe.config.get("painting_sigma_fraction"))[0]
    distance = painting_distance(image, painting, sigma_fraction=pipe.config.get("painting_sigma_fraction"))
    assert panel.scores[-1] == {"regions_kept": (int(kept.sum()), kept.numel()), "distance": float(distance),
                                "realism": realism(image, judge).item()}
    assert f"{int(kept.sum())} of {kept.numel()} painted regions kept" in panel.status.value
    assert "judged photo" in panel.status.value and "kept" in panel.gallery.children[-1].children[1].value
    plain = SynthesisPanel(pipe, pad, prompt="a red house", num_inference_steps=4, work_size=64)
    plain.generate()
    assert plain.scores[-1]["realism"] is None and "judged photo" not in plain.status.value
    with pytest.raises(TypeError, match="judge must be a patch judge"):
        SynthesisPanel(pipe, pad, judge="toy")


def test_panel_needs_a_pad(pipe):
    with pytest.raises(TypeError, match="pad"):
        SynthesisPanel(pipe, pad=PIL.Image.new("RGB", (8, 8)))


def test_stop_ends_a_run_after_step_k_and_the_panel_works_again(panel, pipe, pad):
    panel.num_inference_steps.value = 10

    def click_stop_at_step_3(change):  # what a user does while the run goes on in the background
        if change["new"] == 3:
            panel.stop_button.click()

    panel.progress.observe(click_stop_at_step_3, "value")
    panel.generate_button.click()
    panel.wait(120)
    panel.progress.unobserve(click_stop_at_step_3, "value")
    assert panel.progress.value == 3 and "stopped after step 3" in panel.status.value
    assert not panel.images and not panel.gallery.children and panel.last_error is None
    assert not panel.generate_button.disabled and panel.stop_button.disabled
    image = panel.generate()  # the pipeline and the panel are usable again, with the same result as ever
    reference = pipe.gradop_plus("a red house", pad.image, 0.8, 3, 12, num_inference_steps=10, height=40, width=64,
                                 generator=gen(0)).images[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))


def test_picking_a_method_moves_the_strength_slider_to_its_default(panel):
    for label, strength in (("GradOP", 0.6), ("SDEdit", 0.8), ("GradOP", 0.6)):
        panel.method.value = label
        assert panel.strength.value == strength, label
    panel.method.value = "Text only"  # takes no strength: the slider stays
    assert panel.strength.value == 0.6


def test_the_pad_refuses_non_finite_pointer_positions():
    from gradop.widgets import ScribblePad

    pad = ScribblePad(64, 48)
    for point in ((float("nan"), 1), (1, float("inf")), ("3", 1), (True, 1)):
        with pytest.raises(ValueError, match="a pointer position must be two finite numbers"):
            pad.on_mouse_down(*point)
    pad.on_mouse_down(3, 4)
    with pytest.raises(ValueError, match="two finite numbers"):
        pad.on_mouse_move(float("nan"), 5)
    pad.on_mouse_move(10, 12)
    pad.on_mouse_up()
    restored = ScribblePad(64, 48)
    restored.from_json(pad.to_json())
    assert restored.image.tobytes() == pad.image.tobytes()


# ---------------------------------------------------------------------- issue 34: background, history, view, panel look
def blank_image(pad):
    return PIL.Image.new("RGB", pad.size, tuple(background_of(pad)))


def test_a_loaded_background_is_in_the_json_and_the_restored_pad_is_identical(pad, painting):
    assert json.loads(pad.to_json())["background"] is None  # a blank pad: no picture to store
    pad.load_image(painting)
    pad.set_color(RED)
    drag(pad, [(10, 20), (60, 40)])
    other = ScribblePad(width=96, height=64)
    other.from_json(pad.to_json())
    np.testing.assert_array_equal(np.asarray(other.image), np.asarray(pad.image))
    other.undo()  # the restore is one undoable step: strokes and background come back together
    np.testing.assert_array_equal(np.asarray(other.image), np.asarray(blank_image(other)))
    blank = ScribblePad(width=96, height=64)
    pad.from_json(blank.to_json())  # a blank history blanks the background too
    np.testing.assert_array_equal(np.asarray(pad.image), np.asarray(blank_image(pad)))


def test_load_image_is_undoable_and_redoable(pad, painting):
    pad.set_color(RED)
    drag(pad, [(10, 20), (60, 40)])
    before = np.asarray(pad.image).copy()
    pad.load_image(painting)
    loaded = np.asarray(pad.image).copy()
    assert not np.array_equal(loaded, before)
    pad.undo()  # the previous background comes back and the stroke stays
    np.testing.assert_array_equal(np.asarray(pad.image), before)
    assert len(pad.strokes) == 1
    pad.redo()
    np.testing.assert_array_equal(np.asarray(pad.image), loaded)


def test_a_bad_background_in_the_json_is_a_clear_error_and_the_pad_stays(pad, painting):
    import base64
    import io

    drag(pad, [(10, 20), (60, 40)])
    before = (list(pad.strokes), np.asarray(pad.image).copy())
    good = json.loads(pad.to_json())
    small = io.BytesIO()
    painting.resize((32, 32)).save(small, format="PNG")
    for value, message in ((3, "background must be"), ("not base64!", "background"),
                           (base64.b64encode(b"not a png").decode(), "background"),
                           (base64.b64encode(small.getvalue()).decode(), "background is 32x32")):
        with pytest.raises(ValueError, match=message):
            pad.from_json(json.dumps(good | {"background": value}))
    assert pad.strokes == before[0]
    np.testing.assert_array_equal(np.asarray(pad.image), before[1])


def test_deeply_nested_json_is_a_value_error(pad):
    with pytest.raises(ValueError, match="stroke history.*nested"):
        pad.from_json("[" * 100000 + "]" * 100000)


def test_mouse_up_draws_only_the_finished_stroke_and_shows_the_models_pixels(monkeypatch):
    import PIL.ImageDraw

    from gradop.widgets import stroke_layer

    pad = ScribblePad(width=256, height=256)
    many = [{"color": BLUE, "size": 16, "points": [[i % 256, (7 * i) % 256], [(3 * i) % 256, (5 * i) % 256]]}
            for i in range(1000)]
    pad.from_json(json.dumps({"version": 1, "size": [256, 256], "strokes": many}))
    dots, shown = [], []
    ellipse = PIL.ImageDraw.ImageDraw.ellipse
    monkeypatch.setattr(PIL.ImageDraw.ImageDraw, "ellipse", lambda self, *a, **k: dots.append(1) or ellipse(self, *a, **k))
    layer = pad.canvas[1]
    put = layer.put_image_data
    monkeypatch.setattr(layer, "put_image_data", lambda data, x=0, y=0: shown.append((data, x, y)) or put(data, x, y))
    pad.set_color(RED)
    pad.brush.value = 10
    drag(pad, [(100, 100), (120, 104), (130, 110)])
    assert len(dots) == 3  # the new stroke's three round caps, not the 1,000 strokes' 2,000
    (data, x, y), = shown  # one patch of the stroke layer: the finished stroke's box, not the whole canvas
    assert data.shape[0] * data.shape[1] < 40 * 30 and (x, y) == (93, 93)
    model = np.asarray(stroke_layer(pad.strokes, pad.size))  # the pixels shown are the model's, hard edges and all
    np.testing.assert_array_equal(data, model[y:y + data.shape[0], x:x + data.shape[1]])
    assert len(pad.strokes) == 1001 and "1001 stroke(s)" in pad.status.value
    shown.clear()
    pad.undo()  # undo redraws everything
    assert shown[0][0].shape[:2] == (256, 256)


def test_palette_buttons_and_binding_swatches_have_a_border_so_light_colours_show(pad):
    palette_row = pad.children[0].children[:len(TOY_PALETTE)]
    for (name, color), button in zip(TOY_PALETTE.items(), palette_row):
        assert name in button.tooltip and button.style.button_color == color
        assert button.layout.border and "solid" in button.layout.border
    pad.set_color(TOY_PALETTE["snow"])
    drag(pad, [(10, 10), (20, 10)])
    swatch = pad.binding_box.children[0].children[0]
    assert TOY_PALETTE["snow"] in swatch.value and "border" in swatch.value  # the exact colour, not greyed out


def test_panel_buttons_fit_their_labels_and_the_prompt_takes_the_row(panel):
    # ipywidgets gives a button 148px and cuts a longer label to "Compare meth…" (the browser test measures it)
    for button in (panel.generate_button, panel.compare_button, panel.stop_button):
        assert button.layout.width == "auto", button.description
    assert panel.prompt.layout.width == "100%"  # a 70-character prompt shows whole


def test_the_panel_status_follows_the_painting(panel, pad):
    assert panel.generate() is not None and "done (1 stroke(s)" in panel.status.value
    pad.clear_button.click()
    assert "done" not in panel.status.value and "0 stroke(s)" in panel.status.value
    drag(pad, [(10, 10), (20, 10)])
    assert "1 stroke(s)" in panel.status.value
    pad.undo()
    assert "0 stroke(s)" in panel.status.value


def test_after_compare_the_large_image_is_the_selected_method(panel):
    import io

    panel.method.value = "SDEdit"
    images = panel.compare()
    shown = PIL.Image.open(io.BytesIO(panel.output.value)).convert("RGB")
    sdedit = images[list(panel.method.options).index("SDEdit")]
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(sdedit.resize(shown.size, PIL.Image.NEAREST)))
    assert "SDEdit" in panel.status.value


def test_a_huge_bad_history_gives_a_short_error():
    import json as json_module

    text = json_module.dumps({"version": 1, "size": [256, 256], "strokes": {str(i): i for i in range(200_000)}})
    with pytest.raises(ValueError) as caught:
        ScribblePad().from_json(text)
    assert len(str(caught.value)) < 500  # it once echoed 3.4 million characters of the input
