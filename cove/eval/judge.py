"""A classical-vision judge of generated ShapesWorld images: background, object colours and shapes.

``judge_image`` finds the objects of an image and names their colours and shapes with models
calibrated on ShapesWorld renders; ``prompt_followed`` checks an image against its caption.
cove-tiny's quality gate uses it to score prompt following.
"""
from __future__ import annotations

import dataclasses
import math
import re
from functools import lru_cache

import cv2
import numpy as np

from .. import world
from .metrics import as_numpy

__all__ = ["judge_image", "prompt_followed", "parse_caption", "object_components", "refine_mask",
           "shape_descriptors"]


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
    mask = as_numpy(mask).astype(bool)
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
    image = as_numpy(image)
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
    image = as_numpy(image).astype(np.float64)
    blob = as_numpy(blob).astype(bool)
    kernel = np.ones((3, 3), np.uint8)
    grown = cv2.dilate(blob.astype(np.uint8), kernel, iterations=ring).astype(bool)  # (H, W)
    near = cv2.dilate(blob.astype(np.uint8), kernel, iterations=2 * ring).astype(bool) & ~grown
    if others is not None:
        near &= ~cv2.dilate(as_numpy(others).astype(np.uint8), kernel, iterations=ring).astype(bool)
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
    image = as_numpy(image)
    blobs = object_components(image, tolerance=tolerance, min_area=min_area)
    shapes, means, spreads = _shape_model()
    objects = []
    for (colour, _), mask in zip(blobs, _object_masks(image, blobs)):
        score = (((shape_descriptors(mask) - means) / spreads) ** 2).sum(-1)  # (S,)
        objects.append((colour, shapes[int(score.argmin())]))
    backgrounds, centroids = _background_model()
    distance = np.linalg.norm(_background_descriptors(image, blobs) - centroids, axis=-1)  # (B,)
    return {"background": backgrounds[int(distance.argmin())], "objects": objects}
