"""Training data for cove-tiny: single frames of random ShapesWorld scenes with their captions."""
from __future__ import annotations

import numpy as np

from ..world.clip import render_frame, to_uint8
from ..world.scene import check_size_frames, random_scene


def sample_training_images(n: int, seed: int, *, size: int = 64, masks: bool = False):
    """Single random frames of random scenes, for training the text-to-image model.

    Returns:
        images uint8 (n, H, W, 3) with H = W = size, captions list[str] of length n, and with
        ``masks=True`` also objects bool (n, H, W): the pixels inside any object. The images
        and captions do not depend on ``masks``.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    check_size_frames(size, 1)
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    objects = np.zeros((n, size, size), bool)
    captions = []
    for k in range(n):
        scene = random_scene(int(rng.integers(2**62)), frames=8, size=size)
        img, obj = render_frame(scene, int(rng.integers(scene.frames)))
        images[k] = to_uint8(img)
        objects[k] = obj.any(0)
        captions.append(scene.caption)
    return (images, captions, objects) if masks else (images, captions)

