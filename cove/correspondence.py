"""Stages 2-3 of COVE: sliding-window similarity and chained top-K correspondence (Sec. 3.2).

Vocabulary: ``F`` frames, ``C`` channels, ``H, W`` grid, ``N = H*W`` tokens, ``K`` matches,
``l`` window side. Token ``n = y*W + x``; a *position* is a float ``(x, y)`` in cell-index
coordinates (the centre of cell ``(x, y)`` is exactly ``(x, y)``).

The picture to keep in mind: token ``n`` of frame ``i`` is compared only with the ``l x l``
window of frame ``i+1`` around its position (stage 2, ``cove.window``); the ``K`` best cells are
its matches (stage 3); the best one becomes the next query and the next window centre, and so on
to the last frame, and the same backwards.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from .window import (  # noqa: F401 (public here)
    allpairs_similarity,
    check_window,
    grid_cells,
    local_similarity,
    pair_similarity,
    reverse_similarity,
    token_rows,
    top_k,
    window_indices,
    window_similarity,
)

_TILE = 4  # query block side of `pair_similarity`: 4 beat 2, 3, 5, 6, 8 and 16 on CPU (1.8x the window's dot products)


def index_dtype(tokens: int) -> torch.dtype:
    """The smallest integer type that holds token indices ``0..tokens-1`` (int16 up to 32767)."""
    return torch.int16 if tokens <= 2**15 - 1 else torch.int32


@dataclass
class Correspondence:
    """For every token of every frame, its ``K`` corresponding tokens in every frame.

    Attributes:
        index: integer ``(F, N, F, K)`` (``index_dtype(N)``: int16 up to 32767 tokens; use
            ``.long()`` to index with it); ``index[i, n, j]`` are the tokens of frame ``j`` that
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
# Stage 3: top-K and chaining (Sec. 3.2)
# --------------------------------------------------------------------------------------------


SEARCHES = ("auto", "tiled", "allpairs")


def similarity_dtype(dtype: torch.dtype, device: torch.device | str | None = None) -> torch.dtype:
    """The dtype similarities of ``dtype`` features are computed in on ``device``: float64 for
    float16 and bfloat16 (float32 on Apple's ``mps``, which has no float64), else ``dtype``.

    Why float64: a float16 number is a multiple of 2^-24, so a product of two is a multiple of
    2^-48; for unit vectors every partial sum of a dot product is at most 1 in size
    (Cauchy-Schwarz), and a multiple of 2^-48 below 2^5 fits float64's 53-bit significand.
    So every sum is exact, in whatever order a kernel adds: the tiled search, the all-pairs
    product and the reference, on any device, get the same similarities and so the same
    matches. In float32 they differ in the last bits, enough to swap near-tied window cells
    (an H200 found differing matches at SD's shapes). bfloat16 products are exact too; their
    sums are rounded at float64's 1e-16. The cost, by arithmetic: the all-pairs products of 10
    frames of SD's 64x64 grid (C = 320) are ~100 GFLOP, ~2 ms at an H100's float64 rate and
    ~0.1 s on a consumer card whose float64 runs at 1/64 of float32; once per edit.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        return dtype
    on_mps = device is not None and torch.device(device).type == "mps"
    return torch.float32 if on_mps else torch.float64


def resolve_search(search: str, device: torch.device | str) -> str:
    """``"tiled"`` or ``"allpairs"``: ``search`` itself, or for ``"auto"`` the faster one on
    ``device``: the all-pairs product on CUDA (3.4x faster than the tiled search at SD's
    shapes on an H200), the tiled window search elsewhere (12x faster on the CPU)."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(map(repr, SEARCHES))}, got {search!r}")
    if search != "auto":
        return search
    return "allpairs" if torch.device(device).type == "cuda" else "tiled"


_CPU_BYTES = 2**30  # the all-pairs product's budget off CUDA: 1 GiB


def allpairs_chunk(tokens: int, device: torch.device | str, itemsize: int = 4) -> int | None:
    """Query rows per all-pairs product on ``device``: ``None`` (one ``(N, N)`` product) when
    it takes at most a quarter of the free memory (``torch.cuda.mem_get_info`` on CUDA, 1 GiB
    elsewhere), else the rows that do (at least 1)."""
    device = torch.device(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 4 * _CPU_BYTES
    rows = free // 4 // (tokens * itemsize)
    return None if rows >= tokens else max(1, int(rows))


def step_matches(
    rows: list[Tensor], grid: tuple[int, int], window: int, k: int, search: str = "tiled",
    chunk: int | None = None,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Top-``K`` window matches of every token of every frame in the next and previous frames.

    Args:
        rows: ``F`` frames as ``(N, C)`` token rows (``cove.window.token_rows``).
        grid: ``(H, W)``.
        window, k: ``l`` and ``K``.
        search: ``"tiled"`` (``cove.window.pair_similarity`` and ``reverse_similarity``) or
            ``"allpairs"`` (``cove.window.allpairs_similarity``); the same matches.
        chunk: query rows per all-pairs product (``None``: ``allpairs_chunk``, from the
            device's free memory).

    Returns:
        ``((index, score), (index, score))``, forward then backward, each ``(F-1, N, K)``:
        forward ``[a]`` are the matches of the tokens of frame ``a`` in frame ``a + 1``,
        backward ``[a]`` those of frame ``a + 1`` in frame ``a``; token indices
        (``index_dtype(N)``) into the frame searched and cosine similarities in the rows'
        dtype, best first (the lower index first among equal scores); each window is centred
        on the token's own cell. Similarities are computed in ``similarity_dtype`` (float16
        rows are upcast a pair at a time, to float64, where their sums are exact). Pair by
        pair: the tiled search reads the backward similarities from the forward ones where the
        windows agree, and two ``(N, l*l)`` are held at a time (plus the ``(N, N)`` product,
        or a chunk of it, for ``"allpairs"``).
    """
    if search not in ("tiled", "allpairs"):
        raise ValueError(f"search must be 'tiled' or 'allpairs', got {search!r}")
    H, W = grid
    N = H * W
    dtype, compute = rows[0].dtype, similarity_dtype(rows[0].dtype, rows[0].device)
    cells = window_indices(grid_cells(grid, rows[0].device), window, grid)  # (N, l*l)
    cells = cells.to(index_dtype(N))
    if search == "allpairs" and chunk is None:
        chunk = allpairs_chunk(N, rows[0].device, torch.finfo(compute).bits // 8)
    steps = [], [], [], []  # forward index, score; backward index, score
    target = rows[0].to(compute)  # (N, C)
    for a in range(len(rows) - 1):
        source, target = target, rows[a + 1].to(compute)  # (N, C) frames a, a+1
        if search == "allpairs":
            sim, back = allpairs_similarity(source, target, grid, window, chunk)  # (N, l*l) x2
        else:
            sim = pair_similarity(source, target, grid, window, _TILE)  # (N, l*l) a -> a+1
            back = reverse_similarity(sim, target, source, grid, window, _TILE)  # a+1 -> a
        for s, similarity in ((0, sim), (2, back)):
            top, pick = top_k(similarity, k)  # (N, K) each, best first
            steps[s].append(cells.gather(-1, pick))  # (N, K) token indices
            steps[s + 1].append(top.to(dtype))
    fi, fs, bi, bs = (torch.stack(x) for x in steps)  # (F-1, N, K) each
    return (fi, fs), (bi, bs)


def _chain_into(
    step_index: Tensor, step_score: Tensor, index: Tensor, score: Tensor, forward: bool
) -> None:
    """Chain one-frame matches into matches with every later (or earlier) frame, in place.

    ``step_index[a]`` ``(N, K)`` are the matches of the tokens of frame ``a`` in frame
    ``a + 1`` (``forward``) or ``a - 1``, stored at ``a`` (forward, ``a = 0..F-2``) or
    ``a - 1`` (backward, ``a = 1..F-1``); ``step_index``, ``step_score`` are ``(F-1, N, K)``.
    Fills ``index``, ``score`` ``(F, F, N, K)`` (pair-major: ``[i, j]`` is the ``(N, K)``
    block of frame pair ``i -> j``) for ``j > i`` (forward) or ``j < i``.

    The chain started at ``(i, n)`` reaches frame ``j`` at its top-1 match ``m`` there; its
    next step searches the window around ``m`` with the feature of ``m`` as the query, which is
    exactly the one-frame step of token ``m`` of frame ``j``. So a chain is a composition of
    one-frame steps, and only ``2 (F-1)`` frame pairs are ever searched (the paper's
    ``O(F H W l^2 C)`` cost) while every token of every frame starts its own chain.
    """
    F, _, N, K = index.shape
    index, score = index.view(F * F, N, K), score.view(F * F, N, K)  # row i*F + j: pair i -> j
    current = torch.arange(N, device=index.device).repeat(F, 1)  # (F, N) token in frame i +- (d-1)
    for d in range(1, F):
        starts = torch.arange(F - d, device=index.device) + (0 if forward else d)  # frames i
        steps = starts + d - 1 if forward else starts - d  # pair i+d-1 -> i+d, or i-d+1 -> i-d
        frames = starts + d if forward else starts - d  # frames j
        pick = current[starts][..., None].expand(-1, -1, K)  # (F-d, N, K)
        found = step_index[steps].gather(1, pick)  # (F-d, N, K)
        index[starts * F + frames] = found
        score[starts * F + frames] = step_score[steps].gather(1, pick)  # (F-d, N, K)
        current[starts] = found[..., 0].long()  # top-1 becomes the next query


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_unit_features(features, tolerance: float = 1e-2) -> list[Tensor]:
    """Refuse (one-line ValueError) anything but a finite floating ``(F, C, H, W)`` tensor whose
    vectors have unit L2 norm over ``C`` (within ``tolerance``): ``correspond`` does not
    renormalise, so that its scores are cosine similarities of what the caller passed.

    Returns the ``F`` frames as ``(N, C)`` token rows (``cove.window.token_rows``): the norms
    are taken over those contiguous rows, and ``correspond`` searches them."""
    if not isinstance(features, Tensor):
        raise ValueError(f"features must be a torch.Tensor (F, C, H, W), got {type(features).__name__}")
    if features.ndim != 4 or min(features.shape) < 1:
        raise ValueError(f"features must be (F, C, H, W), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be a floating-point tensor, got {features.dtype}")
    rows = [token_rows(frame) for frame in features]  # F x (N, C)
    norms = torch.stack([torch.linalg.vector_norm(r.float(), dim=-1) for r in rows])  # (F, N)
    if not torch.isfinite(norms).all() and not torch.isfinite(features).all():  # NaN/Inf reach the norm
        raise ValueError("features hold NaN or Inf values")
    worst = (norms - 1).abs().max().item()
    if worst > tolerance:
        raise ValueError(f"features must have unit L2 norm over C (dim 1), found norms up to "
                         f"{norms.max().item():.3g} and down to {norms.min().item():.3g}; pass "
                         "torch.nn.functional.normalize(features, dim=1)")
    return rows


def correspond(features: Tensor, window: int = 9, k: int = 3, *, search: str = "auto") -> Correspondence:
    """Chained top-``K`` sliding-window correspondence between all frames (Sec. 3.2).

    For token ``n`` of frame ``i`` and each later frame ``j = i+1, i+2, ...``: search the
    ``l x l`` window of frame ``j`` centred on the chain's current position, shifted inward so
    that it lies inside the frame (always ``l*l`` candidates); keep the ``K`` most similar cells
    (best first); then the chain moves to the top-1 match, whose position is the next window
    centre and whose feature is the next query. The same backwards for ``j = i-1, i-2, ...``.

    Args:
        features: ``(F, C, H, W)`` diffusion features, already L2-normalised over ``C`` by the
            caller (``cove.features.extract_features`` does it) so that dot products are cosine
            similarities. They are not renormalised here: a tensor of other norms (or with
            NaN / Inf values, or not a tensor) is refused (``check_unit_features``).
        window: ``l`` (Sec. 3.2: 9), odd and ``<= min(H, W)``.
        k: ``K`` (Table 2: 3), in ``1..l*l``.
        search: how the windows are searched, pair by pair: ``"tiled"``
            (``cove.window.pair_similarity``, tiled matrix products, the same numbers as
            ``local_similarity``; the faster on the CPU), ``"allpairs"``
            (``cove.window.allpairs_similarity``: every token against every token, the
            windows picked out; the faster on CUDA, in chunks of query rows when ``(N, N)``
            would not fit in a quarter of the free memory) or ``"auto"`` (the faster on the
            features' device, ``resolve_search``). The same matches either way: float16 and
            bfloat16 features are compared in float64 (``similarity_dtype``: exact for
            float16, so no summation order can swap two cells), ties go to the lower index.
    ``correspond_reference`` is the same computation as the paper's per-token loop.

    Returns:
        ``Correspondence`` with ``index`` (``index_dtype(N)``), ``score`` ``(F, N, F, K)`` and
        ``grid = (H, W)``;
        ``index[i, n, i, :] = n`` and ``score[i, n, i, :] = 1`` (a token is its own match).
        ``score`` has the features' dtype.
        Peak memory: the features as token rows ``(F, N, C)`` (a view if they are
        channels-last), ``2 (F-1) N K`` for the one-frame steps, the ``(F, N, F, K)`` output and
        one frame pair's ``(N, l*l)`` similarities (and its ``(N, N)`` product, or a chunk of
        it, for ``"allpairs"``); nothing of size ``(F*N, l*l, C)``.
    """
    rows = check_unit_features(features)  # F x (N, C) token rows
    search = resolve_search(search, features.device)
    F, C, H, W = features.shape
    N = H * W
    for name, value in (("window", window), ("k", k)):
        if not _is_int(value):
            raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    check_window(window, (H, W))
    if not 1 <= k <= window * window:
        raise ValueError(f"k must lie in 1..window**2 = 1..{window * window}, got {k}")
    device = features.device
    index = torch.arange(N, device=device, dtype=index_dtype(N))[None, None, :, None]
    index = index.repeat(F, F, 1, k)  # (F, F, N, K) pair-major while chaining
    score = torch.ones(F, F, N, k, dtype=features.dtype, device=device)  # (F, F, N, K)
    if F > 1:
        fwd, bwd = step_matches(rows, (H, W), window, k, search)  # (F-1, N, K) x2 each
        _chain_into(*fwd, index, score, forward=True)
        _chain_into(*bwd, index, score, forward=False)
    index = index.transpose(1, 2).contiguous()  # (F, N, F, K)
    score = score.transpose(1, 2).contiguous()  # (F, N, F, K)
    return Correspondence(index=index, score=score, grid=(H, W))


def correspond_reference(features: Tensor, window: int = 9, k: int = 3) -> Correspondence:
    """``correspond`` as the paper states it: one token, one chain, one window at a time.

    Plain Python loops, for reading next to Sec. 3.2 (and for tests); ``correspond`` gives the
    same ``index`` and ``score`` (up to float rounding) thousands of times faster.
    """
    F, C, H, W = features.shape
    N = H * W
    check_window(window, (H, W))
    index = torch.zeros(F, N, F, k, dtype=index_dtype(N))
    score = torch.zeros(F, N, F, k, dtype=features.dtype)
    features = features.to(similarity_dtype(features.dtype, features.device))  # float16: in float64, exact
    half = window // 2
    for i in range(F):  # every token of every frame starts its own chain
        for n in range(N):
            index[i, n, i], score[i, n, i] = n, 1.0  # a token is its own match
            for step in (1, -1):  # forwards, then backwards
                x, y = n % W, n // W  # the window centre: the chain's current cell
                query = features[i, :, y, x]  # (C,) the chain's current feature
                j = i + step
                while 0 <= j < F:
                    x0 = min(max(x - half, 0), W - window)  # window shifted inward at borders
                    y0 = min(max(y - half, 0), H - window)
                    candidates = []  # (similarity, token) of the l*l window cells, row-major
                    for yy in range(y0, y0 + window):
                        for xx in range(x0, x0 + window):
                            candidates.append((float(query @ features[j, :, yy, xx]), yy * W + xx))
                    candidates.sort(key=lambda c: -c[0])  # best first (Eq. 10: top-K)
                    for r, (s, m) in enumerate(candidates[:k]):
                        index[i, n, j, r], score[i, n, j, r] = m, s
                    best = candidates[0][1]  # the top-1 match: next centre and next query
                    x, y = best % W, best // W
                    query = features[j, :, y, x]
                    j += step
    return Correspondence(index=index, score=score, grid=(H, W))


def match_agreement(a: Correspondence, b: Correspondence) -> dict:
    """How far two correspondences of the same clip agree, entry by entry.

    Args:
        a, b: ``Correspondence`` with ``index`` and ``score`` of the same shape ``(F, N, F, K)``
            (e.g. ``correspond`` and ``correspond_reference`` of the same features).

    Returns:
        ``{"matches": F*N*F*K entries, "differing": entries whose index differs, "share":
        differing / matches, "max_score_gap": the largest |score difference| among the
        differing entries (0.0 if none)}``. Once a chain's top-1 differs, its later frames
        usually differ too: a near-tie counts once per entry it moves.
    """
    for name, c in (("a", a), ("b", b)):
        if not isinstance(c, Correspondence):
            raise ValueError(f"{name}: expected a Correspondence, got {type(c).__name__}")
    if a.index.shape != b.index.shape:
        raise ValueError(f"b: expected index of shape {tuple(a.index.shape)} (a's), got {tuple(b.index.shape)}")
    differ = a.index.cpu().long() != b.index.cpu().long()  # (F, N, F, K)
    matches, differing = differ.numel(), int(differ.sum())
    gap = (a.score.cpu().double() - b.score.cpu().double()).abs()[differ]  # (differing,)
    return {"matches": matches, "differing": differing, "share": differing / max(matches, 1),
            "max_score_gap": gap.max().item() if differing else 0.0}


def __getattr__(name):  # the paper's baseline lives beside the method: cove.extras.flow
    if name == "flow_correspondence":
        from .extras.flow import flow_correspondence

        return flow_correspondence
    raise AttributeError(f"module 'cove.correspondence' has no attribute {name!r}")
