"""Hand-computed cases for the selection pieces: overlap weights, forced and causal
blocks, top-n with its tie rule and padding, and a compressed-attention importance that
must pick a block we planted."""

import pytest
import torch

from naive_nsa import DTYPE, PAD, make_cfg, naive_nsa, overlap_weight
from naive_nsa import single_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from specsa.config import NSAConfig
from specsa.nsa.reference import (
    PAD_BLOCK,
    block_importance,
    block_overlap_weights,
    causal_blocks,
    forced_blocks,
    nsa_decode,
    nsa_prefill,
    select_blocks,
)


def test_pad_block_is_minus_one():
    assert PAD_BLOCK == PAD == -1


# ---------------------------------------------------------------- overlap weights


def test_overlap_weights_default_config_by_hand():
    cfg = NSAConfig()  # 32/16/64: token i covers sub-blocks i, i+1; block j holds 4j … 4j+3
    expected = torch.tensor(
        [
            # b0 b1 b2
            [2, 0, 0],  # token 0: [0, 32)
            [2, 0, 0],  # token 1: [16, 48)
            [2, 0, 0],  # token 2: [32, 64)
            [1, 1, 0],  # token 3: [48, 80)
            [0, 2, 0],  # token 4: [64, 96)
            [0, 2, 0],  # token 5
            [0, 2, 0],  # token 6
            [0, 1, 1],  # token 7: [112, 144)
            [0, 0, 2],  # token 8
            [0, 0, 2],  # token 9
        ],
        dtype=torch.float32,
    )
    got = block_overlap_weights(cfg, 10, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("j", [1, 2, 5, 9])
def test_overlap_weights_default_config_pattern(j):
    """Block j gets tokens 4j-1 … 4j+3 with weights 1, 2, 2, 2, 1 and nothing else."""
    weights = block_overlap_weights(NSAConfig(), 48, 12)
    column = weights[:, j]
    expected = torch.zeros(48)
    expected[4 * j - 1 : 4 * j + 4] = torch.tensor([1.0, 2.0, 2.0, 2.0, 1.0])
    torch.testing.assert_close(column, expected, rtol=0, atol=0)


def test_overlap_weights_l16_d4_lp16_by_hand():
    """l=16, d=4, l'=16: token i covers sub-blocks i … i+3, block j holds 4j … 4j+3, so
    block j gets tokens 4j-3 … 4j+3 with weights 1, 2, 3, 4, 3, 2, 1."""
    cfg = make_cfg(l=16, d=4, lp=16, n=4, w=16)
    weights = block_overlap_weights(cfg, 14, 5)
    expected = torch.zeros(14, 5)
    for j in range(5):
        for offset, value in zip(range(-3, 4), [1, 2, 3, 4, 3, 2, 1]):
            if 0 <= 4 * j + offset < 14:
                expected[4 * j + offset, j] = value
    torch.testing.assert_close(weights, expected, rtol=0, atol=0)
    assert weights[4 * 2, 2] == 4 and weights[5, 1] == 3 and weights[5, 2] == 1


def test_overlap_weights_l_equals_d():
    """l = d = 8, l' = 32: non-overlapping tokens, four per block, weight 1 each."""
    cfg = make_cfg(l=8, d=8, lp=32, n=3, w=8)
    weights = block_overlap_weights(cfg, 11, 3)
    expected = torch.zeros(11, 3)
    for i in range(11):
        expected[i, i // 4] = 1
    torch.testing.assert_close(weights, expected, rtol=0, atol=0)


def test_overlap_weights_truncated_by_num_blocks():
    """A token reaching past the last block keeps only the part inside."""
    weights = block_overlap_weights(NSAConfig(), 4, 1)
    torch.testing.assert_close(weights, torch.tensor([[2.0], [2.0], [2.0], [1.0]]), rtol=0, atol=0)


@pytest.mark.parametrize("l,d,lp", [(32, 16, 64), (8, 4, 16), (16, 4, 16), (16, 8, 64), (8, 8, 8), (12, 4, 24)])
def test_overlap_weights_match_interval_intersection(l, d, lp):
    cfg = make_cfg(l=l, d=d, lp=lp, n=3, w=8)
    nc, nb = 40, 40 * d // lp + 3
    weights = block_overlap_weights(cfg, nc, nb)
    expected = torch.tensor([[overlap_weight(cfg, i, j) for j in range(nb)] for i in range(nc)], dtype=torch.float32)
    torch.testing.assert_close(weights, expected, rtol=0, atol=0)
    # a complete token's weights add up to its l/d sub-blocks
    assert torch.all(weights.sum(1) == l // d)


# ---------------------------------------------------------------- forced and causal


@pytest.mark.parametrize(
    "t,forced",
    [
        (0, {0}),  # t in block 0: only block 0
        (15, {0}),
        (16, {0, 1}),  # t in block 1: block 0 is both "first" and "the one before"
        (31, {0, 1}),
        (32, {0, 1, 2}),
        (47, {0, 1, 2}),
        (48, {0, 2, 3}),
        (100, {0, 5, 6}),
        (127, {0, 6, 7}),
    ],
)
def test_forced_and_causal_blocks_by_hand(t, forced):
    cfg = make_cfg(lp=16)
    got_forced = forced_blocks(torch.tensor([t]), 8, cfg)[0]
    assert set(torch.nonzero(got_forced).flatten().tolist()) == forced
    got_causal = causal_blocks(torch.tensor([t]), 8, cfg)[0]
    assert torch.nonzero(got_causal).flatten().tolist() == list(range(t // 16 + 1))


def test_forced_blocks_default_config_many_positions():
    cfg = NSAConfig()
    positions = torch.tensor([0, 63, 64, 127, 128, 1000, 4095])
    mask = forced_blocks(positions, 64, cfg)
    expected = [{0}, {0}, {0, 1}, {0, 1}, {0, 1, 2}, {0, 14, 15}, {0, 62, 63}]
    for row, want in zip(mask, expected):
        assert set(torch.nonzero(row).flatten().tolist()) == want


# ---------------------------------------------------------------- select_blocks


def _select(scores, t, cfg):
    """scores: list for one query and head -> list of selected indices."""
    s = torch.tensor(scores, dtype=DTYPE)[None, None, None]
    return select_blocks(s, torch.tensor([t]), cfg)[0, 0, 0].tolist()


def test_select_top_scores_plus_forced():
    cfg = make_cfg(lp=16, n=5)
    # t = 100: causal blocks 0..6, forced 0, 5, 6; free slots: 2
    scores = [0.0, 0.1, 0.9, 0.3, 0.8, 0.0, 0.0, 50.0]  # block 7 is not causal
    assert _select(scores, 100, cfg) == [0, 2, 4, 5, 6]


def test_select_tie_goes_to_lower_index():
    cfg = make_cfg(lp=16, n=4)
    # one free slot, blocks 2 and 3 tie for the best score
    assert _select([0.0, 0.5, 0.7, 0.7, 0.1, 0.0, 0.0, 0.0], 100, cfg) == [0, 2, 5, 6]
    # the same tie placed further right
    assert _select([0.0, 0.1, 0.2, 0.6, 0.6, 0.0, 0.0, 0.0], 100, cfg) == [0, 3, 5, 6]
    # all equal: the lowest free indices
    cfg5 = make_cfg(lp=16, n=5)
    assert _select([1.0] * 8, 100, cfg5) == [0, 1, 2, 5, 6]
    assert _select([0.0] * 8, 100, cfg5) == [0, 1, 2, 5, 6]


def test_select_forced_even_with_lowest_scores():
    cfg = make_cfg(lp=16, n=4)
    scores = [-5.0, 1.0, 2.0, 3.0, 4.0, -5.0, -5.0, 9.0]
    assert _select(scores, 100, cfg) == [0, 4, 5, 6]


def test_select_never_takes_a_future_block():
    cfg = make_cfg(lp=16, n=6)
    scores = [0.0, 0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 100.0]
    # t = 40: causal blocks 0, 1, 2 only
    assert _select(scores, 40, cfg) == [0, 1, 2, PAD, PAD, PAD]
    # t = 64 (first token of block 4): block 4 becomes causal (and forced)
    assert _select(scores, 64, cfg) == [0, 1, 2, 3, 4, PAD]


@pytest.mark.parametrize(
    "t,expected",
    [
        (0, [0, PAD, PAD, PAD]),  # inside block 0
        (15, [0, PAD, PAD, PAD]),
        (16, [0, 1, PAD, PAD]),  # block 1
        (40, [0, 1, 2, PAD]),
        (48, [0, 1, 2, 3]),  # exactly n causal blocks
    ],
)
def test_select_fewer_causal_blocks_than_n(t, expected):
    cfg = make_cfg(lp=16, n=4)
    assert _select([0.3, 0.1, 0.9, 0.5, 0.2, 0.8, 0.4, 0.7], t, cfg) == expected


def test_select_fewer_blocks_in_sequence_than_n():
    """The score tensor itself has fewer than n blocks: padded to n."""
    cfg = make_cfg(lp=16, n=5)
    assert _select([0.1, 0.2], 20, cfg) == [0, 1, PAD, PAD, PAD]
    assert _select([0.1], 3, cfg) == [0, PAD, PAD, PAD, PAD]


def test_select_blocks_batched_rows_are_independent():
    cfg = make_cfg(lp=16, n=4)
    scores = torch.tensor(
        [
            [[0.0, 0.9, 0.1, 0.2, 0.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.2, 0.9, 0.0, 0.0, 0.0, 0.0]],
            [[0.0, 0.9, 0.1, 0.2, 0.0, 0.0, 0.0, 0.0], [0.0, 0.3, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0]],
        ],
        dtype=DTYPE,
    )  # [T=2, H=2, Nb]
    got = select_blocks(scores[None], torch.tensor([100, 70]), cfg)[0].tolist()
    # t = 100: forced 0, 5, 6; t = 70: forced 0, 3, 4
    assert got == [[[0, 1, 5, 6], [0, 3, 5, 6]], [[0, 1, 3, 4], [0, 1, 3, 4]]]


# ---------------------------------------------------------------- block importance


def test_block_importance_sums_the_gqa_group_by_hand():
    cfg = make_cfg(l=8, d=4, lp=16)  # same 1,2,2,2,1 pattern as 32/16/64
    p = torch.zeros(1, 1, 4, 8, dtype=DTYPE)  # Hq = 4, Hkv = 2, Nc = 8
    p[0, 0, 0, 3] = 1.0  # KV head 0: token 3 straddles blocks 0 and 1 (weights 1, 1)
    p[0, 0, 1, 5] = 0.5  # KV head 0: token 5 is inside block 1 (weight 2)
    p[0, 0, 2, 0] = 0.25  # KV head 1: token 0 inside block 0 (weight 2)
    p[0, 0, 3, 7] = 1.0  # KV head 1: token 7 straddles blocks 1 and 2
    got = block_importance(p, cfg, 3, 2)
    expected = torch.tensor([[[[1.0, 1.0 + 1.0, 0.0], [0.5, 1.0, 1.0]]]], dtype=DTYPE)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("planted", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("combine", ["merged", "gated"])
def test_compressed_attention_picks_the_aligned_block(planted, combine):
    """Keys of one block point along the query: its compressed tokens dominate the
    compressed softmax, so it must fill the single free slot."""
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=16, combine=combine)
    s, dim, hq, hkv = 128, 64, 4, 2
    gen = torch.Generator().manual_seed(planted)
    direction = torch.randn(dim, generator=gen, dtype=DTYPE)
    direction /= direction.norm()
    k = 0.3 * torch.randn(1, s, hkv, dim, generator=gen, dtype=DTYPE)
    k -= (k @ direction)[..., None] * direction  # random keys orthogonal to the query
    k[:, planted * 16 : (planted + 1) * 16] += 2.0 * direction
    v = torch.randn(1, s, hkv, dim, generator=gen, dtype=DTYPE)
    q = (4.0 * dim**0.5 * direction).expand(1, 1, hq, dim).clone()
    gates = torch.full((1, hq, 3), 0.5, dtype=DTYPE)
    result = nsa_decode(q[:, 0], k, v, cfg, gates=gates)
    # t = 127: forced 0, 6, 7; the planted block takes the last slot, for both KV heads
    assert result.selected.tolist() == [[sorted([0, planted, 6, 7])] * hkv]
    _, naive_selected = naive_nsa(q, k, v, cfg, gates=gates[:, None])
    assert naive_selected[:, 0].tolist() == result.selected.tolist()


def test_planted_block_only_for_the_queries_that_can_see_it():
    """In a prefill, the planted block 3 ([48, 64)) is picked by queries whose compressed
    tokens cover it and never by queries before it starts."""
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=8)
    s, dim = 128, 32
    gen = torch.Generator().manual_seed(3)
    direction = torch.randn(dim, generator=gen, dtype=DTYPE)
    direction /= direction.norm()
    k = 0.3 * torch.randn(1, s, 1, dim, generator=gen, dtype=DTYPE)
    k -= (k @ direction)[..., None] * direction
    k[:, 48:64] += 2.0 * direction
    v = torch.randn(1, s, 1, dim, generator=gen, dtype=DTYPE)
    q = (4.0 * dim**0.5 * direction).expand(1, s, 1, dim).clone()
    selected = nsa_prefill(q, k, v, cfg).selected[0, :, 0]  # [S, n]
    for t in range(s):
        row = selected[t].tolist()
        if t < 48:
            assert 3 not in row
        elif t >= 80:  # blocks 4 and 5 are the local ones; 3 wins the free slot
            assert row == sorted([0, 3, t // 16 - 1, t // 16]), (t, row)
