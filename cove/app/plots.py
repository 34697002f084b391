"""Labelled figures for the widgets: titles, colour bars and legends, rendered to PNG.

Matplotlib ``Figure`` objects are drawn off screen (Agg) and returned as PNG bytes together
with the pixel box of every frame panel, so that a click on the picture (``ipyevents`` gives
its position in image pixels) can be mapped back to a frame and a grid cell with :func:`pick`.
Frames are drawn with ``extent`` in *cell* coordinates: data coordinates are grid cells
``(x, y)``, cell centres at integers, whatever the image size.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from . import viz

__all__ = ["FramePanel", "render", "pick", "PickerFigure", "weights_figure", "window_figure", "maps_figure",
           "merge_figure", "MATCH_MARKERS"]

# match k (best first): colour from viz.PALETTE and a marker shape, so a match reads without colour
MATCH_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "h")


@dataclass(frozen=True)
class FramePanel:
    """Where one frame is drawn in a rendered figure: its pixel box in the PNG and the frame."""

    frame: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in PNG pixels, y down
    xlim: tuple[float, float]
    ylim: tuple[float, float]  # (bottom, top) in cell coordinates, as matplotlib keeps them


def _figure(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def render(fig, axes_frames: dict) -> tuple[bytes, list[FramePanel]]:
    """Draw ``fig`` to PNG; ``axes_frames`` is ``{axes: frame}`` of the clickable panels."""
    from PIL import Image

    fig.canvas.draw()
    width, height = fig.canvas.get_width_height()
    panels = []
    for ax, frame in axes_frames.items():
        bb = ax.get_window_extent()
        panels.append(FramePanel(frame, (bb.x0, height - bb.y1, bb.x1, height - bb.y0),
                                 tuple(ax.get_xlim()), tuple(ax.get_ylim())))
    rgba = np.asarray(fig.canvas.buffer_rgba())
    buffer = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buffer, format="png", compress_level=1)
    return buffer.getvalue(), panels


def pick(panels: list[FramePanel], x: float, y: float):
    """PNG pixel ``(x, y)`` -> ``(frame, cell_x, cell_y)`` of the panel under it, or ``None``."""
    for p in panels:
        x0, y0, x1, y1 = p.box
        if x0 <= x <= x1 and y0 <= y <= y1:
            cx = p.xlim[0] + (x - x0) / (x1 - x0) * (p.xlim[1] - p.xlim[0])
            cy = p.ylim[1] + (y - y0) / (y1 - y0) * (p.ylim[0] - p.ylim[1])
            return p.frame, int(round(cx)), int(round(cy))
    return None


def _frame_axes(ax, image, grid):
    H, W = grid
    ax.imshow(image, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])


def _marker(ax, marker, ms, face, edge="black", mew=1.0):
    (line,) = ax.plot([np.nan], [np.nan], marker=marker, ms=ms, mfc=face, mec=edge, mew=mew, ls="")
    return line


class PickerFigure:
    """The point picker: one row per correspondence, one column per frame, built once and
    redrawn with new data on every pick (:meth:`draw`).

    Args:
        frames: uint8 ``(F, H_img, W_img, 3)``. grid: ``(H, W)``.
        names: the rows (e.g. ``["diffusion features", "optical flow"]``).
        k: the most matches drawn per frame.
        heat_label: with a label, the first row shows a map (e.g. similarity) with a colour bar.
        truth: whether a true position is drawn (white square).
    """

    def __init__(self, frames, grid, names, k: int, *, heat_label: str | None = None, truth: bool = False,
                 dpi: int = 80, panel_inches: float = 1.45):
        frames = viz.to_numpy(frames)
        self.F, self.grid, self.names, self.k = len(frames), tuple(grid), list(names), k
        F, (H, W) = self.F, self.grid
        fig = self.fig = _figure(panel_inches * F + 1.3, panel_inches * len(self.names) + 1.1, dpi)
        spec = fig.add_gridspec(len(self.names), F + 1, width_ratios=[1] * F + [0.08], left=0.06, right=0.93,
                                top=1 - 0.42 / fig.get_figheight(), bottom=0.62 / fig.get_figheight(),
                                wspace=0.04, hspace=0.08)
        self.axes, self.heat, self.matches, self.truth, self.query = {}, [], {}, {}, {}
        extent = (-0.5, W - 0.5, H - 0.5, -0.5)
        for r, name in enumerate(self.names):
            for j in range(F):
                ax = fig.add_subplot(spec[r, j])
                _frame_axes(ax, frames[j], grid)
                if r == 0 and heat_label is not None:
                    self.heat.append(ax.imshow(np.zeros((H, W)), cmap="magma", alpha=0.6, extent=extent,
                                               interpolation="nearest"))
                if truth:
                    self.truth[r, j] = _marker(ax, "s", 13, "none", "white", 2.2)
                for m in range(k - 1, -1, -1):  # best drawn last, on top
                    self.matches[r, j, m] = _marker(ax, MATCH_MARKERS[m % len(MATCH_MARKERS)], 8 - min(m, 3),
                                                    viz.PALETTE[m % len(viz.PALETTE)] / 255)
                self.query[r, j] = _marker(ax, "*", 15, "white", "black", 1.2)
                if j == 0:
                    ax.set_ylabel(name, fontsize=9)
                self.axes[ax] = j
        if self.heat:
            bar = fig.colorbar(self.heat[-1], cax=fig.add_subplot(spec[0, F]))
            bar.set_label(heat_label, fontsize=8), bar.ax.tick_params(labelsize=7)
        self.legend, self.shown_k = None, None
        self._legend(k)
        self.titles = [ax.set_title("", fontsize=9) for ax, j in list(self.axes.items())[:F]]
        self.suptitle = fig.suptitle("", fontsize=10)

    def _legend(self, shown: int) -> None:
        """The legend of the query, the ``shown`` matches drawn and the true position."""
        if shown == self.shown_k:
            return
        if self.legend is not None:
            self.legend.remove()
        handles = [self.query[0, 0]] + [self.matches[0, 0, m] for m in range(shown)]
        labels = ["query (clicked)"] + [f"match {m + 1}" + (" (best)" if m == 0 and shown > 1 else "")
                                        for m in range(shown)]
        if self.truth:
            handles, labels = handles + [self.truth[0, 0]], labels + ["true position"]
        self.legend = self.fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8,
                                      facecolor="#777777", labelcolor="white")
        self.legend.get_frame().set_edgecolor("none")
        self.shown_k = shown

    def draw(self, query, rows: dict, *, heat=None, truth=None) -> tuple[bytes, list[FramePanel]]:
        """Draw the matches of ``query = (i, x, y)``.

        Args:
            rows: ``{name: positions (F, K', 2)}`` in the order of ``names``, cells, best first,
                ``K' <= k``.
            heat: ``(F, H, W)`` for the first row's map (figure built with ``heat_label``).
            truth: ``(positions (F, 2), visible (F,))``.

        Returns:
            PNG bytes and the clickable panels (see :func:`render`).
        """
        i, qx, qy = query
        self._legend(min(self.k, max(viz.to_numpy(rows[name]).shape[1] for name in self.names)))
        for r, name in enumerate(self.names):
            positions = viz.to_numpy(rows[name])  # (F, K', 2)
            for j in range(self.F):
                for m in range(self.k):
                    xy = positions[j, m] if m < positions.shape[1] else (np.nan, np.nan)
                    self.matches[r, j, m].set_data([xy[0]], [xy[1]])
                self.query[r, j].set_data([qx if j == i else np.nan], [qy])
                if (r, j) in self.truth:
                    seen = truth is not None and bool(truth[1][j]) and j != i
                    xy = truth[0][j] if seen else (np.nan, np.nan)
                    self.truth[r, j].set_data([xy[0]], [xy[1]])
        if self.heat and heat is not None:
            lo, hi = float(np.nanmin(heat)), float(np.nanmax(heat))
            for j, image in enumerate(self.heat):
                image.set_data(heat[j])
                image.set_clim(lo, hi if hi > lo else lo + 1e-6)
        for j, title in enumerate(self.titles):
            title.set_text(f"frame {j}" + (" (query)" if j == i else ""))
            title.set_fontweight("bold" if j == i else "normal")
        self.suptitle.set_text(f"cell ({qx}, {qy}) of frame {i}: click any frame to pick another point")
        return render(self.fig, self.axes)


def weights_figure(frames, grid, query, maps, *, label: str, title: str, centre: float | None = None,
                   dpi: int = 80, panel_inches: float = 1.45):
    """One row of frames with a map over each (e.g. attention weights), a colour bar and a title.

    ``query``: ``(i, x, y)``, drawn as a star on frame ``i``, or ``None`` (maps without a query,
    e.g. an edit mask). ``centre``: draw on a diverging colour map centred there (e.g. 1 for
    "times the uniform weight") with limits symmetric around it, so that above and below read
    apart. NaN cells leave the frame uncovered.
    """
    frames = viz.to_numpy(frames)
    maps = np.asarray(viz.to_numpy(maps), dtype=np.float64)
    F = len(frames)
    i, qx, qy = query if query is not None else (None, None, None)
    fig = _figure(panel_inches * F + 1.3, panel_inches + 1.0, dpi)
    grid_spec = fig.add_gridspec(1, F + 1, width_ratios=[1] * F + [0.08], left=0.02, right=0.93,
                                 top=0.74, bottom=0.06, wspace=0.04)
    shown = maps[np.isfinite(maps)]
    if centre is None:
        cmap, vmin, vmax = "magma", float(shown.min()), float(shown.max())
    else:
        spread = float(np.abs(shown - centre).max()) if shown.size else 1.0
        cmap, vmin, vmax = "coolwarm", centre - spread, centre + spread
    clickable, image = {}, None
    for j in range(F):
        ax = fig.add_subplot(grid_spec[0, j])
        _frame_axes(ax, frames[j], grid)
        image = ax.imshow(maps[j], cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.7, interpolation="nearest",
                          extent=(-0.5, grid[1] - 0.5, grid[0] - 0.5, -0.5))
        if j == i:
            ax.plot(qx, qy, marker="*", ms=15, mfc="white", mec="black", mew=1.2, ls="")
        ax.set_title(f"frame {j}" + (" (query)" if j == i else ""), fontsize=9)
        clickable[ax] = j
    bar = fig.colorbar(image, cax=fig.add_subplot(grid_spec[0, F]))
    bar.set_label(label, fontsize=8), bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return render(fig, clickable)


def window_figure(frames, grid, query, corner, window: int, window_heat, full_heat, top, *, dpi: int = 80,
                  panel_inches: float = 2.0) -> bytes:
    """One query's sliding window (notebook 02), three pictures side by side: frame ``i`` with
    the query; frame ``i+1`` with the similarity inside the ``l x l`` window and its best cells;
    frame ``i+1`` with the similarity to every cell (what a full search compares). Each map has
    its colour bar; the window is outlined on both. PNG bytes.

    Args:
        frames: uint8 ``(2, H_img, W_img, 3)``, frames ``i`` and ``i+1``. grid: ``(H, W)``.
        query: ``(x, y)``, the query's cell in frame ``i``.
        corner: ``(x, y)``, the window's top-left cell; window: its size ``l``.
        window_heat: ``(H, W)``, NaN outside the window. full_heat: ``(H, W)``.
        top: ``(K, 2)`` cells ``(x, y)`` of the best matches in the window, best first.
    """
    from matplotlib.patches import Rectangle

    frames = viz.to_numpy(frames)
    (H, W), (qx, qy), (cx, cy) = grid, query, corner
    fig = _figure(3 * panel_inches + 0.3, panel_inches + 1.0, dpi)
    height = fig.get_figheight()
    spec = fig.add_gridspec(2, 3, height_ratios=[1, 0.07], left=0.02, right=0.98, top=1 - 0.3 / height,
                            bottom=0.42 / height, wspace=0.08, hspace=0.1)
    axes = [fig.add_subplot(spec[0, c]) for c in range(3)]
    for ax, picture in zip(axes, (frames[0], frames[1], frames[1])):
        _frame_axes(ax, picture, grid)
    handles = [axes[0].plot(qx, qy, marker="*", ms=15, mfc="white", mec="black", mew=1.2, ls="")[0]]
    titles = ("frame i: the query", f"frame i+1: the {window}×{window} window", "frame i+1: every cell")
    for c, (ax, heat) in enumerate(zip(axes[1:], (window_heat, full_heat)), start=1):
        image = ax.imshow(viz.to_numpy(heat), cmap="magma", alpha=0.8, interpolation="nearest",
                          extent=(-0.5, W - 0.5, H - 0.5, -0.5))  # NaN cells stay transparent
        ax.add_patch(Rectangle((cx - 0.5, cy - 0.5), window, window, fill=False, ec="white", lw=1.5))
        bar = fig.colorbar(image, cax=fig.add_subplot(spec[1, c]), orientation="horizontal")
        bar.set_label("cosine similarity to the query", fontsize=8), bar.ax.tick_params(labelsize=7)
    for m, (x, y) in enumerate(viz.to_numpy(top)):
        handles += axes[1].plot(x, y, marker=MATCH_MARKERS[m % len(MATCH_MARKERS)], ms=8 - min(m, 3),
                                mfc=viz.PALETTE[m % len(viz.PALETTE)] / 255, mec="black", ls="")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
    legend_ax = fig.add_subplot(spec[1, 0])
    legend_ax.axis("off")
    labels = ["query"] + [f"match {m + 1}" for m in range(len(handles) - 1)]
    legend_ax.legend(handles, labels, loc="center", ncol=2, fontsize=7, frameon=False)
    return render(fig, {})[0]


def maps_figure(rows: dict, *, label: str, title: str, columns=None, vmax: float | None = None,
                cmap: str = "magma", dpi: int = 80, panel_inches: float = 1.3) -> bytes:
    """A grid of maps, one row per name, one shared colour scale and colour bar; PNG bytes.

    Args:
        rows: ``{name: (T, H, W)}``, same ``T`` (e.g. per-pixel flicker of each edit, per frame
            pair); NaN cells are drawn grey.
        columns: ``T`` column titles (default ``0 .. T-1``).
        vmax: top of the colour scale (default: the 99th percentile of every map), bottom 0.
    """
    from matplotlib import colormaps

    names = list(rows)
    maps = [np.asarray(viz.to_numpy(rows[n]), dtype=np.float64) for n in names]
    T = maps[0].shape[0]
    values = np.concatenate([m[np.isfinite(m)] for m in maps])
    vmax = vmax if vmax is not None else (float(np.percentile(values, 99)) if values.size else 1.0)
    fig = _figure(panel_inches * T + 2.4, panel_inches * len(names) + 0.7, dpi)
    spec = fig.add_gridspec(len(names), T + 1, width_ratios=[1] * T + [0.08], left=0.13, right=0.9,
                            top=1 - 0.45 / fig.get_figheight(), bottom=0.05, wspace=0.05, hspace=0.08)
    palette = colormaps[cmap].with_extremes(bad="#999999")
    image = None
    for r, (name, m) in enumerate(zip(names, maps)):
        for t in range(T):
            ax = fig.add_subplot(spec[r, t])
            image = ax.imshow(m[t], cmap=palette, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[t] if columns is not None else str(t), fontsize=8)
            if t == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    bar = fig.colorbar(image, cax=fig.add_subplot(spec[:, T]), extend="max")
    bar.set_label(label, fontsize=8), bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return render(fig, {})[0]


def merge_figure(frames, grid, query, positions, frame_of, groups, *, title: str, dpi: int = 80,
                 panel_inches: float = 1.45) -> tuple[bytes, list[FramePanel], list[str]]:
    """Which gathered tokens merge: one row of frames, each gathered token drawn at its cell.
    Each key that holds several tokens gets a number, a colour and a legend entry
    (``key 3: 3 tokens, frames 1, 2, 4``), drawn on its tokens; tokens left alone are grey
    rings.

    Args:
        frames: uint8 ``(F, H_img, W_img, 3)``. grid: ``(H, W)``. query: ``(i, x, y)``.
        positions: ``(T, 2)`` cells of the gathered tokens; frame_of: ``(T,)`` their frames.
        groups: ``(T,)`` the merged key of each gathered token (``cove.app.viz.merge_groups``).

    Returns:
        PNG bytes, the clickable panels (see :func:`render`) and the legend's lines.
    """
    from matplotlib import colormaps

    frames = viz.to_numpy(frames)
    positions, frame_of, groups = (np.asarray(a) for a in (positions, frame_of, groups))
    F = len(frames)
    i, qx, qy = query
    keys = sorted(set(groups.tolist()), key=lambda g: int(np.argmax(groups == g)))  # in gathered order
    shared = [g for g in keys if (groups == g).sum() > 1]
    number = {g: n + 1 for n, g in enumerate(shared)}  # merged keys numbered 1, 2, ... in gathered order
    tab = colormaps["tab10"]
    colour = {g: tab(n % 10) for n, g in enumerate(shared)}
    legend_inches = 0.18 * -(-(len(shared) + 1) // 3) + 0.14  # rows of three entries
    fig = _figure(panel_inches * F + 0.4, panel_inches + 0.45 + legend_inches, dpi)
    spec = fig.add_gridspec(1, F, left=0.02, right=0.98, top=1 - 0.45 / fig.get_figheight(),
                            bottom=legend_inches / fig.get_figheight(), wspace=0.04)
    clickable, handles, labels = {}, [], []
    for j in range(F):
        ax = fig.add_subplot(spec[0, j])
        _frame_axes(ax, frames[j], grid)
        if j == i:
            ax.plot(qx, qy, marker="*", ms=15, mfc="white", mec="black", mew=1.2, ls="")
        for t in np.flatnonzero(frame_of == j):
            g = groups[t]
            x, y = positions[t]
            if g in colour:
                ax.plot(x, y, marker="o", ms=11, mfc=colour[g], mec="black", mew=0.8, ls="")
                ax.annotate(str(number[g]), (x, y), ha="center", va="center", fontsize=6, fontweight="bold")
            else:
                ax.plot(x, y, marker="o", ms=9, mfc="none", mec="#dddddd", mew=1.6, ls="")
        ax.set_title(f"frame {j}" + (" (query)" if j == i else ""), fontsize=9)
        clickable[ax] = j
    for g in shared:
        members = np.flatnonzero(groups == g)
        handles.append(_marker(fig.axes[0], "o", 9, colour[g], "black", 0.8))
        seen = sorted(set(frame_of[members].tolist()))
        labels.append(f"key {number[g]}: {len(members)} tokens, frame{'s' if len(seen) > 1 else ''} "
                      + ", ".join(str(int(f)) for f in seen))
    handles.append(_marker(fig.axes[0], "o", 8, "none", "#dddddd", 1.6))
    labels.append(f"not merged ({len(keys) - len(shared)} tokens)")
    legend = fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7,
                        facecolor="#777777", labelcolor="white")
    legend.get_frame().set_edgecolor("none")
    fig.suptitle(title, fontsize=10)
    return (*render(fig, clickable), labels)
