"""Stage 2 of COVE: the sliding window (Sec. 3.2).

Token ``n`` of frame ``i`` is compared only with the ``l x l`` window of the next frame around
its position: ``O(F H W l^2 C)`` instead of the ``O(F^2 H^2 W^2 C)`` of comparing every token
with every token. At the borders the window is shifted inward, so it always has exactly
``l^2`` cells.

Vocabulary: ``F`` frames, ``C`` channels, ``H, W`` grid, ``N = H*W`` tokens, ``l`` window side.
Token ``n = y*W + x``; a cell is a long ``(x, y)``.

Three implementations of the same search: ``window_similarity`` gathers each query's ``l*l``
candidates (readable; one query at a time in the widgets), ``local_similarity`` computes all
windows of a frame pair as tiled matrix products (what ``correspond`` uses on the CPU: same
numbers, tens of times faster, since a matmul reuses each target cell for many queries), and
``allpairs_similarity`` computes every token against every token in one matrix product and
picks the windows from it (what ``correspond`` uses on CUDA, where one large product beats
many small ones although it does ``N / l^2`` times the work).
"""
from __future__ import annotations

import functools
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


def _tiles(size: int, tile: int, window: int) -> tuple[Tensor, Tensor, int]:
    """Tiles along one axis of ``size`` cells: ``(first (T,), region (T,), region side)``.

    Tile ``t`` covers the queries ``first[t] .. first[t] + tile - 1`` (the last tile is moved
    inward, so tiles may overlap); every window of those queries lies inside the
    ``region side`` cells starting at ``region[t]``: the window start ``clamp(x - l//2, 0,
    size - l)`` grows by at most one per query, so ``tile + l - 1`` cells hold them all.
    """
    tile = min(tile, size)
    side = min(tile + window - 1, size)
    first = torch.arange(0, size, tile).clamp(max=size - tile)  # (T,)
    start = (first - window // 2).clamp(0, size - window)  # window start of the first query
    region = start.clamp(max=size - side)  # (T,)
    return first, region, side


@functools.lru_cache(maxsize=16)
def _tile_plan(H: int, W: int, window: int, tile: int, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Where ``local_similarity`` reads and picks, per ``(tile row, tile column)``: long
    ``(Ty, Tx, ty*tx)`` query tokens, ``(Ty, Tx, sy*sx)`` region tokens and
    ``(Ty, Tx, ty*tx, l*l)`` each query's window cells as positions inside its region; built
    once per grid and device (a GPU gets its copy once, not once per frame pair)."""
    if device is not None:  # the CPU plan, copied to the device once
        plan = _tile_plan(H, W, window, tile)
        return plan if torch.device(device).type == "cpu" else tuple(x.to(device) for x in plan)
    fy, ry, sy = _tiles(H, tile, window)  # (Ty,), (Ty,), region height
    fx, rx, sx = _tiles(W, tile, window)  # (Tx,), (Tx,), region width
    ty, tx = min(tile, H), min(tile, W)
    Ty, Tx = len(fy), len(fx)
    qy = (fy[:, None] + torch.arange(ty))[:, None, :, None]  # (Ty, 1, ty, 1) query rows
    qx = (fx[:, None] + torch.arange(tx))[None, :, None, :]  # (1, Tx, 1, tx) query columns
    gy = (ry[:, None] + torch.arange(sy))[:, None, :, None]  # (Ty, 1, sy, 1) region rows
    gx = (rx[:, None] + torch.arange(sx))[None, :, None, :]  # (1, Tx, 1, sx) region columns
    n = (qy * W + qx).reshape(Ty, Tx, ty * tx)  # (Ty, Tx, ty*tx) query tokens, tile by tile
    m = (gy * W + gx).reshape(Ty, Tx, sy * sx)  # (Ty, Tx, sy*sx) region tokens
    corner = torch.stack(torch.broadcast_tensors(rx[None, :], ry[:, None]), dim=-1)  # (Ty, Tx, 2)
    start = window_start(grid_cells((H, W))[n], window, (H, W)) - corner[:, :, None]  # (Ty, Tx, ty*tx, 2)
    local = start[..., None, :] + window_offsets(window)  # (Ty, Tx, ty*tx, l*l, 2) in the region
    return n, m, local[..., 1] * sx + local[..., 0]  # ..., (Ty, Tx, ty*tx, l*l)


def token_rows(frame: Tensor) -> Tensor:
    """``(C, H, W)`` feature map -> ``(N, C)`` contiguous token rows (``n = y*W + x``).

    One 2-D transpose per frame: a view when the map is already channels-last, else a copy
    (torch's blocked 2-D transpose, about 3x faster than converting a whole ``(F, C, H, W)``
    tensor to channels-last)."""
    C = frame.shape[0]
    rows = frame.reshape(C, -1).t()  # (N, C), a view
    return rows if rows.is_contiguous() else rows.contiguous()


def pair_similarity(
    source: Tensor, target: Tensor, grid: tuple[int, int], window: int, tile: int = 4,
    *, edge_only: bool = False
) -> Tensor:
    """``local_similarity`` for one frame pair given as token rows.

    Args:
        source, target: ``(N, C)`` token rows (``token_rows``) of the two frames.
        grid: ``(H, W)`` with ``H * W = N``.
        window, tile: as in ``local_similarity``.
        edge_only: compute only the tiles that hold a token within ``l // 2`` cells of the
            border (what ``reverse_similarity`` cannot read back); other rows are left unset.

    Returns:
        ``(N, l*l)``: ``[n, c]`` = ``source[n] . target[cell c of the window of n]``.
    """
    H, W = grid
    N, C = source.shape
    check_window(window, (H, W))
    n, m, pick = _tile_plan(H, W, window, tile, source.device)
    Ty, Tx, q_cells = n.shape
    t_cells = m.shape[-1]
    n, m, pick = n.flatten(0, 1), m.flatten(0, 1), pick.flatten(0, 1)  # tile by tile, row-major
    tiles = torch.arange(Ty * Tx, device=n.device)
    if edge_only:
        tiles = tiles[_edge_tiles(H, W, window, tile, source.device)]
    out = source.new_empty(N, window * window)  # (N, l*l)
    for block in tiles.split(Tx) if len(tiles) else ():  # about a row of tiles at a time, in cache
        queries = n[block].flatten()  # (b*ty*tx,)
        q = source.index_select(0, queries).view(len(block), q_cells, C)  # (b, ty*tx, C)
        t = target.index_select(0, m[block].flatten()).view(len(block), t_cells, C)  # (b, sy*sx, C)
        sim = torch.bmm(q, t.transpose(1, 2))  # (b, ty*tx, sy*sx)
        out[queries] = sim.gather(-1, pick[block]).flatten(0, 1)  # overlaps agree
    return out


def _inner(grid: tuple[int, int], window: int) -> Tensor:
    """Bool ``(N,)``: tokens at least ``l // 2`` cells from every border (their windows are
    centred, not shifted)."""
    H, W = grid
    x, y = grid_cells(grid).unbind(-1)
    h = window // 2
    return (x >= h) & (x < W - h) & (y >= h) & (y < H - h)


@functools.lru_cache(maxsize=16)
def _edge_tiles(H: int, W: int, window: int, tile: int, device=None) -> Tensor:
    """Bool ``(Ty*Tx,)`` on ``device``: the tiles of ``_tile_plan`` that hold a token outside
    ``_inner``."""
    n = _tile_plan(H, W, window, tile)[0].flatten(0, 1)  # (T, ty*tx)
    return (~_inner((H, W), window)[n].all(dim=-1)).to(device)


@functools.lru_cache(maxsize=16)
def _mirror_plan(H: int, W: int, window: int, device=None) -> tuple[Tensor, Tensor]:
    """Where ``reverse_similarity`` reads: long ``(M,)`` the inner tokens ``m`` and
    ``(M, l*l)`` flat positions ``n * l*l + c`` in the forward similarities, where ``n`` is
    cell ``c'`` of ``m``'s window and ``c`` is ``m``'s cell in ``n``'s window."""
    grid = (H, W)
    m = torch.nonzero(_inner(grid, window)).flatten()  # (M,)
    n = window_indices(grid_cells(grid)[m], window, grid)  # (M, l*l) centred windows of m
    start = window_start(grid_cells(grid)[n], window, grid)  # (M, l*l, 2) windows of each n
    local = grid_cells(grid)[m][:, None, :] - start  # (M, l*l, 2) m inside n's window
    return m.to(device), (n * window * window + local[..., 1] * window + local[..., 0]).to(device)


def reverse_similarity(
    forward: Tensor, source: Tensor, target: Tensor, grid: tuple[int, int], window: int,
    tile: int = 4
) -> Tensor:
    """``pair_similarity(source, target)`` given ``forward = pair_similarity(target, source)``.

    Similarity is symmetric: token ``m`` of ``source`` against cell ``n`` of its window is
    ``forward[n, m's cell in n's window]``, and ``m`` lies in the window of every ``n`` of its
    own window when ``m``'s window is centred (``m`` at least ``l // 2`` cells from the
    borders; windows are never smaller than ``l // 2`` on each side of their token). Those rows
    are read from ``forward``; the tiles holding the other tokens are computed
    (``edge_only``): ``(W - 2 (l//2)) (H - 2 (l//2)) / N`` of the work saved, 77% at 64x64.

    Args:
        forward: ``(N, l*l)``, ``pair_similarity(target, source, grid, window, tile)``.
        source, target: ``(N, C)`` token rows.

    Returns:
        ``(N, l*l)``, equal to ``pair_similarity(source, target, grid, window, tile)`` (up to
        float rounding).
    """
    H, W = grid
    out = pair_similarity(source, target, grid, window, tile, edge_only=True)  # (N, l*l)
    m, at = _mirror_plan(H, W, window, forward.device)
    out[m] = forward.flatten().take(at)  # (M, l*l)
    return out


def local_similarity(source: Tensor, target: Tensor, window: int, tile: int = 4) -> Tensor:
    """Similarity of every token of ``source`` with its ``l x l`` window of ``target`` (Eq. 8-9).

    The same numbers as ``window_similarity`` centred on each token's own cell (windows
    shifted inward at the borders), computed per ``tile x tile`` block of queries as one
    matrix product with the ``(tile + l - 1)^2`` target cells their windows cover, then the
    ``l*l`` window cells picked out: ``(tile + l - 1)^2 / l^2`` (1.8 for ``l = 9``, tile 4)
    times the dot products of the gather, but in batched matmuls instead of a gather of
    ``(N, l*l, C)`` copies.

    Args:
        source, target: ``(B, C, H, W)`` feature maps, pair ``b`` is ``source[b] -> target[b]``
            (L2-normalised over ``C`` by the caller).
        window: ``l``, odd and ``<= min(H, W)``.
        tile: query block side; the result does not depend on it.

    Returns:
        ``(B, N, l*l)``: ``[b, n, c]`` = ``source[b, :, n]`` . ``target[b, :, cell c of the
        window of n]``, cells in ``window_indices`` order (row-major); their token indices are
        ``window_indices(grid_cells((H, W)), window, (H, W))``.
    """
    B, C, H, W = source.shape
    check_window(window, (H, W))
    return torch.stack([pair_similarity(token_rows(s), token_rows(t), (H, W), window, tile)
                        for s, t in zip(source, target)])  # (B, N, l*l)


def allpairs_similarity(
    source: Tensor, target: Tensor, grid: tuple[int, int], window: int, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """``pair_similarity`` both ways from the all-pairs products of one frame pair.

    Args:
        source, target: ``(N, C)`` token rows (``token_rows``) of the two frames.
        grid: ``(H, W)`` with ``H * W = N``.
        window: ``l``, odd and ``<= min(H, W)``.
        chunk: query rows per product; ``None``: one ``(N, N)`` product, read both ways
            (forward from its rows, backward from its columns), else ``(chunk, N)`` products
            of each direction in turn (twice the work, ``chunk / N`` of the memory).

    Returns:
        ``(forward (N, l*l), backward (N, l*l))``: ``forward[n, c] = source[n] . target[cell c
        of the window of n]`` (as ``pair_similarity(source, target)``), ``backward`` the same
        from ``target`` to ``source``; the same numbers up to float rounding.
    """
    N, _ = source.shape
    check_window(window, grid)
    cells = window_indices(grid_cells(grid, source.device), window, grid)  # (N, l*l)
    if chunk is None or chunk >= N:
        S = source @ target.T  # (N, N): [n, m] = source[n] . target[m]
        return S.gather(1, cells), S.T.gather(1, cells)  # (N, l*l) each
    if chunk < 1:
        raise ValueError(f"chunk must be None or >= 1, got {chunk}")
    out = []
    for a, b in ((source, target), (target, source)):
        out.append(torch.cat([(a[r:r + chunk] @ b.T).gather(1, cells[r:r + chunk])  # (chunk, l*l)
                              for r in range(0, N, chunk)]))  # (N, l*l)
    return out[0], out[1]


def top_k(similarity: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(values, indices)`` of the ``k`` largest entries along the last dim, best first;
    among equal values the lower index first (as a stable sort). For ``k <= 4`` by ``k``
    rounds of ``max`` (several times faster than ``torch.topk`` on short rows); overwrites
    ``similarity``."""
    if k > 4:
        values, order = similarity.sort(dim=-1, descending=True, stable=True)
        return values[..., :k].contiguous(), order[..., :k].contiguous()
    values, indices = [], []
    for _ in range(k):
        value, index = similarity.max(dim=-1, keepdim=True)  # first maximum on ties
        values.append(value)
        indices.append(index)
        similarity.scatter_(-1, index, float("-inf"))
    return torch.cat(values, dim=-1), torch.cat(indices, dim=-1)


def grid_cells(grid: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """Long ``(N, 2)``: the cell ``(x, y)`` of every token ``n = y*W + x``."""
    H, W = grid
    n = torch.arange(H * W, device=device)
    return torch.stack([n % W, n // W], dim=-1)  # (N, 2)
