"""ShapesWorld: a procedural video world with exact ground truth.

Clips of flat coloured shapes (circle, square, triangle, star) moving on smooth paths
(translation, scale, rotation, depth order) over textured backgrounds defined in *world*
coordinates, with an optional constant camera pan. Every clip knows its caption, its
per-frame object masks and, for every pixel or token cell of frame i, where that surface
point is in frame j and whether it is visible there. It serves two purposes:

- training data for the embedded text-to-image model ``cove-tiny``
  (``sample_training_images``: single frames of random scenes with their captions);
- exact ground truth to measure correspondence accuracy (``Clip.ground_truth``) and edit
  quality (``edit``: the same motion rendered with a changed attribute).

``photo_clip`` does the same for a scikit-image photo moved by a known smooth warp.

Coordinates: a *pixel position* is a float (x, y) with the centre of pixel (x, y) at exactly
(x, y); a *cell position* on an H x W grid follows the token convention of the package
(the centre of cell (x, y) is (x, y); pixel index coordinate q maps to (q + 0.5) * W / W_img
- 0.5). All lengths below are in pixels of the scene's ``size``; ranges quoted "at 64" scale
with ``size / 64``.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

__all__ = [
    "COLOURS", "SHAPES", "BACKGROUNDS", "VOCABULARY", "ShapeObject", "Scene", "Clip",
    "random_scene", "render", "edit", "demo_scene", "DEMO_EDIT", "sample_training_images",
    "photo_clip", "PHOTOS", "PHOTO_MOTIONS", "PHOTO_CAPTIONS",
]

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
_BASE = 64.0  # sizes and speeds are designed at 64 x 64 and scale with size / 64


def _check_choice(kind: str, value: str, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}: expected one of {', '.join(options)}")


def _check_size_frames(size: int, frames: int) -> None:
    if int(size) != size or size < _MIN_SIZE:
        raise ValueError(f"size: expected an integer >= {_MIN_SIZE}, got {size!r}")
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames: expected an integer >= 1, got {frames!r}")


# ----------------------------------------------------------------------------------------
# Shapes: exact signed distances in the object's local frame (unit = half the diameter)
# ----------------------------------------------------------------------------------------
# Local frame: x right, y *up* (the shapes are upright at angle 0); see ``_to_local``.

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


_SDF: dict[str, Callable] = {
    "circle": _sd_circle, "square": _sd_square, "triangle": _sd_triangle, "star": _sd_star,
}


@functools.lru_cache(maxsize=None)
def _interior_samples(shape: str) -> np.ndarray:
    """Local points filling the unit shape, (M, 2): used for the area constraints."""
    g = np.linspace(-1.2, 1.2, 25)
    x, y = np.meshgrid(g, g)  # (25, 25)
    inside = _SDF[shape](x, y) < 0
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
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("shape", self.shape, SHAPES)
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
        _check_size_frames(self.size, self.frames)
        _check_choice("background", self.background, BACKGROUNDS)
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


def _to_local(x, y, pose):
    """Image pixel positions -> the object's local frame (y up, unit = half diameter)."""
    cx, cy, unit, a = pose
    dx, dy = (x - cx) / unit, (y - cy) / unit
    c, s = np.cos(a), np.sin(a)
    return c * dx + s * dy, -(-s * dx + c * dy)  # rotate by -a, then flip y (image y is down)


def _to_image(u, v, pose):
    """Inverse of ``_to_local``."""
    cx, cy, unit, a = pose
    c, s = np.cos(a), np.sin(a)
    dx, dy = u, -v
    return cx + unit * (c * dx - s * dy), cy + unit * (s * dx + c * dy)


def _object_sd(obj: ShapeObject, pose, x, y):
    """Signed distance in *pixels* from image positions to the object's outline."""
    u, v = _to_local(x, y, pose)
    return _SDF[obj.shape](u, v) * pose[2]


def _object_area_ok(scene: Scene) -> bool:
    """Caption stays true: each object >= 70% inside the frame, <= 40% occluded."""
    lo, hi = -0.5, scene.size - 0.5
    t = np.array([scene.time(f) for f in range(scene.frames)])[:, None]  # (F, 1)
    poses = [o.pose(t) for o in scene.objects]  # each entry (F, 1) or scalar
    for k, obj in enumerate(scene.objects):
        u, v = _interior_samples(obj.shape).T  # (M,) each
        x, y = _to_image(u, v, poses[k])  # (F, M) each
        inside = (x >= lo) & (x < hi) & (y >= lo) & (y < hi)
        if inside.mean(1).min() < 0.7:
            return False
        covered = np.zeros_like(inside)
        for above, other in enumerate(scene.objects[k + 1:], start=k + 1):
            covered |= _object_sd(other, poses[above], x, y) < 0
        if covered.mean(1).max() > 0.4:
            return False
    return True


def _random_object(rng, colour, shape, frames, size) -> ShapeObject:
    s = size / _BASE
    d0 = rng.uniform(15.0, 25.0)
    d1 = float(np.clip(d0 * np.exp(rng.uniform(-0.22, 0.22)), 14.0, 26.0))
    a0 = rng.uniform(0.0, 360.0)
    a1 = a0 + rng.uniform(-60.0, 60.0)
    speed = rng.uniform(0.0, 3.5)
    length = min(speed * (frames - 1), 0.6 * _BASE)
    direction = rng.uniform(0.0, 2 * np.pi)
    margin = 0.3 * max(d0, d1)
    for _ in range(20):
        x0, y0 = rng.uniform(margin, _BASE - 1 - margin, size=2)
        x1, y1 = x0 + length * np.cos(direction), y0 + length * np.sin(direction)
        if margin <= x1 <= _BASE - 1 - margin and margin <= y1 <= _BASE - 1 - margin:
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
    _check_size_frames(size, frames)
    if n_objects not in (None, 1, 2):
        raise ValueError(f"n_objects: expected None, 1 or 2, got {n_objects!r}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3)) if n_objects is None else n_objects
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    s = size / _BASE
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


def _background(name: str, wx, wy, size: int):
    """Background colour (..., 3) float at world pixel positions (wx, wy)."""
    px = _BASE / size  # one pixel in 64-pixel units
    return _TEXTURES[name]((wx + 0.5) * px, (wy + 0.5) * px, px)


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int):
    g = np.arange(size, dtype=np.float64)
    y, x = np.meshgrid(g, g, indexing="ij")  # (H, W) each
    return x, y


def _render_frame(scene: Scene, f: int):
    """Frame f of a scene: (rgb float (H, W, 3) in [0, 255], masks bool (O, H, W))."""
    x, y = _pixel_grid(scene.size)
    cx, cy = scene.camera_at(f)
    img = _background(scene.background, x + cx, y + cy, scene.size)
    t = scene.time(f)
    inside = []
    for obj in scene.objects:
        sd = _object_sd(obj, obj.pose(t), x, y)
        alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]  # analytic coverage, 1-pixel ramp
        img = img + alpha * (np.asarray(COLOURS[obj.colour], float) - img)
        inside.append(sd < 0)
    masks = np.zeros((len(inside), scene.size, scene.size), bool)
    covered = np.zeros((scene.size, scene.size), bool)
    for k in range(len(inside) - 1, -1, -1):  # top-most first
        masks[k] = inside[k] & ~covered
        covered |= inside[k]
    return img, masks


def _to_uint8(img):
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass(eq=False)
class Clip:
    """A rendered clip with exact ground truth.

    frames: uint8 (F, H, W, 3). masks: bool (F, O, H, W), visible pixels of each object
    (O = 0 for photo clips). caption: the scene caption. scene: the Scene (None for photos).
    """

    frames: np.ndarray
    masks: np.ndarray
    caption: str
    scene: Scene | None = None
    _motion: object = field(default=None, repr=False)

    def track(self, i: int, j: int, grid: tuple[int, int] | None = None):
        """Where the surface points of frame i are in frame j.

        Args:
            i, j: frame indices. grid: (H, W) cells, or None for every pixel.
        Returns:
            positions float (H, W, 2) (x, y) in frame j, in cell-index coordinates (pixel
            coordinates when grid is None); visible bool (H, W): inside frame j and not
            occluded there.
        """
        F, H_img, W_img = self.frames.shape[:3]
        for name, v in (("i", i), ("j", j)):
            if not -F <= v < F:
                raise ValueError(f"frame {name}={v} out of range: expected 0 <= {name} < {F}")
        i, j = i % F, j % F
        h, w = (H_img, W_img) if grid is None else _check_grid(grid)
        gy, gx = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
        x, y = _cells_to_pixels(gx, gy, (h, w), (H_img, W_img))  # (h, w) each
        xj, yj, visible = self._motion.transfer(i, j, x, y)
        xj, yj = _pixels_to_cells(xj, yj, (h, w), (H_img, W_img))
        return np.stack([xj, yj], -1), visible  # (h, w, 2), (h, w)

    def ground_truth(self, grid: tuple[int, int] | None = None):
        """All pairs: positions float (F, N, F, 2), visible bool (F, N, F), N = H*W.

        positions[i, n, j] is where the point of token (cell or pixel) n = y*W + x of frame i
        is in frame j, in cell-index coordinates (pixel coordinates when grid is None).
        """
        F = self.frames.shape[0]
        pos, vis = [], []
        for i in range(F):
            row = [self.track(i, j, grid) for j in range(F)]
            pos.append(np.stack([p.reshape(-1, 2) for p, _ in row], 1))  # (N, F, 2)
            vis.append(np.stack([v.reshape(-1) for _, v in row], 1))  # (N, F)
        return np.stack(pos), np.stack(vis)  # (F, N, F, 2), (F, N, F)


def _check_grid(grid) -> tuple[int, int]:
    if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid: expected a pair of positive integers (H, W), got {grid!r}")
    return int(grid[0]), int(grid[1])


def _cells_to_pixels(gx, gy, grid, image):
    (h, w), (H, W) = grid, image
    return (gx + 0.5) * W / w - 0.5, (gy + 0.5) * H / h - 0.5


def _pixels_to_cells(x, y, grid, image):
    (h, w), (H, W) = grid, image
    return (x + 0.5) * w / W - 0.5, (y + 0.5) * h / H - 0.5


def _in_frame(x, y, size_hw):
    H, W = size_hw
    return (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5)


class _SceneMotion:
    """Exact point transfer between frames of a ShapesWorld scene."""

    def __init__(self, scene: Scene):
        self.scene = scene

    def _poses(self, f):
        return [o.pose(self.scene.time(f)) for o in self.scene.objects]

    def labels(self, f, x, y):
        """Top-most surface at pixel positions: object index, or -1 for the background."""
        label = np.full(np.shape(x), -1)
        for k, (obj, pose) in enumerate(zip(self.scene.objects, self._poses(f))):
            label[_object_sd(obj, pose, x, y) < 0] = k
        return label

    def transfer(self, i, j, x, y):
        scene = self.scene
        label = self.labels(i, x, y)
        xj, yj = np.array(x, float), np.array(y, float)
        (ci, di), (cj, dj) = scene.camera_at(i), scene.camera_at(j)
        bg = label < 0
        xj[bg], yj[bg] = x[bg] + ci - cj, y[bg] + di - dj  # background follows the pan
        poses_i, poses_j = self._poses(i), self._poses(j)
        for k in range(len(scene.objects)):
            on = label == k
            u, v = _to_local(x[on], y[on], poses_i[k])
            xj[on], yj[on] = _to_image(u, v, poses_j[k])
        top = self._top_after(j, xj, yj, label)
        visible = _in_frame(xj, yj, (scene.size, scene.size)) & ~top
        return xj, yj, visible

    def _top_after(self, j, x, y, label):
        """True where an object above the point's own surface covers it in frame j."""
        covered = np.zeros(np.shape(x), bool)
        for k, (obj, pose) in enumerate(zip(self.scene.objects, self._poses(j))):
            covered |= (label < k) & (_object_sd(obj, pose, x, y) < 0)
        return covered


def render(scene: Scene) -> Clip:
    """Draw every frame of a scene: a Clip with frames uint8 (F, H, W, 3) and masks."""
    if not isinstance(scene, Scene):
        raise ValueError(f"render: expected a Scene, got {type(scene).__name__}")
    _validate_scene(scene)
    out = [_render_frame(scene, f) for f in range(scene.frames)]
    frames = _to_uint8(np.stack([img for img, _ in out]))  # (F, H, W, 3)
    masks = np.stack([m for _, m in out])  # (F, O, H, W)
    return Clip(frames, masks, scene.caption, scene, _SceneMotion(scene))


def _validate_scene(scene: Scene) -> None:
    _check_size_frames(scene.size, scene.frames)
    _check_choice("background", scene.background, BACKGROUNDS)
    for obj in scene.objects:
        _check_choice("colour", obj.colour, COLOURS)
        _check_choice("shape", obj.shape, SHAPES)


# ----------------------------------------------------------------------------------------
# Training images
# ----------------------------------------------------------------------------------------


def sample_training_images(n: int, seed: int, *, size: int = 64, masks: bool = False):
    """Single random frames of random scenes, for training the text-to-image model.

    Returns:
        images uint8 (n, H, W, 3) with H = W = size, captions list[str] of length n, and with
        ``masks=True`` also objects bool (n, H, W): the pixels inside any object. The images
        and captions do not depend on ``masks``.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    _check_size_frames(size, 1)
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    objects = np.zeros((n, size, size), bool)
    captions = []
    for k in range(n):
        scene = random_scene(int(rng.integers(2**62)), frames=8, size=size)
        img, obj = _render_frame(scene, int(rng.integers(scene.frames)))
        images[k] = _to_uint8(img)
        objects[k] = obj.any(0)
        captions.append(scene.caption)
    return (images, captions, objects) if masks else (images, captions)


# ----------------------------------------------------------------------------------------
# Edits: the same motion rendered with a changed attribute
# ----------------------------------------------------------------------------------------

_PHRASE_HELP = ("a colour and a shape ('red star'), a colour ('red'), a shape ('star') or a "
                "background ('grass' or 'on grass')")


def _parse_phrase(phrase: str):
    """'red star' -> ('object', colour, shape); 'red' -> ('colour', c); 'star' -> ('shape', s);
    'grass' / 'on grass' -> ('background', b)."""
    words = phrase.lower().split()
    if words[:1] in (["a"], ["an"]):
        words = words[1:]
    if len(words) == 2 and words[0] == "on" and words[1] in BACKGROUNDS:
        return ("background", words[1])
    if len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES:
        return ("object", words[0], words[1])
    if len(words) == 1 and words[0] in COLOURS:
        return ("colour", words[0])
    if len(words) == 1 and words[0] in SHAPES:
        return ("shape", words[0])
    if len(words) == 1 and words[0] in BACKGROUNDS:
        return ("background", words[0])
    raise ValueError(f"cannot parse edit phrase {phrase!r}: expected {_PHRASE_HELP}")


def _edit_object(obj: ShapeObject, src, tgt) -> ShapeObject:
    kind = src[0]
    if kind == "object" and (obj.colour, obj.shape) == src[1:]:
        return replace(obj, colour=tgt[1], shape=tgt[2])
    if kind == "colour" and obj.colour == src[1]:
        return replace(obj, colour=tgt[1])
    if kind == "shape" and obj.shape == src[1]:
        return replace(obj, shape=tgt[1])
    return obj


def edit(scene: Scene, source: str, target: str) -> Scene:
    """The same scene (same motion, camera and depth order) with one attribute changed.

    ``source`` must appear in the caption and have the same kind as ``target``:
    "red star" -> "green star" or "red square" (object), "red" -> "green" (colour),
    "star" -> "square" (shape), "grass" -> "snow" or "on grass" -> "on snow" (background).
    ``render(edit(scene, s, t))`` is the ground-truth edited clip.
    """
    if not isinstance(scene, Scene):
        raise ValueError(f"edit: expected a Scene, got {type(scene).__name__}")
    pattern = r"(?<![a-z])" + re.escape(source.strip().lower()) + r"(?![a-z])"
    if not source.strip() or not re.search(pattern, scene.caption):
        raise ValueError(f"source phrase {source!r}: expected a phrase of the caption "
                         f"{scene.caption!r}")
    src, tgt = _parse_phrase(source), _parse_phrase(target)
    if src[0] != tgt[0]:
        raise ValueError(f"cannot edit a {src[0]} ({source!r}) into a {tgt[0]} ({target!r}): "
                         "expected the same kind of phrase on both sides")
    if src[0] == "background":
        return replace(scene, background=tgt[1])
    objects = tuple(_edit_object(o, src, tgt) for o in scene.objects)
    if len({(o.colour, o.shape) for o in objects}) < len(objects):
        raise ValueError(f"edit {source!r} -> {target!r} makes two objects identical: "
                         "expected objects that differ in colour or shape")
    return replace(scene, objects=objects)


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
    _check_size_frames(size, frames)
    s = size / _BASE
    px = lambda x, y: ((x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5)  # noqa: E731
    circle = ShapeObject("blue", "circle", start=px(38.0, 38.0), end=px(35.0, 39.0),
                         diameter=(22.0 * s, 22.0 * s))
    star = ShapeObject("red", "star", start=px(12.0, 30.0), end=px(54.0, 34.0), bend=-3.0 * s,
                       diameter=(17.0 * s, 22.0 * s), angle=(0.0, 60.0))
    pan = (1.0 * s * 7 / max(frames - 1, 1), 0.0)
    return Scene((circle, star), "grass", frames, size, camera=(120.0 * s, 40.0 * s),
                 pan=pan, caption_order=(1, 0), seed=None)


# ----------------------------------------------------------------------------------------
# Real photos moved by known warps
# ----------------------------------------------------------------------------------------

PHOTOS = ("chelsea", "astronaut", "coffee")
PHOTO_CAPTIONS = {"chelsea": "a photo of a cat", "astronaut": "a photo of an astronaut",
                  "coffee": "a photo of a cup of coffee"}
PHOTO_MOTIONS = ("pan", "zoom", "rotate", "mixed")
_VIEW_FRACTION = 0.55  # the view covers this fraction of the photo's short side at zoom 1


@functools.lru_cache(maxsize=8)
def _photo(name: str, size: int) -> np.ndarray:
    """The photo, low-pass filtered and rescaled so the view is ``size`` pixels: float (h, w, 3)."""
    import skimage.data
    from skimage.transform import rescale

    img = getattr(skimage.data, name)()[..., :3]
    factor = size / (_VIEW_FRACTION * min(img.shape[:2]))
    return rescale(img.astype(np.float64), factor, channel_axis=-1, anti_aliasing=True,
                   order=1, preserve_range=True)


@dataclass(frozen=True)
class _Warp:
    """Frame pixel q -> photo pixel P = centre(t) + R(angle(t)) (q - q0) / zoom(t)."""

    size: int
    frames: int
    centre: tuple[tuple[float, float], tuple[float, float]]
    zoom: tuple[float, float]
    angle: tuple[float, float]  # degrees

    def params(self, f):
        t = f / (self.frames - 1) if self.frames > 1 else 0.0
        (x0, y0), (x1, y1) = self.centre
        z0, z1 = self.zoom
        a = np.deg2rad(self.angle[0] + (self.angle[1] - self.angle[0]) * t)
        return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, z0 * (z1 / z0) ** t, a

    def to_photo(self, f, x, y):
        cx, cy, z, a = self.params(f)
        q0 = (self.size - 1) / 2.0
        dx, dy = (x - q0) / z, (y - q0) / z
        c, s = np.cos(a), np.sin(a)
        return cx + c * dx - s * dy, cy + s * dx + c * dy

    def to_frame(self, f, px, py):
        cx, cy, z, a = self.params(f)
        q0 = (self.size - 1) / 2.0
        dx, dy = px - cx, py - cy
        c, s = np.cos(a), np.sin(a)
        return q0 + z * (c * dx + s * dy), q0 + z * (-s * dx + c * dy)


def _random_warp(rng, motion, frames, size, shape) -> _Warp:
    h, w = shape
    amp = {"pan": (0.35, 1.0, 0.0), "zoom": (0.0, 1.35, 0.0), "rotate": (0.0, 1.0, 25.0),
           "mixed": (0.2, 1.2, 15.0)}[motion]
    shift, zoom, turn = amp
    zoom = (1.0, zoom) if rng.random() < 0.5 else (zoom, 1.0)
    turn = turn * rng.choice([-1.0, 1.0])
    direction = rng.uniform(0.0, 2 * np.pi)
    for attempt in range(100):
        k = 1.0 if attempt < 50 else 0.5
        c0 = rng.uniform(0.0, [w - 1.0, h - 1.0])
        c1 = c0 + k * shift * size * np.array([np.cos(direction), np.sin(direction)])
        warp = _Warp(size, frames, (tuple(c0), tuple(c1)), zoom, (0.0, k * turn))
        if _warp_inside(warp, shape):
            return warp
    raise ValueError(f"photo too small for motion {motion!r}: expected a larger photo")


def _warp_inside(warp: _Warp, shape) -> bool:
    """The view's corners stay inside the photo at every frame (and halfway between)."""
    h, w = shape
    corners = np.array([-0.5, warp.size - 0.5])
    cx, cy = np.meshgrid(corners, corners)
    for f in np.linspace(0.0, warp.frames - 1, 2 * warp.frames + 1):
        x, y = warp.to_photo(f, cx, cy)
        if x.min() < 0 or y.min() < 0 or x.max() > w - 1 or y.max() > h - 1:
            return False
    return True


def _bilinear(img, x, y):
    """Sample img (h, w, 3) at float pixel positions (x, y) (..., ) -> (..., 3)."""
    h, w = img.shape[:2]
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


class _PhotoMotion:
    """Exact point transfer between frames of a photo clip (one surface, always covered)."""

    def __init__(self, warp: _Warp):
        self.warp = warp

    def transfer(self, i, j, x, y):
        px, py = self.warp.to_photo(i, x, y)
        xj, yj = self.warp.to_frame(j, px, py)
        return xj, yj, _in_frame(xj, yj, (self.warp.size, self.warp.size))


def photo_clip(name: str = "chelsea", *, frames: int = 8, size: int = 64, motion: str = "pan",
               seed: int = 0) -> Clip:
    """A scikit-image photo seen through a camera that moves smoothly: a Clip with exact
    correspondences (``track`` / ``ground_truth``) and no object masks (O = 0).

    Important args:
        name: one of PHOTOS. motion: "pan" (shift by 35% of the view), "zoom" (x1.35 in or
        out), "rotate" (25 degrees) or "mixed" (all three, smaller). seed: picks the start
        point and the directions.
    """
    _check_choice("photo", name, PHOTOS)
    _check_choice("motion", motion, PHOTO_MOTIONS)
    _check_size_frames(size, frames)
    photo = _photo(name, size)
    warp = _random_warp(np.random.default_rng(seed), motion, frames, size, photo.shape[:2])
    x, y = _pixel_grid(size)
    frames_ = np.stack([_to_uint8(_bilinear(photo, *warp.to_photo(f, x, y)))
                        for f in range(frames)])  # (F, H, W, 3)
    masks = np.zeros((frames, 0, size, size), bool)  # (F, O=0, H, W)
    return Clip(frames_, masks, PHOTO_CAPTIONS[name], None, _PhotoMotion(warp))
