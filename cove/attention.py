"""Stage 4 of COVE: correspondence-guided attention (Sec. 3.3, Eqs. 11-14).

A token of frame ``i`` attends only to its ``K`` corresponding tokens in every other frame:
``(F-1)*K`` keys and values, optionally merged (stage 5, ``cove.merging``) before the
multi-head softmax attention ``softmax(q K^T / sqrt(d)) V``, ``d = C / heads``. There are no
weights of its own: ``q``, ``k``, ``v`` come from the surrounding self-attention layer.

Memory is bounded by default: the queries are processed in blocks of (frames, tokens) chosen
by ``block_rows`` from the device: on CUDA as many as fit in a quarter of its free memory
(``torch.cuda.mem_get_info``; one block on a large GPU), on the CPU blocks whose gathered keys
and values are about the size of ``k`` itself, so a CGA call needs a few times its inputs
whatever ``F`` is; ``token_chunk`` / ``frame_chunk`` override the block shape.

A block is computed one of two ways, equal up to float rounding: ``scaled_dot_product_attention``
with each query a batch entry against its gathered keys (the faster on the CPU), or the heads'
elementwise products, sums and softmax written out (``_attend``; merging always uses it). GPU
attention kernels are built for long tiles of queries, not one query per batch entry, so on
CUDA the products, a few large passes over the gathered keys, can be the faster: there the
first call of each shape times both and keeps the faster (``fused_is_faster``,
``CGA_CHOICES``). Merging (stage 5) is ``cove.merging.bipartite_merge``, called once per block
on the keys and values together.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as nnf
from torch import Tensor

from .merging import bipartite_merge

SDPA_ROWS = 2**15  # queries per scaled_dot_product_attention call of the fused path
CGA_CHOICES: dict[tuple, bool] = {}  # (device, dtype, F, N, C, heads, K, k is v, block) -> SDPA was faster


def other_frames(frames: int, device: torch.device | str | None = None) -> Tensor:
    """Long ``(F, F-1)``: row ``i`` lists the frames ``j != i`` in increasing order."""
    j = torch.arange(frames - 1, device=device)  # (F-1,)
    i = torch.arange(frames, device=device)[:, None]  # (F, 1)
    return j + (j >= i).long()  # (F, F-1)


def gather_correspondents(x: Tensor, index: Tensor, frames: slice | None = None) -> Tensor:
    """The tokens of ``x`` that each token corresponds to in every *other* frame (Eq. 11-12).

    Args:
        x: ``(F, N, C)`` tokens of all frames (keys or values).
        index: integer ``(F', N', F, K)`` correspondence (``Correspondence.index``, or a block
            of it: ``F'`` query frames, ``N'`` query tokens); the indices point into all ``N``.
        frames: which query frames ``index`` holds (default: all ``F``).

    Returns:
        ``(F', N', (F-1)*K, C)``: for query ``(i, n)``, entry ``t`` is token
        ``index[i, n, j, t % K]`` of frame ``j = other_frames(F)[i, t // K]`` (frames in
        increasing order, own frame excluded, matches best first within a frame).
    """
    F, N, C = x.shape
    Fq, Nq, _, K = index.shape
    others = other_frames(F, x.device)[frames if frames is not None else slice(None)]  # (F', F-1)
    picked = index.gather(2, others[:, None, :, None].expand(Fq, Nq, F - 1, K))  # (F', N', F-1, K)
    rows = others[:, None, :, None] * N + picked.long()  # (F', N', F-1, K) rows of x.view(F*N, C)
    return x.reshape(F * N, C).index_select(0, rows.flatten()).view(Fq, Nq, (F - 1) * K, C)


def block_rows(frames: int, tokens: int, gathered: int, *, free: int | None = None,
               row_bytes: int | None = None) -> int:
    """Queries per CGA block by default.

    Args:
        frames, tokens, gathered: ``F``, ``N`` and ``T = (F-1)*K``.
        free: bytes free on the device (``free_memory``); ``None`` (the CPU): ``max(1, F*N //
            T)`` rows, so that a block's gathered ``(rows, T, C)`` keys are about the size of
            the layer's own ``(F, N, C)`` keys.
        row_bytes: bytes one query needs (``row_bytes``); required with ``free``.

    Returns:
        With ``free``: the rows whose gathered keys, values and intermediates fit in a quarter
        of it, between 1 and ``F*N`` (one block on a large GPU).
    """
    if free is None:
        return max(1, frames * tokens // gathered)
    return max(1, min(frames * tokens, free // 4 // row_bytes))


def row_bytes(gathered: int, channels: int, heads: int, itemsize: int) -> int:
    """Bytes one CGA query holds at once (an upper bound): its gathered ``(T, C)`` keys and
    values and one per-head product of that size, ``T^2 / 4`` merge scores and a few
    ``(T, heads)`` logits in the activations' dtype, and ``T`` long gather rows (a few times)."""
    T, C = gathered, channels
    return itemsize * (3 * T * C + T * T // 4 + 6 * T * heads + 2 * C) + 4 * 8 * T


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free on ``device``: ``torch.cuda.mem_get_info`` on CUDA, ``None`` elsewhere."""
    device = torch.device(device)
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


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


def _attend(q: Tensor, k: Tensor, v: Tensor, index: Tensor, heads: int, merge_ratio: float,
            frames: slice | None = None) -> tuple[Tensor, Tensor]:
    """Guided attention for a block of queries.

    ``q`` ``(F', n, C)`` block of queries (frames ``frames``), ``k``, ``v`` ``(F, N, C)`` all
    tokens, ``index`` ``(F', n, F, K)``. Returns ``(out (F', n, C), weights (F', n, heads, T))``,
    ``weights`` per gathered token (a merged key's weight shared by its members). The
    ``R = F'*n`` queries' keys and values are ``(R, T, C)``, viewed ``(R, T, heads, d)``: each
    head's logits and output take only its own ``d`` channels.

    Merging keys and values, then attending, equals merging the logits: ``q . mean(k)`` is
    ``mean(q . k)`` and ``sum_g w_g mean_g(v)`` is ``sum_t (w_g(t) / s_g(t)) v_t``. So the
    logits of the ``T`` gathered keys are merged (``bipartite_merge``, keys as the metric),
    the softmax runs over the ``T'`` merged ones, and each merged weight is spread over its
    members: the same result as the paper's merge-then-attend without building merged
    ``(F', n, T', C)`` keys and values.
    """
    Fq, n, C = q.shape
    R, d = Fq * n, C // heads
    keys = gather_correspondents(k, index, frames).view(R, -1, C)  # (R, T, C), T = (F-1)*K
    values = keys if v is k else gather_correspondents(v, index, frames).view(R, -1, C)
    T = keys.shape[1]
    per_head = keys.view(R, T, heads, d) * q.reshape(R, 1, heads, d)  # (R, T, heads, d)
    logits = per_head.sum(-1) / math.sqrt(d)  # (R, T, heads): q . k per head
    del per_head
    logits, size, group = bipartite_merge(logits, merge_ratio, metric=keys, return_sizes=True,
                                          return_groups=True)  # stage 5: (R, T', heads)
    if logits.shape[1] < T:
        logits = logits + size.log()  # proportional attention, + log(size)
    weights = logits.softmax(dim=1) / size  # (R, T', heads) per member of a merged key
    if logits.shape[1] < T:
        weights = weights.gather(1, group[..., None].expand(R, T, heads))  # (R, T, heads)
    out = (weights[..., None] * values.view(R, T, heads, d)).sum(1)  # (R, heads, d): own head's part
    return out.view(Fq, n, C), weights.transpose(1, 2).reshape(Fq, n, heads, T)


def _attend_fused(q: Tensor, k: Tensor, v: Tensor, index: Tensor, heads: int,
                  frames: slice | None = None) -> Tensor:
    """Guided attention for a block of queries without merging, all heads at once.

    ``q`` ``(F', n, C)`` block of queries (frames ``frames``), ``k``, ``v`` ``(F, N, C)`` all
    tokens, ``index`` ``(F', n, F, K)``; returns ``(F', n, C)``. Each of the ``R = F'*n``
    queries is one batch entry of ``scaled_dot_product_attention``: its ``(heads, 1, d)``
    query against its ``(heads, T, d)`` gathered keys and values, strided views of the
    ``(R, T, C)`` gather (no copy), at most ``SDPA_ROWS`` queries per call. The same
    ``softmax(q K^T / sqrt(d)) V`` per head as ``_attend`` with no merging.
    """
    Fq, n, C = q.shape
    R, d = Fq * n, C // heads
    keys = gather_correspondents(k, index, frames).view(R, -1, C)  # (R, T, C), T = (F-1)*K
    values = keys if v is k else gather_correspondents(v, index, frames).view(R, -1, C)
    T = keys.shape[1]
    queries = q.reshape(R, heads, 1, d)  # (R, heads, 1, d)
    keys = keys.view(R, T, heads, d).transpose(1, 2)  # (R, heads, T, d), a strided view
    values = values.view(R, T, heads, d).transpose(1, 2)  # (R, heads, T, d)
    out = torch.empty(R, heads, 1, d, dtype=q.dtype, device=q.device)  # (R, heads, 1, d)
    for r in range(0, R, SDPA_ROWS):
        rows = slice(r, r + SDPA_ROWS)
        out[rows] = nnf.scaled_dot_product_attention(queries[rows], keys[rows], values[rows])
    return out.view(Fq, n, C)  # heads packed back in C


def _seconds(fn, device: torch.device) -> float:
    """Wall seconds of ``fn()`` after one untimed call, the device synchronised around it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *args: None)
    fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def fused_is_faster(q: Tensor, k: Tensor, v: Tensor, index: Tensor, heads: int,
                    block: tuple[slice, slice], *, measure: bool | None = None) -> bool:
    """Whether ``scaled_dot_product_attention`` (``fused``) computes CGA without merging faster
    than the per-head products on this device, for blocks of queries shaped like ``block``.

    Args:
        q, k, v, index, heads: as in ``guided_attention``.
        block: ``(frames, tokens)`` slices of the queries: the first of ``guided_attention``'s blocks.
        measure: ``None``: measure on CUDA, not on the CPU (there SDPA is the faster: ~3x at
            F=8, N=1024, C=320); ``True`` / ``False``: measure / don't, on any device.

    Returns:
        ``True`` without measuring; else whether SDPA took no longer, each path run twice on
        ``block`` and the second run timed. The verdict is kept in ``CGA_CHOICES`` per device,
        dtype and shape, so a process measures each shape once.
    """
    if measure is None:
        measure = q.device.type == "cuda"
    if not measure:
        return True
    frames, tokens = block
    qb, ib = q[frames, tokens], index[frames, tokens]  # (F', n, C), (F', n, F, K)
    key = (str(q.device), q.dtype, *q.shape, heads, index.shape[-1], v is k, tuple(qb.shape[:2]))
    if key not in CGA_CHOICES:
        sdpa = _seconds(lambda: _attend_fused(qb, k, v, ib, heads, frames), q.device)
        products = _seconds(lambda: _attend(qb, k, v, ib, heads, 0.0, frames), q.device)
        CGA_CHOICES[key] = sdpa <= products
    return CGA_CHOICES[key]


def cga_ways() -> list[dict]:
    """The ways ``fused_is_faster`` chose in this process, one entry per measured shape:
    ``{"device", "dtype", "shape": "F=.., N=.., C=.., heads=.., K=..", "block": [frames,
    tokens], "way": "SDPA" | "products"}``."""
    return [{"device": device, "dtype": str(dtype).replace("torch.", ""),
             "shape": f"F={F}, N={N}, C={C}, heads={heads}, K={k}" + ("" if shared else ", v apart from k"),
             "block": list(block), "way": "SDPA" if fused else "products"}
            for (device, dtype, F, N, C, heads, k, shared, block), fused in CGA_CHOICES.items()]


def _blocks(frames: int, tokens: int, gathered: int, frame_chunk: int | None,
            token_chunk: int | None, free: int | None = None,
            row_bytes: int | None = None) -> list[tuple[slice, slice]]:
    """(query frames, query tokens) blocks: the overrides, else ``block_rows`` queries each
    (from ``free`` bytes and ``row_bytes`` per query where given)."""
    for name, value in (("frame_chunk", frame_chunk), ("token_chunk", token_chunk)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be None or >= 1, got {value}")
    if frame_chunk is None and token_chunk is None:
        rows = block_rows(frames, tokens, gathered, free=free, row_bytes=row_bytes)
        frame_chunk, token_chunk = (rows // tokens, tokens) if rows >= tokens else (1, rows)
    fs, ts = frame_chunk or frames, token_chunk or tokens
    return [(slice(f, f + fs), slice(t, t + ts))
            for f in range(0, frames, fs) for t in range(0, tokens, ts)]


def guided_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    heads: int,
    *,
    merge_ratio: float = 0.0,
    token_chunk: int | None = None,
    frame_chunk: int | None = None,
    fused: bool | None = None,
) -> Tensor:
    """Correspondence-guided attention (Eqs. 11-14).

    For the query at ``(i, n)``, gather the tokens ``index[i, n, j, :]`` of ``k`` and ``v``
    of every frame ``j != i`` (its own frame is excluded): ``T = (F-1)*K`` keys and values.
    Optionally merge them (stage 5, ``cove.merging.bipartite_merge``: bipartite matching with
    the gathered keys as the metric, the values merged with the same assignment,
    size-weighted averages). Then multi-head ``softmax(q K^T / sqrt(d) + log(size)) V`` with
    ``d = C / heads``; the ``log(size)`` term is ToMe's proportional attention: a merged key
    standing for ``s`` tokens gets the weight that its ``s`` (identical) members would have
    had together, and it is 0 without merging.

    Important args:
        q, k, v: ``(F, N, C)`` queries, keys, values of all frames (heads packed in ``C``);
            pass the same tensor for ``k`` and ``v`` (COVE's Q = K = V) to gather it once.
        index: integer ``(F, N, F, K)``, ``Correspondence.index`` on the same ``H x W`` grid.
        heads: attention heads; ``C`` must be divisible by it.

    Args to tinker with:
        merge_ratio: fraction of the gathered tokens merged away (Sec. 3.3: 0.5); 0 = none.
        token_chunk / frame_chunk: process this many tokens / query frames at once (the
            gathered keys are ``(frame_chunk, token_chunk, (F-1)*K, C)``); ``None`` for both:
            blocks of ``block_rows`` queries, chosen from the memory free on ``q``'s device
            (on CUDA a quarter of ``torch.cuda.mem_get_info``, often one block; on the CPU
            blocks about the size of ``k``). The result does not depend on them.
        fused: without merging (``merge_ratio == 0``), ``True`` computes all heads at once
            with ``torch.nn.functional.scaled_dot_product_attention`` on strided views of the
            gathered keys and values (one call per ``SDPA_ROWS`` queries of a block);
            ``False``: the per-head products and softmax that ``attention_weights`` reads
            (merging always uses them); ``None``: the faster of the two on this device
            (``fused_is_faster``: SDPA on the CPU, measured once per shape on CUDA). The same
            result up to float rounding.

    Returns:
        ``(F, N, C)`` attention output, heads packed back in ``C``. Profiles
        (``torch.profiler``) show the computation as the range ``cove::guided_attention``.
    """
    _check(q, k, v, index, heads, merge_ratio)
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"fused: expected True, False or None, got {fused!r}")
    F, N, C = q.shape
    T = (F - 1) * index.shape[-1]
    free = free_memory(q.device) if frame_chunk is None and token_chunk is None else None
    per_row = row_bytes(T, C, heads, q.element_size())
    blocks = _blocks(F, N, T, frame_chunk, token_chunk, free, per_row)
    if fused is None and merge_ratio == 0:
        fused = fused_is_faster(q, k, v, index, heads, blocks[0])
    out = torch.empty_like(q)  # (F, N, C)
    with torch.profiler.record_function("cove::guided_attention"):  # a range in profiles
        for frames, tokens in blocks:
            qb, ib = q[frames, tokens], index[frames, tokens]  # (F', n, C), (F', n, F, K)
            if fused and merge_ratio == 0:
                out[frames, tokens] = _attend_fused(qb, k, v, ib, heads, frames)  # (F', n, C)
            else:
                out[frames, tokens] = _attend(qb, k, v, ib, heads, merge_ratio, frames)[0]
    return out


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
    return _attend(q, k, k, index, heads, merge_ratio)[1]  # (F, N', heads, (F-1)*K)
