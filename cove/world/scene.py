"""ShapesWorld scenes: flat coloured shapes on smooth paths over a textured background.

A ``Scene`` is pure data (objects, background, camera pan, frame count); ``render`` draws it.
Lengths are in pixels of the scene's ``size``; ranges quoted "at 64" scale with ``size / 64``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Flat object colours: pairwise RGB distance >= 100 and >= 100 from every background colour
# a texture can produce (checked in tests/test_world.py).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30),
    "green": (40, 235, 40),
    "blue": (30, 60, 235),
    "yellow": (240, 240, 40),
    "purple": (150, 40, 200),
    "orange": (250, 130, 0),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = ("grass", "snow", "sand", "bricks", "stone")
VOCABULARY: tuple[str, ...] = ("a", "an", "and", "on", *COLOURS, *SHAPES, *BACKGROUNDS)

_MIN_SIZE = 16
BASE = 64.0  # sizes and speeds are designed at 64 x 64 and scale with size / 64


def check_choice(kind: str, value: str, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}: expected one of {', '.join(options)}")


def check_size_frames(size: int, frames: int) -> None:
    if int(size) != size or size < _MIN_SIZE:
        raise ValueError(f"size: expected an integer >= {_MIN_SIZE}, got {size!r}")
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames: expected an integer >= 1, got {frames!r}")


# ----------------------------------------------------------------------------------------
# Shapes: exact signed distances in the object's local frame (unit = half the diameter)
# ----------------------------------------------------------------------------------------
# Local frame: x right, y *up* (the shapes are upright at angle 0); see ``to_local``.

_SQUARE_HALF = 0.8  # half side of the square (a diagonal of 2.26 units)
_TRIANGLE_R = 1.12  # circumradius of the equilateral triangle (centroid at the origin)
_STAR_R, _STAR_RF = 1.12, 0.5  # outer radius and inner-vertex factor of the 5-point star


def _sd_circle(x, y):
    return np.hypot(x, y) - 1.0


def _sd_square(x, y):
    qx, qy = np.abs(x) - _SQUARE_HALF, np.abs(y) - _SQUARE_HALF
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _sd_triangle(x, y):
    """Equilateral triangle, apex up (Quilez's exact 2D distance)."""
    k = np.sqrt(3.0)
    r = _TRIANGLE_R * k / 2.0  # half side
    px, py = np.abs(x) - r, y + r / k
    fold = px + k * py > 0.0
    px, py = np.where(fold, (px - k * py) / 2.0, px), np.where(fold, (-k * px - py) / 2.0, py)
    px = px - np.clip(px, -2.0 * r, 0.0)
    return -np.hypot(px, py) * np.sign(py)


def _sd_star(x, y):
    """Five-pointed star, a point up (Quilez's exact 2D distance)."""
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    px = np.abs(x)
    py = y
    d = 2.0 * np.maximum(k1x * px + k1y * py, 0.0)
    px, py = px - d * k1x, py - d * k1y
    d = 2.0 * np.maximum(k2x * px + k2y * py, 0.0)
    px, py = px - d * k2x, py - d * k2y
    px = np.abs(px)
    py = py - _STAR_R
    bax, bay = _STAR_RF * -k1y, _STAR_RF * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0.0, _STAR_R)
    return np.hypot(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)


SDF: dict[str, Callable] = {
    "circle": _sd_circle, "square": _sd_square, "triangle": _sd_triangle, "star": _sd_star,
}


@functools.lru_cache(maxsize=None)
def _interior_samples(shape: str) -> np.ndarray:
    """Local points filling the unit shape, (M, 2): used for the area constraints."""
    g = np.linspace(-1.2, 1.2, 25)
    x, y = np.meshgrid(g, g)  # (25, 25)
    inside = SDF[shape](x, y) < 0
    return np.stack([x[inside], y[inside]], -1)  # (M, 2)


# ----------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One flat shape and its motion over the clip (time t = f / (F - 1) in [0, 1]).

    centre(t) = start + (end - start) t + bend * normal * 4 t (1 - t)      (pixels)
    diameter(t) = d0 (d1 / d0)^t;  angle(t) = a0 + (a1 - a0) t             (degrees)
    """

    colour: str
    shape: str
    start: tuple[float, float]
    end: tuple[float, float]
    bend: float = 0.0
    diameter: tuple[float, float] = (20.0, 20.0)
    angle: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        check_choice("colour", self.colour, COLOURS)
        check_choice("shape", self.shape, SHAPES)
        if min(self.diameter) <= 0:
            raise ValueError(f"diameter: expected positive values, got {self.diameter!r}")

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"

    def pose(self, t: float) -> tuple[float, float, float, float]:
        """(cx, cy, unit, angle in radians) at time t; unit = half the diameter in pixels."""
        (x0, y0), (x1, y1) = self.start, self.end
        dx, dy = x1 - x0, y1 - y0
        length = np.hypot(dx, dy)
        nx, ny = (-dy / length, dx / length) if length > 0 else (0.0, 0.0)
        b = self.bend * 4.0 * t * (1.0 - t)
        cx, cy = x0 + dx * t + b * nx, y0 + dy * t + b * ny
        d0, d1 = self.diameter
        unit = 0.5 * d0 * (d1 / d0) ** t
        a0, a1 = self.angle
        return cx, cy, unit, np.deg2rad(a0 + (a1 - a0) * t)


@dataclass(frozen=True)
class Scene:
    """A ShapesWorld clip description; ``render(scene)`` draws it.

    objects: bottom-to-top depth order. camera: world position of the top-left pixel centre
    in frame 0; the camera moves by ``pan`` pixels per frame (the background then moves by
    -pan in the image). caption_order: the order objects are named in the caption.
    """

    objects: tuple[ShapeObject, ...]
    background: str
    frames: int = 8
    size: int = 64
    camera: tuple[float, float] = (0.0, 0.0)
    pan: tuple[float, float] = (0.0, 0.0)
    caption_order: tuple[int, ...] | None = None
    seed: int | None = None

    def __post_init__(self):
        check_size_frames(self.size, self.frames)
        check_choice("background", self.background, BACKGROUNDS)
        n = len(self.objects)
        if self.caption_order is not None and sorted(self.caption_order) != list(range(n)):
            raise ValueError(f"caption_order: expected a permutation of range({n}) or None, "
                             f"got {self.caption_order!r}")

    @property
    def caption(self) -> str:
        order = self.caption_order or tuple(range(len(self.objects)))
        names = " and ".join(_article(self.objects[o].phrase) for o in order)
        return f"{names} on {self.background}"

    def time(self, f: float) -> float:
        return f / (self.frames - 1) if self.frames > 1 else 0.0

    def camera_at(self, f: float) -> tuple[float, float]:
        return self.camera[0] + self.pan[0] * f, self.camera[1] + self.pan[1] * f


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def to_local(x, y, pose):
    """Image pixel positions -> the object's local frame (y up, unit = half diameter)."""
    cx, cy, unit, a = pose
    dx, dy = (x - cx) / unit, (y - cy) / unit
    c, s = np.cos(a), np.sin(a)
    return c * dx + s * dy, -(-s * dx + c * dy)  # rotate by -a, then flip y (image y is down)


def to_image(u, v, pose):
    """Inverse of ``to_local``."""
    cx, cy, unit, a = pose
    c, s = np.cos(a), np.sin(a)
    dx, dy = u, -v
    return cx + unit * (c * dx - s * dy), cy + unit * (s * dx + c * dy)


def object_sd(obj: ShapeObject, pose, x, y):
    """Signed distance in *pixels* from image positions to the object's outline."""
    u, v = to_local(x, y, pose)
    return SDF[obj.shape](u, v) * pose[2]


def _object_area_ok(scene: Scene) -> bool:
    """Caption stays true: each object >= 70% inside the frame, <= 40% occluded."""
    lo, hi = -0.5, scene.size - 0.5
    t = np.array([scene.time(f) for f in range(scene.frames)])[:, None]  # (F, 1)
    poses = [o.pose(t) for o in scene.objects]  # each entry (F, 1) or scalar
    for k, obj in enumerate(scene.objects):
        u, v = _interior_samples(obj.shape).T  # (M,) each
        x, y = to_image(u, v, poses[k])  # (F, M) each
        inside = (x >= lo) & (x < hi) & (y >= lo) & (y < hi)
        if inside.mean(1).min() < 0.7:
            return False
        covered = np.zeros_like(inside)
        for above, other in enumerate(scene.objects[k + 1:], start=k + 1):
            covered |= object_sd(other, poses[above], x, y) < 0
        if covered.mean(1).max() > 0.4:
            return False
    return True


def _random_object(rng, colour, shape, frames, size) -> ShapeObject:
    s = size / BASE
    d0 = rng.uniform(15.0, 25.0)
    d1 = float(np.clip(d0 * np.exp(rng.uniform(-0.22, 0.22)), 14.0, 26.0))
    a0 = rng.uniform(0.0, 360.0)
    a1 = a0 + rng.uniform(-60.0, 60.0)
    speed = rng.uniform(0.0, 3.5)
    length = min(speed * (frames - 1), 0.6 * BASE)
    direction = rng.uniform(0.0, 2 * np.pi)
    margin = 0.3 * max(d0, d1)
    for _ in range(20):
        x0, y0 = rng.uniform(margin, BASE - 1 - margin, size=2)
        x1, y1 = x0 + length * np.cos(direction), y0 + length * np.sin(direction)
        if margin <= x1 <= BASE - 1 - margin and margin <= y1 <= BASE - 1 - margin:
            break
        length *= 0.8
    else:
        x1, y1 = x0, y0
    bend = rng.uniform(-0.15, 0.15) * length
    # designed in 64-pixel units with pixel centres at integers: map centres to this size
    to_px = lambda p: (p + 0.5) * s - 0.5  # noqa: E731
    return ShapeObject(
        colour=colour, shape=shape,
        start=(float(to_px(x0)), float(to_px(y0))), end=(float(to_px(x1)), float(to_px(y1))),
        bend=float(bend * s), diameter=(float(d0 * s), float(d1 * s)),
        angle=(float(a0), float(a1)),
    )


def random_scene(seed: int, *, frames: int = 8, size: int = 64, n_objects: int | None = None,
                 pan: tuple[float, float] | None = None) -> Scene:
    """A random ShapesWorld scene, deterministic in ``seed``.

    Important args:
        frames: F >= 1. size: frame side in pixels (>= 16).
        n_objects: 1 or 2 (None picks one at random).
        pan: camera motion in pixels per frame; None picks no pan or a random one.
    """
    check_size_frames(size, frames)
    if n_objects not in (None, 1, 2):
        raise ValueError(f"n_objects: expected None, 1 or 2, got {n_objects!r}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3)) if n_objects is None else n_objects
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    s = size / BASE
    if pan is None:
        pan_speed = 0.0 if rng.random() < 0.4 else rng.uniform(0.5, 3.0)
        direction = rng.uniform(0.0, 2 * np.pi)
        pan = (pan_speed * np.cos(direction) * s, pan_speed * np.sin(direction) * s)
    elif len(pan) != 2:
        raise ValueError(f"pan: expected None or an (x, y) pair of pixels per frame, got {pan!r}")
    camera = tuple(float(c) for c in rng.uniform(0.0, 1000.0, size=2) * s)
    colours, shapes = list(COLOURS), list(SHAPES)
    while True:
        picks = [(colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))])
                 for _ in range(n)]
        if len(set(picks)) == n:  # two objects differ in colour or shape
            break
    order = tuple(int(o) for o in rng.permutation(n))
    for _ in range(200):
        objects = tuple(_random_object(rng, c, sh, frames, size) for c, sh in picks)
        scene = Scene(objects, background, frames, size, camera,
                      (float(pan[0]), float(pan[1])), order, seed)
        if _object_area_ok(scene):
            return scene
    return scene  # pragma: no cover - practically unreachable



# ----------------------------------------------------------------------------------------
# The bundled demo clip
# ----------------------------------------------------------------------------------------

DEMO_EDIT = ("red star", "yellow star")


def demo_scene(*, frames: int = 8, size: int = 64) -> Scene:
    """A fixed scene: "a red star and a blue circle on grass".

    The star crosses the frame left to right over the circle (occluding part of it for a few
    frames) while it turns by 60 degrees and grows from 17 to 22 pixels; the camera pans
    right by 1 pixel per frame (at 64 x 64 and 8 frames). ``DEMO_EDIT`` is its bundled edit.
    """
    check_size_frames(size, frames)
    s = size / BASE
    px = lambda x, y: ((x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5)  # noqa: E731
    circle = ShapeObject("blue", "circle", start=px(38.0, 38.0), end=px(35.0, 39.0),
                         diameter=(22.0 * s, 22.0 * s))
    star = ShapeObject("red", "star", start=px(12.0, 30.0), end=px(54.0, 34.0), bend=-3.0 * s,
                       diameter=(17.0 * s, 22.0 * s), angle=(0.0, 60.0))
    pan = (1.0 * s * 7 / max(frames - 1, 1), 0.0)
    return Scene((circle, star), "grass", frames, size, camera=(120.0 * s, 40.0 * s),
                 pan=pan, caption_order=(1, 0), seed=None)


