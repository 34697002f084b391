"""ipywidgets explorers for the notebooks: thin layers over cached results.

Every builder returns a :class:`Panel` (an ``ipywidgets.VBox``) whose callbacks call the same
pure functions the tests call (``cove.correspondence``, ``cove.attention``, ``cove.merging``,
``cove.pipeline``, ``cove.metrics``) and draw with ``cove.app.viz``. Conventions:

- sliders use ``continuous_update=False`` (work happens when the slider is released);
- slow work (an edit) sits behind a button;
- the point pickers (``correspondence_explorer``, ``attention_explorer``) pick the cell under a
  click on their picture (``ipyevents``); arrow keys and ``[`` / ``]`` move the point, the
  sliders do the same without a mouse; ``panel.pick(x, y)`` is a click at PNG pixel ``(x, y)``;
- a panel also carries a static copy (its pictures and status line as HTML), which is what a
  rendered notebook without a running kernel shows;
- errors are shown in the panel's status line (red) and kept in ``panel.error``, never
  swallowed;
- the last computed numbers are kept in ``panel.state`` and the controls in
  ``panel.controls``, so the panels can be tested without a browser: set ``.value``, call
  ``button.click()``, read ``panel.state``.
"""
from __future__ import annotations

import base64
import functools
import html
import traceback
from dataclasses import replace

import ipywidgets
import numpy as np
import torch

from . import viz

__all__ = [
    "Panel",
    "frame_viewer",
    "feature_explorer",
    "window_explorer",
    "correspondence_explorer",
    "attention_explorer",
    "merge_explorer",
    "edit_panel",
    "predict_clean",
    "decoder_layers",
    "table_html",
]


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


def _slider(description, value, lo, hi, step=1, kind="int", **kwargs):
    w = ipywidgets
    cls = w.IntSlider if kind == "int" else w.FloatSlider
    return cls(value=value, min=lo, max=hi, step=step, description=description,
               continuous_update=False, style={"description_width": "initial"}, **kwargs)


def _image(width: int | None = None):
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


# ---------------------------------------------------------------------------------------------
# 00: frames side by side
# ---------------------------------------------------------------------------------------------


def frame_viewer(clips: dict, *, scale: int = 4, frame: int = 0) -> Panel:
    """A frame slider over several clips shown side by side (e.g. source | edit | truth).

    Args:
        clips: ``{label: uint8 (F, H, W, 3)}``, all with the same ``F`` and ``H``.
        scale: nearest-neighbour enlargement of the 64x64 frames.
    """
    from .io import side_by_side

    clips = {k: viz.enlarge(v, scale) for k, v in clips.items()}  # enlarged first: crisp labels
    strip = side_by_side(*clips.values(), labels=list(clips))  # (F, H + bar, sum W, 3)
    F = strip.shape[0]
    controls = {"frame": _slider("frame", min(frame, F - 1), 0, F - 1)}
    panel = Panel(controls, {"frames": _image()})

    def update():
        f = controls["frame"].value
        panel.state = {"frame": f, "image": strip[f]}
        panel.show("frames", panel.state["image"])
        panel.status.value = f"frame {f} of {F - 1}"

    panel.watch(update)
    return panel


# ---------------------------------------------------------------------------------------------
# 01: diffusion features
# ---------------------------------------------------------------------------------------------


def decoder_layers(pipe) -> list[str]:
    """Names of the UNet decoder blocks, ``["up_blocks.0", ...]`` (feature layer candidates)."""
    return [f"up_blocks.{u}" for u in range(len(pipe.unet.up_blocks))]


def feature_explorer(pipe, frames, *, t: int = 261, layer: str | None = None, ensemble: int = 1,
                     seed: int = 0, scale: int = 3) -> Panel:
    """Noise level ``t``, decoder layer and noise ensemble as controls; features as PCA colours.

    Calls ``cove.features.extract_features`` (cached per ``(t, layer, ensemble)``) and
    ``cove.app.viz.pca_rgb``. Top row: the frames; bottom row: their features, one PCA fitted on
    all frames so that equal colours mean similar features.
    """
    from ..features import default_feature_layer, extract_features

    w = ipywidgets
    frames = viz.to_numpy(frames)
    layer = layer or default_feature_layer(pipe.unet)
    controls = {
        "t": _slider("noise level t", t, 0, 999, step=1),
        "layer": w.Dropdown(options=decoder_layers(pipe), value=layer, description="layer"),
        "ensemble": _slider("noise draws", ensemble, 1, 8),
    }
    panel = Panel(controls, {"features": _image()})
    cache: dict = {}

    def update():
        key = (controls["t"].value, controls["layer"].value, controls["ensemble"].value)
        if key not in cache:
            generator = torch.Generator().manual_seed(seed)
            cache[key] = extract_features(pipe, frames, t=key[0], layer=key[1], ensemble=key[2],
                                          generator=generator)
        features = cache[key]  # (F, C, h, w)
        colours = viz.pca_rgb(features)  # (F, h, w, 3)
        size = frames.shape[1] // colours.shape[1]
        picture = viz.montage([frames, viz.enlarge(colours, size)])
        panel.state = {"t": key[0], "layer": key[1], "ensemble": key[2], "features": features,
                       "colours": colours}
        panel.show("features", viz.enlarge(picture, scale))
        C, h, w_ = features.shape[1:]
        panel.status.value = f"t = {key[0]}, {key[1]}: features (F, C, H, W) = ({len(frames)}, {C}, {h}, {w_})"

    panel.watch(update)
    return panel


# ---------------------------------------------------------------------------------------------
# 02: one sliding window
# ---------------------------------------------------------------------------------------------


def window_explorer(features, frames, *, window: int = 9, frame: int = 0, point=None,
                    k: int = 3, scale: int = 4) -> Panel:
    """Pick a token of frame ``i``; see its similarity inside the ``l x l`` window of frame ``i+1``.

    Three pictures: frame ``i`` with the query; frame ``i+1`` with the window's similarities
    (``cove.correspondence.window_similarity``) and its top-``K`` cells; the similarity with
    *every* token of frame ``i+1``, i.e. what a full search would compare (window outlined).
    """
    from ..correspondence import window_similarity

    features = torch.as_tensor(features)
    frames = viz.to_numpy(frames)
    F, C, H, W = features.shape
    x0, y0 = point if point is not None else (W // 2, H // 2)
    controls = {
        "frame": _slider("frame i", frame, 0, max(F - 2, 0)),
        "x": _slider("x", x0, 0, W - 1),
        "y": _slider("y", y0, 0, H - 1),
        "window": _slider("window l", window, 1, min(H, W) if min(H, W) % 2 else min(H, W) - 1, step=2),
    }
    images = {"query": _image(), "window": _image(), "full": _image()}
    panel = Panel(controls, images)
    size = frames.shape[1:3]
    big = (size[0] * scale, size[1] * scale)

    def update():
        i, x, y, l = (controls[n].value for n in ("frame", "x", "y", "window"))
        n = y * W + x
        query = features[i].flatten(1)[:, n][None]  # (1, C)
        centre = torch.tensor([[x, y]])  # (1, 2)
        sim, index = window_similarity(query, features[i + 1], centre, l)  # (1, l*l) each
        top = sim[0].topk(min(k, l * l))
        best = index[0, top.indices]  # (K,) token indices, best first
        cells = torch.stack([best % W, best // W], -1)  # (K, 2) (x, y)
        start = int(index[0, 0])  # top-left cell of the (inward-shifted) window
        corner = viz.cell_to_pixel(np.array([start % W, start // W]) - 0.5, (H, W), big)
        box = (*corner, corner[0] + l * big[1] / W, corner[1] + l * big[0] / H)
        thick = max(1, scale // 2)
        query_px = viz.cell_to_pixel([[x, y]], (H, W), big)
        panel.show("query", viz.draw_points(viz.enlarge(frames[i], scale), query_px, radius=scale))
        heat = viz.scatter_grid(sim[0], index[0], (H, W))  # (H, W), NaN outside the window
        pic = viz.overlay(viz.enlarge(frames[i + 1], scale), heat, alpha=0.8)  # colours span the window
        pic = viz.draw_points(viz.draw_box(pic, box, thickness=thick), viz.cell_to_pixel(cells, (H, W), big),
                              radius=thick)
        panel.show("window", pic)
        full = (query @ features[i + 1].flatten(1))[0]  # (N,) full search: every token of i+1
        full_best = int(full.argmax())
        full_pic = viz.overlay(viz.enlarge(frames[i + 1], scale), full.view(H, W), alpha=0.8)
        panel.show("full", viz.draw_box(full_pic, box, thickness=thick))
        panel.state = {"frame": i, "token": n, "window": l, "similarity": sim[0], "index": index[0],
                       "top": best, "full_best": full_best}
        panel.status.value = (
            f"token n = {n} at (x, y) = ({x}, {y}) in frame {i}; window l = {l}: {l * l} of "
            f"{H * W} cells compared; best match ({int(cells[0, 0])}, {int(cells[0, 1])}), "
            f"cosine {float(top.values[0]):.3f}"
        )

    panel.watch(update)
    return panel


# ---------------------------------------------------------------------------------------------
# 03: chained top-K correspondence
# ---------------------------------------------------------------------------------------------


def correspondence_explorer(frames, corr, gt=None, *, features=None, frame: int = 0, point=None,
                            k: int | None = None, dpi: int = 80) -> Panel:
    """Click a point of any frame; see its ``K`` matches in every frame, best first (DIFT's demo).

    One row per correspondence (e.g. diffusion features and optical flow), one column per frame,
    drawn by ``cove.app.plots.picker_figure`` with a legend (query, match 1..K, true position).
    With ``features`` the first row also shows the query's cosine similarity to every cell of
    every frame (``cove.app.viz.similarity_maps``) with its colour bar. A click on the picture
    (``ipyevents``) picks that cell of that frame; the sliders and the arrow keys (picture
    focused; ``[`` and ``]`` change the frame) do the same without a mouse.

    Args:
        frames: uint8 ``(F, H_img, W_img, 3)``.
        corr: a ``Correspondence`` or ``{name: Correspondence}``, one row each, same grid.
        gt: optional ``(positions (F, N, F, 2), visible (F, N, F))`` on the same grid
            (``Clip.ground_truth(grid)``): the true position is drawn as a white square and
            PCK (``cove.metrics.pck``) is reported per row.
        features: optional ``(F, C, H, W)`` unit features for the similarity heatmap.
    """
    from .. import metrics
    from . import plots

    frames = viz.to_numpy(frames)
    corrs = corr if isinstance(corr, dict) else {"correspondence": corr}
    first = next(iter(corrs.values()))
    H, W = first.grid
    F = first.frames
    max_k = max(c.k for c in corrs.values())
    x0, y0 = point if point is not None else (W // 2, H // 2)
    controls = {
        "frame": _slider("frame i", frame, 0, F - 1),
        "x": _slider("x", x0, 0, W - 1),
        "y": _slider("y", y0, 0, H - 1),
        "k": _slider("K", k or max_k, 1, max_k),
    }
    panel = Panel(controls, {"matches": _image()})
    scores = {name: metrics.pck(c, *gt) for name, c in corrs.items()} if gt is not None else {}
    positions = {name: c.positions() for name, c in corrs.items()}  # (F, N, F, K, 2) each
    figure = plots.PickerFigure(frames, (H, W), list(corrs), max_k, truth=gt is not None, dpi=dpi,
                                heat_label="cosine similarity to the query" if features is not None else None)

    def update():
        i, x, y, K = (controls[n].value for n in ("frame", "x", "y", "k"))
        n = y * W + x
        found = {name: pos[i, n, :, : min(K, corrs[name].k)] for name, pos in positions.items()}
        heat = viz.similarity_maps(features, i, (x, y)) if features is not None else None
        truth = (gt[0][i, n], gt[1][i, n]) if gt is not None else None
        png, panel.pickable = figure.draw((i, x, y), found, heat=heat, truth=truth)
        panel.images["matches"].value = png
        panel.state = {"frame": i, "token": n, "k": K, "positions": found, "pck": scores, "heat": heat}
        text = f"token n = {n} at ({x}, {y}) in frame {i}; K = {K}; rows: {', '.join(corrs)}"
        if truth is not None:
            err = {name: float(np.linalg.norm(pos[:, 0].numpy() - truth[0], axis=-1)[truth[1]].mean())
                   for name, pos in found.items()} if truth[1].any() else {}
            text += " | distance of match 1 to the truth, mean over frames (cells): " + \
                ", ".join(f"{k_} {v:.2f}" for k_, v in err.items())
            panel.state["distance"] = err
        if scores:
            text += " | PCK@1 cell, whole clip: " + ", ".join(f"{k_} {v:.3f}" for k_, v in scores.items())
        panel.status.value = text

    panel.pickable = []
    panel.watch(update)
    panel.events = clickable(panel, "matches", grid=(H, W), frames=F)
    return panel


# ---------------------------------------------------------------------------------------------
# 04: correspondence-guided attention
# ---------------------------------------------------------------------------------------------


def attention_explorer(q, k, index, frames, *, grid: tuple[int, int], heads: int = 1,
                       merge_ratio: float = 0.0, frame: int = 0, point=None,
                       scale: int = 3) -> Panel:
    """For a chosen token, where guided attention looks and with what weight.

    Calls ``cove.attention.attention_weights`` (the same code as ``guided_attention``) for the
    token, averages the heads and spreads the weights onto the frames with
    ``cove.app.viz.attention_maps``. The query's own frame gets nothing: CGA leaves it out.

    Args:
        q, k: ``(F, N, C)`` queries and keys on the ``grid`` ``(H, W)``; index: long
            ``(F, N, F, K)``; frames: uint8 ``(F, H_img, W_img, 3)``.
    """
    from ..attention import attention_weights

    frames = viz.to_numpy(frames)
    q, k, index = torch.as_tensor(q), torch.as_tensor(k), torch.as_tensor(index)
    F = q.shape[0]
    H, W = grid
    x0, y0 = point if point is not None else (W // 2, H // 2)
    controls = {
        "frame": _slider("frame i", frame, 0, F - 1),
        "x": _slider("x", x0, 0, W - 1),
        "y": _slider("y", y0, 0, H - 1),
        "merge_ratio": _slider("merge ratio", merge_ratio, 0.0, 1.0, step=0.05, kind="float"),
    }
    panel = Panel(controls, {"attention": _image()})

    def update():
        from . import plots

        i, x, y, ratio = (controls[n].value for n in ("frame", "x", "y", "merge_ratio"))
        n = y * W + x
        weights = attention_weights(q, k, index, heads, merge_ratio=ratio, tokens=[n])
        row = weights[i, 0].mean(0)  # ((F-1)*K,) mean over heads
        maps = viz.attention_maps(row, index[i, n], i, grid)  # (F, H, W)
        uniform = 1.0 / len(row)  # every gathered token weighted alike
        shown = np.where(maps > 0, maps / uniform, np.nan)  # x uniform; NaN: not attended
        png, panel.pickable = plots.weights_figure(
            frames, grid, (i, x, y), shown, centre=1.0, label="weight / uniform weight 1/T",
            title=f"where cell ({x}, {y}) of frame {i} attends (T = {len(row)} gathered tokens; "
                  f"red: above uniform, blue: below)")
        panel.images["attention"].value = png
        panel.state = {"frame": i, "token": n, "weights": row, "maps": maps, "merge_ratio": ratio}
        w_ = viz.to_numpy(row)
        panel.status.value = (f"token ({x}, {y}) of frame {i} attends to {len(row)} gathered tokens; "
                              f"weights from {w_.min() / uniform:.3f} to {w_.max() / uniform:.3f} times "
                              f"the uniform 1/{len(row)} = {uniform:.4f}")

    panel.watch(update)
    panel.events = clickable(panel, "attention", grid=grid, frames=F)
    return panel


def predict_clean(pipe, latents, t: int, prompt: str, *, state=None, guidance_scale: float = 7.5):
    """One denoising evaluation: the clean frames the model predicts from ``latents`` at ``t``.

    ``cove.pipeline.predicted_x0`` of ``cove.pipeline.guided_output`` (classifier-free
    guidance), the UNet running under ``cove.processors.cove_attention(state)``
    (``state=None``: plain per-frame attention). Used by notebook 04 to compare one step with
    and without correspondence-guided attention.

    Args:
        latents: ``(F, c, h, w)`` noisy latents at timestep ``t``.

    Returns:
        uint8 ``(F, H, W, 3)``.
    """
    from ..pipeline import ddim_scheduler, guided_output, predicted_x0
    from ..processors import AttentionState, cove_attention
    from ..sd import decode_latents, encode_text

    F = latents.shape[0]
    state = state or AttentionState(frames=F, mode="per-frame")
    text = torch.cat([encode_text(pipe, [""]), encode_text(pipe, [prompt])]).repeat_interleave(F, 0)  # (2F, L, D)
    with torch.no_grad(), cove_attention(pipe.unet, state):
        out = guided_output(pipe, latents, t, text, guidance_scale)  # (F, c, h, w)
    return decode_latents(pipe, predicted_x0(ddim_scheduler(pipe), out, latents, t))


# ---------------------------------------------------------------------------------------------
# 05: temporal token merging
# ---------------------------------------------------------------------------------------------


def merge_explorer(tokens, index, frames, *, grid: tuple[int, int], ratio: float = 0.5,
                   frame: int = 0, point=None, scale: int = 3) -> Panel:
    """Which of a token's gathered correspondents merge at a given ratio.

    For the chosen token, gathers its ``(F-1)*K`` correspondents
    (``cove.attention.gather_correspondents``), runs bipartite merging on them
    (``cove.merging.make_merge`` via ``cove.app.viz.merge_groups``) and draws each gathered token
    in the colour of the merged token it joins: one colour, one key after merging.

    Args:
        tokens: ``(F, N, C)`` (e.g. diffusion features, or keys); index: ``(F, N, F, K)``.
    """
    from ..attention import gather_correspondents, other_frames
    from ..merging import merge_count

    frames = viz.to_numpy(frames)
    tokens, index = torch.as_tensor(tokens), torch.as_tensor(index)
    F, N, _ = tokens.shape
    K = index.shape[-1]
    H, W = grid
    x0, y0 = point if point is not None else (W // 2, H // 2)
    controls = {
        "frame": _slider("frame i", frame, 0, F - 1),
        "x": _slider("x", x0, 0, W - 1),
        "y": _slider("y", y0, 0, H - 1),
        "ratio": _slider("merge ratio", ratio, 0.0, 1.0, step=0.05, kind="float"),
    }
    panel = Panel(controls, {"groups": _image()})
    big = (frames.shape[1] * scale, frames.shape[2] * scale)
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, size=((F - 1) * K, 3), dtype=np.uint8)  # one per merged token

    def update():
        i, x, y, r_ = (controls[n].value for n in ("frame", "x", "y", "ratio"))
        n = y * W + x
        gathered = gather_correspondents(tokens, index[:, [n]])[i, 0]  # ((F-1)*K, C)
        T = gathered.shape[0]
        r = merge_count(T, r_)
        groups = viz.merge_groups(gathered, r)  # (T,) merged token of each gathered token
        others = other_frames(F)[i].tolist()
        pics = [viz.enlarge(frames[j], scale) for j in range(F)]
        pics[i] = viz.draw_points(pics[i], viz.cell_to_pixel([[x, y]], grid, big), colours=(255, 255, 255), radius=scale)
        for t in range(T):
            j = others[t // K]
            m = int(index[i, n, j, t % K])
            at = viz.cell_to_pixel([[m % W, m // W]], grid, big)
            pics[j] = viz.draw_points(pics[j], at, colours=colours[groups[t]], radius=scale)
        panel.show("groups", viz.montage([pics]))
        panel.state = {"frame": i, "token": n, "tokens": T, "merged_away": r, "kept": T - r, "groups": groups}
        panel.status.value = (f"{T} gathered tokens = (F-1)*K = {F - 1}*{K}; ratio {r_:.2f} merges "
                              f"r = {r} away, {T - r} keys and values remain (same colour = merged)")

    panel.watch(update)
    return panel


# ---------------------------------------------------------------------------------------------
# 06: the full edit behind a button
# ---------------------------------------------------------------------------------------------


def edit_panel(pipe, frames, *, prompt: str, source_prompt: str = "", negative_prompt: str = "", config=None,
               clip=None, truth=None, target_phrase: str | None = None, seed: int = 0, scale: int = 3) -> Panel:
    """The full COVE edit with its settings as widgets and a Run button.

    Each click runs ``cove.pipeline.edit_video`` with the chosen prompt, attention mode, ``K``,
    ``l``, merge ratio, steps, strength, edit-mask threshold (0: no mask), prompt-to-prompt
    steps (0: none; ``cove.extras.p2p``) and the timestep below which PnP's ResNet features are
    injected (1000: every PnP step; ``CoveConfig.extras.pnp_resnet_max_t``), then scores the
    result with ``cove.eval.scoring.score_edit``: flicker (``warp_error`` along ``clip``'s true
    motion, lower is better) and fidelity (PSNR and colour accuracy against the ground-truth
    edit ``truth``).
    Every run is added to a table, so runs can be compared (the paper's ablation in miniature).

    Args:
        frames: uint8 ``(F, H, W, 3)``; prompt / source_prompt / negative_prompt: initial prompts
            (``cove.edit_video``'s meaning; prompt and negative prompt are editable).
        config: starting ``CoveConfig`` (steps are taken from it).
        clip: the source ``world.Clip`` (its motion scores flicker); optional.
        truth: the ground-truth edited ``world.Clip``; optional. target_phrase: the edited
            object ("yellow star"), for colour accuracy.
    """
    from ..config import ATTENTION_MODES, CoveConfig
    from ..eval.scoring import score_edit
    from ..pipeline import denoise_timesteps, inversion_timesteps
    from .io import side_by_side

    w = ipywidgets
    frames = viz.to_numpy(frames)
    config = config or CoveConfig()
    controls = {
        "prompt": w.Text(value=prompt, description="prompt", layout=w.Layout(width="420px")),
        "negative": w.Text(value=negative_prompt, description="negative", layout=w.Layout(width="420px"),
                           placeholder="empty (the paper); the source prompt guides along target - source"),
        "attention": w.Dropdown(options=list(ATTENTION_MODES), value=config.attention, description="attention"),
        "k": _slider("K", config.k, 1, 9),
        "window": _slider("window l", config.window, 1, 15, step=2),
        "merge_ratio": _slider("merge ratio", config.merge_ratio, 0.0, 1.0, step=0.05, kind="float"),
        "steps": _slider("denoise steps", config.denoise_steps, 2, 50),
        "strength": _slider("strength", config.extras.strength, 0.1, 1.0, step=0.05, kind="float"),
        "mask": _slider("edit mask", config.extras.mask_threshold or 0.0, 0.0, 0.9, step=0.05, kind="float"),
        "p2p": _slider("p2p steps", min(config.extras.p2p_steps, 50), 0, 50),
        "resnet_t": _slider("ResNet t <", config.extras.pnp_resnet_max_t or 1000, 50, 1000, step=50),
        "run": w.Button(description="Run edit", button_style="primary", icon="play"),
    }
    progress = w.IntProgress(value=0, min=0, max=1, description="progress")
    frame = _slider("frame", 0, 0, len(frames) - 1)
    runs = w.HTML()
    folded = ("window", "merge_ratio", "steps", "strength", "mask", "p2p", "resnet_t")
    panel = Panel(controls, {"result": _image()}, extra=[progress, frame, runs], folded=folded,
                  folded_title="more settings: window l, merge ratio, steps, strength, edit mask, word swap, ResNet t")
    panel.state = {"runs": [], "result": None, "strip": None}

    def settings() -> CoveConfig:
        steps = controls["steps"].value
        extras = replace(
            config.extras, strength=controls["strength"].value,
            mask_threshold=controls["mask"].value or None,  # 0 = no mask (the paper)
            p2p_steps=controls["p2p"].value,  # 0 = cross-attention left alone (the paper)
            # 1000 = PnP's ResNet features injected at every PnP step (PnP's choice)
            pnp_resnet_max_t=controls["resnet_t"].value if controls["resnet_t"].value < 1000 else None,
        )
        return replace(
            config.with_denoise_steps(steps), attention=controls["attention"].value, k=controls["k"].value,
            window=controls["window"].value, merge_ratio=controls["merge_ratio"].value,
            inversion_steps=max(config.inversion_steps, steps), extras=extras,
        )

    def show_frame(*_):
        if panel.state["strip"] is not None:
            panel.show("result", panel.state["strip"][frame.value])

    def run():
        cfg = settings()
        total = len(inversion_timesteps(pipe, cfg)) + len(denoise_timesteps(pipe, cfg))
        progress.max, progress.value = total, 0
        panel.status.value = f"running {cfg.attention} ({total} steps)..."
        callback = lambda info: setattr(progress, "value", progress.value + 1)  # noqa: E731
        result, scores = score_edit(pipe, frames, controls["prompt"].value, source_prompt=source_prompt,
                                    negative_prompt=controls["negative"].value, config=cfg, seed=seed,
                                    motion=clip, truth=truth, target_phrase=target_phrase, callback=callback)
        row = {"run": len(panel.state["runs"]) + 1, "prompt": controls["prompt"].value,
               "negative": controls["negative"].value,
               "attention": cfg.attention, "K": cfg.k, "l": cfg.window, "merge": cfg.merge_ratio,
               "steps": cfg.denoise_steps, "mask": cfg.extras.mask_threshold or "-", "p2p": cfg.extras.p2p_steps,
               "ResNet t <": cfg.extras.pnp_resnet_max_t or "-", "seconds": result.timings["total"]}
        if "warp_error" in scores:
            row["flicker (warp error)"] = scores.pop("warp_error")
        row.update({f"fidelity {k_}": v for k_, v in scores.items()})
        clips = {"source": frames, f"run {row['run']}: {cfg.attention}": result.frames}
        if truth is not None:
            clips["ground truth"] = truth.frames
        clips = {k: viz.enlarge(v, scale) for k, v in clips.items()}
        panel.state["strip"] = side_by_side(*clips.values(), labels=list(clips))
        panel.state["runs"].append(row)
        panel.state["result"] = result
        runs.value = table_html(panel.state["runs"])
        show_frame()
        panel.status.value = f"run {row['run']} done in {row['seconds']:.1f} s"

    frame.observe(show_frame, names="value")
    controls["run"].on_click(panel.guarded(run))
    panel.status.value = "choose the settings and press Run edit"
    return panel
