"""Training data for cove-tiny: single frames and short clips of random ShapesWorld scenes with
their captions."""
from __future__ import annotations

import numpy as np

from ..world.clip import render_frame, to_uint8
from ..world.scene import check_size_frames, random_scene

SCENE_FRAMES = 8  # the frames of each random scene a training image or clip is taken from


def sample_training_images(n: int, seed: int, *, size: int = 64, masks: bool = False):
    """Single random frames of random scenes, for training the text-to-image model.

    Returns:
        images uint8 (n, H, W, 3) with H = W = size, captions list[str] of length n, and with
        ``masks=True`` also objects bool (n, H, W): the pixels inside any object. The images
        and captions do not depend on ``masks``.
    """
    return sample_training_clips(n, 1, seed, size=size, masks=masks)  # clips of one frame


def sample_training_clips(n: int, frames: int, seed: int, *, size: int = 64, masks: bool = False):
    """``n`` clips of ``frames`` consecutive frames, each from its own random scene (of
    ``SCENE_FRAMES`` frames, from a random first frame): the objects' motion and the camera's pan
    of the edited clips, for training attention across frames.

    Returns:
        images uint8 (n * frames, H, W, 3), the frames of a clip consecutive; captions list[str]
        of length n (one per clip); with ``masks=True`` also objects bool (n * frames, H, W).
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    if int(frames) != frames or not 1 <= frames <= SCENE_FRAMES:
        raise ValueError(f"frames: expected an integer from 1 to {SCENE_FRAMES}, got {frames!r}")
    check_size_frames(size, frames)
    rng = np.random.default_rng(seed)
    images = np.empty((n * frames, size, size, 3), np.uint8)
    objects = np.zeros((n * frames, size, size), bool)
    captions = []
    for k in range(n):
        scene = random_scene(int(rng.integers(2**62)), frames=SCENE_FRAMES, size=size)
        first = int(rng.integers(SCENE_FRAMES - frames + 1))
        for f in range(frames):
            img, obj = render_frame(scene, first + f)
            images[k * frames + f] = to_uint8(img)
            objects[k * frames + f] = obj.any(0)
        captions.append(scene.caption)
    return (images, captions, objects) if masks else (images, captions)
