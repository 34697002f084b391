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


def merge_groups(metric: Tensor, r: int) -> Tensor:
    """Bipartite soft matching on ``metric``: where each token goes (ToMe).

    Args:
        metric: ``(..., T, C)`` tokens to compare (cosine similarity); leading dims are
            independent batches (e.g. ``(F, N)`` queries, each with its own ``T`` tokens).
        r: how many tokens to merge away, in ``0..floor(T / 2)``.

    Returns:
        long ``(..., T)``: the slot in ``0..T-r-1`` of the merged tokens that each token goes
        into. Slots ``0..ceil(T/2)-r-1`` are the unmerged A-tokens (most similar first), the
        last ``floor(T/2)`` the B-tokens, each with the A-tokens merged into it.
    """
    T = metric.shape[-2]
    with torch.no_grad():
        norm = metric.norm(dim=-1)  # (..., T)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]  # (..., Ta, C), (..., Tb, C)
        scores = a @ b.transpose(-1, -2)  # (..., Ta, Tb) dot products
        scores = scores / (norm[..., ::2, None] * norm[..., None, 1::2])  # cosine similarities
        node_max, node_idx = scores.max(dim=-1)  # (..., Ta) best B partner of each A-token
        edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)  # (..., Ta)
        Ta = edge_idx.shape[-1]
        order = torch.arange(Ta, device=metric.device).expand_as(edge_idx)  # (..., Ta)
        rank = torch.empty_like(edge_idx).scatter_(-1, edge_idx, order)  # (..., Ta) rank of each A
        kept = Ta - r  # unmerged A-tokens
        group = torch.empty(*metric.shape[:-1], dtype=torch.long, device=metric.device)  # (..., T)
        group[..., ::2] = torch.where(rank >= r, rank - r, kept + node_idx)  # A: own slot or partner's
        group[..., 1::2] = kept + torch.arange(T // 2, device=metric.device)  # B: after the kept A
    return group


def _slots(group: Tensor, x: Tensor) -> Tensor:
    return group[..., None].expand(*x.shape[:-1], x.shape[-1])  # (..., T, C')


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
    group = merge_groups(metric, r)  # (..., T)

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        out = x.new_zeros(*x.shape[:-2], T - r, x.shape[-1])  # (..., T - r, C')
        return out.scatter_reduce_(-2, _slots(group, x), x, reduce=mode, include_self=False)

    def unmerge(x: Tensor) -> Tensor:
        return x.gather(-2, _slots(group, x[..., :1, :].expand(*x.shape[:-2], T, x.shape[-1])))

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


def bipartite_merge(tokens: Tensor, ratio: float, *, metric: Tensor | None = None,
                    return_sizes: bool = False, return_groups: bool = False):
    """Merge a fraction ``ratio`` of ``tokens`` into their most similar partners (Sec. 3.3).

    The one merging path of cove: correspondence-guided attention (``cove.attention``) calls
    it on the gathered keys and values.

    Important args:
        tokens: ``(..., T, C)``.
        ratio: fraction to merge away: ``r = min(floor(ratio * T), floor(T / 2))``
            (0.5 in the paper: 27 -> 14 tokens for 10 frames and ``K = 3``, 57 -> 29 for 20).

    Args to tinker with:
        metric: ``(..., T, C'')`` what the matching compares (default: ``tokens``); CGA passes
            the keys and merges keys and values (concatenated over ``C``) with one assignment.
        return_sizes: also return ``(..., T - r, 1)``, how many input tokens each output token
            averages.
        return_groups: also return long ``(..., T)``, the output token each input token went
            into (``merge_groups``; ``arange(T)`` when ``r == 0``).

    Returns:
        ``(..., T - r, C)`` size-weighted averages (sizes start at 1), in ``make_merge``'s
        order; ``tokens`` itself (the same object) when ``r == 0``. With ``return_sizes`` /
        ``return_groups``, a tuple ``(merged, sizes[, groups])`` / ``(merged, groups)``.
    """
    T = tokens.shape[-2]
    r = merge_count(T, ratio)
    if r == 0:
        merged = tokens
        size = torch.ones_like(tokens[..., :1]) if return_sizes else None
        group = torch.arange(T, device=tokens.device).expand(tokens.shape[:-1]) if return_groups else None
    else:
        group = merge_groups(tokens if metric is None else metric, r)  # (..., T)
        ones = tokens.new_ones(1, 1).expand(*tokens.shape[:-1], 1)  # (..., T, 1)
        size = tokens.new_zeros(*tokens.shape[:-2], T - r, 1).scatter_add_(-2, group[..., None], ones)
        merged = tokens.new_zeros(*tokens.shape[:-2], T - r, tokens.shape[-1])  # (..., T - r, C)
        merged = merged.scatter_add_(-2, _slots(group, tokens), tokens) / size
    extra = tuple(x for x, want in ((size, return_sizes), (group, return_groups)) if want)
    return (merged, *extra) if extra else merged
