"""Photo clips: a scikit-image photo seen through a camera that moves by a known smooth warp."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .clip import Clip, bilinear, in_frame, pixel_grid, to_uint8
from .scene import check_choice, check_size_frames

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


class _PhotoMotion:
    """Exact point transfer between frames of a photo clip (one surface, always covered)."""

    def __init__(self, warp: _Warp):
        self.warp = warp

    def transfer(self, i, j, x, y):
        px, py = self.warp.to_photo(i, x, y)
        xj, yj = self.warp.to_frame(j, px, py)
        return xj, yj, in_frame(xj, yj, (self.warp.size, self.warp.size))


def photo_clip(name: str = "chelsea", *, frames: int = 8, size: int = 64, motion: str = "pan",
               seed: int = 0) -> Clip:
    """A scikit-image photo seen through a camera that moves smoothly: a Clip with exact
    correspondences (``track`` / ``ground_truth``) and no object masks (O = 0).

    Important args:
        name: one of PHOTOS. motion: "pan" (shift by 35% of the view), "zoom" (x1.35 in or
        out), "rotate" (25 degrees) or "mixed" (all three, smaller). seed: picks the start
        point and the directions.
    """
    check_choice("photo", name, PHOTOS)
    check_choice("motion", motion, PHOTO_MOTIONS)
    check_size_frames(size, frames)
    photo = _photo(name, size)
    warp = _random_warp(np.random.default_rng(seed), motion, frames, size, photo.shape[:2])
    x, y = pixel_grid(size)
    frames_ = np.stack([to_uint8(bilinear(photo, *warp.to_photo(f, x, y)))
                        for f in range(frames)])  # (F, H, W, 3)
    masks = np.zeros((frames, 0, size, size), bool)  # (F, O=0, H, W)
    return Clip(frames_, masks, PHOTO_CAPTIONS[name], None, _PhotoMotion(warp))
