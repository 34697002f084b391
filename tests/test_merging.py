"""Stage 5: temporal token merging (ToMe bipartite soft matching)."""
import pytest
import torch

from cove.merging import (
    bipartite_merge,
    make_merge,
    merge_count,
    merge_groups,
    merge_with_sizes,
)


def hand_tokens():
    """(4, 2): A = tokens 0, 2 and B = tokens 1, 3; token 0 is nearly token 1."""
    return torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])


def test_ratio_zero_is_the_identity():
    x = torch.randn(3, 27, 8)
    assert bipartite_merge(x, 0.0) is x
    merge, unmerge = make_merge(x, 0)
    assert merge(x) is x and unmerge(x) is x
    merged, size = bipartite_merge(x, 0.0, return_sizes=True)
    assert merged is x and torch.equal(size, torch.ones(3, 27, 1))


@pytest.mark.parametrize(
    "tokens, ratio, r", [(27, 0.5, 13), (57, 0.5, 28), (10, 1.0, 5), (7, 0.3, 2), (1, 0.5, 0), (4, 0.2, 0)]
)
def test_r_rule(tokens, ratio, r):
    assert merge_count(tokens, ratio) == r
    assert bipartite_merge(torch.randn(2, tokens, 4), ratio).shape == (2, tokens - r, 4)


@pytest.mark.parametrize("frames, expected", [(10, 14), (20, 29)])
def test_paper_numbers(frames, expected):
    """Sec. 3.3: K = 3, 50%: 10 frames 27 -> 14 tokens, 20 frames 57 -> 29."""
    gathered = torch.randn(5, (frames - 1) * 3, 16)  # (..., (F-1)*K, C)
    merged, size = bipartite_merge(gathered, 0.5, return_sizes=True)
    assert merged.shape == (5, expected, 16)
    assert (size.sum(dim=-2) == (frames - 1) * 3).all()


def test_hand_example_merges_the_closest_pair():
    x = hand_tokens()
    merged, size = bipartite_merge(x, 0.25, return_sizes=True)  # r = 1
    expected = torch.stack([x[2], (x[0] + x[1]) / 2, x[3]])  # kept A, then B with A0 merged in
    torch.testing.assert_close(merged, expected)
    assert size[:, 0].tolist() == [1.0, 2.0, 1.0]


def test_size_weighted_average_on_a_hand_example():
    x = hand_tokens()
    merge, unmerge = make_merge(x, 1)
    merged, size = merge_with_sizes(merge, x, size=torch.tensor([[3.0], [1.0], [1.0], [2.0]]))
    torch.testing.assert_close(merged[1], (3 * x[0] + x[1]) / 4)
    assert size[:, 0].tolist() == [1.0, 4.0, 2.0]
    back = unmerge(merged)  # every token gets its group's value
    torch.testing.assert_close(back, torch.stack([merged[1], merged[1], x[2], x[3]]))


def test_merging_conserves_the_weighted_sum_and_batches_are_independent():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 27, 8, generator=g)
    merged, size = bipartite_merge(x, 0.5, return_sizes=True)
    torch.testing.assert_close((merged * size).sum(-2), x.sum(-2))
    for b in range(3):
        torch.testing.assert_close(bipartite_merge(x[b, 1], 0.5), merged[b, 1])


def test_merge_uses_the_metric_for_other_tensors():
    g = torch.Generator().manual_seed(1)
    metric, values = torch.randn(2, 9, 4, generator=g), torch.randn(2, 9, 3, generator=g)
    merge, unmerge = make_merge(metric, 4)
    merged = merge(values)
    assert merged.shape == (2, 5, 3)
    # unmerge then merge is the identity on merged tokens (each group holds one value)
    torch.testing.assert_close(merge(unmerge(merged)), merged)
    # with the metric's own assignment the unmerged values of merged partners coincide
    back = unmerge(merged)
    assert (back[..., None, :, :] == back[..., :, None, :]).all(-1).sum() > 2 * 9  # some groups


def test_invalid_ratio_raises():
    with pytest.raises(ValueError, match="ratio"):
        bipartite_merge(torch.randn(6, 2), 1.5)


def test_bipartite_merge_with_a_metric_equals_the_closures():
    """The engine's path (``bipartite_merge(..., metric=keys)``) equals ToMe's closures."""
    keys, values = torch.randn(4, 27, 8, dtype=torch.float64), torch.randn(4, 27, 6, dtype=torch.float64)
    merged, size, group = bipartite_merge(values, 0.5, metric=keys, return_sizes=True, return_groups=True)
    merge, unmerge = make_merge(keys, 13)
    expected, expected_size = merge_with_sizes(merge, values)
    torch.testing.assert_close(merged, expected)
    assert torch.equal(size, expected_size) and torch.equal(group, merge_groups(keys, 13))
    torch.testing.assert_close(unmerge(merged), merged.gather(-2, group[..., None].expand(4, 27, 6)))
    assert (group.max(dim=-1).values == 13).all()  # 27 - 13 = 14 slots


def test_groups_without_merging_are_the_identity():
    x = torch.randn(2, 5, 3)
    merged, group = bipartite_merge(x, 0.0, return_groups=True)
    assert merged is x and torch.equal(group, torch.arange(5).expand(2, 5))
