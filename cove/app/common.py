"""Helpers the ``cove`` commands share: output names, dtypes, loading frames for a model,
seeding, and printing timings."""
from __future__ import annotations

from pathlib import Path

from ..sd import frame_size, size_multiple


def torch_dtype(name: str | None):
    """``"float16"`` -> ``torch.float16``; ``None`` stays ``None`` (the loader's default)."""
    if name is None:
        return None
    import torch

    return getattr(torch, name)


def default_output(input_path, suffix: str = "_edited.mp4") -> Path:
    """``clips/dog.mp4`` -> ``clips/dog_edited.mp4``; a folder ``clips/dog/`` -> ``clips/dog_edited.mp4``."""
    path = Path(input_path)
    return path.with_name(path.stem + suffix) if path.suffix else path.parent / (path.name + suffix)


def sibling(path: Path, tag: str) -> Path:
    """``out/edit.mp4`` + ``"side_by_side"`` -> ``out/edit_side_by_side.mp4``."""
    return path.with_name(f"{path.stem}_{tag}{path.suffix}")


def format_timings(timings: dict[str, float]) -> str:
    """``{"invert": 1.23, ...}`` -> aligned ``name  seconds`` lines."""
    width = max((len(k) for k in timings), default=0)
    return "\n".join(f"  {name:<{width}}  {seconds:8.2f} s" for name, seconds in timings.items())


def load_frames_for(pipe, args):
    """Read ``args.input`` one frame at a time, cropped / resized / subsampled for ``pipe``
    -> uint8 (F, H, W, 3)."""
    from . import io

    size = args.size if args.size is not None else frame_size(pipe)
    return io.read_video(args.input, size=size, num_frames=args.frames, multiple=size_multiple(pipe))


def make_generator(pipe, seed: int):
    import torch

    return torch.Generator(device=pipe.device).manual_seed(seed)


def or_default(value, fallback):
    """An option's value, or ``fallback`` where it was not given (None)."""
    return fallback if value is None else value


def base_settings(args):
    """The settings the command starts from: the paper's (``--settings paper``), or the model's
    own (``--settings model``: its folder's ``cove_settings.json``, ``cove.recommended``)."""
    from ..recommended import paper_settings, read_settings

    if getattr(args, "settings", "paper") == "model":
        from ..loading import check_model

        return read_settings(check_model(args.model))  # reads a file; loads no model
    return paper_settings()
