"""ShapesWorld: a procedural video world with exact ground truth.

Clips of flat coloured shapes (circle, square, triangle, star) moving on smooth paths
(translation, scale, rotation, depth order) over textured backgrounds defined in *world*
coordinates, with an optional constant camera pan. Every clip knows its caption, its
per-frame object masks and, for every pixel or token cell of frame i, where that surface
point is in frame j and whether it is visible there (``Clip.ground_truth``); ``edit`` renders
the same motion with a changed attribute, the true edit.

- ``scene``: objects, scenes, ``random_scene``, ``demo_scene``;
- ``textures``: the backgrounds;
- ``clip``: ``render`` a scene into a ``Clip`` with its ground truth;
- ``edits``: ``edit``, the same scene with one attribute changed;
- ``photo``: ``photo_clip``, a scikit-image photo moved by a known smooth warp.
"""
from .clip import Clip, render
from .edits import edit
from .photo import PHOTO_CAPTIONS, PHOTO_MOTIONS, PHOTOS, photo_clip
from .scene import (
                    BACKGROUNDS,
                    COLOURS,
                    DEMO_EDIT,
                    SHAPES,
                    VOCABULARY,
                    Scene,
                    ShapeObject,
                    demo_scene,
                    random_scene,
)

__all__ = [
    "COLOURS", "SHAPES", "BACKGROUNDS", "VOCABULARY", "ShapeObject", "Scene", "Clip",
    "random_scene", "render", "edit", "demo_scene", "DEMO_EDIT",
    "photo_clip", "PHOTOS", "PHOTO_MOTIONS", "PHOTO_CAPTIONS",
]
