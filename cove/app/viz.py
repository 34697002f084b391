"""Pure plotting helpers: numbers in, ``uint8`` pictures out.

Nothing here draws on screen or keeps state; the widgets (``cove.app.widgets``) and the notebooks
call these and show the result with mediapy. Positions follow the project convention: a
*cell* position is a float ``(x, y)`` whose integer values are cell centres of an ``H x W``
grid; a *pixel* position has pixel centres at ``i + 0.5``.

    cell = pixel * W / W_img - 0.5        pixel = (cell + 0.5) * W_img / W
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "to_numpy",
    "pca_rgb",
    "cell_to_pixel",
    "pixel_to_cell",
    "upsample",
    "colourise",
    "overlay",
    "draw_points",
    "draw_box",
    "scatter_grid",
    "montage",
    "enlarge",
    "attention_maps",
    "merge_groups",
    "to_png",
    "similarity_maps",
    "flicker_maps",
    "PALETTE",
]

# Distinct, colour-blind-friendly colours (Okabe-Ito) for points and boxes.
PALETTE = np.array(
    [
        (230, 159, 0),
        (86, 180, 233),
        (0, 158, 115),
        (240, 228, 66),
        (0, 114, 178),
        (213, 94, 0),
        (204, 121, 167),
        (255, 255, 255),
    ],
    dtype=np.uint8,
)


def to_numpy(x) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu")
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def pca_rgb(features, *, clip: float = 1.0) -> np.ndarray:
    """Project features onto their first three principal components and show them as colour.

    One PCA is fitted on the tokens of *all* frames together, so the same surface point gets the
    same colour in every frame: that is what makes features usable for correspondence.

    Args:
        features: ``(F, C, H, W)`` tensor or array, ``C >= 1``.
        clip: percentile (0..50) cut at both ends of each component before scaling to 0..255,
            so that a few outlier tokens do not wash out the picture.

    Returns:
        ``uint8 (F, H, W, 3)``. Components beyond ``C`` (when ``C < 3``) are black.
    """
    x = to_numpy(features).astype(np.float64)
    if x.ndim != 4:
        raise ValueError(f"features must be (F, C, H, W), got shape {x.shape}")
    F, C, H, W = x.shape
    tokens = x.transpose(0, 2, 3, 1).reshape(-1, C)  # (F*H*W, C)
    tokens = tokens - tokens.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(tokens, full_matrices=False)  # vt: (min(FHW, C), C)
    comps = vt[:3]  # (<=3, C)
    # deterministic sign: the largest loading of each component is positive
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    proj = tokens @ comps.T  # (F*H*W, <=3)
    out = np.zeros((tokens.shape[0], 3), dtype=np.float64)
    for c in range(proj.shape[1]):
        lo, hi = np.percentile(proj[:, c], [clip, 100.0 - clip])
        if hi - lo > 1e-12:
            out[:, c] = (proj[:, c] - lo) / (hi - lo)
    rgb = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb.reshape(F, H, W, 3)  # (F, H, W, 3)


def cell_to_pixel(cells, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Cell-index positions ``(..., 2)`` (x, y) on grid ``(H, W)`` -> pixel positions on an image
    of ``size = (H_img, W_img)``."""
    cells = to_numpy(cells).astype(np.float64)
    scale = np.array([size[1] / grid[1], size[0] / grid[0]])  # (x, y)
    return (cells + 0.5) * scale


def pixel_to_cell(pixels, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Pixel positions ``(..., 2)`` (x, y) on an image of ``size = (H_img, W_img)`` -> cell-index
    positions on grid ``(H, W)``; the inverse of :func:`cell_to_pixel`."""
    pixels = to_numpy(pixels).astype(np.float64)
    scale = np.array([grid[1] / size[1], grid[0] / size[0]])  # (x, y)
    return pixels * scale - 0.5


def upsample(heat, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a grid map ``(..., h, w)`` to ``(..., H_img, W_img)``.

    Nearest, not bilinear: every cell stays a visible square, which is what a token is.
    ``size`` must be an integer multiple of ``(h, w)``.
    """
    heat = to_numpy(heat)
    h, w = heat.shape[-2:]
    if size[0] % h or size[1] % w:
        raise ValueError(f"size {tuple(size)} must be an integer multiple of the grid {(h, w)}")
    return heat.repeat(size[0] // h, axis=-2).repeat(size[1] // w, axis=-1)


def colourise(heat, *, cmap: str = "magma", vmin: float | None = None, vmax: float | None = None):
    """Map a float array ``(...)`` to ``uint8 (..., 3)`` with a matplotlib colormap.

    ``vmin``/``vmax`` default to the finite min/max of ``heat``; NaN cells come out black.
    """
    from matplotlib import colormaps

    heat = to_numpy(heat).astype(np.float64)
    finite = np.isfinite(heat)
    lo = np.min(heat[finite]) if vmin is None and finite.any() else (vmin if vmin is not None else 0.0)
    hi = np.max(heat[finite]) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    norm = np.clip((heat - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(heat)
    rgb = colormaps[cmap](np.where(finite, norm, 0.0))[..., :3]  # (..., 3) float
    rgb = np.where(finite[..., None], rgb, 0.0)
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image, heat, *, alpha: float = 0.6, cmap: str = "magma", vmin=None, vmax=None):
    """Blend a grid heatmap ``(h, w)`` over an image ``uint8 (H_img, W_img, 3)``.

    NaN cells of ``heat`` leave the image untouched (useful to show only a window).
    """
    image = to_numpy(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    heat = upsample(to_numpy(heat).astype(np.float64), image.shape[:2])  # (H_img, W_img)
    coloured = colourise(heat, cmap=cmap, vmin=vmin, vmax=vmax).astype(np.float64)
    a = np.where(np.isfinite(heat), alpha, 0.0)[..., None]  # (H_img, W_img, 1)
    out = (1 - a) * image.astype(np.float64) + a * coloured
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def draw_points(image, points, *, colours=None, radius: int = 2, outline: bool = True):
    """Draw filled squares at pixel positions ``points (P, 2)`` (x, y) on a copy of ``image``.

    Points outside the image are skipped. ``colours`` is ``(P, 3)`` uint8 or one colour
    ``(3,)``; default: :data:`PALETTE` in order. ``outline`` adds a 1-pixel black border so
    the mark is seen on any background.
    """
    out = to_numpy(image).copy()
    H, W = out.shape[:2]
    points = to_numpy(points).reshape(-1, 2)
    if colours is None:
        colours = PALETTE[np.arange(len(points)) % len(PALETTE)]
    colours = np.broadcast_to(np.asarray(colours, dtype=np.uint8), (len(points), 3))
    for (x, y), colour in zip(points, colours):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        cx, cy = int(np.floor(x)), int(np.floor(y))
        if not (0 <= cx < W and 0 <= cy < H):
            continue
        if outline:
            r = radius + 1
            out[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1] = 0
        out[max(cy - radius, 0) : cy + radius + 1, max(cx - radius, 0) : cx + radius + 1] = colour
    return out


def draw_box(image, box, *, colour=(255, 255, 255), thickness: int = 1):
    """Draw the outline of ``box = (x0, y0, x1, y1)`` (pixels, inclusive-exclusive) on a copy."""
    out = to_numpy(image).copy()
    H, W = out.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 <= x0 or y1 <= y0:
        return out
    t = thickness
    colour = np.asarray(colour, dtype=np.uint8)
    out[y0 : y0 + t, x0:x1] = colour
    out[y1 - t : y1, x0:x1] = colour
    out[y0:y1, x0 : x0 + t] = colour
    out[y0:y1, x1 - t : x1] = colour
    return out


def scatter_grid(values, index, grid: tuple[int, int], *, fill: float = np.nan) -> np.ndarray:
    """Put ``values (M,)`` at token indices ``index (M,)`` (n = y*W + x) of an ``(H, W)`` map.

    Cells that receive no value hold ``fill``; used to show a window's ``l*l`` similarities in
    place in the frame.
    """
    values, index = to_numpy(values).reshape(-1), to_numpy(index).reshape(-1)
    if values.shape != index.shape:
        raise ValueError(f"values and index must have the same length, got {values.shape} and {index.shape}")
    H, W = grid
    out = np.full(H * W, fill, dtype=np.float64)  # (N,)
    out[index] = values
    return out.reshape(H, W)  # (H, W)


def enlarge(frames, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of ``(..., H, W, 3)`` images by an integer ``factor``."""
    frames = to_numpy(frames)
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def montage(rows, *, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile images into one picture: ``rows`` is a list of rows, each ``(F, H, W, 3)`` or a list
    of ``(H, W, 3)`` images of the same size. Short rows are padded with ``background``.

    Returns ``uint8 (R*H + (R+1)*pad, F_max*W + (F_max+1)*pad, 3)``.
    """
    rows = [[to_numpy(im) for im in row] for row in rows]
    if not rows or not rows[0]:
        raise ValueError("montage needs at least one row with one image")
    H, W = rows[0][0].shape[:2]
    for row in rows:
        for im in row:
            if im.shape != (H, W, 3):
                raise ValueError(f"all images must be ({H}, {W}, 3), got {im.shape}")
    cols = max(len(row) for row in rows)
    out = np.full((len(rows) * (H + pad) + pad, cols * (W + pad) + pad, 3), background, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            y, x = pad + r * (H + pad), pad + c * (W + pad)
            out[y : y + H, x : x + W] = im
    return out


def attention_maps(weights, index, frame: int, grid: tuple[int, int]) -> np.ndarray:
    """Spread one query's guided-attention weights back onto the frames they come from.

    Args:
        weights: ``((F-1)*K,)`` weights over the gathered tokens of the query (one head, or
            the mean over heads) in the order of ``cove.attention.gather_correspondents``:
            entry ``t`` is match ``t % K`` in the ``t // K``-th frame other than ``frame``.
        index: long ``(F, K)``, the query's row of ``Correspondence.index`` (``index[i, n]``).
        frame: ``i``, the query's own frame (it gets no weight: CGA leaves it out).
        grid: ``(H, W)``.

    Returns:
        float ``(F, H, W)``: the weight each cell of each frame receives (weights of matches
        that land on the same cell add up); row ``frame`` is all zero. Sums to the total weight.
    """
    weights, index = to_numpy(weights).astype(np.float64), to_numpy(index)
    F, K = index.shape
    if weights.shape != ((F - 1) * K,):
        raise ValueError(f"weights must be ((F-1)*K,) = ({(F - 1) * K},), got {weights.shape}")
    others = [j for j in range(F) if j != frame]  # frames in increasing order, own frame left out
    H, W = grid
    maps = np.zeros((F, H * W))  # (F, N)
    for t, w in enumerate(weights):
        j = others[t // K]
        maps[j, index[j, t % K]] += w
    return maps.reshape(F, H, W)  # (F, H, W)


def merge_groups(metric, r: int) -> np.ndarray:
    """Which tokens bipartite merging puts together: ``(T,)`` group id of each token.

    Runs ``cove.merging.make_merge(metric, r)`` and pushes the identity through its ``merge``:
    row ``g`` of ``merge(eye(T), mode="sum")`` is the set of input tokens merged into output
    token ``g``. Tokens with the same id end up as one token; there are ``T - r`` ids.

    Args:
        metric: ``(T, C)`` tokens (e.g. the keys one query gathers).
        r: tokens merged away (``cove.merging.merge_count(T, ratio)``).
    """
    import torch

    from ..merging import make_merge

    metric = torch.as_tensor(to_numpy(metric), dtype=torch.float32)
    if metric.ndim != 2:
        raise ValueError(f"metric must be (T, C), got shape {tuple(metric.shape)}")
    T = metric.shape[0]
    merge, _ = make_merge(metric, r)
    membership = merge(torch.eye(T), mode="sum")  # (T - r, T)
    return membership.argmax(dim=0).numpy()  # (T,) output token each input went into


def to_png(image) -> bytes:
    """``uint8 (H, W, 3)`` -> PNG bytes (for ``ipywidgets.Image``)."""
    import io

    from PIL import Image

    image = to_numpy(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def similarity_maps(features, frame: int, cell) -> np.ndarray:
    """Cosine similarity of one token with every token of every frame (DIFT's heatmap).

    Args:
        features: ``(F, C, H, W)``, unit norm over ``C`` (``cove.features.extract_features``).
        frame, cell: the query token, cell ``(x, y)`` of frame ``frame``.

    Returns:
        float ``(F, H, W)``; the query's own cell holds 1.
    """
    x = to_numpy(features).astype(np.float64)
    if x.ndim != 4:
        raise ValueError(f"features must be (F, C, H, W), got shape {x.shape}")
    query = x[frame, :, int(cell[1]), int(cell[0])]  # (C,)
    return np.einsum("c,fchw->fhw", query, x)  # (F, H, W)


def flicker_maps(frames, clip) -> np.ndarray:
    """Per-pixel flicker along the true motion: ``|I_i(p) - I_{i+1}(phi(p))|`` per pair of frames.

    The map behind ``cove.metrics.warp_error`` (its mean over visible pixels and pairs).

    Args:
        frames: uint8 ``(F, H, W, 3)``; clip: the ShapesWorld ``Clip`` whose motion they follow.

    Returns:
        float ``(F - 1, H, W)`` in 0..255 (mean over channels); NaN where the point is hidden in
        frame ``i + 1``.
    """
    from ..world.clip import bilinear

    frames = to_numpy(frames).astype(np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape != clip.frames.shape:
        raise ValueError(f"frames must be (F, H, W, 3) like the clip's {clip.frames.shape}, got {frames.shape}")
    F, H, W, _ = frames.shape
    out = np.full((F - 1, H, W), np.nan)
    for i in range(F - 1):
        positions, visible = clip.track(i, i + 1, grid=(H, W))  # pixel-index coordinates
        warped = bilinear(frames[i + 1], positions[..., 0], positions[..., 1])  # (H, W, 3)
        out[i] = np.where(visible, np.abs(warped - frames[i]).mean(-1), np.nan)
    return out
