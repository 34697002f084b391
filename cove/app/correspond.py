"""``cove correspond``: the correspondence of a clip, drawn as coloured points followed across
frames, and optionally saved as tensors."""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import CoveConfig
from .checks import check_input, check_output, fit_or_refuse
from .common import base_settings, format_timings, load_frames_for, make_generator, or_default, torch_dtype


def query_grid(grid: tuple[int, int], points: int = 8) -> np.ndarray:
    """About ``points x points`` evenly spread tokens of an ``(H, W)`` grid -> long (P,)."""
    H, W = grid
    ys = np.unique(np.round(np.linspace(0, H - 1, min(points, H) + 2)[1:-1]).astype(int))
    xs = np.unique(np.round(np.linspace(0, W - 1, min(points, W) + 2)[1:-1]).astype(int))
    return (ys[:, None] * W + xs[None, :]).reshape(-1)  # (P,) tokens n = y*W + x


def point_colours(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A colour per token from its position: hue along x, brightness along y -> uint8 (P, 3)."""
    import cv2

    H, W = grid
    x, y = tokens % W, tokens // W
    hue = (150 * x / max(W - 1, 1)).astype(np.uint8)  # OpenCV hue range 0..179
    value = (255 - 100 * y / max(H - 1, 1)).astype(np.uint8)
    hsv = np.stack([hue, np.full_like(hue, 230), value], axis=-1)[None]  # (1, P, 3)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]  # (P, 3)


def draw_correspondence(frames: np.ndarray, correspondence, *, points: int = 8,
                        min_side: int = 256) -> np.ndarray:
    """Mark a grid of tokens of frame 0 and, in every frame j, their top-1 matches.

    Args:
        frames: uint8 (F, H_img, W_img, 3).
        correspondence: ``Correspondence`` with ``index`` (F, N, F, K) on grid (H, W).
        points: about ``points x points`` query tokens.
        min_side: frames are enlarged (nearest, integer factor) to at least this side.

    Returns:
        uint8 (F, H_img * s, W_img * s, 3), s the enlargement factor.
    """
    from .viz import cell_to_pixel, draw_points, enlarge

    grid = tuple(correspondence.grid)
    H, W = grid
    factor = max(1, math.ceil(min_side / min(frames.shape[1:3])))
    big = enlarge(frames, factor)  # (F, H_img*s, W_img*s, 3)
    tokens = query_grid(grid, points)  # (P,)
    colours = point_colours(tokens, grid)  # (P, 3)
    top1 = correspondence.top1()[0].detach().cpu().numpy()[tokens]  # (P, F) matches of frame 0's tokens
    cells = np.stack([top1 % W, top1 // W], axis=-1)  # (P, F, 2) (x, y)
    pixels = cell_to_pixel(cells, grid, big.shape[1:3])  # (P, F, 2)
    radius = max(1, round(big.shape[2] / W / 4))
    drawn = [draw_points(big[j], pixels[:, j], colours=colours, radius=radius) for j in range(len(big))]
    return np.stack(drawn)  # (F, H_img * s, W_img * s, 3)


def write_tensors(path, payload: dict) -> None:
    """``torch.save`` into ``path`` through a Python file, so that a failed write (a full disk)
    is an OSError with the OS's reason."""
    import torch

    with open(path, "wb") as handle:
        torch.save(payload, handle)


def correspondence_payload(correspondence, frames, source: str, window: int | None) -> dict:
    """What ``cove correspond`` saves: ``index`` / ``score`` (F, N, F, K) on the CPU, the grid,
    the source ("diffusion" or "flow"), the frames' (F, H, W) and the window used."""
    F, H, W, _ = frames.shape
    return {
        "index": correspondence.index.cpu(),  # (F, N, F, K)
        "score": correspondence.score.cpu(),  # (F, N, F, K)
        "grid": tuple(correspondence.grid),
        "source": source,
        "frame_shape": (F, H, W),
        "window": window,
    }


def cmd_correspond(args) -> int:
    from ..window import fit_window
    from . import io

    out = check_output(args.output)
    tensors = out.with_suffix(".pt")
    if args.source == "flow" and (args.feature_t is not None or args.feature_layer is not None):
        raise ValueError("--feature-t and --feature-layer apply to --source diffusion; optical flow reads no features")
    base = base_settings(args).config  # the paper's, or the model's own (--settings model)
    config = CoveConfig(window=or_default(args.window, base.window), k=or_default(args.k, base.k),
                        feature_t=or_default(args.feature_t, base.feature_t),
                        feature_layer=or_default(args.feature_layer, base.feature_layer),
                        feature_prompt=base.feature_prompt, feature_ensemble=base.feature_ensemble)
    keep = args.size or ("stored" if args.source == "flow" else None)  # flow keeps the stored size
    count = check_input(args, [out, tensors], keep)  # before loading a model
    timings = {}
    start = time.perf_counter()
    if args.source == "flow":
        from ..extras.flow import flow_correspondence

        frames = io.prepare_frames(io.read_video(args.input, size=args.size, num_frames=args.frames),
                                   size=None)  # sides cropped to multiples of 8
        grid = tuple(args.grid) if args.grid else (frames.shape[1] // 8, frames.shape[2] // 8)
        timings["read video"] = time.perf_counter() - start
        tick = time.perf_counter()
        correspondence = flow_correspondence(frames, grid)
        timings["optical flow"] = time.perf_counter() - tick
    else:
        from ..loading import load_pipeline
        from ..pipeline import compute_correspondence

        if args.grid:
            raise ValueError("--grid applies to --source flow; diffusion features fix their own grid")
        pipe = load_pipeline(args.model, device=args.device, dtype=torch_dtype(args.dtype))
        # stages 1-3 exactly as `cove edit` runs them (window clamped to the feature grid)
        fit_or_refuse(pipe, count, args, replace(config, pnp_steps=0, guidance_scale=1.0))  # one UNet pass
        timings["load model"] = time.perf_counter() - start
        tick = time.perf_counter()
        frames = load_frames_for(pipe, args)  # (F, H, W, 3)
        timings["read video"] = time.perf_counter() - tick
        correspondence, stage_timings = compute_correspondence(
            pipe, frames, config, make_generator(pipe, args.seed)
        )
        timings.update(stage_timings)
    F, H, W, _ = frames.shape
    print(f"cove correspond: {F} frames of {H}x{W}, {args.source} correspondence on a "
          f"{correspondence.grid[0]}x{correspondence.grid[1]} grid, K={correspondence.k}")

    tick = time.perf_counter()
    picture = draw_correspondence(frames, correspondence)  # (F, H*s, W*s, 3)
    window = fit_window(config.window, correspondence.grid) if args.source == "diffusion" else None
    payload = correspondence_payload(correspondence, frames, args.source, window)
    io.write_all({out: picture, tensors: lambda path: write_tensors(path, payload)}, fps=args.fps)
    timings["write"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start
    print(f"wrote {out}\nwrote {tensors}")
    print("timings:\n" + format_timings(timings))
    return 0


