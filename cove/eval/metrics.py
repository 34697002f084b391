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
    "MOTION_FOLLOWING_RULE",
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


MOTION_FOLLOWING_RULE = "regions"  # motion_following's rule, named in the records it judges ("pairs": the
# rule of records without a name, consecutive frames at the same pixels over the whole frame)


def motion_following(frames, clip, reference, *, threshold: float = 10.0, faint: float = 0.25,
                     gap: int | None = None, tolerance: int = 3, smooth: int = 3,
                     min_share: float = 0.01) -> dict:
    """Does an edit move with the scene, stand still in the image, or barely change? (Static artifacts.)

    Two errors of ``frames`` between a frame and a later one: *along* the true motion (the later
    frame sampled where each pixel moves to) and *standing still* (the later frame at the same
    pixel), summed where the scene moves and visibly changes (by more than ``threshold`` of 255),
    in two regions judged apart:

    * the **background**, further than ``tolerance`` pixels from every object, where the camera
      pans: consecutive frames, where ``reference`` (the true edited clip) changes;
    * the **objects** and the pixels around them, where an edit's shapes may differ from the
      true edit's by a few pixels: frames ``gap`` apart (half the clip by default, so that the
      objects move further than that), colours averaged over ``smooth`` x ``smooth`` pixels
      (pixel noise is no motion), along the best of the true motions within ``tolerance``
      pixels (an edited object a little larger, smaller or shifted still moves with its
      scene), where the reference or ``frames`` changes.

    A region that changes less standing still than along the motion is *fixed* to the image (a
    pattern that stays put while the camera pans, an object left behind); one whose errors are
    both under ``faint`` times the reference's change standing still is *faint* (a washed-out
    texture, a blank frame). A region is judged where it holds at least ``min_share`` of the
    pixels compared; the edit is static where either judged region is.

    Args:
        frames: uint8 (F, H, W, 3), e.g. an edited clip; clip: the ShapesWorld ``Clip`` with the
            true motion (its ``track`` and ``masks``); reference: uint8 (F, H, W, 3) that moves
            with it (the true edit).

    Returns:
        {"along", "still" (mean errors over both regions), "ratio": still / along,
         "reference_still": the reference's error standing still, "change": still /
         reference_still, "kind": "fixed" where a judged region is fixed, else "faint" where one
         is faint, else None; "static": ``kind`` is not None, "pixels": pixels counted,
         "regions": {"background", "objects": the same figures of each region and "judged"}};
        with no pixel counted (nothing visibly moves) ``nan`` errors, ``kind`` None and
        ``static`` False.
    """
    frames, reference = as_numpy(frames), as_numpy(reference)
    if frames.ndim != 4 or frames.shape != reference.shape or frames.shape[-1] != 3:
        raise ValueError(f"expected frames and reference of the same shape (F, H, W, 3), got "
                         f"{frames.shape} and {reference.shape}")
    if not (hasattr(clip, "track") and hasattr(clip, "masks")):
        raise ValueError(f"clip: expected a ShapesWorld Clip (track and masks), got {type(clip).__name__}")
    F, H, W, _ = frames.shape
    if tuple(clip.frames.shape) != frames.shape:
        raise ValueError(f"expected frames of the clip's shape {tuple(clip.frames.shape)}, got {frames.shape}")
    gap = max(1, F // 2) if gap is None else int(gap)
    if not 1 <= gap < F:
        raise ValueError(f"gap: expected 1 <= gap < {F} frames, got {gap}")
    if int(tolerance) != tolerance or tolerance < 0 or int(smooth) != smooth or smooth < 1:
        raise ValueError(f"expected a whole tolerance >= 0 and smooth >= 1 pixels, got {tolerance} and {smooth}")
    tolerance, smooth = int(tolerance), int(smooth)

    def smoothed(x):  # (F, H, W, 3) float64, a box average per frame
        x = x.astype(np.float64)
        return np.stack([cv2.blur(f, (smooth, smooth), borderType=cv2.BORDER_REPLICATE) for f in x]) if smooth > 1 else x

    raw, raw_reference = frames.astype(np.float64), reference.astype(np.float64)
    frames, reference = smoothed(frames), smoothed(reference)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    sums = np.zeros((2, 4))  # (background, objects) x (along, still, reference_still, pixels)

    near = [cv2.dilate((clip.masks[f].any(0) if clip.masks.shape[1] else np.zeros((H, W), bool)).astype(np.uint8),
                       kernel).astype(bool) for f in range(F)]  # (H, W) each: within ``tolerance`` px of an object

    # the background, away from the objects: consecutive frames, each pixel along its own motion
    for i, (positions, visible) in enumerate(_consecutive_motion(clip, None, F, H, W)):
        along = np.abs(bilinear(raw[i + 1], positions[..., 0], positions[..., 1]) - raw[i]).mean(-1)
        still = np.abs(raw[i + 1] - raw[i]).mean(-1)
        reference_still = np.abs(raw_reference[i + 1] - raw_reference[i]).mean(-1)
        moving = np.hypot(positions[..., 0] - xs, positions[..., 1] - ys) >= 0.5  # the camera pans
        region = visible & moving & ~near[i] & ~near[i + 1] & (reference_still > threshold)
        sums[0] += (along[region].sum(), still[region].sum(), reference_still[region].sum(), region.sum())
    # the objects and the pixels around them: frames ``gap`` apart, the best true motion within
    # ``tolerance`` pixels, where the reference or the edit changes
    for i in range(F - gap):
        j = i + gap
        positions, visible = (as_numpy(a) for a in clip.track(i, j))
        moves = np.where(visible[..., None], positions - np.stack([xs, ys], -1), np.nan)  # (H, W, 2)
        padded = np.pad(moves, ((tolerance, tolerance), (tolerance, tolerance), (0, 0)), constant_values=np.nan)
        along = np.full((H, W), np.inf)
        moving = np.zeros((H, W), bool)
        for dy in range(2 * tolerance + 1):
            for dx in range(2 * tolerance + 1):
                move = padded[dy:dy + H, dx:dx + W]  # a neighbour's true motion at each pixel
                known = ~np.isnan(move[..., 0])
                move = np.nan_to_num(move)
                error = np.abs(bilinear(frames[j], xs + move[..., 0], ys + move[..., 1]) - frames[i]).mean(-1)
                along = np.where(known & (error < along), error, along)
                moving |= known & (np.hypot(move[..., 0], move[..., 1]) >= 0.5)
        still = np.abs(frames[j] - frames[i]).mean(-1)
        reference_still = np.abs(reference[j] - reference[i]).mean(-1)
        region = (visible & moving & near[i]
                  & ((reference_still > threshold) | (still > threshold)))
        sums[1] += (along[region].sum(), still[region].sum(), reference_still[region].sum(), region.sum())

    def figures(along, still, reference_still, pixels, judged=True):
        if not pixels:
            return {"along": math.nan, "still": math.nan, "ratio": math.nan, "reference_still": math.nan,
                    "change": math.nan, "kind": None, "static": False, "pixels": 0}
        along, still, reference_still = along / pixels, still / pixels, reference_still / pixels
        kind = None
        if judged:
            kind = "faint" if max(along, still) < faint * reference_still else "fixed" if still <= along else None
        return {"along": along, "still": still, "ratio": still / along if along else math.inf,
                "reference_still": reference_still,
                "change": still / reference_still if reference_still else math.nan,
                "kind": kind, "static": kind is not None, "pixels": int(pixels)}

    least = (min_share * H * W * (F - 1), min_share * H * W * (F - gap))  # pixels compared, per region
    regions = {name: {**figures(*sums[r], judged=sums[r][3] >= least[r]), "judged": bool(sums[r][3] >= least[r])}
               for r, name in enumerate(("background", "objects"))}
    kinds = [region["kind"] for region in regions.values()]
    result = figures(*sums.sum(0), judged=False)
    result["kind"] = "fixed" if "fixed" in kinds else "faint" if "faint" in kinds else None
    result["static"] = result["kind"] is not None
    result["regions"] = regions
    return result


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
