"""ipywidgets explorers for the notebooks: thin layers over cached results.

Every builder returns a :class:`cove.app.panel.Panel` (an ``ipywidgets.VBox``) whose callbacks call the same
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

import ipywidgets
import numpy as np
import torch

from . import viz
from .edit_panel import edit_panel, predict_clean
from .panel import (
    Panel,
    clickable,
    image,
    point_sliders,
    slider,
    table_html,
)

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
    controls = {"frame": slider("frame", min(frame, F - 1), 0, F - 1)}
    panel = Panel(controls, {"frames": image()})

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


def feature_explorer(pipe, frames, *, t: int | None = None, layer: str | None = None, ensemble: int = 1,
                     seed: int = 0, scale: int = 3) -> Panel:
    """Noise level ``t``, decoder layer and noise ensemble as controls; features as PCA colours.
    They start at ``t`` and ``layer``, or where unset at the model's own feature settings
    (``cove.recommended.recommended_config(pipe)``: the paper's t = 261 and
    ``default_feature_layer`` for a model without a ``cove_settings.json``).

    Calls ``cove.features.extract_features`` (cached per ``(t, layer, ensemble)``) and
    ``cove.app.viz.pca_rgb``. Top row: the frames; bottom row: their features, one PCA fitted on
    all frames so that equal colours mean similar features.
    """
    from ..features import default_feature_layer, extract_features
    from ..recommended import recommended_config

    w = ipywidgets
    frames = viz.to_numpy(frames)
    own = recommended_config(pipe)
    t = own.feature_t if t is None else t
    layer = layer or own.feature_layer or default_feature_layer(pipe.unet)
    controls = {
        "t": slider("noise level t", t, 0, 999, step=1),
        "layer": w.Dropdown(options=decoder_layers(pipe), value=layer, description="layer"),
        "ensemble": slider("noise draws", ensemble, 1, 8),
    }
    panel = Panel(controls, {"features": image()})
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

    One picture (``cove.app.plots.window_figure``): frame ``i`` with the query; frame ``i+1``
    with the window's similarities (``cove.correspondence.window_similarity``) and its top-``K``
    cells; the similarity with *every* token of frame ``i+1``, i.e. what a full search would
    compare (window outlined); each map with its colour bar.
    """
    from ..correspondence import window_similarity
    from . import plots

    features = torch.as_tensor(features)
    frames = viz.to_numpy(frames)
    F, C, H, W = features.shape
    x0, y0 = point if point is not None else (W // 2, H // 2)
    controls = {
        "frame": slider("frame i", frame, 0, max(F - 2, 0)),
        "x": slider("x", x0, 0, W - 1),
        "y": slider("y", y0, 0, H - 1),
        "window": slider("window l", window, 1, min(H, W) if min(H, W) % 2 else min(H, W) - 1, step=2),
    }
    panel = Panel(controls, {"window": image()})
    panel_inches = frames.shape[2] * scale / 80  # the figure is drawn at 80 dpi: frames x scale pixels

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
        heat = viz.scatter_grid(sim[0], index[0], (H, W))  # (H, W), NaN outside the window
        full = (query @ features[i + 1].flatten(1))[0]  # (N,) full search: every token of i+1
        full_best = int(full.argmax())
        panel.images["window"].value = plots.window_figure(
            frames[i:i + 2], (H, W), (x, y), (start % W, start // W), l, heat, full.view(H, W), cells,
            panel_inches=panel_inches)
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
    controls = {
        **point_sliders(F, first.grid, frame, point),
        "k": slider("K", k or max_k, 1, max_k),
    }
    panel = Panel(controls, {"matches": image()})
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
    controls = {
        **point_sliders(F, grid, frame, point),
        "merge_ratio": slider("merge ratio", merge_ratio, 0.0, 1.0, step=0.05, kind="float"),
    }
    panel = Panel(controls, {"attention": image()})

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


# ---------------------------------------------------------------------------------------------
# 05: temporal token merging
# ---------------------------------------------------------------------------------------------


def merge_explorer(tokens, index, frames, *, grid: tuple[int, int], ratio: float = 0.5,
                   frame: int = 0, point=None, dpi: int = 80) -> Panel:
    """Which of a token's gathered correspondents merge at a given ratio; click to pick.

    For the chosen token, gathers its ``(F-1)*K`` correspondents
    (``cove.attention.gather_correspondents``), runs bipartite merging on them
    (``cove.merging.make_merge`` via ``cove.app.viz.merge_groups``) and draws each gathered token
    at its cell (``cove.app.plots.merge_figure``: a number, a colour and a legend entry per key
    that holds several tokens, grey rings for tokens left alone). Click any frame (or use the sliders) to pick another token.

    Args:
        tokens: ``(F, N, C)`` (e.g. diffusion features, or keys); index: ``(F, N, F, K)``.
    """
    from ..attention import gather_correspondents, other_frames
    from ..merging import merge_count
    from . import plots

    frames = viz.to_numpy(frames)
    tokens, index = torch.as_tensor(tokens), torch.as_tensor(index)
    F, N, _ = tokens.shape
    K = index.shape[-1]
    H, W = grid
    controls = {
        **point_sliders(F, grid, frame, point),
        "ratio": slider("merge ratio", ratio, 0.0, 1.0, step=0.05, kind="float"),
    }
    panel = Panel(controls, {"groups": image()})

    def update():
        i, x, y, r_ = (controls[n].value for n in ("frame", "x", "y", "ratio"))
        n = y * W + x
        gathered = gather_correspondents(tokens, index[:, [n]])[i, 0]  # ((F-1)*K, C)
        T = gathered.shape[0]
        r = merge_count(T, r_)
        groups = viz.merge_groups(gathered, r)  # (T,) merged token of each gathered token
        others = np.repeat(other_frames(F)[i].numpy(), K)  # (T,) frame of each gathered token
        cells = index[i, n, others, np.tile(np.arange(K), F - 1)].long().numpy()  # (T,)
        positions = np.stack([cells % W, cells // W], axis=-1)  # (T, 2)
        title = (f"token ({x}, {y}) of frame {i}: its {T} gathered matches become {T - r} keys "
                 f"at merge ratio {r_:.2f}")
        png, panel.pickable, keys = plots.merge_figure(frames, grid, (i, x, y), positions, others, groups,
                                                       title=title, dpi=dpi)
        panel.images["groups"].value = png
        panel.state = {"frame": i, "token": n, "tokens": T, "merged_away": r, "kept": T - r,
                       "groups": groups, "keys": keys}
        panel.status.value = (f"{T} gathered tokens = (F-1)*K = {F - 1}*{K}; ratio {r_:.2f} merges "
                              f"r = {r} away, {T - r} keys and values remain (same number = one key)")

    panel.pickable = []
    panel.watch(update)
    panel.events = clickable(panel, "groups", grid=(H, W), frames=F)
    return panel


# ---------------------------------------------------------------------------------------------
