"""Selection layouts: hand cases with known answers for the overlap measures and the
query grouping, then the properties synthetic and remapped layouts promise."""

import pytest
import torch

from specsa.nsa.layout import (
    group_queries,
    load_savings,
    pairwise_overlap,
    remap_layout,
    synthetic_layout,
    to_bitmap,
    union_size,
)


def layout(*rows: list[list[int]]) -> torch.Tensor:
    """Queries given as lists of per-head block lists (same n everywhere): [T, H, n]."""
    return torch.tensor(rows)


def one_head(*sets: list[int]) -> torch.Tensor:
    """One KV head, one block list per query: [T, 1, n]."""
    return torch.tensor(sets)[:, None, :]


# ---------------------------------------------------------------- hand cases


def test_to_bitmap_by_hand():
    selected = layout([[0, 2, -1], [1, -1, -1]], [[2, 0, 3], [-1, -1, -1]])  # [2, 2, 3]
    expected = torch.tensor(
        [
            [[1, 0, 1, 0], [0, 1, 0, 0]],
            [[1, 0, 1, 1], [0, 0, 0, 0]],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(to_bitmap(selected, 4), expected)


def test_union_size_by_hand():
    selected = layout([[0, 1, 2], [0, 5, -1]], [[0, 1, 3], [0, 6, 7]])
    assert union_size(selected).tolist() == [4, 4]  # head 0: 0 1 2 3; head 1: 0 5 6 7


def test_load_savings_by_hand():
    assert load_savings(one_head([0, 1, 2], [0, 1, 3])) == pytest.approx(6 / 4)
    assert load_savings(one_head([0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2])) == pytest.approx(4.0)
    assert load_savings(one_head([0, 1], [2, 3], [4, 5])) == pytest.approx(1.0)
    # Heads are averaged: one identical head (2×), one disjoint head (1×).
    assert load_savings(layout([[0, 1], [0, 1]], [[0, 1], [2, 3]])) == pytest.approx(1.5)


def test_pairwise_overlap_by_hand():
    assert pairwise_overlap(one_head([0, 1, 2, 3], [2, 3, 4, 5])) == pytest.approx(0.5)
    assert pairwise_overlap(one_head([0, 1, 2, 3], [0, 1, -1, -1])) == pytest.approx(1.0)  # by the smaller set
    # Three pairs: {0,1}∩{0,2} = 1/2, {0,1}∩{3,4} = 0, {0,2}∩{3,4} = 0.
    assert pairwise_overlap(one_head([0, 1], [0, 2], [3, 4])) == pytest.approx(1 / 6)


def test_block_order_does_not_matter():
    a = one_head([0, 5, 9, -1], [9, 0, 7, 5])
    b = one_head([-1, 9, 5, 0], [0, 5, 7, 9])
    assert load_savings(a) == load_savings(b)
    assert pairwise_overlap(a) == pairwise_overlap(b)
    assert group_queries(a, 4) == group_queries(b, 4)


def test_group_queries_by_hand():
    base, other = [0, 1, 2, 3], [0, 5, 6, 7]
    # Identical queries fill groups up to max_group.
    assert group_queries(one_head(*[base] * 8), 3) == [3, 3, 2]
    # Query 2 brings 3 new blocks of 4 (≥ half): it starts a group, and query 3 joins it.
    assert group_queries(one_head(base, base, other, other), 8) == [2, 2]
    # Exactly half new does not join (the rule is "fewer than threshold"); a lower bar keeps it apart too.
    half = [0, 1, 8, 9]
    assert group_queries(one_head(base, half), 8) == [1, 1]
    assert group_queries(one_head(base, half), 8, threshold=0.75) == [2]
    # One new block of four joins, and widens the union the next query is compared with.
    assert group_queries(one_head(base, [0, 1, 2, 4], [0, 1, 3, 4]), 8) == [3]


def test_group_queries_counts_blocks_over_all_heads():
    # Head 0 identical, head 1 all new: 3 new of 6 blocks is not fewer than half.
    selected = layout([[0, 1, 2], [0, 1, 2]], [[0, 1, 2], [3, 4, 5]])
    assert group_queries(selected, 4) == [1, 1]
    assert group_queries(selected, 4, threshold=0.6) == [2]


def test_errors_are_sentences():
    with pytest.raises(ValueError, match=r"\[T, H, n\]"):
        load_savings(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        to_bitmap(torch.zeros(1, 1, 1), 4)
    with pytest.raises(ValueError, match="past num_blocks"):
        to_bitmap(one_head([0, 4]), 4)
    with pytest.raises(ValueError, match="two queries"):
        pairwise_overlap(one_head([0, 1]))
    with pytest.raises(ValueError, match="max_group"):
        group_queries(one_head([0, 1]), 0)
    with pytest.raises(ValueError, match="overlap must be"):
        synthetic_layout(8, 2, 16, 64, overlap=0.1)
    with pytest.raises(ValueError, match="source_blocks"):
        remap_layout(one_head([0, 1]), 8, 4)


# ---------------------------------------------------------------- synthetic layouts


@pytest.mark.parametrize("overlap", [0.3, 0.6, 0.9])
def test_synthetic_layout_hits_its_overlap(overlap):
    generator = torch.Generator().manual_seed(0)
    selected = synthetic_layout(8, 8, 16, 1024, overlap, generator)
    assert abs(pairwise_overlap(selected) - overlap) <= 0.1


def test_synthetic_layout_is_a_valid_selection():
    num_queries, num_heads, num_selected, num_blocks = 8, 4, 16, 64
    selected = synthetic_layout(num_queries, num_heads, num_selected, num_blocks, 0.5, torch.Generator().manual_seed(1))
    assert selected.shape == (num_queries, num_heads, num_selected)
    bitmap = to_bitmap(selected, num_blocks)
    assert bitmap.sum(-1).eq(num_selected).all()  # no duplicates, no pads
    assert bitmap[..., [0, num_blocks - 2, num_blocks - 1]].all()  # forced blocks of the last page


def test_synthetic_layout_extremes():
    generator = torch.Generator().manual_seed(2)
    identical = synthetic_layout(8, 2, 16, 256, 1.0, generator)
    assert load_savings(identical) == pytest.approx(8.0)
    assert pairwise_overlap(synthetic_layout(8, 2, 16, 4096, 3 / 16, generator)) < 0.2  # the forced blocks only


# ---------------------------------------------------------------- remapping


def test_remap_keeps_the_overlap_structure():
    generator = torch.Generator().manual_seed(3)
    captured = synthetic_layout(16, 3, 16, 40, 0.6, generator)
    captured[0, 0, 5] = -1  # a pad survives
    moved = remap_layout(captured, 40, 1024, generator)
    assert load_savings(moved) == load_savings(captured)
    assert pairwise_overlap(moved) == pairwise_overlap(captured)
    assert torch.equal(union_size(moved), union_size(captured))
    assert moved[0, 0, 5] == -1
    # Forced blocks land on the target's forced blocks; the rest strictly between them.
    assert torch.equal(moved == 0, captured == 0)
    assert torch.equal(moved >= 1022, captured >= 38)
    assert torch.equal(moved == 1023, captured == 39)
    middle = moved[(captured > 0) & (captured < 38)]
    assert middle.min() >= 1 and middle.max() <= 1021


def test_remap_is_one_map_for_every_query_and_head():
    captured = one_head([0, 3, 5, 8, 9], [0, 3, 6, 8, 9])
    moved = remap_layout(captured, 10, 100, torch.Generator().manual_seed(4))
    assert moved[0, 0, 1] == moved[1, 0, 1]  # block 3 goes to one place
    assert moved[0, 0, 2] != moved[1, 0, 2]  # blocks 5 and 6 stay apart
    assert moved[:, :, 3:].tolist() == [[[98, 99]], [[98, 99]]]
