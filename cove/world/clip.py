"""Rendering a ShapesWorld scene into a ``Clip`` with exact ground truth.

Coordinates: a *pixel position* is a float (x, y) with the centre of pixel (x, y) at exactly
(x, y); a *cell position* on an H x W grid follows the token convention of the package
(the centre of cell (x, y) is (x, y); pixel index coordinate q maps to (q + 0.5) * W / W_img
- 0.5).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .scene import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Scene,
    check_choice,
    check_size_frames,
    object_sd,
    to_image,
    to_local,
)
from .textures import texture

# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int):
    g = np.arange(size, dtype=np.float64)
    y, x = np.meshgrid(g, g, indexing="ij")  # (H, W) each
    return x, y


def render_frame(scene: Scene, f: int):
    """Frame f of a scene: (rgb float (H, W, 3) in [0, 255], masks bool (O, H, W))."""
    x, y = pixel_grid(scene.size)
    cx, cy = scene.camera_at(f)
    img = texture(scene.background, x + cx, y + cy, scene.size)
    t = scene.time(f)
    inside = []
    for obj in scene.objects:
        sd = object_sd(obj, obj.pose(t), x, y)
        alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]  # analytic coverage, 1-pixel ramp
        img = img + alpha * (np.asarray(COLOURS[obj.colour], float) - img)
        inside.append(sd < 0)
    masks = np.zeros((len(inside), scene.size, scene.size), bool)
    covered = np.zeros((scene.size, scene.size), bool)
    for k in range(len(inside) - 1, -1, -1):  # top-most first
        masks[k] = inside[k] & ~covered
        covered |= inside[k]
    return img, masks


def to_uint8(img):
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


def in_frame(x, y, size_hw):
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
            label[object_sd(obj, pose, x, y) < 0] = k
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
            u, v = to_local(x[on], y[on], poses_i[k])
            xj[on], yj[on] = to_image(u, v, poses_j[k])
        top = self._top_after(j, xj, yj, label)
        visible = in_frame(xj, yj, (scene.size, scene.size)) & ~top
        return xj, yj, visible

    def _top_after(self, j, x, y, label):
        """True where an object above the point's own surface covers it in frame j."""
        covered = np.zeros(np.shape(x), bool)
        for k, (obj, pose) in enumerate(zip(self.scene.objects, self._poses(j))):
            covered |= (label < k) & (object_sd(obj, pose, x, y) < 0)
        return covered


def bilinear(image: np.ndarray, x, y) -> np.ndarray:
    """Sample ``image`` (H, W, C) at float pixel positions x, y (...) -> (..., C).

    Positions outside the image are clamped to its border.
    """
    H, W = image.shape[:2]
    x = np.clip(np.asarray(x, float), 0, W - 1)
    y = np.clip(np.asarray(y, float), 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(int), max(W - 2, 0))
    y0 = np.minimum(np.floor(y).astype(int), max(H - 2, 0))
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render(scene: Scene) -> Clip:
    """Draw every frame of a scene: a Clip with frames uint8 (F, H, W, 3) and masks."""
    if not isinstance(scene, Scene):
        raise ValueError(f"render: expected a Scene, got {type(scene).__name__}")
    _validate_scene(scene)
    out = [render_frame(scene, f) for f in range(scene.frames)]
    frames = to_uint8(np.stack([img for img, _ in out]))  # (F, H, W, 3)
    masks = np.stack([m for _, m in out])  # (F, O, H, W)
    return Clip(frames, masks, scene.caption, scene, _SceneMotion(scene))


def _validate_scene(scene: Scene) -> None:
    check_size_frames(scene.size, scene.frames)
    check_choice("background", scene.background, BACKGROUNDS)
    for obj in scene.objects:
        check_choice("colour", obj.colour, COLOURS)
        check_choice("shape", obj.shape, SHAPES)


