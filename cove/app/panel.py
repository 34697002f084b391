"""The panel every widget of ``cove.app.widgets`` is built on, and its small controls.

A :class:`Panel` is an ``ipywidgets.VBox`` with its controls (``panel.controls``), its last
computed numbers (``panel.state``), a status line that shows errors in red and keeps them in
``panel.error``, an optional click-to-pick on a picture (``ipyevents``) and a static copy of its
pictures for rendered notebooks.
"""
from __future__ import annotations

import base64
import functools
import html
import traceback

import ipywidgets
import numpy as np

from . import viz


class Panel(ipywidgets.VBox):
    """Controls + pictures + a status line, and the state behind them; an ``ipywidgets.VBox``.

    Attributes:
        controls: ``{name: widget}`` of the sliders, dropdowns and buttons.
        images: ``{name: ipywidgets.Image}`` of the pictures.
        status: ``ipywidgets.HTML`` line: numbers of the last update, or the error.
        output: ``ipywidgets.Output`` for rich output (tables, plots).
        state: numbers and arrays of the last update (what the pictures show).
        error: the exception of the last update, ``None`` when it succeeded.
    """

    def __init__(self, controls: dict, images: dict, *, title: str | None = None, extra=(), folded=(),
                 folded_title: str = "more settings"):
        w = ipywidgets
        status, output = w.HTML(), w.Output()
        rows = [w.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        front = [c for n, c in controls.items() if n not in folded]
        rows += [w.HBox(front, layout=w.Layout(flex_flow="row wrap"))]
        if folded:  # the controls that matter less: in a closed accordion below the front row
            more = w.Accordion([w.HBox([controls[n] for n in folded], layout=w.Layout(flex_flow="row wrap"))])
            more.set_title(0, folded_title)
            more.selected_index = None
            rows.append(more)
        rows += [w.HBox(list(images.values()))] if images else []
        super().__init__([*rows, *extra, status, output])
        self.controls, self.images, self.status, self.output = controls, images, status, output
        self.state: dict = {}
        self.error: Exception | None = None
        self.updates = 0
        self.pickable: list = []  # clickable frame panels of the last picture (cove.app.plots)
        self._quiet, self._update = False, lambda: None

    def guarded(self, update, count: bool = True):
        """Wrap ``update`` so an exception is shown in the status line and kept in ``error``;
        ``count``: a successful call adds one to ``updates``."""

        @functools.wraps(update)
        def run(*_):
            self.error = None
            try:
                update()
                self.updates += count
            except Exception as exc:  # noqa: BLE001 - shown to the learner, kept for tests
                self.error = exc
                self.status.value = (
                    f'<pre style="color:#b00020;white-space:pre-wrap">{type(exc).__name__}: '
                    f"{html.escape(str(exc))}\n\n{html.escape(traceback.format_exc(limit=-3))}</pre>"
                )
        return run

    def guarded_event(self, handle):
        """Like :meth:`guarded`, for a handler that takes the event dict."""

        def run(event):
            self.guarded(lambda: handle(event), count=False)()

        return run

    def watch(self, update, *names):
        """Call ``update`` (guarded) now and whenever one of the named controls changes."""
        run = self.guarded(update)

        def changed(*_):
            if not self._quiet:  # a click sets several controls, then updates once
                run()

        for name in names or list(self.controls):
            control = self.controls[name]
            if hasattr(control, "on_click"):
                control.on_click(run)
            else:
                control.observe(changed, names="value")
        self._update = run
        run()
        return run

    def show(self, name: str, image: np.ndarray) -> None:
        """Draw ``uint8 (H, W, 3)`` ``image`` in the picture called ``name``."""
        self.images[name].value = viz.to_png(image)

    def pick(self, x: float, y: float) -> bool:
        """Pick the cell under PNG pixel ``(x, y)`` of the picture (what a click does): sets
        the ``frame``, ``x`` and ``y`` controls at once and updates once. False off the frames."""
        hit = plots_pick(self.pickable, x, y)
        if hit is None:
            return False
        frame, cx, cy = hit
        self._set_point(frame, cx, cy)
        return True

    def _set_point(self, frame, cx, cy):
        c = self.controls
        H, W = c["y"].max + 1, c["x"].max + 1
        values = {"frame": min(max(frame, 0), c["frame"].max), "x": min(max(cx, 0), W - 1),
                  "y": min(max(cy, 0), H - 1)}
        if all(c[n].value == v for n, v in values.items()):
            return
        self._quiet = True
        try:
            for n, v in values.items():
                c[n].value = v
        finally:
            self._quiet = False
        self._update()

    def _repr_mimebundle_(self, **kwargs):
        """The widget, plus a static copy (pictures and status line as HTML) for viewers that
        cannot run widgets (a rendered notebook, the docs)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        pictures = "".join(
            f'<img src="data:image/png;base64,{base64.b64encode(im.value).decode()}" style="max-width:100%"/>'
            for im in self.images.values() if im.value)
        bundle["text/html"] = (f'<div class="cove-panel-snapshot">{pictures}'
                               f'<div style="font-size:90%">{self.status.value}</div></div>')
        return bundle


def plots_pick(panels, x, y):
    from .plots import pick

    return pick(panels, x, y)


KEYS = {"ArrowLeft": (0, -1, 0), "ArrowRight": (0, 1, 0), "ArrowUp": (0, 0, -1), "ArrowDown": (0, 0, 1),
        "[": (-1, 0, 0), "]": (1, 0, 0)}  # (frame, x, y) steps


def clickable(panel: Panel, name: str, *, grid: tuple[int, int], frames: int):
    """Make picture ``name`` of ``panel`` pick points: a click picks the cell under it
    (:meth:`Panel.pick`), the arrow keys move the point by one cell and ``[`` / ``]`` change
    the frame (picture focused). Returns the ``ipyevents.Event``."""
    from ipyevents import Event

    def handle(event):
        if event.get("type") == "click" and "dataX" in event:
            panel.pick(float(event["dataX"]), float(event["dataY"]))
        elif event.get("type") == "keydown" and event.get("key") in KEYS:
            df, dx, dy = KEYS[event["key"]]
            c = panel.controls
            panel._set_point(c["frame"].value + df, c["x"].value + dx, c["y"].value + dy)

    events = Event(source=panel.images[name], watched_events=["click", "keydown"],
                   prevent_default_action=True)
    events.on_dom_event(panel.guarded_event(handle))
    return events


def slider(description, value, lo, hi, step=1, kind="int", **kwargs):
    w = ipywidgets
    cls = w.IntSlider if kind == "int" else w.FloatSlider
    return cls(value=value, min=lo, max=hi, step=step, description=description,
               continuous_update=False, style={"description_width": "initial"}, **kwargs)


def point_sliders(F: int, grid: tuple[int, int], frame: int, point) -> dict:
    """Sliders "frame i", "x", "y" picking one token of an (F, H, W) grid; ``point`` (x, y) or
    ``None`` for the centre."""
    H, W = grid
    x0, y0 = point if point is not None else (W // 2, H // 2)
    return {"frame": slider("frame i", frame, 0, F - 1), "x": slider("x", x0, 0, W - 1),
            "y": slider("y", y0, 0, H - 1)}


def image(width: int | None = None):
    w = ipywidgets
    layout = w.Layout(width=f"{width}px" if width else "auto")
    return w.Image(format="png", layout=layout)


def table_html(rows: list[dict], *, max_chars: int = 24) -> str:
    """A compact HTML table, one row per dict, columns in first-seen order (floats to 3 digits);
    show it with ``IPython.display.HTML``. Cells never wrap; text longer than ``max_chars`` is
    cut with "…" (the whole text in its tooltip), and the table scrolls sideways if it must."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(v):
        text = f"{v:.3g}" if isinstance(v, float) else str(v)
        short = text if len(text) <= max_chars else text[: max_chars - 1] + "…"
        align = "right" if isinstance(v, (int, float)) and not isinstance(v, bool) else "left"
        return (f"<td title='{html.escape(text, quote=True)}' style='padding:1px 6px;white-space:nowrap;"
                f"text-align:{align}'>{html.escape(short)}</td>")

    head = "".join(f"<th style='padding:1px 6px;white-space:nowrap'>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    return (f"<div style='overflow-x:auto;max-width:100%'><table style='font-size:85%;border-collapse:collapse'>"
            f"<tr>{head}</tr>{body}</table></div>")
