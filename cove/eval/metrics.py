"""Metrics against ground truth: correspondence PCK, warp error, edit fidelity.

Everything here is a pure function of arrays (numpy or torch) so the quality gate
(``python -m cove.tiny.gate``), the notebooks and the tests share one implementation.

* ``pck`` / ``pck_by_offset``: share of correct top-1 correspondences (the paper's
  correspondence accuracy: optical flow 0.87, diffusion features 0.92).
* ``warp_error``: flicker of a clip measured along the ground-truth motion.
* ``psnr`` / ``edit_fidelity``: an edit against the ground-truth edited clip.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .. import world
from ..world.clip import bilinear

__all__ = [
    "pck",
    "pck_by_offset",
    "warp_error",
    "motion_following",
    "psnr",
    "edit_fidelity",
    "nearest_colour",
    "as_numpy",
]


def as_numpy(x) -> np.ndarray:
    """A numpy view of a numpy array or a (possibly GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Correspondence accuracy
# ---------------------------------------------------------------------------------------------


def _top1_positions(correspondence, grid=None) -> np.ndarray:
    """Top-1 matches as (x, y) cell positions.

    Args:
        correspondence: a ``cove.correspondence.Correspondence`` (``.index`` (F, N, F, K),
            ``.grid`` (H, W)) or a raw index array (F, N, F, K) or (F, N, F) with ``grid``.
        grid: (H, W); required for a raw index, checked against a Correspondence's own.

    Returns:
        positions (F, N, F, 2) float (x, y) in cell-index coordinates.
    """
    if hasattr(correspondence, "grid"):  # a Correspondence (a raw tensor has no grid)
        own = tuple(correspondence.grid)
        if grid is not None and tuple(grid) != own:
            raise ValueError(f"grid {tuple(grid)} differs from the correspondence's grid {own}")
        index, grid = correspondence.index, own
    else:
        index = correspondence
        if grid is None:
            raise ValueError("a raw index tensor needs grid=(H, W)")
    index = as_numpy(index)
    if index.ndim == 4:
        index = index[..., 0]  # (F, N, F) best match first
    if index.ndim != 3 or index.shape[0] != index.shape[2]:
        raise ValueError(f"expected an index of shape (F, N, F[, K]), got {index.shape}")
    H, W = grid
    if index.shape[1] != H * W:
        raise ValueError(f"index has N={index.shape[1]} tokens but grid {grid} has {H * W}")
    return np.stack([index % W, index // W], axis=-1).astype(np.float64)  # (F, N, F, 2)


def _hits(correspondence, gt_positions, gt_visible, threshold, exclude_self, grid, tokens=None):
    """Correct (F, N, F) and counted (F, N, F) masks of the top-1 matches."""
    predicted = _top1_positions(correspondence, grid)  # (F, N, F, 2)
    gt_positions = as_numpy(gt_positions).astype(np.float64)
    gt_visible = as_numpy(gt_visible).astype(bool)
    if gt_positions.shape != predicted.shape:
        raise ValueError(
            f"expected gt_positions of shape {predicted.shape} (F, N, F, 2), got {gt_positions.shape}"
        )
    if gt_visible.shape != predicted.shape[:3]:
        raise ValueError(
            f"expected gt_visible of shape {predicted.shape[:3]} (F, N, F), got {gt_visible.shape}"
        )
    distance = np.linalg.norm(predicted - gt_positions, axis=-1)  # (F, N, F)
    counted = gt_visible.copy()
    if tokens is not None:
        tokens = as_numpy(tokens).astype(bool)
        if tokens.shape != counted.shape[:2]:
            raise ValueError(f"expected tokens of shape {counted.shape[:2]} (F, N), got {tokens.shape}")
        counted &= tokens[:, :, None]  # (F, N, F) only the chosen query tokens
    if exclude_self:
        F = counted.shape[0]
        counted[np.arange(F), :, np.arange(F)] = False  # (F, N) diagonal pairs i == j
    return (distance <= threshold) & counted, counted


def pck(
    correspondence,
    gt_positions,
    gt_visible,
    threshold: float = 1.0,
    *,
    exclude_self: bool = True,
    grid: tuple[int, int] | None = None,
    tokens=None,
) -> float:
    """Percentage of correct keypoints of a correspondence's top-1 matches.

    A match of token n of frame i in frame j is correct when its cell lies within
    ``threshold`` cells (euclidean) of the ground-truth position. Only points visible in
    frame j count; pairs i == j are left out unless ``exclude_self=False``.

    Args:
        correspondence: ``Correspondence`` (``.index`` (F, N, F, K), ``.grid`` (H, W)) or a raw
            index (F, N, F, K) / (F, N, F) of tokens n = y*W + x, with ``grid=(H, W)``.
        gt_positions: (F, N, F, 2) float (x, y) cell-index coordinates, e.g. from
            ``Clip.ground_truth(grid)``.
        gt_visible: (F, N, F) bool.
        threshold: in cells; 1.0 accepts the 4-neighbours, 1.5 the 8-neighbours.
        tokens: optional bool (F, N): only these query tokens of each frame i count (e.g. the
            cells on an object, ``cove.eval.scoring.object_tokens``).

    Returns:
        PCK in [0, 1]; ``nan`` when no point is counted.
    """
    correct, counted = _hits(correspondence, gt_positions, gt_visible, threshold, exclude_self, grid, tokens)
    total = counted.sum()
    return float(correct.sum() / total) if total else math.nan


def pck_by_offset(
    correspondence,
    gt_positions,
    gt_visible,
    threshold: float = 1.0,
    *,
    exclude_self: bool = True,
    grid: tuple[int, int] | None = None,
) -> dict[int, float]:
    """PCK per frame distance d = |i - j| (same arguments as ``pck``).

    Returns:
        {d: PCK of the pairs at distance d} for d = 0 (only with ``exclude_self=False``) to
        F - 1; ``nan`` where no point is counted.
    """
    correct, counted = _hits(correspondence, gt_positions, gt_visible, threshold, exclude_self, grid)
    F = counted.shape[0]
    offset = np.abs(np.arange(F)[:, None] - np.arange(F)[None, :])  # (F, F) |i - j|
    result = {}
    for d in range(0 if not exclude_self else 1, F):
        pairs = offset == d  # (F, F)
        total = counted.transpose(0, 2, 1)[pairs].sum()  # (pairs, N) -> count
        hit = correct.transpose(0, 2, 1)[pairs].sum()
        result[d] = float(hit / total) if total else math.nan
    return result


# ---------------------------------------------------------------------------------------------
# Temporal consistency
# ---------------------------------------------------------------------------------------------


def _consecutive_motion(motion, gt_visible, F, H, W):
    """Yield (positions (H, W, 2), visible (H, W)) from frame i to i + 1, pixel-index coords."""
    if hasattr(motion, "track"):  # a ShapesWorld Clip: pixel-level track, one pair at a time
        for i in range(F - 1):
            positions, visible = motion.track(i, i + 1, grid=(H, W))
            yield as_numpy(positions).astype(np.float64), as_numpy(visible).astype(bool)
        return
    positions = as_numpy(motion).astype(np.float64)
    if gt_visible is None:
        raise ValueError("gt_visible (F, N, F) is required with gt_positions")
    visible = as_numpy(gt_visible).astype(bool)
    if positions.shape != (F, H * W, F, 2) or visible.shape != (F, H * W, F):
        raise ValueError(
            f"expected pixel-level gt_positions (F, H*W, F, 2) = {(F, H * W, F, 2)} and gt_visible "
            f"(F, H*W, F), got {positions.shape} and {visible.shape}"
        )
    for i in range(F - 1):
        yield positions[i, :, i + 1].reshape(H, W, 2), visible[i, :, i + 1].reshape(H, W)


def warp_error(frames, motion, gt_visible=None, *, reduce: bool = True):
    """Flicker along the ground-truth motion: mean |frame_i - warp(frame_{i+1})| in [0, 255].

    For each consecutive pair (i, i + 1), frame i + 1 is sampled (bilinear) where each pixel
    of frame i moves to, and compared with frame i; pixels hidden in frame i + 1 are left
    out. A clip whose colours move exactly with the motion scores 0; flicker raises it.
    Anti-aliased edges keep a real render slightly above 0.

    Args:
        frames: uint8 (F, H, W, 3), e.g. an edited clip.
        motion: a ShapesWorld ``Clip`` of the same size (its ``track(i, i + 1, grid=(H, W))`` is
            used), or pixel-level gt_positions (F, N, F, 2) with N = H*W, (x, y) in pixel-index
            coordinates (pixel centres at integers, i.e. ``Clip.ground_truth(grid=(H, W))``).
        gt_visible: (F, N, F) bool, required with an array ``motion``.
        reduce: False returns the per-pair errors (F - 1,) instead of their pixel-weighted mean.

    Returns:
        mean absolute error over visible pixels and channels (``nan`` if none is visible).
    """
    frames = as_numpy(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    F, H, W, _ = frames.shape
    frames = frames.astype(np.float64)
    errors, counts = [], []
    for i, (positions, visible) in enumerate(_consecutive_motion(motion, gt_visible, F, H, W)):
        warped = bilinear(frames[i + 1], positions[..., 0], positions[..., 1])  # (H, W, 3)
        difference = np.abs(warped - frames[i]).mean(axis=-1)  # (H, W)
        counts.append(int(visible.sum()))
        errors.append(float(difference[visible].mean()) if counts[-1] else math.nan)
    if not reduce:
        return np.array(errors)
    total = sum(counts)
    if not total:
        return math.nan
    return float(sum(e * c for e, c in zip(errors, counts) if c) / total)


def motion_following(frames, motion, reference, *, threshold: float = 10.0, faint: float = 0.25) -> dict:
    """Does a clip move with the scene, stand still in the image, or barely change? (Static artifacts.)

    Over the pixels where ``reference`` (the true edited clip) changes between consecutive
    frames at the same place by more than ``threshold`` (mean over channels, [0, 255]), that
    is where the scene visibly moves, compare two errors of ``frames``: along the true motion
    (``warp_error``'s: frame i against frame i + 1 sampled where each pixel moves to) and
    standing still (frame i against frame i + 1 at the same pixel). A clip that follows the
    motion scores far less along it; a pattern fixed to the image, while the scene pans,
    scores less standing still; a faint one (a washed-out texture, a blank frame) changes little
    either way, next to the reference standing still.

    Args:
        frames: uint8 (F, H, W, 3); motion: the ShapesWorld ``Clip`` with the true motion;
        reference: uint8 (F, H, W, 3) that moves with it (the true edit).

    Returns:
        {"along": error along the motion, "still": error standing still, "ratio": still /
         along, "reference_still": the reference's error standing still, "change": still /
         reference_still, "kind": "faint" where both errors are below ``faint *
         reference_still``, else "fixed" where ``still <= along``, else None; "static": ``kind``
         is not None, "pixels": pixels counted}; with no such pixel (nothing visibly moves)
        ``nan`` errors, ``kind`` None and ``static`` False.
    """
    frames, reference = as_numpy(frames), as_numpy(reference)
    if frames.ndim != 4 or frames.shape != reference.shape or frames.shape[-1] != 3:
        raise ValueError(f"expected frames and reference of the same shape (F, H, W, 3), got "
                         f"{frames.shape} and {reference.shape}")
    F, H, W, _ = frames.shape
    frames, reference = frames.astype(np.float64), reference.astype(np.float64)
    along = still = reference_still = 0.0
    count = 0
    for i, (positions, visible) in enumerate(_consecutive_motion(motion, None, F, H, W)):
        moving = visible & (np.abs(reference[i + 1] - reference[i]).mean(-1) > threshold)  # (H, W)
        if not moving.any():
            continue
        warped = bilinear(frames[i + 1], positions[..., 0], positions[..., 1])  # (H, W, 3)
        along += float(np.abs(warped - frames[i]).mean(-1)[moving].sum())
        still += float(np.abs(frames[i + 1] - frames[i]).mean(-1)[moving].sum())
        reference_still += float(np.abs(reference[i + 1] - reference[i]).mean(-1)[moving].sum())
        count += int(moving.sum())
    if not count:
        return {"along": math.nan, "still": math.nan, "ratio": math.nan, "reference_still": math.nan,
                "change": math.nan, "kind": None, "static": False, "pixels": 0}
    along, still, reference_still = along / count, still / count, reference_still / count
    kind = ("faint" if max(along, still) < faint * reference_still
            else "fixed" if still <= along else None)
    return {"along": along, "still": still, "ratio": still / along if along else math.inf,
            "reference_still": reference_still, "change": still / reference_still if reference_still else math.nan,
            "kind": kind, "static": kind is not None, "pixels": count}


# ---------------------------------------------------------------------------------------------
# Edit fidelity
# ---------------------------------------------------------------------------------------------


def psnr(a, b, mask=None, *, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio 10 log10(peak^2 / MSE) in dB.

    Args:
        a, b: images or clips of the same shape (..., H, W, 3), uint8 or float in [0, peak].
        mask: optional bool (..., H, W): only these pixels count.

    Returns:
        PSNR in dB; ``inf`` for identical inputs, ``nan`` for an empty mask.
    """
    a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"expected two arrays of the same shape, got {a.shape} and {b.shape}")
    squared = (a - b) ** 2
    if mask is not None:
        mask = as_numpy(mask).astype(bool)
        if mask.shape != a.shape[:-1]:
            raise ValueError(f"expected a mask of shape {a.shape[:-1]}, got {mask.shape}")
        squared = squared[mask]  # (P, 3) masked pixels
    if squared.size == 0:
        return math.nan
    mse = squared.mean()
    return math.inf if mse == 0 else float(10 * np.log10(peak**2 / mse))


def _resolve_colour(colour, palette: dict) -> tuple[int, int, int]:
    if isinstance(colour, str):
        if colour not in palette:
            raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(palette)}")
        return tuple(int(c) for c in palette[colour])
    colour = tuple(int(c) for c in colour)
    if len(colour) != 3:
        raise ValueError(f"expected an (r, g, b) colour, got {colour}")
    return colour


def nearest_colour(pixels, palette: dict) -> np.ndarray:
    """Name index of the nearest palette colour (RGB euclidean) of each pixel (..., 3) -> (...)."""
    colours = np.array(list(palette.values()), dtype=np.float64)  # (P, 3)
    pixels = as_numpy(pixels).astype(np.float64)
    distance = ((pixels[..., None, :] - colours) ** 2).sum(-1)  # (..., P)
    return distance.argmin(-1)


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Erode each frame of a bool (F, H, W) mask by ``pixels`` (3 x 3 square)."""
    if pixels <= 0:
        return mask
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([cv2.erode(m.astype(np.uint8), kernel, iterations=pixels, borderType=cv2.BORDER_REPLICATE)
                     for m in mask.reshape(-1, *mask.shape[-2:])]).reshape(mask.shape).astype(bool)


def edit_fidelity(edited, target, object_mask, target_colour, *, palette: dict | None = None,
                  erode: int = 1) -> dict:
    """How close an edit is to the ground-truth edited clip.

    Args:
        edited: uint8 (F, H, W, 3), the edit to score.
        target: uint8 (F, H, W, 3), the ground truth (``world.render(world.edit(...))``).
        object_mask: bool (F, H, W), pixels of the edited object (in the target clip).
        target_colour: (r, g, b) or a palette name, the object's new colour.
        palette: {name: (r, g, b)} of candidate colours; default ShapesWorld's ``COLOURS``.
        erode: the attribute is read on the mask eroded by this many pixels, so that
            anti-aliased outline pixels (half object, half background) do not count; the full
            mask is used where erosion leaves nothing.

    Returns:
        {"psnr": whole frames, "background_psnr": outside the mask, "object_psnr": inside,
         "attribute_accuracy": share of (eroded) mask pixels whose nearest palette colour is
         the target colour}.
    """
    edited, target = as_numpy(edited), as_numpy(target)
    object_mask = as_numpy(object_mask).astype(bool)
    if edited.shape != target.shape or object_mask.shape != edited.shape[:-1]:
        raise ValueError(f"expected edited, target (F, H, W, 3) and object_mask (F, H, W) of matching "
                         f"shapes, got {edited.shape}, {target.shape}, {object_mask.shape}")
    palette = {k: tuple(int(c) for c in v) for k, v in (world.COLOURS if palette is None else palette).items()}
    target_colour = _resolve_colour(target_colour, palette)
    if target_colour not in palette.values():
        palette["target"] = target_colour
    target_index = list(palette.values()).index(target_colour)
    interior = _erode(object_mask, erode)
    if not interior.any():
        interior = object_mask
    inside = edited[interior]  # (P, 3) object pixels
    accuracy = float((nearest_colour(inside, palette) == target_index).mean()) if inside.size else math.nan
    return {
        "psnr": psnr(edited, target),
        "background_psnr": psnr(edited, target, ~object_mask),
        "object_psnr": psnr(edited, target, object_mask),
        "attribute_accuracy": accuracy,
    }
