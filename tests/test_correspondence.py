"""Stages 2-3: sliding-window similarity and chained top-K correspondence."""
import cv2
import numpy as np
import pytest
import torch

from cove.correspondence import (
    Correspondence,
    correspond,
    correspond_reference,
    index_dtype,
    match_agreement,
    similarity_dtype,
)
from cove.extras.flow import flow_correspondence
from cove.window import (
    allpairs_similarity,
    grid_cells,
    local_similarity,
    pair_similarity,
    reverse_similarity,
    token_rows,
    top_k,
    window_indices,
    window_similarity,
)


def random_features(*shape, seed=0, dtype=torch.float32):
    """Random features L2-normalised over C (dim -3), as extract_features returns them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    return x / x.norm(dim=-3, keepdim=True)


def shifted_clip(frames, grid, shift, channels=16, seed=0):
    """(F, C, H, W) crops of one random map, moved by `shift` (dx, dy) cells per frame."""
    H, W = grid
    pad = frames * max(abs(s) for s in shift)
    base = random_features(channels, H + 2 * pad, W + 2 * pad, seed=seed)
    dx, dy = shift
    # content at base cell (u, v) shows at frame cell (u - pad + t*dx, v - pad + t*dy)
    crops = [base[:, pad - t * dy : pad - t * dy + H, pad - t * dx : pad - t * dx + W] for t in range(frames)]
    return torch.stack(crops)  # (F, C, H, W)


def naive_correspond(features, window, k):
    """Per-token Python reference: explicit chains, explicit windows, sorted lists."""
    F, C, H, W = features.shape
    half = window // 2
    index = torch.zeros(F, H * W, F, k, dtype=torch.long)
    score = torch.zeros(F, H * W, F, k, dtype=features.dtype)
    for i in range(F):
        for n in range(H * W):
            index[i, n, i], score[i, n, i] = n, 1.0
            for step in (1, -1):
                x, y, query, j = n % W, n // W, features[i, :, n // W, n % W], i + step
                while 0 <= j < F:
                    x0 = min(max(x - half, 0), W - window)
                    y0 = min(max(y - half, 0), H - window)
                    cands = [
                        (float(query @ features[j, :, yy, xx]), yy * W + xx)
                        for yy in range(y0, y0 + window)
                        for xx in range(x0, x0 + window)
                    ]
                    cands.sort(key=lambda c: -c[0])
                    for r, (s, m) in enumerate(cands[:k]):
                        index[i, n, j, r], score[i, n, j, r] = m, s
                    best = cands[0][1]
                    x, y, query = best % W, best // W, features[j, :, best // W, best % W]
                    j += step
    return index, score


def test_identical_frames_match_themselves():
    frame = random_features(1, 8, 6, 7, seed=1)
    c = correspond(frame.repeat(4, 1, 1, 1), window=3, k=2)
    n = torch.arange(6 * 7)
    assert c.index.shape == (4, 42, 4, 2) and c.score.shape == (4, 42, 4, 2)
    assert torch.equal(c.top1(), n[None, :, None].expand(4, 42, 4))
    torch.testing.assert_close(c.score[..., 0], torch.ones(4, 42, 4))
    other = ~torch.eye(4, dtype=torch.bool)  # (F, F) pairs i != j
    assert (c.score.transpose(1, 2)[other][..., 1] < 0.999).all()  # the second match differs


@pytest.mark.parametrize("shift", [(1, 0), (1, -1), (0, 1)])
def test_shifted_clip_is_tracked_both_ways_across_many_frames(shift):
    F, H, W = 5, 8, 10
    c = correspond(shifted_clip(F, (H, W), shift), window=3, k=3)
    dx, dy = shift
    checked = 0
    for i in range(F):
        for j in range(F):
            x, y = torch.arange(H * W) % W, torch.arange(H * W) // W
            tx, ty = x + (j - i) * dx, y + (j - i) * dy  # true cell in frame j
            inside = (tx >= 0) & (tx < W) & (ty >= 0) & (ty < H)
            assert torch.equal(c.top1()[i, inside, j], (ty * W + tx)[inside]), (i, j)
            torch.testing.assert_close(c.score[i, inside, j, 0], torch.ones(int(inside.sum())))
            checked += int(inside.sum()) * (abs(i - j) >= 3)
    assert checked > 50  # chains of three or more steps were really checked


def test_vectorised_equals_naive_reference():
    features = random_features(3, 8, 6, 5, seed=2, dtype=torch.float64)
    c = correspond(features, window=3, k=2)
    index, score = naive_correspond(features, window=3, k=2)
    assert torch.equal(c.index, index)
    torch.testing.assert_close(c.score, score)


def test_memory_layout_does_not_change_the_result():
    features = random_features(4, 8, 7, 9, seed=3)
    a = correspond(features, window=5, k=3)
    b = correspond(features.contiguous(memory_format=torch.channels_last), window=5, k=3)
    assert torch.equal(a.index, b.index) and torch.equal(a.score, b.score)


@pytest.mark.parametrize("k", [1, 3, 4, 5, 9])
def test_top_k_is_a_stable_descending_sort(k):
    g = torch.Generator().manual_seed(k)
    sim = torch.randint(0, 4, (50, 9), generator=g).float()  # many ties
    values, order = sim.sort(dim=-1, descending=True, stable=True)
    top, pick = top_k(sim.clone(), k)
    assert torch.equal(top, values[:, :k]) and torch.equal(pick, order[:, :k])


def test_scores_sorted_best_first_and_self_entries():
    features = random_features(4, 8, 7, 9, seed=4)
    c = correspond(features, window=5, k=4)
    assert (c.score.diff(dim=-1) <= 0).all()
    own = c.index.diagonal(dim1=0, dim2=2)  # (N, K, F): index[i, n, i, :]
    assert torch.equal(own, torch.arange(63)[:, None, None].expand(63, 4, 4))
    assert (c.score.diagonal(dim1=0, dim2=2) == 1).all()
    assert (c.index >= 0).all() and (c.index < 63).all()


def test_window_is_shifted_inward_at_the_borders():
    H, W, l = 7, 9, 5
    target = random_features(8, H, W, seed=5)
    centre = torch.tensor([[0, 0], [W - 1, H - 1], [4, 3]])  # top-left, bottom-right, interior
    sim, index = window_similarity(torch.randn(3, 8), target, centre, l)
    assert sim.shape == index.shape == (3, l * l)
    cells = lambda x0, y0: {y * W + x for y in range(y0, y0 + l) for x in range(x0, x0 + l)}  # noqa: E731
    assert set(index[0].tolist()) == cells(0, 0)
    assert set(index[1].tolist()) == cells(W - l, H - l)
    assert set(index[2].tolist()) == cells(2, 1)
    # with k = l*l the corner token's candidates in the next frame are the top-left window
    c = correspond(random_features(2, 8, H, W, seed=6), window=l, k=l * l)
    assert set(c.index[0, 0, 1].tolist()) == cells(0, 0)
    assert set(c.index[1, H * W - 1, 0].tolist()) == cells(W - l, H - l)


def test_window_similarity_is_the_dot_product_with_the_window():
    target = random_features(8, 6, 6, seed=7)
    query = torch.randn(2, 8)
    centre = torch.tensor([[3, 2], [5, 5]])
    sim, index = window_similarity(query, target, centre, 3)
    tokens = target.flatten(1).T  # (N, C)
    torch.testing.assert_close(sim, torch.einsum("mc,mlc->ml", query, tokens[index]))
    assert torch.equal(index, window_indices(centre, 3, (6, 6)))
    assert index[0].tolist() == [y * 6 + x for y in (1, 2, 3) for x in (2, 3, 4)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=4), "odd"),
        (dict(window=9), "does not fit"),  # H = 8
        (dict(window=3, k=0), "k must"),
        (dict(window=3, k=10), "k must"),
        (dict(window=3, k=2.0), "k must be an int"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        correspond(random_features(2, 4, 8, 12), **kwargs)


def test_invalid_shapes_raise():
    with pytest.raises(ValueError, match="does not fit"):
        correspond(random_features(2, 4, 12, 8), window=9)  # W = 8
    with pytest.raises(ValueError, match=r"\(F, C, H, W\)"):
        correspond(random_features(4, 8, 8), window=3)
    with pytest.raises(ValueError, match="channels"):
        window_similarity(torch.randn(2, 5), torch.randn(4, 6, 6), torch.zeros(2, 2, dtype=torch.long), 3)


def test_correspondence_helpers():
    c = correspond(random_features(3, 4, 5, 6, seed=8), window=3, k=2)
    assert (c.frames, c.k, c.grid) == (3, 2, (5, 6))
    pos = c.positions()
    assert pos.shape == (3, 30, 3, 2, 2) and pos.dtype == torch.float32
    assert torch.equal(pos[..., 1] * 6 + pos[..., 0], c.index.float())
    moved = c.to("cpu")
    assert isinstance(moved, Correspondence) and torch.equal(moved.index, c.index)


def translated_texture(frames, size, step, seed=0):
    """uint8 (F, size, size, 3): a smooth random texture seen by a camera panning right by
    `step` pixels per frame, so the content moves left by `step`."""
    rng = np.random.default_rng(seed)
    big = rng.uniform(0, 255, (size + 40, size + frames * step + 40, 3)).astype(np.float32)
    big = cv2.GaussianBlur(big, (0, 0), 1.5)
    big = (255 * (big - big.min()) / (big.max() - big.min())).astype(np.uint8)
    return np.stack([big[20 : 20 + size, 20 + t * step : 20 + t * step + size] for t in range(frames)])


def test_flow_correspondence_tracks_a_translation():
    F, size, grid = 5, 64, (16, 16)  # 4 pixels per cell; content moves 1 cell left per frame
    c = flow_correspondence(translated_texture(F, size, step=4), grid)
    assert c.index.shape == (F, 256, F, 1) and c.k == 1
    x, y = torch.arange(256) % 16, torch.arange(256) // 16
    hits = total = 0
    for i in range(F):
        for j in range(F):
            tx = x - (j - i)
            inside = (tx >= 1) & (tx < 15) & (y >= 1) & (y < 15)  # away from the image border
            hits += int((c.top1()[i, inside, j] == (y * 16 + tx)[inside]).sum())
            total += int(inside.sum())
    assert hits / total > 0.95  # PCK at 0.5 cell
    assert c.score[:, :, :, 0].median() > 0.5
    assert torch.equal(c.top1()[2, :, 2], torch.arange(256))


def test_flow_correspondence_rejects_float_frames():
    with pytest.raises(ValueError, match="uint8"):
        flow_correspondence(np.zeros((2, 8, 8, 3), np.float32), (4, 4))


def test_package_reference_equals_vectorised():
    """``correspond_reference`` (the paper's per-token loop) against ``correspond``."""
    for shape, l, k in [((3, 5, 8, 6), 3, 2), ((4, 6, 7, 9), 5, 3), ((1, 3, 5, 5), 5, 1), ((3, 4, 5, 6), 1, 1)]:
        features = random_features(*shape, seed=sum(shape), dtype=torch.float64)
        fast, slow = correspond(features, window=l, k=k), correspond_reference(features, window=l, k=k)
        assert torch.equal(fast.index, slow.index) and fast.index.dtype == torch.int16
        torch.testing.assert_close(fast.score, slow.score)


@pytest.mark.parametrize("grid, window, tile", [((8, 6), 3, 8), ((7, 9), 5, 3), ((13, 11), 9, 4), ((9, 9), 9, 2)])
def test_local_similarity_equals_the_gathered_windows(grid, window, tile):
    source, target = random_features(3, 5, *grid, seed=1), random_features(3, 5, *grid, seed=2)
    H, W = grid
    centre = grid_cells(grid).expand(3, H * W, 2)
    expected, _ = window_similarity(source.flatten(2).transpose(1, 2), target, centre, window)
    torch.testing.assert_close(local_similarity(source, target, window, tile), expected)


@pytest.mark.parametrize("grid, window, tile", [((8, 6), 3, 4), ((7, 9), 5, 3), ((13, 11), 9, 4), ((9, 9), 9, 2),
                                                ((16, 16), 9, 4), ((12, 20), 3, 8), ((6, 5), 1, 4)])
def test_reverse_similarity_reads_back_the_forward_one(grid, window, tile):
    from cove.window import pair_similarity, reverse_similarity, token_rows

    a, b = (token_rows(f) for f in random_features(2, 6, *grid, seed=4))
    forward = pair_similarity(a, b, grid, window, tile)
    expected = pair_similarity(b, a, grid, window, tile)
    torch.testing.assert_close(reverse_similarity(forward, b, a, grid, window, tile), expected)
    broken = forward.clone()
    broken[grid[1] * (window // 2) + window // 2] += 1  # an inner token's row of the forward pass
    assert not torch.allclose(reverse_similarity(broken, b, a, grid, window, tile), expected)


def test_index_dtype_is_the_smallest_that_holds_n():
    assert index_dtype(4096) == torch.int16 and index_dtype(32767) == torch.int16
    assert index_dtype(32768) == torch.int32


# ---------------------------------------------------------------------------------------------
# The two searches of `correspond`: tiled windows (CPU) and the all-pairs product (CUDA)
# ---------------------------------------------------------------------------------------------

SHAPES = [((3, 8, 8, 6), 3, 2), ((4, 6, 7, 9), 5, 3), ((2, 5, 5, 5), 5, 25), ((3, 4, 5, 6), 1, 1),
          ((3, 8, 13, 11), 9, 4), ((2, 6, 12, 20), 3, 9)]


@pytest.mark.parametrize("shape, window, k", SHAPES)
def test_allpairs_search_equals_tiled(shape, window, k):
    features = random_features(*shape, seed=sum(shape) + window)
    tiled = correspond(features, window, k, search="tiled")
    allpairs = correspond(features, window, k, search="allpairs")
    assert torch.equal(tiled.index, allpairs.index)
    torch.testing.assert_close(tiled.score, allpairs.score)
    assert torch.equal(correspond(features, window, k).index, tiled.index)  # "auto" on the CPU: tiled


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_allpairs_chunks_do_not_change_the_matches(chunk):
    from cove.correspondence import step_matches
    from cove.window import token_rows

    features = random_features(3, 6, 9, 7, seed=11)
    rows = [token_rows(f) for f in features]
    whole = step_matches(rows, (9, 7), 5, 3, "allpairs", chunk=None)
    chunked = step_matches(rows, (9, 7), 5, 3, "allpairs", chunk=chunk)
    for (i, s), (ci, cs) in zip(whole, chunked):
        assert torch.equal(i, ci)
        torch.testing.assert_close(s, cs)


@pytest.mark.parametrize("search", ["tiled", "allpairs"])
def test_ties_go_to_the_lower_index_in_both_searches(search):
    """Features drawn from 4 unit vectors of +-1/2 entries: every similarity is a multiple of
    1/4, exact in any summation order, and nearly every window holds exact ties."""
    g = torch.Generator().manual_seed(12)
    palette = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1, -1, 0, 0, 1, 1, 0, 0],
                            [0, 0, 1, -1, 0, 1, 1, 0], [-1, 0, 0, 1, 0, 0, 1, 1]]) / 2  # (4, C)
    features = palette[torch.randint(0, 4, (4, 7, 9), generator=g)].permute(0, 3, 1, 2)  # (F, C, H, W)
    c = correspond(features, window=5, k=4, search=search)
    reference = correspond_reference(features, window=5, k=4)
    assert torch.equal(c.index, reference.index)
    torch.testing.assert_close(c.score, reference.score)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("search", ["tiled", "allpairs"])
def test_half_features_get_the_matches_of_their_float64_upcast(dtype, search):
    features = random_features(4, 16, 9, 11, seed=13).to(dtype)  # (F, C, H, W)
    half = correspond(features, window=5, k=3, search=search)
    full = correspond(features.double(), window=5, k=3, search=search)
    assert torch.equal(half.index, full.index) and half.score.dtype == dtype
    assert torch.equal(half.score, full.score.to(dtype))
    assert torch.equal(correspond_reference(features, window=5, k=3).index, full.index)


def test_similarities_of_half_features_are_computed_in_float64_except_on_mps():
    for half in (torch.float16, torch.bfloat16):
        assert similarity_dtype(half) == similarity_dtype(half, "cuda") == torch.float64
        assert similarity_dtype(half, "mps") == torch.float32  # mps has no float64
    for full in (torch.float32, torch.float64):
        assert similarity_dtype(full) == similarity_dtype(full, "mps") == full


def smooth_half_features(frames=3, channels=64, grid=(12, 12), seed=0):
    """Unit float16 ``(F, C, H, W)`` features that vary slowly in space (bilinear upsampling of
    a 3x3 map), as diffusion features do: neighbouring window cells are near-ties."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(frames, channels, 3, 3, generator=g)
    x = torch.nn.functional.interpolate(low, size=grid, mode="bilinear", align_corners=False)
    return (x / x.norm(dim=1, keepdim=True)).half()


@pytest.mark.parametrize("search", ["tiled", "allpairs"])
def test_half_similarities_are_the_exact_dot_products(search):
    """float16 numbers are multiples of 2^-24: times 2^24 they are integers, and their dot
    products exact integers. Every window similarity of both searches, times 2^48, is that
    integer: no summation order can change it."""
    features = smooth_half_features(frames=2)
    grid, window = tuple(features.shape[-2:]), 5
    source, target = (token_rows(f).to(similarity_dtype(f.dtype)) for f in features)  # (N, C) each
    if search == "tiled":
        forward = pair_similarity(source, target, grid, window)
        backward = reverse_similarity(forward, target, source, grid, window)
    else:
        forward, backward = allpairs_similarity(source, target, grid, window)
    exact = (source * 2**24).long() @ (target * 2**24).long().T  # (N, N) integer dot products
    cells = window_indices(grid_cells(grid), window, grid)  # (N, l*l)
    assert torch.equal((forward * 2**48).long(), exact.gather(1, cells))
    assert torch.equal((backward * 2**48).long(), exact.T.gather(1, cells))


def test_half_matches_do_not_depend_on_the_order_of_the_channels():
    """Reordering the channels reorders every dot product's sum. On near-tied smooth features
    both searches and the reference still find the same matches and scores, and each other's."""
    features = smooth_half_features(seed=4)
    order = torch.randperm(features.shape[1], generator=torch.Generator().manual_seed(5))
    found = [correspond(f, window=5, k=3, search=search) for f in (features, features[:, order])
             for search in ("tiled", "allpairs")]
    found.append(correspond_reference(features[:, order], window=5, k=3))
    for other in found[1:]:
        assert torch.equal(other.index, found[0].index)
        assert torch.equal(other.score, found[0].score)


def test_half_matches_are_those_of_the_exact_similarities():
    """Cell 10 of frame 1 beats cell 5 by 2^-38 (one float16 step of a tiny channel): float32
    sums lose that and would tie them (the lower index, 5, first); the exact sums rank 10 first,
    in both searches and the reference."""
    features = random_features(2, 16, 5, 5, seed=31).half()  # (F, C, H, W)
    query = features[0, :, 0, 0].clone()
    query[0] = 2**-14  # the smallest normal float16 (the next one up is 2^-24 away); norm still ~1
    near = query.clone()
    near[0] = 2**-14 + 2**-24  # query . near = query . query + 2^-38
    features[0, :, 0, 0], features[1, :, 1, 0], features[1, :, 2, 0] = query, query, near  # cells 0; 5, 10
    assert query[0] == 2**-14 and near[0] - query[0] == 2**-24
    for c in [correspond(features, window=5, k=2, search=s) for s in ("tiled", "allpairs")] + [
            correspond_reference(features, window=5, k=2)]:
        assert c.index[0, 0, 1].tolist() == [10, 5]


def test_bad_search_is_refused():
    with pytest.raises(ValueError, match="search must be one of"):
        correspond(random_features(2, 4, 5, 5), window=3, k=2, search="gpu")


# ---------------------------------------------------------------------------------------------
# match_agreement: how far two correspondences agree
# ---------------------------------------------------------------------------------------------


def test_search_agrees_with_the_reference_on_random_features():
    features = random_features(3, 8, 7, 9, seed=21)
    agreement = match_agreement(correspond(features, 5, 3), correspond_reference(features, 5, 3))
    assert agreement == {"matches": 3 * 63 * 3 * 3, "differing": 0, "share": 0.0, "max_score_gap": 0.0}


def test_match_agreement_counts_an_altered_index():
    c = correspond(random_features(3, 8, 7, 9, seed=22), 5, 3)
    altered = Correspondence(c.index.clone(), c.score.clone(), c.grid)
    altered.index[1, 10, 2, 0] = (altered.index[1, 10, 2, 0] + 1) % 63
    altered.index[0, 5, 1, 2] = (altered.index[0, 5, 1, 2] + 1) % 63
    altered.score[0, 5, 1, 2] -= 0.25  # the second altered entry's score, 0.25 off
    agreement = match_agreement(c, altered)
    assert agreement["differing"] == 2 and agreement["share"] == 2 / c.index.numel()
    assert agreement["max_score_gap"] == pytest.approx(0.25)


def test_match_agreement_refuses_other_shapes():
    a = correspond(random_features(3, 8, 7, 9, seed=23), 5, 3)
    b = correspond(random_features(3, 8, 7, 9, seed=23), 5, 2)
    with pytest.raises(ValueError, match=r"^b: expected index of shape \(3, 63, 3, 3\) \(a's\), got \(3, 63, 3, 2\)$"):
        match_agreement(a, b)
    with pytest.raises(ValueError, match="^a: expected a Correspondence, got Tensor$"):
        match_agreement(a.index, b)
