"""ShapesWorld backgrounds: procedural textures of world position, so a camera pan moves them exactly.

Every texture is a pure function of the world position (X, Y) in 64-pixel units, built from
value noise hashed on the integer lattice (no periodic term): a background patch has one true
match near it, so a correspondence measured on a background measures the matcher, not the
texture's period. Detail stops at about 2 pixels (at 64 x 64) so that bilinear sampling of a
rendered frame at a sub-pixel position still gives the texture's colour there.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .scene import BASE

# ----------------------------------------------------------------------------------------
# Lattice noise
# ----------------------------------------------------------------------------------------

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash(ix, iy, seed: int) -> np.ndarray:
    """A pseudo-random value in [0, 1) per integer lattice point (ix, iy), one stream per seed
    (splitmix64's finaliser of the packed coordinates)."""
    ix = np.asarray(ix, np.float64).astype(np.int64).astype(np.uint64)
    iy = np.asarray(iy, np.float64).astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the point
        h = ix * _M1 ^ (iy + np.uint64(seed * 0x94D049BB133111EB % 2**64)) * _M2
        h = (h ^ (h >> np.uint64(30))) * _M2
        h = (h ^ (h >> np.uint64(27))) * _M3
        h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _fade(t):
    """Quintic smoothstep 6t^5 - 15t^4 + 10t^3 (Perlin 2002): C2 across lattice lines."""
    return t * t * t * (t * (6.0 * t - 15.0) + 10.0)


def _value_noise(X, Y, seed: int):
    """Value noise in [-1, 1] with lattice spacing 1: hashed corners, quintic interpolation."""
    ix, iy = np.floor(X), np.floor(Y)
    u, v = _fade(X - ix), _fade(Y - iy)
    top = _hash(ix, iy, seed) * (1 - u) + _hash(ix + 1, iy, seed) * u
    bottom = _hash(ix, iy + 1, seed) * (1 - u) + _hash(ix + 1, iy + 1, seed) * u
    return 2.0 * (top * (1 - v) + bottom * v) - 1.0


def _fbm(X, Y, scale: float, octaves: int, seed: int):
    """Fractal sum of value noise (fbm): octave o has lattice spacing scale / 2^o and weight
    1 / 2^o; normalised to [-1, 1]."""
    total, norm = 0.0, 0.0
    for o in range(octaves):
        f, w = 2.0**o / scale, 0.5**o
        total = total + w * _value_noise(X * f + 31.7 * o, Y * f - 17.3 * o, seed + o)
        norm += w
    return total / norm


def _mix(base, amp, v):
    """base + v * amp for a value field v, (..., 3)."""
    return np.asarray(base, float) + v[..., None] * np.asarray(amp, float)


# ----------------------------------------------------------------------------------------
# Backgrounds (X, Y in 64-pixel units; px: one pixel in those units)
# ----------------------------------------------------------------------------------------


def _tex_grass(X, Y, px):
    patches = _fbm(X, Y, 24.0, 2, seed=11)  # lighter and darker tufts
    blades = _fbm(X, Y / 2.0, 2.5, 2, seed=13)  # fine detail, stretched upright
    return _mix((60, 100, 42), (12, 15, 7), patches) + _mix((0, 0, 0), (24, 34, 14), blades)


def _tex_snow(X, Y, px):
    drifts = _fbm(X, Y, 20.0, 2, seed=21)
    grain = _fbm(X, Y, 3.0, 2, seed=23)
    return _mix((226, 232, 242), (-14, -11, -5), drifts) + _mix((0, 0, 0), (-22, -20, -14), grain)


def _tex_sand(X, Y, px):
    # ripples whose phase and strength wander with the position: no period survives
    phase = 0.55 * Y + 4.0 * _fbm(X, Y, 16.0, 2, seed=31)
    ripples = np.sin(phase) * (0.6 + 0.4 * _fbm(X, Y, 12.0, 1, seed=32))
    grain = _fbm(X, Y, 3.0, 2, seed=33)
    return _mix((192, 168, 118), (12, 11, 9), ripples) + _mix((0, 0, 0), (18, 16, 12), grain)


def _joint(i, row, spacing: float, jitter: float, seed: int):
    """Position of joint i of a line (``row``) of joints ``spacing`` apart, each moved by up
    to +-``jitter`` (hashed per joint and row)."""
    return i * spacing + jitter * (2.0 * _hash(i, row, seed) - 1.0)


def _interval(x, row, spacing: float, jitter: float, seed: int):
    """Index i of the interval [joint i, joint i+1) that holds x, and the distance from x to
    its nearer end. jitter < spacing / 2, so i is floor(x / spacing) or a neighbour."""
    i = np.floor(x / spacing)
    i = i - (x < _joint(i, row, spacing, jitter, seed)) + (x >= _joint(i + 1, row, spacing, jitter, seed))
    lo, hi = _joint(i, row, spacing, jitter, seed), _joint(i + 1, row, spacing, jitter, seed)
    return i, np.minimum(x - lo, hi - x)


def _tex_bricks(X, Y, px):
    """Courses of irregular height; in each course, bricks of irregular length with a per-course
    offset; a colour per brick, fine noise on the faces and in the mortar."""
    iy, dy = _interval(Y, 0, 8.0, 1.5, seed=41)  # course iy
    ix, dx = _interval(X + 16.0 * _hash(iy, 0, 42), iy, 16.0, 4.5, seed=43)  # brick ix of it
    d = np.minimum(dx, dy) / px  # distance to the nearest joint, in pixels
    alpha = np.clip(0.75 / px + 0.5 - d, 0.0, 1.0)  # anti-aliased joint coverage
    shade = 2.0 * _hash(ix, iy, seed=44) - 1.0
    tint = 2.0 * _hash(ix, iy, seed=45) - 1.0
    face = _fbm(X, Y, 3.0, 2, seed=46)
    brick = _mix((112, 70, 58), (12, 8, 7), shade) + _mix((0, 0, 0), (6, -3, -4), tint)
    brick = brick + _mix((0, 0, 0), (10, 7, 6), face)
    mortar = _mix((172, 168, 158), (10, 10, 9), _fbm(X, Y, 2.5, 1, seed=47))
    return brick + alpha[..., None] * (mortar - brick)


def _tex_stone(X, Y, px):
    """Irregular stones: the cells of points jittered on a 12-unit lattice (Worley 1996), a
    shade per stone, dark gaps where the two nearest points are equally near, fine noise."""
    size = 12.0
    gx, gy = np.floor(X / size), np.floor(Y / size)
    near = np.full(np.shape(X), np.inf)  # distances to the nearest and second-nearest point
    second = np.full(np.shape(X), np.inf)
    sx, sy = np.zeros(np.shape(X)), np.zeros(np.shape(X))  # lattice cell of the nearest point
    for oy in (-1.0, 0.0, 1.0):
        for ox in (-1.0, 0.0, 1.0):
            cx, cy = gx + ox, gy + oy  # a lattice cell and its point
            qx, qy = cx + 0.1 + 0.8 * _hash(cx, cy, 51), cy + 0.1 + 0.8 * _hash(cx, cy, 52)
            d = np.hypot(X - qx * size, Y - qy * size)
            closer = d < near
            second = np.where(closer, near, np.minimum(second, d))
            sx, sy = np.where(closer, cx, sx), np.where(closer, cy, sy)
            near = np.where(closer, d, near)
    gap = (second - near) / 2.0 / px  # about the distance to the cell border, in pixels
    alpha = np.clip(0.8 / px + 0.5 - gap, 0.0, 1.0)  # anti-aliased gap coverage
    shade = 2.0 * _hash(sx, sy, 53) - 1.0
    tint = 2.0 * _hash(sx, sy, 54) - 1.0
    stone = _mix((122, 120, 116), (14, 14, 13), shade) + _mix((0, 0, 0), (5, 2, -3), tint)
    stone = stone + _mix((0, 0, 0), (11, 11, 10), _fbm(X, Y, 3.0, 2, seed=55))
    dark = np.array([78.0, 76.0, 74.0])
    return stone + alpha[..., None] * (dark - stone)


_TEXTURES: dict[str, Callable] = {
    "grass": _tex_grass, "snow": _tex_snow, "sand": _tex_sand,
    "bricks": _tex_bricks, "stone": _tex_stone,
}


def texture(name: str, wx, wy, size: int):
    """Background colour (..., 3) float at world pixel positions (wx, wy)."""
    px = BASE / size  # one pixel in 64-pixel units
    return _TEXTURES[name]((wx + 0.5) * px, (wy + 0.5) * px, px)
