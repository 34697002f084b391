"""What the ``cove`` command checks before any work starts.

Output paths: never onto an input, never over an existing file unless asked, only into a
folder that can be written::

    check_outputs([out, sibling], inputs=["clip.mp4"], overwrite=False)

Paths are compared after ``Path.resolve()`` (``./clip.mp4``, absolute paths and symlinks are
the same file) and with ``os.path.samefile`` where both exist (hard links too). A folder
input counts with every file inside it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..sd import PIXEL_BUDGET, check_device, check_fits, frame_size
from . import io


def input_files(path) -> list[Path]:
    """The files an input consists of: the file itself, or every file of a folder."""
    path = Path(path)
    if path.is_dir():
        return [p for p in sorted(path.iterdir()) if p.is_file()]
    return [path] if path.exists() else []


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name the same file (resolved; ``samefile`` when both exist)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def writable_folder(path: Path) -> Path:
    """The nearest existing folder above ``path``, if a file can be created in it; else a
    one-line OSError. Probed by creating (and removing) a temporary file there."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OSError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(f"cannot write {path}: folder {folder} is not writable "
                      f"({error.strerror or type(error).__name__})") from None
    return folder


def check_outputs(outputs, inputs, *, overwrite: bool = False) -> list[Path]:
    """Refuse (one-line ValueError / OSError) output paths that would destroy or cannot hold data.

    Args:
        outputs: every path the command will write, derived ones (side-by-side, tensors) too.
        inputs: the input files or folders.
        overwrite: allow replacing an existing output (never an input).

    Returns:
        ``outputs`` as paths.
    """
    outputs = [Path(p) for p in outputs]
    files = [f for path in inputs for f in input_files(path)]
    for i, out in enumerate(outputs):
        if out.is_dir():
            raise ValueError(f"output {out} is a folder; expected a file name")
        for source in files:
            if same_file(out, source):
                what = "the output" if i == 0 else "a derived output"
                raise ValueError(f"{what} {out} would overwrite the input {source}; choose another -o")
        for other in outputs[:i]:
            if same_file(out, other):
                raise ValueError(f"outputs {other} and {out} are the same file; choose another -o")
        if out.exists() and not overwrite:
            raise ValueError(f"output {out} exists; pass --overwrite to replace it")
        writable_folder(out)
    return outputs


def check_output(path, suffixes=(".mp4", ".gif")) -> Path:
    """Fail before any long computation when an output path cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"output {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; expected a file name")
    return path


def check_input(args, outputs, size=None) -> int:
    """Before any work: the device exists, the input's headers are readable, the outputs are
    safe (:func:`check_outputs`) and the frames fit the pixel budget: at ``size x size`` (the
    side they will be resized to), ``"stored"`` (kept as stored), or ``None`` (the model's
    size, checked once it is loaded by :func:`fit_or_refuse`). Returns the frame count."""
    check_device(args.device)
    count, height, width = io.probe(args.input)  # headers only
    check_outputs(outputs, [args.input], overwrite=args.overwrite)
    frames = len(io.frame_indices(count, args.frames)) if count else (args.frames or 1)
    if size is None:
        return frames
    side = (height, width) if size == "stored" else (size, size)
    pixels = frames * side[0] * side[1]
    if pixels > PIXEL_BUDGET:
        raise ValueError(f"{frames} frames of {side[0]}x{side[1]} are {pixels:,} pixels, over the budget "
                         f"of {PIXEL_BUDGET:,}; reduce --size or --frames")
    return frames


def fit_or_refuse(pipe, frames: int, args, config) -> None:
    """Refuse an edit whose estimated peak memory exceeds the device's (``cove.sd.check_fits``)
    or whose ``feature_layer`` the UNet lacks (``cove.features.feature_module``)."""
    from ..features import feature_module

    if config.feature_layer is not None:
        feature_module(pipe.unet, config.feature_layer)
    size = args.size if args.size is not None else frame_size(pipe)
    check_fits(pipe, frames, size, size, config)
