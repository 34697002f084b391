"""Optical-flow correspondence: the paper's baseline (Fig. 1 and its PCK comparison), K = 1.

Not part of COVE: it answers "would plain optical flow do?" on the same clips, and
``CoveConfig(correspondence="flow")`` edits with it.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from ..correspondence import Correspondence
from ..window import grid_cells


def optical_flow(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense OpenCV DIS flow between consecutive frames, both ways.

    Args:
        frames: uint8 ``(F, H_img, W_img, 3)`` RGB.

    Returns:
        ``(forward, backward)``, float32 ``(F-1, H_img, W_img, 2)`` each, in pixels ``(dx, dy)``:
        ``forward[a]`` moves frame ``a`` to ``a+1``, ``backward[a]`` moves frame ``a+1`` to ``a``.
    """
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    forward = [dis.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:])]
    backward = [dis.calc(b, a, None) for a, b in zip(gray[:-1], gray[1:])]
    shape = (0, *frames.shape[1:3], 2)
    stack = lambda flows: np.stack(flows) if flows else np.zeros(shape, np.float32)  # noqa: E731
    return stack(forward).astype(np.float32), stack(backward).astype(np.float32)


def sample_flow(flow: Tensor, points: Tensor) -> Tensor:
    """Bilinearly sample ``flow`` ``(B, H_img, W_img, 2)`` at pixel ``points`` ``(B, M, 2)``.

    Pixel coordinates put pixel centres at ``p = i + 0.5``; outside the image the border
    value is used. Returns ``(B, M, 2)``.
    """
    B, H_img, W_img, _ = flow.shape
    size = torch.tensor([W_img, H_img], dtype=points.dtype)
    normalised = 2 * points / size - 1  # (B, M, 2) in [-1, 1], align_corners=False convention
    sampled = nnf.grid_sample(
        flow.permute(0, 3, 1, 2), normalised[:, :, None], align_corners=False, padding_mode="border"
    )  # (B, 2, M, 1)
    return sampled[..., 0].transpose(1, 2)  # (B, M, 2)


def flow_correspondence(frames: np.ndarray, grid: tuple[int, int]) -> Correspondence:
    """Optical-flow correspondence with ``K = 1``: the paper's baseline (Fig. 1, PCK table).

    Each grid cell centre of frame ``i`` (in pixels) is advected frame by frame, forwards and
    backwards, by the OpenCV DIS flow bilinearly sampled at its current position. Its position
    in frame ``j``, in cell coordinates, rounded to the nearest cell and clamped inside the grid,
    gives ``index[i, n, j, 0]``.

    ``score = exp(-e)`` where ``e`` is the forward-backward error in cells summed along the
    chain: for each step ``p -> p' = p + flow(p)``, ``|p' + flow_back(p') - p|`` (converted to
    cells). 1 for a perfectly consistent chain, small after occlusions or flow failures.

    Args:
        frames: uint8 ``(F, H_img, W_img, 3)`` RGB frames.
        grid: ``(H, W)`` token grid.

    Returns:
        ``Correspondence`` with ``index``, ``score`` ``(F, N, F, 1)`` on CPU (float32 scores),
        ``index[i, n, i, 0] = n``, ``score[i, n, i, 0] = 1``.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    F, H_img, W_img, _ = frames.shape
    H, W = grid
    N = H * W
    forward, backward = map(torch.from_numpy, optical_flow(frames))  # (F-1, H_img, W_img, 2)
    px_per_cell = torch.tensor([W_img / W, H_img / H])  # (2,)
    start = (grid_cells(grid).float() + 0.5) * px_per_cell  # (N, 2) pixel positions of centres
    index = torch.arange(N)[None, :, None, None].repeat(F, 1, F, 1)  # (F, N, F, 1)
    score = torch.ones(F, N, F, 1)  # (F, N, F, 1)
    for ahead in (True, False):
        points = start.expand(F, N, 2).clone()  # (F, N, 2) chain position of each start frame
        error = torch.zeros(F, N)  # (F, N) summed forward-backward error in cells
        for d in range(1, F):
            starts = torch.arange(F - d) + (0 if ahead else d)  # frames i
            steps = starts + d - 1 if ahead else starts - d  # flow index between j -+ 1 and j
            there, back = (forward, backward) if ahead else (backward, forward)
            moved = points[starts] + sample_flow(there[steps], points[starts])  # (F-d, N, 2)
            returned = moved + sample_flow(back[steps], moved)  # (F-d, N, 2)
            error[starts] += ((returned - points[starts]) / px_per_cell).norm(dim=-1)
            points[starts] = moved
            cell = (moved / px_per_cell - 0.5).round().long()  # (F-d, N, 2) nearest cell (x, y)
            x, y = cell[..., 0].clamp(0, W - 1), cell[..., 1].clamp(0, H - 1)
            frames_j = starts + d if ahead else starts - d
            index[starts, :, frames_j, 0] = y * W + x
            score[starts, :, frames_j, 0] = torch.exp(-error[starts])
    return Correspondence(index=index, score=score, grid=(H, W))
