"""Jupyter widgets: a scribble pad to paint strokes on, and a panel that turns them into images.

Model/view split (the ipycanvas way): the strokes live in Python (`Stroke` lists); the canvas only
shows them. `ScribblePad.image` is rasterised from the strokes with PIL, never read back from the
browser, so it is the same in a test, on Binder and in JupyterLab. Mouse events reach Python only
while the kernel is idle, so synthesis runs from the panel's button, never inside the drawing cell.

    pad = ScribblePad()                          # draw with the mouse
    panel = SynthesisPanel(pipe, pad, prompt="a photo of a lake below snowy mountains")
    display(pad, panel)                          # Generate -> panel.images[-1]
"""
from __future__ import annotations

import base64
import binascii
import html
import io
import json
import math
import numbers
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
import traitlets
from ipycanvas import MultiCanvas, hold_canvas

from .images import load_image, scaled_size
from .colors import parse_color, to_hex
from .methods import METHODS
from .runs import native_size

# The toy world's painting colours (gradop.toy.world.PALETTE; a test keeps them in step). Forest and meadow share
# one green range, snow and cloud one white, lake and sky one blue: the shades differ so bindings can tell them apart.
# Written out so the widgets never import the toy world.
TOY_PALETTE = {"sky": "#5f96de", "cloud": "#e6eaf1", "sun": "#ffe16e", "mountain": "#736676", "snow": "#f4f6fa",
               "forest": "#2a662a", "grass": "#52983e", "water": "#3064b4", "sand": "#dac08c", "house": "#c4aa8c", "roof": "#96372d"}


@dataclass
class Stroke:
    """One press-drag-release of the mouse: a polyline `size` pixels wide, or an eraser path."""
    color: str
    size: int
    points: list[tuple[float, float]] = field(default_factory=list)
    erase: bool = False


def rasterize(strokes, background: PIL.Image.Image) -> PIL.Image.Image:
    """The painting: `strokes` over `background`, drawn with PIL (hard edges, exact stroke colours)."""
    layer = stroke_layer(strokes, background.size)
    return PIL.Image.alpha_composite(background.convert("RGBA"), layer).convert("RGB")


def stroke_layer(strokes, size) -> PIL.Image.Image:
    """The strokes alone on a transparent RGBA layer; eraser paths clear it back to transparent."""
    layer = PIL.Image.new("RGBA", size, (0, 0, 0, 0))
    paint_strokes(layer, strokes)
    return layer


def paint_strokes(layer: PIL.Image.Image, strokes) -> None:
    """Draw `strokes` onto the RGBA `layer`, in place: one more stroke on a layer gives what `stroke_layer` gives."""
    draw = PIL.ImageDraw.Draw(layer)  # RGBA without blending: an eraser writes (0, 0, 0, 0) outright
    for stroke in strokes:
        fill = (0, 0, 0, 0) if stroke.erase else (*parse_color(stroke.color), 255)
        radius = stroke.size / 2
        # The canvas (and its mouse events) puts pixel i's centre at i + 0.5, PIL at i
        points = [(x - 0.5, y - 0.5) for x, y in stroke.points]
        if len(points) > 1:
            draw.line(points, fill=fill, width=stroke.size, joint="curve")
        for x, y in points:  # round caps and joins, as the canvas draws them
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)


def stroke_box(stroke, size) -> tuple[int, int, int, int] | None:
    """The pixels (left, top, right, bottom) a stroke can touch, on the canvas or in PIL; None when off the canvas."""
    reach = stroke.size / 2 + 2  # the brush radius, the half-pixel shift and the canvas's anti-aliasing
    xs, ys = [x for x, _ in stroke.points], [y for _, y in stroke.points]
    left, top = max(0, math.floor(min(xs) - reach)), max(0, math.floor(min(ys) - reach))
    right, bottom = min(size[0], math.ceil(max(xs) + reach)), min(size[1], math.ceil(max(ys) + reach))
    return (left, top, right, bottom) if left < right and top < bottom else None


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")  # json.loads takes NaN/Infinity unless told not to


def _read_history(data: dict, max_brush: int) -> tuple[list[Stroke], dict[str, str]]:
    """The strokes and bindings of parsed `to_json` output, every field checked (errors name it)."""
    if data.get("version", 1) != 1:
        raise ValueError(f"version {data['version']!r} is not 1")
    if not isinstance(data["strokes"], list):
        raise TypeError(f"strokes must be a list, got {data['strokes']!r}")
    strokes = []
    for i, s in enumerate(data["strokes"]):
        if not isinstance(s, dict) or not isinstance(s["points"], list):
            raise TypeError(f"strokes[{i}] must be an object with a list of points")
        size = s["size"]
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not (size >= 1 and float(size).is_integer()):
            raise ValueError(f"strokes[{i}].size must be a whole number of pixels >= 1, got {size!r}")
        points = []
        for p in s["points"]:
            if not (isinstance(p, list) and len(p) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(float(v)) for v in p)):
                raise ValueError(f"strokes[{i}]: a point must be [x, y] with finite numbers, got {p!r}")
            points.append((float(p[0]), float(p[1])))
        erase = s.get("erase", False)
        if not isinstance(erase, bool):
            raise TypeError(f"strokes[{i}].erase must be true or false, got {erase!r}")
        # a huge brush takes minutes to rasterise; the slider cannot go past max_brush either
        strokes.append(Stroke(to_hex(parse_color(s["color"], f"strokes[{i}].color")), min(int(size), max_brush),
                              points, erase))
    bindings = data.get("bindings", {})
    if not isinstance(bindings, dict) or not all(isinstance(p, str) for p in bindings.values()):
        raise TypeError(f"bindings must map colours to phrases (strings), got {bindings!r}")
    return strokes, {to_hex(parse_color(c, "bindings")): p for c, p in bindings.items()}


def _read_background(value, size) -> PIL.Image.Image | None:
    """The `background` field of `to_json` output: None (the pad's plain colour) or a base64 PNG of the pad's size."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"background must be a base64 PNG or null, got {type(value).__name__}")
    try:
        png = base64.b64decode(value, validate=True)
    except binascii.Error as err:
        raise ValueError(f"background is not base64 ({err})") from None
    image = load_image(io.BytesIO(png), "background")  # the size is checked from the header before decoding
    if image.size != tuple(size):
        raise ValueError(f"background is {image.width}x{image.height}; the pad is {size[0]}x{size[1]}")
    return image


class ScribblePad(widgets.VBox):
    """A paint canvas for stroke paintings (ipycanvas `MultiCanvas`: background layer + stroke layer).

    `revision` counts the changes of the painting (strokes or background): `pad.observe(callback, "revision")`
    follows them, as `SynthesisPanel` does.

    Args:
        width, height (`int`, *optional*, defaults to 256): canvas size in pixels (= `image` size).
        palette (`dict[str, str]`, *optional*): name -> colour of the palette buttons (the toy world's
            class colours by default).
        brush_size (`int`, *optional*, defaults to 16).
        background (`str`, *optional*, defaults to the sky colour): the colour under the strokes.
    """

    revision = traitlets.Int(0, help="how many times the painting changed (observable)")

    def __init__(self, width: int = 256, height: int = 256, palette: dict | None = None, brush_size: int = 16,
                 background: str | None = None):
        for value, name in ((width, "width"), (height, "height")):
            if not isinstance(value, int) or not 8 <= value <= 4096:
                raise ValueError(f"{name} must be an int in [8, 4096], got {value!r}")
        self.palette = {name: to_hex(parse_color(c, f"palette[{name!r}]")) for name, c in (palette or TOY_PALETTE).items()}
        if not self.palette:
            raise ValueError("palette must name at least one colour, e.g. {'sky': '#69a5e6'}")
        background = to_hex(parse_color(background or next(iter(self.palette.values())), "background"))
        self.size = (width, height)
        self.strokes: list[Stroke] = []
        self.bindings: dict[str, str] = {}  # colour -> phrase typed by the user
        self._blank = PIL.Image.new("RGB", self.size, parse_color(background))
        self._background = self._blank
        # (strokes, background) before each change: clears and loaded images are undoable too
        self._undo: list[tuple[list[Stroke], PIL.Image.Image]] = []
        self._redo: list[tuple[list[Stroke], PIL.Image.Image]] = []
        self._drawing: Stroke | None = None
        self._layer = stroke_layer([], self.size)  # the strokes as shown, kept so a new stroke is drawn alone
        self._binding_colors: list[str] = []  # the colours the binding rows show

        self.canvas = MultiCanvas(2, width=width, height=height)
        self.canvas.layout = widgets.Layout(width=f"{width}px", height=f"{height}px")  # one canvas pixel per screen pixel
        self.canvas[1].line_cap = self.canvas[1].line_join = "round"
        self.canvas.on_mouse_down(self.on_mouse_down)
        self.canvas.on_mouse_move(self.on_mouse_move)
        self.canvas.on_mouse_up(self.on_mouse_up)
        self.canvas.on_mouse_out(self.on_mouse_up)

        colors = list(self.palette.values())
        self.color_picker = widgets.ColorPicker(value=colors[min(1, len(colors) - 1)], description="colour",
                                                concise=True, layout=widgets.Layout(width="110px"))
        self.brush = widgets.IntSlider(value=brush_size, min=1, max=64, description="brush",
                                       layout=widgets.Layout(width="220px"))
        self.eraser = widgets.ToggleButton(description="eraser", icon="eraser", layout=widgets.Layout(width="90px"))
        buttons = []
        for name, color in self.palette.items():
            # a dark border, so that snow (#f4f6fa) and cloud show on the white page
            b = widgets.Button(tooltip=f"{name} {color}", layout=widgets.Layout(width="28px", height="28px",
                                                                                border="1px solid #444"))
            b.style.button_color = color
            b.on_click(lambda _, c=color: self.set_color(c))
            buttons.append(b)
        self.undo_button = _button("undo", "undo", self.undo)
        self.redo_button = _button("redo", "repeat", self.redo)
        self.clear_button = _button("clear", "trash", self.clear)
        self.save_path = widgets.Text(value="scribble.png", layout=widgets.Layout(width="160px"))
        self.save_button = _button("save PNG", "save", lambda: self.save(self.save_path.value))
        self.upload = widgets.FileUpload(accept="image/*", description="load image", multiple=False)
        self.upload.observe(self._on_upload, "value")
        self.status = widgets.HTML()
        self.binding_box = widgets.VBox()
        super().__init__([
            widgets.HBox(buttons + [self.color_picker]),
            widgets.HBox([self.brush, self.eraser, self.undo_button, self.redo_button, self.clear_button]),
            self.canvas,
            widgets.HBox([self.upload, self.save_path, self.save_button]),
            self.binding_box, self.status,
        ])
        self._redraw()

    # ------------------------------------------------------------------ the stroke model
    @property
    def image(self) -> PIL.Image.Image:
        """The painting (RGB, `width` x `height`), rasterised from the strokes."""
        return rasterize(self.strokes, self._background)

    @property
    def colors(self) -> list[str]:
        """The stroke colours on the pad, in order of first use."""
        return list(dict.fromkeys(s.color for s in self.strokes if not s.erase))

    @property
    def regions(self) -> dict[str, str]:
        """Colour -> phrase for the colours painted and given a phrase: the pipelines' `regions=`."""
        painted = set(self.colors)
        return {c: p.strip() for c, p in self.bindings.items() if p.strip() and c in painted}

    def bind(self, bindings: dict) -> None:
        """Say what colours become, `{"#2d64af": "lake"}` (words of the prompt); shown in the binding rows."""
        for color, phrase in bindings.items():
            if not isinstance(phrase, str):
                raise TypeError(f"bindings[{color!r}] must be a phrase (str), got {phrase!r}")
            self.bindings[to_hex(parse_color(color, "bindings"))] = phrase
        self._show_bindings()

    def set_color(self, color) -> None:
        self.color_picker.value = to_hex(parse_color(color))
        self.eraser.value = False

    @staticmethod
    def _point(x, y) -> tuple[float, float]:
        """A pointer position as two finite floats: a NaN would be saved into `to_json` that `from_json` refuses."""
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
            raise ValueError(f"a pointer position must be two finite numbers, got ({x!r}, {y!r})")
        return float(x), float(y)

    def on_mouse_down(self, x, y) -> None:
        x, y = self._point(x, y)
        color = to_hex(parse_color(self.color_picker.value, "colour picker"))
        self._drawing = Stroke(color, int(self.brush.value), [(x, y)], bool(self.eraser.value))
        self._draw_segment(self._drawing, (x, y), (x, y))

    def on_mouse_move(self, x, y) -> None:
        if self._drawing is not None:
            x, y = self._point(x, y)
            self._draw_segment(self._drawing, self._drawing.points[-1], (x, y))
            self._drawing.points.append((x, y))

    def on_mouse_up(self, x=None, y=None) -> None:
        if self._drawing is not None:
            stroke, self._drawing = self._drawing, None
            self._record()
            self.strokes = self.strokes + [stroke]
            self._draw_finished(stroke)  # its segments are on the canvas already: no redraw of the others

    def undo(self) -> None:
        self._travel(self._undo, self._redo)

    def redo(self) -> None:
        self._travel(self._redo, self._undo)

    def clear(self) -> None:
        """Remove every stroke (undo brings them back)."""
        if self.strokes:
            self._change([])

    def load_image(self, image) -> None:
        """Paint over `image` (path, file, PIL image or array; resized to the pad): it becomes the background
        (undoable; the strokes stay)."""
        self._change(self.strokes, load_image(image, "image").resize(self.size, PIL.Image.LANCZOS))

    def save(self, path) -> Path:
        """Write the painting as a PNG."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"path must end in .png, got {str(path)!r}")
        self.image.save(path)
        self.status.value = f"saved {path}"
        return path

    def to_json(self) -> str:
        """The stroke history, the bindings and the background as JSON; `from_json` restores it. The background
        is a base64 PNG when an image was loaded, null for the pad's plain colour."""
        background = None if self._background is self._blank else base64.b64encode(_png(self._background)).decode()
        return json.dumps({"version": 1, "size": list(self.size), "strokes": [asdict(s) for s in self.strokes],
                           "bindings": self.bindings, "background": background})

    def from_json(self, text: str) -> None:
        """Replace the strokes and the background with those of `to_json` output (one undoable step) and add its
        bindings; a history without a background (null or none) leaves this pad's plain colour.

        Everything is checked before the pad changes: a `ValueError` (naming the bad field) leaves the pad as it
        was. Brush sizes above the brush slider's maximum are capped at it.
        """
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
            if not isinstance(data, dict):
                raise TypeError(f"it holds a {type(data).__name__}, not an object")
            size = data.get("size", list(self.size))
        except RecursionError:  # json.loads recurses once per [ or {: thousands of them exhaust the stack
            raise ValueError("text is not a stroke history written by ScribblePad.to_json: "
                             "it is nested too deeply") from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"text is not a stroke history written by ScribblePad.to_json: {err}") from None
        if size != list(self.size):
            raise ValueError(f"the strokes were drawn on a {size} pad; this pad is {list(self.size)}")
        try:
            strokes, bindings = _read_history(data, self.brush.max)
            background = _read_background(data.get("background"), self.size)
        except (ValueError, KeyError, TypeError, OverflowError) as err:
            reason = f"a stroke or the file lacks the field {err}" if isinstance(err, KeyError) else err
            reason = str(reason) if len(str(reason)) <= 300 else str(reason)[:297] + "..."  # not megabytes of input
            raise ValueError(f"text is not a stroke history written by ScribblePad.to_json: {reason}") from None
        self.bindings.update(bindings)
        self._change(strokes, self._blank if background is None else background)

    # ------------------------------------------------------------------ the view
    def _record(self) -> None:
        """Keep the painting as it is for undo, before a change."""
        self._undo.append((self.strokes, self._background))
        self._redo.clear()

    def _change(self, strokes, background=None) -> None:
        """One undoable step: the pad becomes `strokes` over `background` (the current one when None)."""
        self._record()
        self._restore(strokes, self._background if background is None else background)

    def _travel(self, source, target) -> None:
        """Undo or redo: the painting on top of `source` comes back; the one it replaces goes onto `target`."""
        if source:
            target.append((self.strokes, self._background))
            self._restore(*source.pop())

    def _restore(self, strokes, background) -> None:
        self.strokes, self._background = strokes, background
        self._redraw()

    def _draw_segment(self, stroke, start, end) -> None:
        layer = self.canvas[1]
        with hold_canvas():
            layer.global_composite_operation = "destination-out" if stroke.erase else "source-over"
            layer.stroke_style = layer.fill_style = stroke.color
            layer.line_width = stroke.size
            layer.stroke_line(*start, *end)
            layer.fill_circle(*end, stroke.size / 2)

    def _redraw(self) -> None:
        """Show the model: the background and the PIL-rasterised stroke layer, so view == `image`."""
        self._layer = stroke_layer(self.strokes, self.size)
        with hold_canvas():
            self.canvas[0].put_image_data(np.asarray(self._background), 0, 0)
            self.canvas[1].clear()
            self.canvas[1].global_composite_operation = "source-over"
            self.canvas[1].put_image_data(np.asarray(self._layer), 0, 0)
        self._show_bindings()  # from_json may have brought new phrases for the same colours
        self._painting_changed()

    def _draw_finished(self, stroke) -> None:
        """Swap the canvas's anti-aliased drawing of the finished `stroke` for the model's pixels (PIL's hard
        edges), in the stroke's box only: a mouse-up costs one stroke, however many the pad holds."""
        paint_strokes(self._layer, [stroke])
        box = stroke_box(stroke, self.size)
        if box is not None:
            left, top, right, bottom = box
            with hold_canvas():
                layer = self.canvas[1]
                layer.global_composite_operation = "source-over"
                layer.clear_rect(left, top, right - left, bottom - top)  # put_image_data blends; clear first
                layer.put_image_data(np.asarray(self._layer.crop(box)), left, top)
        if self.colors != self._binding_colors:
            self._show_bindings()
        self._painting_changed()

    def _painting_changed(self) -> None:
        points = sum(len(s.points) for s in self.strokes)
        self.status.value = f"{len(self.strokes)} stroke(s), {points} points, colours: {', '.join(self.colors) or 'none'}"
        self.revision += 1

    def _show_bindings(self) -> None:
        rows = []
        self._binding_colors = self.colors
        for color in self._binding_colors:
            text = widgets.Text(value=self.bindings.get(color, ""), placeholder="phrase from the prompt",
                                description=color, style={"description_width": "70px"})
            text.observe(lambda change, c=color: self.bindings.__setitem__(c, change["new"]), "value")
            # an HTML square, not a disabled button: those are drawn faded, and the swatch should show the colour
            swatch = widgets.HTML(f"<div style='width:26px;height:26px;background:{color};border:1px solid #444'></div>",
                                  layout=widgets.Layout(width="28px", height="28px", margin="2px"))
            rows.append(widgets.HBox([swatch, text]))
        self.binding_box.children = rows

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            try:
                self.load_image(io.BytesIO(bytes(files[0]["content"])))  # as a file: EXIF and size checks
            except Exception as err:  # a bad file is reported on the pad; the strokes stay
                self.status.value = f"<span style='color:#b00'>could not load {html.escape(files[0]['name'])}: {html.escape(str(err))}</span>"


# The panel's methods, by label (gradop.methods is the one table of them)
PANEL_METHODS = {method.label: method for method in METHODS.values()}


class SynthesisPanel(widgets.VBox):
    """Prompt, method, sliders, seed and a Generate button that turns a `ScribblePad`'s painting into an image.

    Generate and Compare run in a background thread, so the kernel stays free for the Stop button (widget
    events reach Python only while the kernel is idle) and for the pad. Stop ends the run after the current
    step (diffusers' `pipe._interrupt`); nothing joins the gallery then. The progress bar follows the
    pipeline's `callback_on_step_end`; an error is shown in the panel (the pad's strokes are only read,
    never changed). Every result joins the gallery with its settings; "Compare methods" runs all of them
    on the same seed, each at its own default strength (the model's declared defaults: GradOP+ 0.8 as released
    unless the model declares its own, as the toy model does; GradOP 0.6, SDEdit 0.8, Loopback 0.8), and picking
    a method moves the strength slider to its default. A line under the sliders says which defaults are in use. In code, `generate()` and `compare()` run
    in the caller's thread.

    Args:
        pipe (`GradOPPipeline`): the model, e.g. `load_pipeline("toy")`.
        pad (`ScribblePad`): where the painting comes from.
        prompt (`str`, *optional*): the initial prompt.
        seed (`int`, *optional*, defaults to 0).
        num_inference_steps (`int`, *optional*, defaults to 50).
        work_size (`int`, *optional*): the longer side the model works at; defaults to the model's native size
            (64 for the toy model, 512 for Stable Diffusion v1).
        judge (*optional*): a patch judge (`gradop.toy.judge.load_judge()`, toy-world images only) for a realism
            figure beside each result; every result shows how many painted regions it kept
            (`gradop.metrics.regions_kept`).
    """

    def __init__(self, pipe, pad: ScribblePad, prompt: str = "", seed: int = 0, num_inference_steps: int = 50,
                 work_size: int | None = None, judge=None):
        if not isinstance(pad, ScribblePad):
            raise TypeError(f"pad must be a ScribblePad, got {type(pad).__name__}")
        if judge is not None and not callable(getattr(judge, "modality_verdicts", None)):
            raise TypeError(f"judge must be a patch judge with modality_verdicts(images), e.g. "
                            f"gradop.toy.judge.load_judge(), or None; got {type(judge).__name__}")
        factor = pipe.vae_scale_factor
        work_size = work_size or native_size(pipe)
        self.work_height, self.work_width = scaled_size(*pad.size, work_size, factor)
        self.pipe, self.pad, self.judge = pipe, pad, judge
        self.images: list[PIL.Image.Image] = []  # every result, in order (the gallery shows the last 8)
        self.scores: list[dict] = []  # beside each result: regions kept (of those painted) and realism (with a judge)
        self.last_error: Exception | None = None
        self._stop_requested = False
        self._worker: threading.Thread | None = None

        style = {"description_width": "150px"}
        wide = widgets.Layout(width="420px")
        # the whole row (up to 900px), so a long prompt shows whole
        self.prompt = widgets.Text(value=prompt, description="prompt", style=style,
                                   layout=widgets.Layout(width="100%", max_width="900px"))
        self.method = widgets.Dropdown(options=[label for label, m in PANEL_METHODS.items() if m.available_on(pipe)],
                                       value="GradOP+", description="method", style=style)
        self.strength = widgets.FloatSlider(value=self.default_strength(self.method.value), min=0.0, max=1.0, step=0.05,
                                            description="strength", style=style, layout=wide)
        self.method.observe(self._on_method, "value")
        plus = PANEL_METHODS["GradOP+"].defaults_for(pipe)  # the model's declared defaults, else the release's
        self.num_iterative_steps = widgets.IntSlider(value=plus["num_iterative_steps"], min=0, max=10,
                                                     description="iterative steps (K)", style=style, layout=wide)
        self.grad_steps_per_iter = widgets.IntSlider(value=plus["grad_steps_per_iter"], min=0, max=48,
                                                     description="gradient steps (N)", style=style, layout=wide)
        self.defaults_note = widgets.HTML(f"<small>defaults: {PANEL_METHODS['GradOP+'].describe_settings(pipe)}</small>")
        self.region_weight = widgets.FloatSlider(value=0.4, min=0.0, max=2.0, step=0.1, description="region weight w′",
                                                 style=style, layout=wide)
        self.seed = widgets.IntText(value=seed, description="seed", style=style)
        self.num_inference_steps = widgets.IntSlider(value=num_inference_steps, min=2, max=100, description="steps",
                                                     style=style, layout=wide)
        self.generate_button = _button("Generate", "paint-brush", lambda: self._in_background(self.generate),
                                       button_style="primary")
        self.compare_button = _button("Compare methods", "th", lambda: self._in_background(self.compare))
        self.stop_button = _button("Stop", "stop", self.stop, disabled=True)
        self.progress = widgets.IntProgress(value=0, min=0, max=num_inference_steps, description="")
        self.status = widgets.HTML()
        self.output = widgets.Image(format="png", layout=widgets.Layout(width="256px", height="256px"))
        self.gallery = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([
            self.prompt, self.method, self.strength, self.num_iterative_steps, self.grad_steps_per_iter,
            self.defaults_note, self.region_weight, self.num_inference_steps, self.seed,
            widgets.HBox([self.generate_button, self.compare_button, self.stop_button, self.progress]), self.status,
            widgets.HBox([self.output]), self.gallery,
        ])
        pad.observe(self._on_painting_changed, "revision")

    def _on_painting_changed(self, change) -> None:
        """The status line must not claim a run on the painting that is no longer there."""
        if not (self._worker is not None and self._worker.is_alive()):  # a run reports on its own painting
            shown = "the image below is from an earlier painting; " if self.images else ""
            self.status.value = f"painting: {len(self.pad.strokes)} stroke(s); {shown}press Generate"

    def default_strength(self, method: str) -> float | None:
        """The strength `method` (a `PANEL_METHODS` label) has by default on this panel's model (its declared
        default, else the method's own); None for one that takes no strength."""
        return PANEL_METHODS[method].defaults_for(self.pipe).get("strength")

    def _on_method(self, change) -> None:
        strength = self.default_strength(change["new"])
        if strength is not None:  # text-only sampling takes no strength: the slider stays where it is
            self.strength.value = strength

    def synthesize(self, method: str | None = None, strength: float | None = None) -> PIL.Image.Image | None:
        """Run `method` (a `PANEL_METHODS` label; the dropdown's by default) on the pad's painting at `strength`
        (the slider's by default); errors propagate. Returns None when stopped."""
        label = method or self.method.value
        strength = float(self.strength.value if strength is None else strength)
        if label not in PANEL_METHODS:
            raise ValueError(f"method must be one of {list(PANEL_METHODS)}, got {label!r}")
        method = PANEL_METHODS[label]
        steps = int(self.num_inference_steps.value)
        self.progress.max, self.progress.value = steps, 0

        def on_step(pipe, i, t, tensors):
            self.progress.value = min(i + 1, steps)
            if self._stop_requested:
                pipe._interrupt = True  # diffusers' convention: the remaining steps are skipped
            return tensors

        image, regions = self.pad.image, self.pad.regions or None
        kwargs = dict(num_inference_steps=steps, height=self.work_height, width=self.work_width,
                      generator=torch.Generator("cpu").manual_seed(int(self.seed.value)),
                      regions=regions, region_weight=float(self.region_weight.value), callback_on_step_end=on_step)
        if method.name == "text" and regions:  # the painting only gives the regions: at the output size
            kwargs["region_image"] = image.resize((self.work_width, self.work_height), PIL.Image.LANCZOS)
        out = method(self.pipe, self.prompt.value, image, strength=strength,
                     num_iterative_steps=int(self.num_iterative_steps.value),
                     grad_steps_per_iter=int(self.grad_steps_per_iter.value), **kwargs)
        return None if self._stop_requested else out.images[0]

    def generate(self, method: str | None = None, strength: float | None = None) -> PIL.Image.Image | None:
        """`synthesize`, then show the result; an error (or a stop) is shown in the panel and returns None."""
        method = method or self.method.value
        strength = float(self.strength.value if strength is None else strength)
        self._stop_requested = False
        strokes, painting = len(self.pad.strokes), self.pad.image  # what this run is given, should the user draw
        self.status.value = f"{method}: running…"
        self.generate_button.disabled = self.compare_button.disabled = True
        self.stop_button.disabled = False
        try:
            image = self.synthesize(method, strength)
        except Exception as err:  # shown to the user in the panel; the pad is untouched
            self.last_error = err
            self.status.value = f"<span style='color:#b00'><b>{type(err).__name__}</b>: {html.escape(str(err))}</span>"
            return None
        finally:
            self.generate_button.disabled = self.compare_button.disabled = False
            self.stop_button.disabled = True
        self.last_error = None
        if image is None:
            self.status.value = f"{method}: stopped after step {self.progress.value}"
            return None
        self.images.append(image)
        self.scores.append(self.score(image, painting))
        self._show_large(image)
        takes_strength = "strength" in PANEL_METHODS[method].uses
        caption = (f"{method}" + (f" {strength:g}" if takes_strength else "") + f", seed {self.seed.value}"
                   + (f", {len(self.pad.regions)} regions" if self.pad.regions else ""))
        kept, realism = self.scores[-1]["regions_kept"], self.scores[-1]["realism"]
        judged = f"{kept[0]}/{kept[1]} kept" + (f", realism {realism:.2f}" if realism is not None else "")
        self.gallery.children = (self.gallery.children + (_tile(image, f"{caption}; {judged}"),))[-8:]
        self.status.value = (f"{caption}: done ({strokes} stroke(s), image {image.width}x{image.height}); "
                             f"{kept[0]} of {kept[1]} painted regions kept, painting distance "
                             f"{self.scores[-1]['distance']:.4f}"
                             + (f", judged photo {realism:.2f}" if realism is not None else ""))
        return image

    def score(self, image: PIL.Image.Image, painting: PIL.Image.Image) -> dict:
        """regions_kept: (kept, painted), the painted regions of at least 3 % of the image whose blurred colour the
        image keeps within 0.2; distance: the painting distance; realism: the judge's photo share, None without
        a judge."""
        from .callback_pipeline import CallbackPipeline
        from .metrics import painting_distance, realism, regions_kept

        sigma = self.pipe.painting_sigma_fraction if isinstance(self.pipe, CallbackPipeline) else \
            self.pipe.config.get("painting_sigma_fraction")  # the model's painting blur (None: the release's)
        kept = regions_kept(image, painting, sigma_fraction=sigma)[0]
        distance = float(painting_distance(image, painting, sigma_fraction=sigma))
        judged = None if self.judge is None else realism(image, self.judge).item()
        return {"regions_kept": (int(kept.sum()), kept.numel()), "distance": distance, "realism": judged}

    def _show_large(self, image) -> None:
        self.output.value = _png(image.resize((256, 256 * image.height // image.width), PIL.Image.NEAREST))

    def compare(self) -> list[PIL.Image.Image | None]:
        """Every method on the same painting, prompt and seed, each at its own default strength, into the gallery
        (a stop ends the comparison); the method picked in the dropdown is then shown large."""
        images = {}
        for label in self.method.options:  # the methods this pipeline runs
            images[label] = self.generate(label, self.default_strength(label))
            if self._stop_requested:
                break  # generate() clears the request when it starts, so read it before the next one
        picked = images.get(self.method.value)
        if picked is not None:  # the last run (text-only) is shown otherwise, whatever the dropdown says
            self._show_large(picked)
            self.status.value = (f"compared {len(images)} methods (the gallery); shown large: {self.method.value}, "
                                 f"seed {self.seed.value}")
        return list(images.values())

    def stop(self) -> None:
        """Ask the run in progress to end after its current step (what the Stop button does)."""
        self._stop_requested = True

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background run started by a button (if any) has finished."""
        if self._worker is not None:
            self._worker.join(timeout)

    def _in_background(self, run) -> None:
        if self._worker is not None and self._worker.is_alive():
            return  # one run at a time; the buttons are disabled meanwhile

        self._worker = threading.Thread(target=run, name="gradop-synthesis", daemon=True)
        self._worker.start()


def _button(description, icon, action, **kwargs) -> widgets.Button:
    """A button as wide as its label (ipywidgets' fixed 148px cuts "Compare methods" to "Compare meth…")."""
    button = widgets.Button(description=description, icon=icon, layout=widgets.Layout(width="auto", flex="0 0 auto"),
                            **kwargs)
    button.on_click(lambda _: action())
    return button


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _tile(image, caption):
    view = widgets.Image(value=_png(image.resize((128, 128 * image.height // image.width), PIL.Image.NEAREST)),
                         format="png", layout=widgets.Layout(width="128px"))
    label = widgets.HTML(f"<small>{html.escape(caption)}</small>", layout=widgets.Layout(width="128px"))
    return widgets.VBox([view, label], layout=widgets.Layout(margin="0 6px 6px 0"))
