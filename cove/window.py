"""Stage 2 of COVE: the sliding window (Sec. 3.2).

Token ``n`` of frame ``i`` is compared only with the ``l x l`` window of the next frame around
its position: ``O(F H W l^2 C)`` instead of the ``O(F^2 H^2 W^2 C)`` of comparing every token
with every token. At the borders the window is shifted inward, so it always has exactly
``l^2`` cells.

Vocabulary: ``F`` frames, ``C`` channels, ``H, W`` grid, ``N = H*W`` tokens, ``l`` window side.
Token ``n = y*W + x``; a cell is a long ``(x, y)``.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor


def check_window(window: int, grid: tuple[int, int]) -> None:
    """Raise a one-line ``ValueError`` unless ``window`` is odd and fits in ``grid`` ``(H, W)``."""
    H, W = grid
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer (it needs a centre), got {window}")
    if window > H or window > W:
        raise ValueError(f"window {window} does not fit in the {H}x{W} grid; use <= {min(H, W)}")


def fit_window(window: int, grid: tuple[int, int]) -> int:
    """``window`` if it fits in ``grid`` ``(H, W)``, else the largest odd side that does: on a
    grid smaller than the window (a tiny model's feature grid) the search covers the grid."""
    side = min(grid)
    return min(window, side if side % 2 else side - 1)


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
    """Similarity of each query with the ``l x l`` window of ``target`` around it (Sec. 3.2).

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
    for name, value in (("query", query), ("target", target), ("centre", centre)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not query.is_floating_point() or target.dtype != query.dtype:
        raise ValueError(f"query and target must be floating-point tensors of one dtype, got "
                         f"{query.dtype} and {target.dtype}")
    if centre.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"centre must be an integer (long) tensor of cells, got {centre.dtype}")
    if not isinstance(window, numbers.Integral) or isinstance(window, bool):
        raise ValueError(f"window must be an int, got {window!r} ({type(window).__name__})")
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
