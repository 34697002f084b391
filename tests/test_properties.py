"""Property-based tests (hypothesis) of the stage functions over random shapes, windows, K and ratios."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cove.app.io import prepare_frames
from cove.attention import attention_weights, guided_attention
from cove.correspondence import correspond, window_similarity
from cove.merging import bipartite_merge, merge_count
from cove.window import grid_cells, window_start

FAST = settings(max_examples=25, deadline=None, database=None,  # writes nothing to the repository
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    """(features (F, C, H, W) unit over C, window l, K)."""
    window = draw(st.sampled_from([1, 3, 5]))
    H = draw(st.integers(window, 9))
    W = draw(st.integers(window, 9))
    F = draw(st.integers(1, 4))
    C = draw(st.integers(2, 6))
    k = draw(st.integers(1, window * window))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(F, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1), window, k


@FAST
@given(problems())
def test_correspond_invariants(problem):
    features, window, k = problem
    F, _, H, W = features.shape
    c = correspond(features, window=window, k=k)
    N = H * W
    assert c.index.shape == (F, N, F, k) and c.score.shape == (F, N, F, k) and c.grid == (H, W)
    assert c.index.min() >= 0 and c.index.max() < N
    own = torch.arange(N)[:, None].expand(N, k)
    for i in range(F):
        assert torch.equal(c.index[i, :, i], own) and torch.all(c.score[i, :, i] == 1)
    assert torch.all(c.score[..., :-1] >= c.score[..., 1:])  # best first
    assert c.score.abs().max() <= 1 + 1e-9  # cosine similarities
    if F > 1:  # one frame on: every match lies in the inward-shifted window around the token
        start = window_start(grid_cells((H, W)), window, (H, W))  # (N, 2)
        x, y = c.index[0, :, 1] % W, c.index[0, :, 1] // W  # (N, K)
        assert torch.all((x >= start[:, :1]) & (x < start[:, :1] + window))
        assert torch.all((y >= start[:, 1:]) & (y < start[:, 1:] + window))


@FAST
@given(problems())
def test_identical_frames_match_themselves(problem):
    features, window, k = problem
    still = features[:1].expand(3, -1, -1, -1).contiguous()
    c = correspond(still, window=window, k=k)
    N = still.shape[2] * still.shape[3]
    assert torch.equal(c.top1(), torch.arange(N)[None, :, None].expand(3, N, 3))
    torch.testing.assert_close(c.score[..., 0], torch.ones(3, N, 3, dtype=c.score.dtype))


@FAST
@given(problems(), st.integers(1, 6), st.integers(0, 2**16))
def test_window_similarity_is_the_dot_product(problem, M, seed):
    features, window, _ = problem
    target = features[0]  # (C, H, W)
    C, H, W = target.shape
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(M, C, generator=g, dtype=target.dtype)
    centre = torch.stack([torch.randint(0, W, (M,), generator=g), torch.randint(0, H, (M,), generator=g)], -1)
    sim, index = window_similarity(query, target, centre, window)
    assert sim.shape == index.shape == (M, window * window)
    tokens = target.flatten(1).T  # (N, C)
    torch.testing.assert_close(sim, (query[:, None] * tokens[index]).sum(-1))
    assert all(len(set(row.tolist())) == window * window for row in index)  # l*l distinct cells


@st.composite
def attention_problems(draw):
    F = draw(st.integers(2, 4))
    heads = draw(st.sampled_from([1, 2]))
    C = heads * draw(st.integers(1, 4))
    H, W = draw(st.integers(3, 5)), draw(st.integers(3, 5))
    k = draw(st.integers(1, 4))
    ratio = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(F, 4, H, W, generator=g), dim=1)
    index = correspond(feats, window=3, k=k).index
    q, k_, v = (torch.randn(F, H * W, C, generator=g) for _ in range(3))
    return q, k_, v, index, heads, ratio


@FAST
@given(attention_problems(), st.integers(1, 8))
def test_guided_attention_weights_and_chunks(problem, chunk):
    q, k, v, index, heads, ratio = problem
    out = guided_attention(q, k, v, index, heads, merge_ratio=ratio)
    assert out.shape == q.shape and torch.isfinite(out).all()
    torch.testing.assert_close(guided_attention(q, k, v, index, heads, merge_ratio=ratio, token_chunk=chunk), out)
    w = attention_weights(q, k, index, heads, merge_ratio=ratio)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


@FAST
@given(st.integers(1, 3), st.integers(1, 30), st.integers(1, 5), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_bipartite_merge_sizes(B, T, C, ratio, seed):
    tokens = torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed))
    merged, size = bipartite_merge(tokens, ratio, return_sizes=True)
    r = merge_count(T, ratio)
    assert merged.shape == (B, T - r, C) and size.shape == (B, T - r, 1)
    assert torch.all(size.sum(dim=(1, 2)) == T)  # every token counted once
    torch.testing.assert_close((merged * size).sum(1), tokens.sum(1))  # size-weighted averages
    if ratio == 0:
        assert merged is tokens


@FAST
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.integers(1, 5), st.integers(1, 5),
       st.one_of(st.none(), st.integers(1, 4)))
def test_prepare_frames_shapes(F, H, W, h8, w8, count):
    frames = np.random.default_rng(F * H * W).integers(0, 256, (F, H, W, 3), dtype=np.uint8)
    out = prepare_frames(frames, size=(8 * h8, 8 * w8), num_frames=count)
    assert out.shape == (min(F, count or F), 8 * h8, 8 * w8, 3) and out.dtype == np.uint8
    if H >= 8 and W >= 8:
        cropped = prepare_frames(frames, size=None)
        assert cropped.shape == (F, H // 8 * 8, W // 8 * 8, 3)
    else:
        with pytest.raises(ValueError, match="at least 8x8"):
            prepare_frames(frames, size=None)


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2]))
def test_correspond_refuses_non_finite(value, where):
    features = torch.nn.functional.normalize(torch.randn(2, 3, 4, 4, dtype=torch.float64), dim=1)
    features[where % 2, where, 1, 1] = value
    finite_unit = np.isfinite(value) and abs(torch.linalg.vector_norm(features[where % 2, :, 1, 1]) - 1) <= 1e-2
    if finite_unit:
        correspond(features, window=3, k=1)
    else:
        with pytest.raises(ValueError, match="NaN or Inf|unit L2 norm"):
            correspond(features, window=3, k=1)
