"""ShapesWorld backgrounds: procedural textures of world position, so a camera pan moves them exactly."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .scene import BASE

# ----------------------------------------------------------------------------------------
# Backgrounds: procedural textures of world position (X, Y) in 64-pixel units
# ----------------------------------------------------------------------------------------


def _hash2(ix, iy):
    """A deterministic pseudo-random value in [0, 1) per integer cell."""
    h = np.sin(ix * 12.9898 + iy * 78.233) * 43758.5453
    return h - np.floor(h)


def _mix(base, amp, v):
    """base + v * amp for a value field v, (..., 3)."""
    return np.asarray(base, float) + v[..., None] * np.asarray(amp, float)


def _tex_grass(X, Y, px):
    blades = np.sin(1.3 * X + 2.0 * np.sin(0.11 * Y + 0.05 * X))
    patches = np.sin(0.21 * X + 0.17 * Y) * np.sin(0.13 * X - 0.23 * Y)
    return _mix((62, 104, 42), (16, 22, 10), 0.6 * blades + 0.4 * patches)


def _tex_snow(X, Y, px):
    drifts = np.sin(0.15 * X + 0.4) * np.sin(0.12 * Y) + 0.5 * np.sin(0.31 * X - 0.27 * Y)
    sparkle = np.sin(2.1 * X) * np.sin(1.9 * Y)
    return _mix((226, 232, 242), (-12, -9, -4), drifts / 1.5 + 0.3 * sparkle)


def _tex_sand(X, Y, px):
    ripples = np.sin(0.55 * (Y + 3.0 * np.sin(0.09 * X)))
    slope = np.sin(0.2 * X + 0.13 * Y)
    return _mix((192, 168, 118), (16, 15, 12), 0.7 * ripples + 0.3 * slope)


def _mortar(X, Y, w, h, offset, px, half_width):
    """Grid of w x h cells (odd rows shifted by ``offset``): (cell ix, iy, mortar alpha)."""
    iy = np.floor(Y / h)
    Xs = X + offset * (iy % 2)
    ix = np.floor(Xs / w)
    dx = np.minimum(Xs - ix * w, (ix + 1) * w - Xs)
    dy = np.minimum(Y - iy * h, (iy + 1) * h - Y)
    d = np.minimum(dx, dy) / px  # distance to the nearest joint, in pixels
    alpha = np.clip(half_width / px + 0.5 - d, 0.0, 1.0)  # anti-aliased joint coverage
    return ix, iy, alpha


def _tex_bricks(X, Y, px):
    ix, iy, alpha = _mortar(X, Y, 16.0, 8.0, 8.0, px, 0.75)
    shade = 2.0 * _hash2(ix, iy) - 1.0 + 0.25 * np.sin(0.9 * X + 0.7 * Y)
    brick = _mix((112, 70, 58), (10, 7, 6), shade)
    mortar = np.array([172.0, 168.0, 158.0])
    return brick + alpha[..., None] * (mortar - brick)


def _tex_stone(X, Y, px):
    ix, iy, alpha = _mortar(X, Y, 12.0, 12.0, 5.0, px, 0.8)
    shade = 2.0 * _hash2(ix + 7.0, iy - 3.0) - 1.0 + 0.3 * np.sin(0.8 * X - 0.6 * Y)
    stone = _mix((122, 120, 116), (14, 14, 13), shade)
    gap = np.array([78.0, 76.0, 74.0])
    return stone + alpha[..., None] * (gap - stone)


_TEXTURES: dict[str, Callable] = {
    "grass": _tex_grass, "snow": _tex_snow, "sand": _tex_sand,
    "bricks": _tex_bricks, "stone": _tex_stone,
}


def texture(name: str, wx, wy, size: int):
    """Background colour (..., 3) float at world pixel positions (wx, wy)."""
    px = BASE / size  # one pixel in 64-pixel units
    return _TEXTURES[name]((wx + 0.5) * px, (wy + 0.5) * px, px)


