"""Stages 2-3 of COVE: sliding-window similarity and chained top-K correspondence (Sec. 3.2).

Vocabulary: ``F`` frames, ``C`` channels, ``H, W`` grid, ``N = H*W`` tokens, ``K`` matches,
``l`` window side. Token ``n = y*W + x``; a *position* is a float ``(x, y)`` in cell-index
coordinates (the centre of cell ``(x, y)`` is exactly ``(x, y)``).

The picture to keep in mind: token ``n`` of frame ``i`` is compared only with the ``l x l``
window of frame ``i+1`` around its position (Eq. 8-9 of the paper); the ``K`` best cells are
its matches (Eq. 10); the best one becomes the next query and the next window centre, and so on
to the last frame, and the same backwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

# Largest gathered candidate tensor (elements) that `correspond` builds at once: 2**26 floats
# are 256 MB in float32. Only the size of a chunk changes, never the result.
_MAX_CANDIDATES = 2**26


@dataclass
class Correspondence:
    """For every token of every frame, its ``K`` corresponding tokens in every frame.

    Attributes:
        index: long ``(F, N, F, K)``; ``index[i, n, j]`` are the tokens of frame ``j`` that
            token ``n`` of frame ``i`` corresponds to, best first. ``index[i, n, i, :] = n``.
        score: float ``(F, N, F, K)``; their scores (cosine similarity for diffusion
            features, a forward-backward confidence for optical flow), best first.
            ``score[i, n, i, :] = 1``.
        grid: ``(H, W)`` of the token grid, so that ``n = y*W + x``.
    """

    index: Tensor
    score: Tensor
    grid: tuple[int, int]

    @property
    def frames(self) -> int:
        """``F``, the number of frames."""
        return self.index.shape[0]

    @property
    def k(self) -> int:
        """``K``, the number of matches per other frame."""
        return self.index.shape[-1]

    def positions(self) -> Tensor:
        """Float ``(F, N, F, K, 2)`` cell-index positions ``(x, y)`` of ``index``."""
        _, W = self.grid
        x, y = self.index % W, self.index // W  # (F, N, F, K) each
        return torch.stack([x, y], dim=-1).float()  # (F, N, F, K, 2)

    def top1(self) -> Tensor:
        """Long ``(F, N, F)``: the best match of each token in each frame."""
        return self.index[..., 0]

    def to(self, device: torch.device | str) -> "Correspondence":
        """The same correspondence with its tensors on ``device``."""
        return Correspondence(self.index.to(device), self.score.to(device), self.grid)


# --------------------------------------------------------------------------------------------
# Stage 2: one sliding window (Eq. 8-9)
# --------------------------------------------------------------------------------------------


def check_window(window: int, grid: tuple[int, int]) -> None:
    """Raise a one-line ``ValueError`` unless ``window`` is odd and fits in ``grid`` ``(H, W)``."""
    H, W = grid
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer (it needs a centre), got {window}")
    if window > H or window > W:
        raise ValueError(f"window {window} does not fit in the {H}x{W} grid; use <= {min(H, W)}")


def window_offsets(window: int, device: torch.device | str | None = None) -> Tensor:
    """Long ``(l*l, 2)`` offsets ``(dx, dy)`` of the cells of an ``l x l`` window from its
    top-left cell, in row-major order (``dy`` outer, ``dx`` inner)."""
    d = torch.arange(window, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")  # (l, l) each
    return torch.stack([dx, dy], dim=-1).reshape(window * window, 2)  # (l*l, 2)


def window_start(centre: Tensor, window: int, grid: tuple[int, int]) -> Tensor:
    """Top-left cell ``(x, y)`` of the ``l x l`` window centred on ``centre``, shifted inward.

    Args:
        centre: long ``(..., 2)`` cell ``(x, y)`` the window is centred on.
        window: ``l``, odd and ``<= min(H, W)``.
        grid: ``(H, W)``.

    Returns:
        Long ``(..., 2)``: ``clamp(centre - l // 2, 0, (W - l, H - l))``, so that the window
        always lies entirely inside the grid and has exactly ``l*l`` cells (the paper's
        border rule, Sec. 3.2).
    """
    H, W = grid
    start = centre - window // 2  # (..., 2)
    x = start[..., 0].clamp(0, W - window)
    y = start[..., 1].clamp(0, H - window)
    return torch.stack([x, y], dim=-1)  # (..., 2)


def window_indices(centre: Tensor, window: int, grid: tuple[int, int]) -> Tensor:
    """Long ``(..., l*l)`` token indices ``n = y*W + x`` of the (inward-shifted) window
    centred on each ``centre`` ``(..., 2)`` (row-major inside the window)."""
    _, W = grid
    start = window_start(centre, window, grid)  # (..., 2)
    cells = start[..., None, :] + window_offsets(window, centre.device)  # (..., l*l, 2)
    return cells[..., 1] * W + cells[..., 0]  # (..., l*l)


def window_similarity(
    query: Tensor, target: Tensor, centre: Tensor, window: int
) -> tuple[Tensor, Tensor]:
    """Similarity of each query with the ``l x l`` window of ``target`` around it (Eq. 8-9).

    Args:
        query: ``(M, C)`` query features (L2-normalised over ``C`` by the caller, so that the
            dot product is the cosine similarity; nothing is renormalised here).
        target: ``(C, H, W)`` feature map of the frame searched.
        centre: long ``(M, 2)`` cell ``(x, y)`` each window is centred on (shifted inward at
            the borders, see ``window_start``).
        window: ``l``, odd and ``<= min(H, W)``.

    Leading batch dimensions are allowed and must agree: ``query (..., M, C)``,
    ``target (..., C, H, W)``, ``centre (..., M, 2)``; ``correspond`` uses this to search
    all frame pairs at once.

    Returns:
        ``(similarity (M, l*l), index (M, l*l))``: ``similarity[m, c] = query[m] .
        target[:, y_c, x_c]`` for the window cells in row-major order, and ``index`` their
        long token indices ``n = y*W + x`` into ``target``. Materialises ``(M, l*l, C)``.
    """
    if query.ndim < 2 or target.ndim != query.ndim + 1 or centre.shape != (*query.shape[:-1], 2):
        raise ValueError(
            "expected query (M, C), target (C, H, W) and centre (M, 2) (with the same leading "
            f"dims), got {tuple(query.shape)}, {tuple(target.shape)} and {tuple(centre.shape)}"
        )
    C, H, W = target.shape[-3:]
    if query.shape[-1] != C:
        raise ValueError(f"query has {query.shape[-1]} channels but target has {C}")
    check_window(window, (H, W))
    *batch, M, _ = query.shape
    index = window_indices(centre, window, (H, W))  # (..., M, l*l)
    tokens = target.flatten(-2).transpose(-1, -2)  # (..., N, C)
    flat = index.flatten(-2)[..., None].expand(*batch, M * window * window, C)  # (..., M*l*l, C)
    candidates = tokens.gather(-2, flat).view(*batch, M, window * window, C)  # (..., M, l*l, C)
    similarity = torch.einsum("...mc,...mlc->...ml", query, candidates)  # (..., M, l*l)
    return similarity, index


def grid_cells(grid: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """Long ``(N, 2)``: the cell ``(x, y)`` of every token ``n = y*W + x``."""
    H, W = grid
    n = torch.arange(H * W, device=device)
    return torch.stack([n % W, n // W], dim=-1)  # (N, 2)


# --------------------------------------------------------------------------------------------
# Stage 3: top-K and chaining (Eq. 10)
# --------------------------------------------------------------------------------------------


def step_matches(
    source: Tensor, target: Tensor, window: int, k: int, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Top-``K`` window matches of every token of ``source`` frames in ``target`` frames.

    Args:
        source: ``(B, C, H, W)`` features of the frames the queries come from.
        target: ``(B, C, H, W)`` features of the frames searched (pair ``b`` is
            ``source[b] -> target[b]``).
        window, k: ``l`` and ``K``.
        chunk: tokens per ``window_similarity`` call; ``None`` keeps the gathered candidates
            under ``2**26`` elements. The result does not depend on it.

    Returns:
        ``(index (B, N, K), score (B, N, K))``: token indices into ``target`` and cosine
        similarities, best first; each window is centred on the token's own cell.
    """
    B, C, H, W = source.shape
    query = source.flatten(2).transpose(1, 2)  # (B, N, C)
    centre = grid_cells((H, W), source.device).expand(B, H * W, 2)  # (B, N, 2)
    if chunk is None:
        chunk = max(1, _MAX_CANDIDATES // (B * window * window * C))
    index, score = [], []
    for s in range(0, H * W, chunk):
        part = slice(s, s + chunk)
        sim, idx = window_similarity(query[:, part], target, centre[:, part], window)
        top, pick = sim.topk(k, dim=-1)  # (B, chunk, K) each, sorted best first
        score.append(top)
        index.append(idx.gather(-1, pick))  # (B, chunk, K)
    return torch.cat(index, dim=1), torch.cat(score, dim=1)  # (B, N, K) each


def _chain_into(
    step_index: Tensor, step_score: Tensor, index: Tensor, score: Tensor, forward: bool
) -> None:
    """Chain one-frame matches into matches with every later (or earlier) frame, in place.

    ``step_index[a]`` ``(N, K)`` are the matches of the tokens of frame ``a`` in frame
    ``a + 1`` (``forward``) or ``a - 1``, stored at ``a`` (forward, ``a = 0..F-2``) or
    ``a - 1`` (backward, ``a = 1..F-1``); ``step_index``, ``step_score`` are ``(F-1, N, K)``.
    Fills ``index``, ``score`` ``(F, N, F, K)`` for ``j > i`` (forward) or ``j < i``.

    The chain started at ``(i, n)`` reaches frame ``j`` at its top-1 match ``m`` there; its
    next step searches the window around ``m`` with the feature of ``m`` as the query, which is
    exactly the one-frame step of token ``m`` of frame ``j``. So a chain is a composition of
    one-frame steps, and only ``2 (F-1)`` frame pairs are ever searched (the paper's
    ``O(F H W l^2 C)`` cost) while every token of every frame starts its own chain.
    """
    F, N, _, K = index.shape
    current = torch.arange(N, device=index.device).repeat(F, 1)  # (F, N) token in frame i +- (d-1)
    for d in range(1, F):
        starts = torch.arange(F - d, device=index.device) + (0 if forward else d)  # frames i
        steps = starts + d - 1 if forward else starts - d  # pair i+d-1 -> i+d, or i-d+1 -> i-d
        frames = starts + d if forward else starts - d  # frames j
        cur = current[starts]  # (F-d, N)
        pick = cur[..., None].expand(-1, -1, K)  # (F-d, N, K)
        index[starts, :, frames] = step_index[steps].gather(1, pick)  # (F-d, N, K)
        score[starts, :, frames] = step_score[steps].gather(1, pick)
        current[starts] = index[starts, :, frames, 0]  # top-1 becomes the next query


def correspond(
    features: Tensor, window: int = 9, k: int = 3, *, chunk: int | None = None
) -> Correspondence:
    """Chained top-``K`` sliding-window correspondence between all frames (Sec. 3.2, Eq. 8-10).

    For token ``n`` of frame ``i`` and each later frame ``j = i+1, i+2, ...``: search the
    ``l x l`` window of frame ``j`` centred on the chain's current position, shifted inward so
    that it lies inside the frame (always ``l*l`` candidates); keep the ``K`` most similar cells
    (best first); then the chain moves to the top-1 match, whose position is the next window
    centre and whose feature is the next query. The same backwards for ``j = i-1, i-2, ...``.

    Args:
        features: ``(F, C, H, W)`` diffusion features, already L2-normalised over ``C`` by the
            caller (``cove.features.extract_features`` does it) so that dot products are cosine
            similarities; they are not renormalised here.
        window: ``l`` (Sec. 3.2: 9), odd and ``<= min(H, W)``.
        k: ``K`` (Table 2: 3), in ``1..l*l``.
        chunk: tokens per window search, to bound memory (``None``: automatic, about 256 MB
            of gathered candidates); the result does not depend on it.

    Returns:
        ``Correspondence`` with ``index``, ``score`` ``(F, N, F, K)`` and ``grid = (H, W)``;
        ``index[i, n, i, :] = n`` and ``score[i, n, i, :] = 1`` (a token is its own match).
        Peak memory: ``2 (F-1) N K`` for the one-frame steps plus the ``(F, N, F, K)`` output
        plus one chunk of candidates; nothing of size ``(F*N, l*l, C)``.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (F, C, H, W), got shape {tuple(features.shape)}")
    F, C, H, W = features.shape
    N = H * W
    check_window(window, (H, W))
    if not 1 <= k <= window * window:
        raise ValueError(f"k must lie in 1..window**2 = 1..{window * window}, got {k}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be None or >= 1, got {chunk}")
    device = features.device
    index = torch.arange(N, device=device)[None, :, None, None].repeat(F, 1, F, k)  # (F, N, F, K)
    score = torch.ones(F, N, F, k, dtype=features.dtype, device=device)  # (F, N, F, K)
    if F > 1:
        fwd = step_matches(features[:-1], features[1:], window, k, chunk)  # (F-1, N, K) x2
        _chain_into(*fwd, index, score, forward=True)
        bwd = step_matches(features[1:], features[:-1], window, k, chunk)  # (F-1, N, K) x2
        _chain_into(*bwd, index, score, forward=False)
    return Correspondence(index=index, score=score, grid=(H, W))


# --------------------------------------------------------------------------------------------
# Baseline: optical flow (Fig. 1 and the PCK comparison)
# --------------------------------------------------------------------------------------------


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


def correspondence_gflop(frames: int, grid: tuple[int, int], channels: int, window: int) -> float:
    """GFLOP (multiply + add) of one direction of ``correspond``: ``(F-1)`` frame pairs of
    ``N l^2`` dot products of length ``C``. Matches the paper's window table for 20 frames,
    64x64x320: l = 3 / 9 / 15 -> 0.448 / 4.03 / 11.2. ``correspond`` does both directions."""
    return 2 * (frames - 1) * math.prod(grid) * window * window * channels / 1e9
