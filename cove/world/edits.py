"""ShapesWorld edits: the same motion rendered with a changed attribute (the true edit)."""
from __future__ import annotations

import re
from dataclasses import replace

from .scene import BACKGROUNDS, COLOURS, SHAPES, Scene, ShapeObject

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


