"""Stage 5 of COVE: temporal-dimensional token merging (Sec. 3.3), ToMe's bipartite matching.

The ``(F-1)*K`` tokens a query gathers from the other frames are largely the same surface point
seen again and again, so half of them are merged before attention. Bipartite soft matching
(Bolya et al., "Token Merging", ICLR 2023): split the ``T`` tokens alternately into sets A (even
positions) and B (odd positions), link every A-token to its most similar B-token (cosine), and
merge the ``r`` most similar links into their B partner. With ratio 0.5 (the paper's setting):

======================  ======================  =========================
frames                  gathered ``T``          merged ``T - r``
======================  ======================  =========================
10 frames, ``K = 3``    ``9 * 3 = 27``          ``27 - 13 = 14``
20 frames, ``K = 3``    ``19 * 3 = 57``         ``57 - 28 = 29``
======================  ======================  =========================

with ``r = min(floor(ratio * T), floor(T / 2))``. The API follows tomesd:
``merge, unmerge = make_merge(metric, r)``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

Merge = Callable[..., Tensor]


def merge_count(tokens: int, ratio: float) -> int:
    """``r = min(floor(ratio * T), floor(T / 2))``: how many of ``T`` tokens a ratio merges away
    (e.g. ``T = 27``, ratio 0.5 -> 13; ``T = 57`` -> 28)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"merge ratio must lie in [0, 1], got {ratio}")
    return min(math.floor(ratio * tokens), tokens // 2)


def _identity(x: Tensor, *args, **kwargs) -> Tensor:
    return x


def make_merge(metric: Tensor, r: int) -> tuple[Merge, Merge]:
    """Bipartite soft matching on ``metric``: build ``merge`` and ``unmerge`` closures (ToMe).

    Important args:
        metric: ``(..., T, C)`` tokens to compare (cosine similarity); leading dims are
            independent batches (e.g. ``(F, N)`` queries, each with its own ``T`` tokens).
        r: how many tokens to merge away, clipped to ``floor(T / 2)``; ``r <= 0`` returns
            identity closures.

    Returns:
        ``merge(x (..., T, C'), mode="mean") -> (..., T - r, C')``: the ``ceil(T/2) - r``
        unmerged A-tokens (most similar first) followed by the ``floor(T/2)`` B-tokens, each
        B-token replaced by the mean (``mode="mean"``) or sum (``"sum"``) of itself and the
        A-tokens merged into it. ``x`` may be any tokens in the same order as ``metric``
        (keys, values, sizes).
        ``unmerge(x (..., T - r, C')) -> (..., T, C')``: every original token gets the value of
        the merged token it went into.
        Use ``merge_with_sizes`` for ToMe's size-weighted average.
    """
    T = metric.shape[-2]
    r = min(r, T // 2)
    if r <= 0:
        return _identity, _identity
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]  # (..., Ta, C), (..., Tb, C)
        scores = a @ b.transpose(-1, -2)  # (..., Ta, Tb) cosine similarities
        node_max, node_idx = scores.max(dim=-1)  # (..., Ta) best B partner of each A-token
        edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]  # (..., Ta, 1)
        unm_idx = edge_idx[..., r:, :]  # (..., Ta - r, 1) A-tokens kept
        src_idx = edge_idx[..., :r, :]  # (..., r, 1) A-tokens merged away
        dst_idx = node_idx[..., None].gather(-2, src_idx)  # (..., r, 1) their B partners

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        src, dst = x[..., ::2, :], x[..., 1::2, :]  # (..., Ta, C'), (..., Tb, C')
        *batch, Ta, C = src.shape
        unm = src.gather(-2, unm_idx.expand(*batch, Ta - r, C))  # (..., Ta - r, C')
        src = src.gather(-2, src_idx.expand(*batch, r, C))  # (..., r, C')
        into = dst_idx.expand(*batch, r, C)  # (..., r, C')
        dst = dst.scatter_reduce(-2, into, src, reduce=mode)  # (..., Tb, C')
        return torch.cat([unm, dst], dim=-2)  # (..., T - r, C')

    def unmerge(x: Tensor) -> Tensor:
        Ta_unm = unm_idx.shape[-2]
        unm, dst = x[..., :Ta_unm, :], x[..., Ta_unm:, :]  # (..., Ta - r, C'), (..., Tb, C')
        *batch, _, C = x.shape
        src = dst.gather(-2, dst_idx.expand(*batch, r, C))  # (..., r, C') value of the partner
        out = x.new_zeros(*batch, T, C)  # (..., T, C')
        out[..., 1::2, :] = dst
        out.scatter_(-2, (2 * unm_idx).expand(*batch, Ta_unm, C), unm)  # A-token a sits at 2a
        out.scatter_(-2, (2 * src_idx).expand(*batch, r, C), src)
        return out

    return merge, unmerge


def merge_with_sizes(merge: Merge, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """ToMe's size-weighted merge: ``(sum of size * x) / (sum of size)`` over each merged group.

    Args:
        merge: a closure from ``make_merge``.
        x: ``(..., T, C)`` tokens.
        size: ``(..., T, 1)`` how many original tokens each token already stands for;
            ``None`` = all ones (the first merge).

    Returns:
        ``(x (..., T - r, C), size (..., T - r, 1))``: merged tokens and their sizes.
    """
    if size is None:
        size = torch.ones_like(x[..., :1])  # (..., T, 1)
    x = merge(x * size, mode="sum")  # (..., T - r, C)
    size = merge(size, mode="sum")  # (..., T - r, 1)
    return x / size, size


def bipartite_merge(tokens: Tensor, ratio: float, *, return_sizes: bool = False):
    """Merge a fraction ``ratio`` of ``tokens`` into their most similar partners (Sec. 3.3).

    Important args:
        tokens: ``(..., T, C)``; also the similarity metric.
        ratio: fraction to merge away: ``r = min(floor(ratio * T), floor(T / 2))``
            (0.5 in the paper: 27 -> 14 tokens for 10 frames and ``K = 3``, 57 -> 29 for 20).

    Args to tinker with:
        return_sizes: also return ``(..., T - r, 1)``, how many input tokens each output token
            averages.

    Returns:
        ``(..., T - r, C)`` size-weighted averages (sizes start at 1); ``tokens`` itself (the
        same object) when ``r == 0``.
    """
    r = merge_count(tokens.shape[-2], ratio)
    if r == 0:
        return (tokens, torch.ones_like(tokens[..., :1])) if return_sizes else tokens
    merge, _ = make_merge(tokens, r)
    merged, size = merge_with_sizes(merge, tokens)
    return (merged, size) if return_sizes else merged
