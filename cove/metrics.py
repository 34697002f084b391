"""Metrics against ShapesWorld's ground truth: correspondence PCK, warp error, edit fidelity, a judge.

Everything here is a pure function of arrays (numpy or torch) so the quality gate
(``python -m cove.tiny.quality``), the notebooks and the tests share one implementation.

* ``pck`` / ``pck_by_offset``: share of correct top-1 correspondences (the paper's
  correspondence accuracy: optical flow 0.87, diffusion features 0.92).
* ``warp_error``: flicker of a clip measured along the ground-truth motion.
* ``psnr`` / ``edit_fidelity``: an edit against the ground-truth edited clip.
* ``judge_image`` / ``prompt_followed``: a classical-vision judge of generated ShapesWorld
  images (background, object colours and shapes), calibrated on ShapesWorld renders.
"""
from __future__ import annotations

import dataclasses
import math
import re
from functools import lru_cache

import cv2
import numpy as np

from . import world
from .world.clip import bilinear

__all__ = [
    "pck",
    "pck_by_offset",
    "warp_error",
    "psnr",
    "edit_fidelity",
    "judge_image",
    "prompt_followed",
    "parse_caption",
    "nearest_colour",
    "object_components",
    "refine_mask",
    "shape_descriptors",
]


def _numpy(x) -> np.ndarray:
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
    index = _numpy(index)
    if index.ndim == 4:
        index = index[..., 0]  # (F, N, F) best match first
    if index.ndim != 3 or index.shape[0] != index.shape[2]:
        raise ValueError(f"expected an index of shape (F, N, F[, K]), got {index.shape}")
    H, W = grid
    if index.shape[1] != H * W:
        raise ValueError(f"index has N={index.shape[1]} tokens but grid {grid} has {H * W}")
    return np.stack([index % W, index // W], axis=-1).astype(np.float64)  # (F, N, F, 2)


def _hits(correspondence, gt_positions, gt_visible, threshold, exclude_self, grid):
    """Correct (F, N, F) and counted (F, N, F) masks of the top-1 matches."""
    predicted = _top1_positions(correspondence, grid)  # (F, N, F, 2)
    gt_positions = _numpy(gt_positions).astype(np.float64)
    gt_visible = _numpy(gt_visible).astype(bool)
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

    Returns:
        PCK in [0, 1]; ``nan`` when no point is counted.
    """
    correct, counted = _hits(correspondence, gt_positions, gt_visible, threshold, exclude_self, grid)
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
            yield _numpy(positions).astype(np.float64), _numpy(visible).astype(bool)
        return
    positions = _numpy(motion).astype(np.float64)
    if gt_visible is None:
        raise ValueError("gt_visible (F, N, F) is required with gt_positions")
    visible = _numpy(gt_visible).astype(bool)
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
    frames = _numpy(frames)
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
    a, b = _numpy(a).astype(np.float64), _numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"expected two arrays of the same shape, got {a.shape} and {b.shape}")
    squared = (a - b) ** 2
    if mask is not None:
        mask = _numpy(mask).astype(bool)
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
    pixels = _numpy(pixels).astype(np.float64)
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
    edited, target = _numpy(edited), _numpy(target)
    object_mask = _numpy(object_mask).astype(bool)
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


# ---------------------------------------------------------------------------------------------
# A judge of generated ShapesWorld images
# ---------------------------------------------------------------------------------------------


def parse_caption(caption: str) -> dict:
    """Colour/shape pairs and background named in a ShapesWorld caption.

    "a red star and a blue circle on grass" -> {"objects": [("red", "star"), ("blue", "circle")],
    "background": "grass"}. A shape without a colour word gets colour None; unknown
    background -> None.
    """
    text = caption.lower()
    colours = "|".join(sorted(map(re.escape, world.COLOURS), key=len, reverse=True))
    shapes = "|".join(sorted(map(re.escape, world.SHAPES), key=len, reverse=True))
    objects = [
        (colour or None, shape)
        for colour, shape in re.findall(rf"\b(?:({colours})\s+)?({shapes})s?\b", text)
    ]
    backgrounds = [b for b in world.BACKGROUNDS if re.search(rf"\b{re.escape(b)}\b", text)]
    return {"objects": objects, "background": backgrounds[-1] if backgrounds else None}


def prompt_followed(image, caption: str, *, judgement: dict | None = None) -> dict:
    """Does ``image`` (uint8 (H, W, 3)) show what ``caption`` asks for, according to ``judge_image``?

    Returns:
        {"colour": every named colour is on some object, "shape": every named shape is some
         object's, "background": the background is the named one, "all": every named
         (colour, shape) pair is one object and the background matches}.
    """
    wanted = parse_caption(caption)
    judged = judgement if judgement is not None else judge_image(image)
    seen = judged["objects"]
    colour = all(any(c == sc for sc, _ in seen) for c, _ in wanted["objects"] if c is not None)
    shape = all(any(s == ss for _, ss in seen) for _, s in wanted["objects"])
    background = wanted["background"] is None or judged["background"] == wanted["background"]
    pairs = all(any((c is None or c == sc) and s == ss for sc, ss in seen) for c, s in wanted["objects"])
    found = bool(seen) or not wanted["objects"]
    return {
        "colour": bool(colour and found),
        "shape": bool(shape and found),
        "background": bool(background),
        "all": bool(pairs and background and found),
    }


def shape_descriptors(mask) -> np.ndarray:
    """Rotation- and scale-invariant descriptors of a blob, bool (H, W) -> (5,).

    Each pixel counts as a unit square. Returns [solidity (area / convex hull), area / minimum
    enclosing circle, area / minimum-area rectangle, area / minimum enclosing triangle,
    hull circularity 4 pi A / P^2]: a circle fills its circle, a square its rectangle, a
    triangle its triangle, and a star is the only non-convex shape.
    """
    mask = _numpy(mask).astype(bool)
    area = float(mask.sum())
    if area == 0:
        raise ValueError("expected a non-empty mask")
    ys, xs = np.nonzero(mask)
    centres = np.stack([xs, ys], -1).astype(np.float32)  # (P, 2)
    corners = np.concatenate([centres + offset for offset in _PIXEL_CORNERS])  # (4P, 2)
    hull = cv2.convexHull(corners)  # (V, 1, 2)
    _, radius = cv2.minEnclosingCircle(hull)
    (_, (width, height), _) = cv2.minAreaRect(hull)
    triangle_area, _ = cv2.minEnclosingTriangle(hull)
    hull_area, perimeter = cv2.contourArea(hull), cv2.arcLength(hull, True)
    return np.array([
        area / hull_area,
        area / (math.pi * radius**2),
        area / (width * height),
        area / triangle_area,
        4 * math.pi * hull_area / perimeter**2,
    ])


_PIXEL_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]], np.float32)


def object_components(image, *, tolerance: float = 80.0, min_area: float = 0.004,
                      palette: dict | None = None) -> list[tuple[str, np.ndarray]]:
    """Blobs of flat object colour in an image: [(colour name, mask bool (H, W))], largest first.

    A pixel belongs to colour c when c is its nearest palette colour and lies within
    ``tolerance`` (RGB euclidean; ShapesWorld keeps every background >= 100 away from every
    object colour). Blobs are 8-connected; those under ``min_area`` x H x W pixels are dropped
    (anti-aliasing fringes, noise).
    """
    image = _numpy(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image of shape (H, W, 3), got {image.shape}")
    palette = world.COLOURS if palette is None else palette
    colours = np.array(list(palette.values()), np.float64)  # (P, 3)
    distance = np.linalg.norm(image.astype(np.float64)[..., None, :] - colours, axis=-1)  # (H, W, P)
    nearest = distance.argmin(-1)  # (H, W)
    close = distance.min(-1) <= tolerance  # (H, W)
    smallest = min_area * image.shape[0] * image.shape[1]
    blobs = []
    for p, name in enumerate(palette):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            ((nearest == p) & close).astype(np.uint8), connectivity=8)
        for label in range(1, count):
            if stats[label, cv2.CC_STAT_AREA] >= smallest:
                blobs.append((name, labels == label))
    return sorted(blobs, key=lambda blob: -blob[1].sum())


def refine_mask(image, blob, others=None, *, ring: int = 3, residual_limit: float = 45.0) -> np.ndarray:
    """Sharper mask of one flat-colour blob: pixels at least half object colour.

    The blob's colour c is the median of its pixels, the local background b the median of a
    ring of ``ring`` pixels around it (other blobs excluded). A pixel p near the blob belongs to
    the object when its coverage alpha = (p - b).(c - b) / |c - b|^2 >= 1/2 (the outline a
    renderer's anti-aliasing or a model's blur leaves at half coverage) and p lies within
    ``residual_limit`` of the blend line b + alpha (c - b) (texture such as mortar is not).

    Args:
        image: uint8 (H, W, 3). blob: bool (H, W). others: bool (H, W) pixels of other objects.

    Returns:
        bool (H, W), the connected part overlapping ``blob``.
    """
    image = _numpy(image).astype(np.float64)
    blob = _numpy(blob).astype(bool)
    kernel = np.ones((3, 3), np.uint8)
    grown = cv2.dilate(blob.astype(np.uint8), kernel, iterations=ring).astype(bool)  # (H, W)
    near = cv2.dilate(blob.astype(np.uint8), kernel, iterations=2 * ring).astype(bool) & ~grown
    if others is not None:
        near &= ~cv2.dilate(_numpy(others).astype(np.uint8), kernel, iterations=ring).astype(bool)
    if not near.any():
        return blob
    colour, background = np.median(image[blob], 0), np.median(image[near], 0)  # (3,), (3,)
    direction = colour - background
    if direction @ direction < 1.0:
        return blob
    offset = image - background  # (H, W, 3)
    alpha = offset @ direction / (direction @ direction)  # (H, W)
    residual = np.linalg.norm(offset - alpha[..., None] * direction, axis=-1)  # (H, W) off the blend line
    mask = ((alpha >= 0.5) & (residual <= residual_limit) & grown) | blob
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[blob])
    return np.isin(labels, keep[keep > 0])


def _object_masks(image, blobs) -> list[np.ndarray]:
    """``refine_mask`` of every blob, the others excluded from its background ring."""
    union = np.zeros(image.shape[:2], bool)
    for _, mask in blobs:
        union |= mask
    return [refine_mask(image, mask, union & ~mask) for _, mask in blobs]


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return image if sigma == 0 else cv2.GaussianBlur(image, (0, 0), sigma)


def _single_object_renders(n: int, seed: int, size: int = 64):
    """n single-object ShapesWorld frames: [(image uint8 (H, W, 3), colour, shape, background)]."""
    out = []
    for s in range(n):
        scene = world.random_scene(seed + s, frames=1, size=size, n_objects=1)
        obj = scene.objects[0]
        out.append((world.render(scene).frames[0], obj.colour, obj.shape, scene.background))
    return out


# Calibration renders are blurred by these sigmas in turn, so that the classes also cover the
# softer outlines of generated images.
_CALIBRATION_BLUR = (0.0, 0.6, 1.0)


@lru_cache(maxsize=None)
def _shape_model(n: int = 480, seed: int = 1_000_000) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Per-shape mean and spread of ``shape_descriptors``, calibrated on ShapesWorld renders.

    Returns (shape names, means (S, 5), spreads (S, 5)). Seeds >= 1e6: disjoint from tests.
    """
    descriptors: dict[str, list] = {shape: [] for shape in world.SHAPES}
    for k, (image, colour, shape, _) in enumerate(_single_object_renders(n, seed)):
        image = _blur(image, _CALIBRATION_BLUR[k % len(_CALIBRATION_BLUR)])
        blobs = [blob for blob in object_components(image) if blob[0] == colour][:1]
        if blobs:
            descriptors[shape].append(shape_descriptors(_object_masks(image, blobs)[0]))
    names = tuple(descriptors)
    means = np.stack([np.mean(descriptors[s], 0) for s in names])  # (S, 5)
    spreads = np.stack([np.std(descriptors[s], 0) for s in names])  # (S, 5)
    return names, means, np.maximum(spreads, 0.02)


@lru_cache(maxsize=None)
def _background_model(n: int = 200, seed: int = 2_000_000) -> tuple[tuple[str, ...], np.ndarray]:
    """Per-background centroid of ``_background_descriptors``, calibrated on ShapesWorld renders."""
    descriptors: dict[str, list] = {b: [] for b in world.BACKGROUNDS}
    for s in range(n):
        scene = world.random_scene(seed + s, frames=1, n_objects=1)
        background = world.BACKGROUNDS[s % len(world.BACKGROUNDS)]
        image = world.render(dataclasses.replace(scene, background=background)).frames[0]
        descriptors[background].append(_background_descriptors(image, object_components(image)))
    names = tuple(descriptors)
    return names, np.stack([np.mean(descriptors[b], 0) for b in names])  # (B, 6)


def _background_descriptors(image: np.ndarray, blobs) -> np.ndarray:
    """Mean RGB and half the RGB spread of the pixels away from every object blob, (6,)."""
    covered = np.zeros(image.shape[:2], np.uint8)
    for _, mask in blobs:
        covered |= mask.astype(np.uint8)
    covered = cv2.dilate(covered, np.ones((5, 5), np.uint8)).astype(bool)  # drop the fringes
    pixels = image[~covered] if (~covered).any() else image.reshape(-1, 3)  # (P, 3)
    pixels = pixels.astype(np.float64)
    return np.concatenate([pixels.mean(0), 0.5 * pixels.std(0)])


def judge_image(image, *, tolerance: float = 80.0, min_area: float = 0.004) -> dict:
    """What a ShapesWorld image shows, by classical vision calibrated on ShapesWorld renders.

    1. Objects: blobs of a flat object colour (``object_components``).
    2. Shape of each blob: nearest calibrated class of ``shape_descriptors`` (distance in
       units of each class's spread).
    3. Background: nearest calibrated centroid of the colour mean and spread of the pixels
       away from the objects.

    Args:
        image: uint8 (H, W, 3).

    Returns:
        {"background": name, "objects": [(colour, shape), ...] largest first}.
    """
    image = _numpy(image)
    blobs = object_components(image, tolerance=tolerance, min_area=min_area)
    shapes, means, spreads = _shape_model()
    objects = []
    for (colour, _), mask in zip(blobs, _object_masks(image, blobs)):
        score = (((shape_descriptors(mask) - means) / spreads) ** 2).sum(-1)  # (S,)
        objects.append((colour, shapes[int(score.argmin())]))
    backgrounds, centroids = _background_model()
    distance = np.linalg.norm(_background_descriptors(image, blobs) - centroids, axis=-1)  # (B,)
    return {"background": backgrounds[int(distance.argmin())], "objects": objects}
