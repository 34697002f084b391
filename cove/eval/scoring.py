"""Edit then score: a COVE edit of a ShapesWorld clip, measured against the exact ground truth.

The one way the demo (``cove.app.demo``), the edit panel (``cove.app.widgets.edit_panel``) and the
notebooks score an edit::

    result, scores = score_edit(pipe, clip.frames, truth.caption, source_prompt=clip.caption,
                                config=config, motion=clip, truth=truth, target_phrase="green star")
    scores  # {"warp_error", "psnr", "background_psnr", "object_psnr", "attribute_accuracy"}
    score_correspondence(result.correspondence, clip)  # {"pck", "pck_objects", "pck_background"}
"""
from __future__ import annotations

import numpy as np

from ..config import CoveConfig
from . import metrics


def edited_object(scene, target_phrase: str | None) -> int | None:
    """Index of the object named ``target_phrase`` (e.g. "green star") in the edited scene,
    or ``None`` when the edit is not about one object (a background edit, or no phrase)."""
    for o, obj in enumerate(scene.objects):
        if obj.phrase == target_phrase:
            return o
    return None


def fidelity(edited: np.ndarray, truth, target_phrase: str | None = None) -> dict:
    """Edit fidelity of uint8 (F, H, W, 3) ``edited`` against the ground-truth edited clip.

    Args:
        edited: uint8 (F, H, W, 3).
        truth: the ground-truth edited ShapesWorld ``Clip`` (``world.render(world.edit(...))``).
        target_phrase: the edited object ("green star"). An object of ``truth`` with this
            phrase: ``cove.metrics.edit_fidelity`` with its mask (F, H, W) and colour. Otherwise
            (a background edit, or ``None``): PSNR over the frame and outside the objects.
    """
    o = edited_object(truth.scene, target_phrase)
    if o is not None:
        obj = truth.scene.objects[o]
        return metrics.edit_fidelity(edited, truth.frames, truth.masks[:, o], obj.colour)
    objects = truth.masks.any(axis=1)  # (F, H, W) any object
    return {
        "psnr": metrics.psnr(edited, truth.frames),
        "background_psnr": metrics.psnr(edited, truth.frames, ~objects),
    }


def score_clip(frames: np.ndarray, *, motion=None, truth=None, target_phrase: str | None = None) -> dict:
    """Scores of a uint8 (F, H, W, 3) clip: ``warp_error`` (flicker along ``motion``, a ``Clip``
    with the true motion; lower is better) and, with ``truth``, :func:`fidelity`."""
    scores = {}
    if motion is not None:
        scores["warp_error"] = metrics.warp_error(frames, motion)
    if truth is not None:
        scores.update(fidelity(frames, truth, target_phrase))
    return scores


def object_tokens(clip, grid: tuple[int, int]) -> np.ndarray:
    """Which cells of a ``(H, W)`` token grid lie on an object, per frame: bool (F, N), a cell
    counting as on an object when objects cover at least half of its pixels (area average of
    ``clip.masks``; a photo clip has no objects)."""
    import cv2

    H, W = grid
    objects = clip.masks.any(axis=1).astype(np.float32)  # (F, H_img, W_img) any object
    cover = np.stack([cv2.resize(m, (W, H), interpolation=cv2.INTER_AREA) for m in objects])  # (F, H, W)
    return (cover >= 0.5).reshape(len(objects), H * W)  # (F, N)


def score_correspondence(correspondence, clip, threshold: float = 1.0) -> dict:
    """PCK@``threshold`` cells of a correspondence's top-1 matches against ``clip``'s true motion
    on the correspondence's grid: over every token (``pck``), over the tokens on objects
    (``pck_objects``) and over the rest (``pck_background``); ``nan`` where none counts."""
    grid = tuple(correspondence.grid)
    positions, visible = clip.ground_truth(grid=grid)  # (F, N, F, 2), (F, N, F)
    on_object = object_tokens(clip, grid)  # (F, N)
    return {name: metrics.pck(correspondence, positions, visible, threshold, tokens=tokens)
            for name, tokens in (("pck", None), ("pck_objects", on_object), ("pck_background", ~on_object))}


def score_edit(pipe, frames, prompt: str, *, source_prompt: str = "", negative_prompt: str = "",
               config: CoveConfig = CoveConfig(), seed: int = 0, motion=None, truth=None,
               target_phrase: str | None = None, callback=None):
    """Edit ``frames`` with ``cove.edit_video``, then :func:`score_clip` the result.

    Important args:
        frames: uint8 (F, H, W, 3), the source clip; prompt / source_prompt / negative_prompt /
            config / callback: as ``cove.edit_video``.
        motion: a ShapesWorld ``Clip`` whose true motion the flicker is measured along.
        truth: the ground-truth edited ``Clip``; target_phrase: its edited object.

    Args to tinker with:
        seed: seeds a CPU generator for the edit's noise (feature pass, edit mask), so a seed
            gives the same edit on every device.

    Returns:
        (``EditResult``, scores dict); the edit's seconds are ``result.timings["total"]``.
    """
    import torch

    from ..pipeline import edit_video

    result = edit_video(pipe, frames, prompt, source_prompt=source_prompt, negative_prompt=negative_prompt,
                        config=config, callback=callback, generator=torch.Generator("cpu").manual_seed(seed))
    return result, score_clip(result.frames, motion=motion, truth=truth, target_phrase=target_phrase)
