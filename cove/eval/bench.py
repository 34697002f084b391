"""What a measurement ran on, JSON that records it, and the cost formulas the docs quote."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import numpy as np


def _commit() -> str | None:
    """The git commit of the cove checkout measured (``+`` when it has uncommitted changes),
    or ``None`` outside a checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "cove"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def machine_info(pipe=None) -> dict:
    """Platform, CPU, library versions and date of a measurement; with ``pipe``, its device and dtype."""
    import diffusers
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
    }
    if pipe is not None:
        info["device"] = str(pipe.device)
        info["dtype"] = str(pipe.unet.dtype).replace("torch.", "")
        if pipe.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(pipe.device)
    return info


def jsonable(value, digits: int | None = None):
    """``value`` with numpy scalars made Python numbers, tuples made lists, NaN made ``None``
    and infinities made the strings ``"inf"`` / ``"-inf"`` (JSON has neither), recursively;
    floats rounded to ``digits`` when given."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value if digits is None else round(value, digits)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def dumps(value, digits: int | None = None) -> str:
    """``jsonable(value, digits)`` as indented JSON text, ending in a newline."""
    return json.dumps(jsonable(value, digits), indent=2, allow_nan=False) + "\n"


def correspondence_gflop(frames: int, grid: tuple[int, int], channels: int, window: int) -> float:
    """GFLOP (multiply + add) of one direction of ``correspond``: ``(F-1)`` frame pairs of
    ``N l^2`` dot products of length ``C``. Matches the paper's window table for 20 frames,
    64x64x320: l = 3 / 9 / 15 -> 0.448 / 4.03 / 11.2. ``correspond`` does both directions."""
    return 2 * (frames - 1) * math.prod(grid) * window * window * channels / 1e9
