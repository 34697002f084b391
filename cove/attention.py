"""Stage 4 of COVE: correspondence-guided attention (Sec. 3.3, Eqs. 11-14).

A token of frame ``i`` attends only to its ``K`` corresponding tokens in every other frame:
``(F-1)*K`` keys and values, optionally merged (stage 5, ``cove.merging``) before the
multi-head softmax attention ``softmax(q K^T / sqrt(d)) V``, ``d = C / heads``. There are no
weights of its own: ``q``, ``k``, ``v`` come from the surrounding self-attention layer.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .merging import make_merge, merge_count, merge_with_sizes


def other_frames(frames: int, device: torch.device | str | None = None) -> Tensor:
    """Long ``(F, F-1)``: row ``i`` lists the frames ``j != i`` in increasing order."""
    j = torch.arange(frames - 1, device=device)  # (F-1,)
    i = torch.arange(frames, device=device)[:, None]  # (F, 1)
    return j + (j >= i).long()  # (F, F-1)


def gather_correspondents(x: Tensor, index: Tensor) -> Tensor:
    """The tokens of ``x`` that each token corresponds to in every *other* frame (Eq. 11-12).

    Args:
        x: ``(F, N, C)`` tokens of all frames (keys or values).
        index: long ``(F, N', F, K)`` correspondence (``Correspondence.index``); ``N'`` may be
            a chunk of the ``N`` tokens, the indices still point into all ``N``.

    Returns:
        ``(F, N', (F-1)*K, C)``: for query ``(i, n)``, entry ``t`` is token
        ``index[i, n, j, t % K]`` of frame ``j = other_frames(F)[i, t // K]`` (frames in
        increasing order, own frame excluded, matches best first within a frame).
    """
    F, N, C = x.shape
    _, Nq, _, K = index.shape
    others = other_frames(F, x.device)  # (F, F-1)
    picked = index.gather(2, others[:, None, :, None].expand(F, Nq, F - 1, K))  # (F, N', F-1, K)
    flat = others[:, None, :, None] * N + picked  # (F, N', F-1, K) rows of x.view(F*N, C)
    return x.reshape(F * N, C)[flat.reshape(F, Nq, (F - 1) * K)]  # (F, N', (F-1)*K, C)


def _check(q: Tensor, k: Tensor, v: Tensor, index: Tensor, heads: int, merge_ratio: float) -> None:
    if q.ndim != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            "q, k, v must all be (F, N, C), "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    F, N, C = q.shape
    if heads < 1 or C % heads:
        raise ValueError(f"channels C = {C} must be divisible by heads = {heads}")
    if index.ndim != 4 or index.shape[:3] != (F, N, F):
        raise ValueError(
            f"index must be (F, N, F, K) = ({F}, {N}, {F}, K), got {tuple(index.shape)}"
        )
    if F < 2:
        raise ValueError(f"guided attention needs at least 2 frames, got {F}")
    if not 0.0 <= merge_ratio <= 1.0:
        raise ValueError(f"merge_ratio must lie in [0, 1], got {merge_ratio}")


def _attend(q: Tensor, k: Tensor, v: Tensor, index: Tensor, heads: int, merge_ratio: float):
    """Guided attention for a chunk of query tokens.

    ``q`` ``(F, n, C)`` chunk of queries, ``k``, ``v`` ``(F, N, C)`` all tokens, ``index``
    ``(F, n, F, K)``. Returns ``(out (F, n, C), weights (F, n, heads, T'), unmerge, size)``
    where ``T'`` is the number of keys after merging and ``size`` ``(F, n, T', 1)``.
    """
    F, n, C = q.shape
    d = C // heads
    keys = gather_correspondents(k, index)  # (F, n, T, C), T = (F-1)*K
    values = gather_correspondents(v, index)  # (F, n, T, C)
    size = torch.ones_like(keys[..., :1])  # (F, n, T, 1)
    merge, unmerge = make_merge(keys, merge_count(keys.shape[-2], merge_ratio))  # stage 5
    keys, size = merge_with_sizes(merge, keys, size)  # (F, n, T', C), (F, n, T', 1)
    values, _ = merge_with_sizes(merge, values)  # (F, n, T', C)
    T = keys.shape[-2]
    qh = q.view(F, n, heads, d)  # (F, n, heads, d)
    kh = keys.view(F, n, T, heads, d).transpose(2, 3)  # (F, n, heads, T', d)
    vh = values.view(F, n, T, heads, d).transpose(2, 3)  # (F, n, heads, T', d)
    logits = torch.einsum("fnhd,fnhtd->fnht", qh, kh) / math.sqrt(d)  # (F, n, heads, T')
    logits = logits + size.log().transpose(-1, -2)  # proportional attention, + log(size)
    weights = logits.softmax(dim=-1)  # (F, n, heads, T')
    out = torch.einsum("fnht,fnhtd->fnhd", weights, vh)  # (F, n, heads, d)
    return out.reshape(F, n, C), weights, unmerge, size


def _chunks(tokens: int, token_chunk: int | None):
    if token_chunk is not None and token_chunk < 1:
        raise ValueError(f"token_chunk must be None or >= 1, got {token_chunk}")
    step = tokens if token_chunk is None else token_chunk
    return [slice(s, s + step) for s in range(0, tokens, step)]


def guided_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    heads: int,
    *,
    merge_ratio: float = 0.0,
    token_chunk: int | None = None,
) -> Tensor:
    """Correspondence-guided attention (Eqs. 11-14).

    For the query at ``(i, n)``, gather the tokens ``index[i, n, j, :]`` of ``k`` and ``v``
    of every frame ``j != i`` (its own frame is excluded): ``T = (F-1)*K`` keys and values.
    Optionally merge them (stage 5: bipartite matching with the gathered keys as the metric,
    the values merged with the same assignment, size-weighted averages). Then multi-head
    ``softmax(q K^T / sqrt(d) + log(size)) V`` with ``d = C / heads``; the ``log(size)`` term
    is ToMe's proportional attention: a merged key standing for ``s`` tokens gets the weight
    that its ``s`` (identical) members would have had together, and it is 0 without merging.

    Important args:
        q, k, v: ``(F, N, C)`` queries, keys, values of all frames (heads packed in ``C``).
        index: long ``(F, N, F, K)``, ``Correspondence.index`` on the same ``H x W`` grid.
        heads: attention heads; ``C`` must be divisible by it.

    Args to tinker with:
        merge_ratio: fraction of the gathered tokens merged away (Sec. 3.3: 0.5); 0 = none.
        token_chunk: process this many tokens (of every frame) at once to bound memory
            (the gathered keys and values are ``(F, token_chunk, (F-1)*K, C)`` each); the
            result does not depend on it.

    Returns:
        ``(F, N, C)`` attention output, heads packed back in ``C``.
    """
    _check(q, k, v, index, heads, merge_ratio)
    out = [
        _attend(q[:, part], k, v, index[:, part], heads, merge_ratio)[0]  # (F, chunk, C)
        for part in _chunks(q.shape[1], token_chunk)
    ]
    return torch.cat(out, dim=1)  # (F, N, C)


def attention_weights(
    q: Tensor,
    k: Tensor,
    index: Tensor,
    heads: int,
    *,
    merge_ratio: float = 0.0,
    tokens: Tensor | slice | None = None,
) -> Tensor:
    """Where each query looks: the weights of ``guided_attention`` over its gathered tokens.

    Args:
        q, k: ``(F, N, C)``; index: long ``(F, N, F, K)``; heads, merge_ratio: as in
            ``guided_attention`` (the same code computes them).
        tokens: which query tokens (of every frame) to compute, e.g. ``[n]`` or a slice;
            ``None`` = all ``N``.

    Returns:
        ``(F, N', heads, (F-1)*K)`` weights over the gathered tokens in the order of
        ``gather_correspondents`` (so ``[i, :, :, t]`` is match ``t % K`` in frame
        ``other_frames(F)[i, t // K]``); each row sums to 1. With merging, a merged key's
        weight is shared equally by the ``s`` gathered tokens it stands for, so that
        ``guided_attention = weights @ gather_correspondents(v, index)`` either way.
    """
    _check(q, k, k, index, heads, merge_ratio)
    pick = slice(None) if tokens is None else tokens
    q, index = q[:, pick], index[:, pick]  # (F, N', C), (F, N', F, K)
    _, weights, unmerge, size = _attend(q, k, k, index, heads, merge_ratio)  # (F, N', heads, T')
    shared = weights / size.transpose(-1, -2)  # (F, N', heads, T') weight per member token
    return unmerge(shared.transpose(-1, -2)).transpose(-1, -2)  # (F, N', heads, (F-1)*K)
