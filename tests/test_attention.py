"""Stage 4: correspondence-guided attention (Eqs. 11-14)."""
import math

import pytest
import torch

from cove.attention import (
    attention_weights,
    gather_correspondents,
    guided_attention,
    other_frames,
)
from cove.correspondence import correspond
from cove.merging import make_merge, merge_count, merge_with_sizes


def example(F=4, N=12, C=8, K=2, seed=0):
    """Random q, k, v (F, N, C) and a random index (F, N, F, K) with index[i, n, i] = n."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(F, N, C, generator=g, dtype=torch.float64) for _ in range(3))
    index = torch.randint(0, N, (F, N, F, K), generator=g)
    index[torch.arange(F), :, torch.arange(F)] = torch.arange(N)[:, None]
    return q, k, v, index


def naive_guided_attention(q, k, v, index, heads, merge_ratio=0.0):
    """Reference: one query token and one head at a time, explicit loops over frames."""
    F, N, C = q.shape
    K, d = index.shape[-1], C // heads
    out = torch.zeros_like(q)
    for i in range(F):
        for n in range(N):
            rows = [(j, int(index[i, n, j, m])) for j in range(F) if j != i for m in range(K)]
            keys = torch.stack([k[j, t] for j, t in rows])  # (T, C)
            values = torch.stack([v[j, t] for j, t in rows])  # (T, C)
            size = torch.ones(len(rows), 1, dtype=q.dtype)
            r = merge_count(len(rows), merge_ratio)
            if r:
                merge, _ = make_merge(keys, r)
                keys, size = merge_with_sizes(merge, keys)
                values, _ = merge_with_sizes(merge, values)
            for h in range(heads):
                c = slice(h * d, (h + 1) * d)
                logits = keys[:, c] @ q[i, n, c] / math.sqrt(d) + size[:, 0].log()
                out[i, n, c] = logits.softmax(0) @ values[:, c]
    return out


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_equals_naive_reference(heads, merge_ratio):
    q, k, v, index = example(F=4, N=12, C=8, K=3)
    expected = naive_guided_attention(q, k, v, index, heads, merge_ratio)
    out = guided_attention(q, k, v, index, heads, merge_ratio=merge_ratio)
    torch.testing.assert_close(out, expected)
    chunked = guided_attention(q, k, v, index, heads, merge_ratio=merge_ratio, token_chunk=5)
    torch.testing.assert_close(chunked, out, rtol=0, atol=1e-12)


def test_merging_changes_the_output():
    q, k, v, index = example(F=5, K=3, seed=1)
    a = guided_attention(q, k, v, index, 2)
    b = guided_attention(q, k, v, index, 2, merge_ratio=0.5)
    assert (a - b).abs().max() > 1e-3


def test_own_frame_is_excluded():
    q, k, v, index = example(F=4, seed=2)
    out = guided_attention(q, k, v, index, 2, merge_ratio=0.5)
    k2, v2 = k.clone(), v.clone()
    k2[1], v2[1] = torch.randn_like(k[1]), torch.randn_like(v[1])  # change frame 1 only
    changed = guided_attention(q, k2, v2, index, 2, merge_ratio=0.5)
    torch.testing.assert_close(changed[1], out[1], rtol=0, atol=0)
    assert (changed[0] - out[0]).abs().max() > 1e-3  # other frames do look at frame 1


def test_heads_are_separate():
    q, k, v, index = example(C=8, seed=3)
    q[..., :4] = 0  # head 0 of 2 sees flat logits: the plain mean of its gathered values
    out = guided_attention(q, k, v, index, heads=2)
    mean = gather_correspondents(v, index)[..., :4].mean(dim=-2)  # (F, N, 4)
    torch.testing.assert_close(out[..., :4], mean)
    assert (out[..., 4:] - gather_correspondents(v, index)[..., 4:].mean(dim=-2)).abs().max() > 1e-2


def test_gather_correspondents_order():
    F, N, C, K = 3, 5, 2, 2
    x = torch.arange(F * N, dtype=torch.float32)[:, None].repeat(1, C).view(F, N, C)  # x[j, t] = j*N + t
    index = torch.randint(0, N, (F, N, F, K), generator=torch.Generator().manual_seed(4))
    g = gather_correspondents(x, index)
    assert g.shape == (F, N, (F - 1) * K, C)
    assert other_frames(3).tolist() == [[1, 2], [0, 2], [0, 1]]
    for i in range(F):
        for n in range(N):
            want = [j * N + int(index[i, n, j, m]) for j in range(F) if j != i for m in range(K)]
            assert g[i, n, :, 0].tolist() == want
    assert torch.equal(gather_correspondents(x, index[:, 1:3]), g[:, 1:3])  # a chunk of queries


@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_attention_weights_explain_the_output(merge_ratio):
    q, k, v, index = example(F=5, K=3, seed=5)
    w = attention_weights(q, k, index, 2, merge_ratio=merge_ratio)
    assert w.shape == (5, 12, 2, 12)
    torch.testing.assert_close(w.sum(-1), torch.ones(5, 12, 2, dtype=w.dtype))
    values = gather_correspondents(v, index).view(5, 12, 12, 2, 4).transpose(2, 3)  # (F, N, heads, T, d)
    out = torch.einsum("fnht,fnhtd->fnhd", w, values).reshape(5, 12, 8)
    torch.testing.assert_close(out, guided_attention(q, k, v, index, 2, merge_ratio=merge_ratio))
    one = attention_weights(q, k, index, 2, merge_ratio=merge_ratio, tokens=[7])
    torch.testing.assert_close(one[:, 0], w[:, 7])


def test_with_a_real_correspondence_on_a_static_clip():
    """Identical frames: every query gathers its own token from the other frames, so with
    v = k = q the output at (i, n) is exactly v[i, n]."""
    g = torch.Generator().manual_seed(6)
    frame = torch.randn(1, 8, 5, 6, generator=g)
    features = (frame / frame.norm(dim=1, keepdim=True)).repeat(3, 1, 1, 1)  # (F, C, H, W)
    c = correspond(features, window=3, k=1)
    x = torch.randn(1, 30, 8, generator=g).repeat(3, 1, 1)  # (F, N, C), the same each frame
    torch.testing.assert_close(guided_attention(x, x, x, c.index, 2, merge_ratio=0.5), x)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(heads=3), "divisible"),
        (dict(index=torch.zeros(4, 12, 3, 2, dtype=torch.long)), r"\(F, N, F, K\)"),
        (dict(k=torch.zeros(4, 11, 8)), r"\(F, N, C\)"),
        (dict(merge_ratio=2.0), "merge_ratio"),
        (dict(token_chunk=0), "token_chunk"),
    ],
)
def test_invalid_arguments_raise(change, message):
    q, k, v, index = example()
    args = dict(q=q, k=k, v=v, index=index, heads=2) | change
    kwargs = {name: args.pop(name) for name in ("merge_ratio", "token_chunk") if name in args}
    with pytest.raises(ValueError, match=message):
        guided_attention(**args, **kwargs)


def test_single_frame_raises():
    q, k, v, index = example(F=1)
    with pytest.raises(ValueError, match="2 frames"):
        guided_attention(q, k, v, index, 2)


# ---------------------------------------------------------------------------------------------
# The self-attention processor: spatial-temporal attention, then CGA (cove.processors)
# ---------------------------------------------------------------------------------------------


def _processor_run(mode, hidden, frames, correspondence=None, merge_ratio=0.0, seed=0, cga_fused=None):
    """Run ``CoveAttnProcessor`` on a diffusers ``Attention`` (4 heads of 8 channels) and capture
    what reaches ``to_out``: the attention result (B, N, C) before the output projection."""
    from diffusers.models.attention_processor import Attention

    from cove.processors import AttentionState, CoveAttnProcessor

    torch.manual_seed(seed)
    attn = Attention(query_dim=32, heads=4, dim_head=8).double()
    state = AttentionState(frames=frames, mode=mode, correspondence=correspondence, merge_ratio=merge_ratio,
                           cga_fused=cga_fused)
    attn.set_processor(CoveAttnProcessor("layer.attn1", state))
    captured = []
    handle = attn.to_out[0].register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    with torch.no_grad():
        attn(hidden)
    handle.remove()
    return attn, captured[0], state


def _joint_attention(attn, hidden, frames):
    """Hand-computed spatial-temporal attention: per group of ``frames`` frames and per head,
    softmax(q k^T / sqrt(d)) v over the keys of all frames of the group."""
    B, N, C = hidden.shape
    heads, d = attn.heads, C // attn.heads
    q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)  # (B, N, C) each
    out = torch.zeros_like(q)
    for g in range(B // frames):
        rows = slice(g * frames, (g + 1) * frames)
        keys, values = k[rows].reshape(frames * N, C), v[rows].reshape(frames * N, C)  # (F*N, C)
        for h in range(heads):
            c = slice(h * d, (h + 1) * d)
            weights = (q[rows, :, c] @ keys[:, c].T / math.sqrt(d)).softmax(-1)  # (F, N, F*N)
            out[rows, :, c] = weights @ values[:, c]
    return out


def _grid_correspondence(F, grid, K=2, seed=0):
    from cove.correspondence import Correspondence

    N = grid[0] * grid[1]
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, N, (F, N, F, K), generator=g)
    index[torch.arange(F), :, torch.arange(F)] = torch.arange(N)[:, None]
    return Correspondence(index=index, score=torch.ones(F, N, F, K), grid=grid)


def test_spatiotemporal_processor_is_joint_attention_within_each_guidance_group():
    F, N = 3, 16
    hidden = torch.randn(2 * F, N, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attn, out, _ = _processor_run("spatiotemporal", hidden, F)
    with torch.no_grad():
        expected = _joint_attention(attn, hidden, F)
        torch.testing.assert_close(out, expected)
        # per-frame attention is a different computation on the same input
        _, per_frame, _ = _processor_run("per-frame", hidden, F)
        assert (per_frame - out).abs().max() > 1e-3
    # the unconditional group (frames 0..F-1) never sees the conditional one, and back
    changed = hidden.clone()
    changed[:F] += torch.randn(F, N, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, out2, _ = _processor_run("spatiotemporal", changed, F)
    torch.testing.assert_close(out2[F:], out[F:])
    assert (out2[:F] - out[:F]).abs().max() > 1e-3


@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_cga_processor_applies_guided_attention_to_the_spatiotemporal_output(merge_ratio):
    """COVE mode = spatial-temporal attention, then ``guided_attention`` with Q = K = V = its
    output, per guidance group, on the correspondence of the layer's grid (PAPER.md, stage 4)."""
    F, grid = 3, (4, 4)
    corr = _grid_correspondence(F, grid)
    hidden = torch.randn(2 * F, 16, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, st, _ = _processor_run("spatiotemporal", hidden, F)
    _, out, state = _processor_run("cove", hidden, F, correspondence=corr, merge_ratio=merge_ratio)
    expected = torch.cat([guided_attention(x, x, x, corr.index, 4, merge_ratio=merge_ratio)
                          for x in st.view(2, F, 16, 32)])  # (2F, N, C)
    torch.testing.assert_close(out, expected)
    assert state.calls["cga"] == 1 and (out - st).abs().max() > 1e-3
    # a layer whose grid is not the correspondence's keeps plain spatial-temporal attention
    other = _grid_correspondence(F, (8, 8))
    _, kept, state = _processor_run("cove", hidden, F, correspondence=other)
    torch.testing.assert_close(kept, st)
    assert state.calls["cga"] == 0


@pytest.mark.parametrize("cga_fused", [True, False])
def test_cga_processor_computes_the_way_its_state_asks(cga_fused, monkeypatch):
    """``AttentionState.cga_fused`` reaches ``guided_attention``: SDPA and the per-head
    products give the same layer output."""
    import cove.attention as attention

    ways = []
    for name in ("_attend_fused", "_attend"):
        real = getattr(attention, name)
        monkeypatch.setattr(attention, name, lambda *a, _r=real, _n=name: ways.append(_n) or _r(*a))
    F, grid = 3, (4, 4)
    corr = _grid_correspondence(F, grid)
    hidden = torch.randn(2 * F, 16, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, out, _ = _processor_run("cove", hidden, F, correspondence=corr, cga_fused=cga_fused)
    assert set(ways) == {"_attend_fused" if cga_fused else "_attend"}
    _, default, _ = _processor_run("cove", hidden, F, correspondence=corr)  # the CPU's default: SDPA
    torch.testing.assert_close(out, default, rtol=0, atol=1e-10)


@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_blocks_do_not_change_the_result(merge_ratio):
    """The default memory-bounded blocks, token / frame chunks and one block agree."""
    q, k, v, index = example(F=5, N=14, C=8, K=3, seed=3)
    whole = guided_attention(q, k, v, index, 2, merge_ratio=merge_ratio, token_chunk=14, frame_chunk=5)
    for kwargs in [{}, dict(token_chunk=3), dict(frame_chunk=2), dict(token_chunk=4, frame_chunk=3)]:
        out = guided_attention(q, k, v, index, 2, merge_ratio=merge_ratio, **kwargs)
        torch.testing.assert_close(out, whole, rtol=0, atol=1e-12)
    shared = guided_attention(q, k, k, index.to(torch.int16), 2, merge_ratio=merge_ratio)  # K = V, int16
    torch.testing.assert_close(shared, naive_guided_attention(q, k, k, index, 2, merge_ratio))


def test_default_blocks_bound_the_gathered_keys():
    from cove.attention import block_rows
    assert block_rows(10, 4096, 27) == 10 * 4096 // 27  # gathered block ~ the size of k
    assert block_rows(2, 3, 100) == 1


def test_blocks_from_the_device_memory():
    """On CUDA the block is chosen from the free memory: one block on a large GPU, many on a
    small one, at least one query; the CPU keeps blocks about the size of k."""
    from cove.attention import block_rows, row_bytes

    per_row = row_bytes(21, 320, 5, 2)  # SD's 64x64 layer at F = 8, K = 3, float16
    assert block_rows(8, 4096, 21, free=80 * 2**30, row_bytes=per_row) == 8 * 4096  # one block
    assert 1 < block_rows(8, 4096, 21, free=2**28, row_bytes=per_row) < 8 * 4096
    assert block_rows(8, 4096, 21, free=0, row_bytes=per_row) == 1
    assert block_rows(8, 4096, 21) == 8 * 4096 // 21


@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_device_blocks_do_not_change_the_result(monkeypatch, merge_ratio):
    import cove.attention as attention

    q, k, v, index = example(F=5, N=14, C=8, K=3, seed=7)
    whole = guided_attention(q, k, v, index, 2, merge_ratio=merge_ratio, token_chunk=14, frame_chunk=5)
    per_row = attention.row_bytes(12, 8, 2, q.element_size())
    for rows in (1, 5, 14, 33, 70):  # a few tokens, one frame, frames and a half, all queries
        monkeypatch.setattr(attention, "free_memory", lambda device, rows=rows: 4 * rows * per_row)
        assert len(attention._blocks(5, 14, 12, None, None, 4 * rows * per_row, per_row)) > 1 or rows == 70
        out = guided_attention(q, k, v, index, 2, merge_ratio=merge_ratio)
        torch.testing.assert_close(out, whole, rtol=0, atol=1e-12)


def test_heads_take_only_their_own_channels():
    """Per-head softmax attention written out with plain tensors, against CGA."""
    q, k, v, index = example(F=4, N=6, C=12, K=2, seed=8)
    heads, d = 3, 4
    keys, values = gather_correspondents(k, index), gather_correspondents(v, index)  # (F, N, T, C)
    out = torch.cat([
        ((keys[..., c] @ q[..., c, None]).squeeze(-1) / math.sqrt(d)).softmax(-1)[..., None, :]
        @ values[..., c]
        for c in (slice(h * d, (h + 1) * d) for h in range(heads))
    ], dim=-1).squeeze(-2)  # (F, N, C)
    torch.testing.assert_close(guided_attention(q, k, v, index, heads), out)


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
@pytest.mark.parametrize("shared", [False, True])
def test_fused_equals_per_head(monkeypatch, heads, shared):
    """All heads in one scaled_dot_product_attention against the per-head computation, in
    float32; across the SDPA_ROWS chunks too."""
    import cove.attention as attention

    q, k, v, index = (x.float() if x.is_floating_point() else x for x in example(F=4, N=30, C=16, K=3, seed=9))
    v = k if shared else v  # COVE's Q = K = V gathers once
    per_head = guided_attention(q, k, v, index, heads, fused=False)
    torch.testing.assert_close(guided_attention(q, k, v, index, heads), per_head, rtol=0, atol=1e-5)
    monkeypatch.setattr(attention, "SDPA_ROWS", 7)  # 120 queries in chunks of 7
    torch.testing.assert_close(guided_attention(q, k, v, index, heads), per_head, rtol=0, atol=1e-5)
    assert not torch.allclose(guided_attention(q, k, v, index.roll(1, 1), heads), per_head, atol=1e-2)


def test_merging_keeps_the_per_head_path():
    q, k, v, index = example(F=4, N=12, C=8, K=3, seed=10)
    merged = guided_attention(q, k, v, index, 2, merge_ratio=0.5)
    assert torch.equal(merged, guided_attention(q, k, v, index, 2, merge_ratio=0.5, fused=False))
    with pytest.raises(ValueError, match="^fused: expected True, False or None, got 1$"):
        guided_attention(q, k, v, index, 2, fused=1)


def test_default_way_is_sdpa_on_the_cpu_unmeasured(monkeypatch):
    import cove.attention as attention

    monkeypatch.setattr(attention, "CGA_CHOICES", {})
    monkeypatch.setattr(attention, "_seconds", lambda *a: pytest.fail("the CPU must not be timed"))
    q, k, v, index = example(F=4, N=10, C=8, K=2, seed=11)
    assert torch.equal(guided_attention(q, k, k, index, 2), guided_attention(q, k, k, index, 2, fused=True))
    assert attention.CGA_CHOICES == {}


@pytest.mark.parametrize("sdpa_seconds, expected", [(2.0, False), (1.0, True)])
def test_the_faster_way_is_measured_once_per_shape(monkeypatch, sdpa_seconds, expected):
    """``fused_is_faster(measure=True)`` times SDPA, then the products, keeps the verdict per
    shape and does not time a shape twice."""
    import cove.attention as attention

    monkeypatch.setattr(attention, "CGA_CHOICES", {})
    timed = []

    def fake_seconds(fn, device):
        fn()
        timed.append(device)
        return sdpa_seconds if len(timed) % 2 else 1.5  # SDPA first, then the products

    monkeypatch.setattr(attention, "_seconds", fake_seconds)
    q, k, v, index = example(F=4, N=10, C=8, K=2, seed=12)
    whole = (slice(None), slice(None))
    assert attention.fused_is_faster(q, k, k, index, 2, whole, measure=True) is expected
    assert attention.fused_is_faster(q, k, k, index, 2, whole, measure=True) is expected
    assert len(timed) == 2 and len(attention.CGA_CHOICES) == 1
    assert attention.cga_ways() == [{"device": "cpu", "dtype": "float64", "shape": "F=4, N=10, C=8, heads=2, K=2",
                                     "block": [4, 10], "way": "SDPA" if expected else "products"}]
    attention.fused_is_faster(q, k, v, index, 2, whole, measure=True)  # values apart: another shape
    attention.fused_is_faster(q, k, k, index, 2, (slice(0, 2), slice(None)), measure=True)  # another block
    assert len(timed) == 6 and len(attention.CGA_CHOICES) == 3
    assert attention.fused_is_faster(q, k, k, index, 4, whole, measure=False) is True
    assert len(timed) == 6


def test_seconds_times_the_second_call():
    import cove.attention as attention

    calls = []
    seconds = attention._seconds(lambda: calls.append(len(calls)), torch.device("cpu"))
    assert calls == [0, 1] and 0 <= seconds < 1
