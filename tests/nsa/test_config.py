"""NSAConfig validation: every rule fails with a ValueError that names the field."""

import pytest

from specsa.config import Combine, NSAConfig, check_heads

FIELDS = ("cmp_block", "cmp_stride", "sel_block", "num_selected", "window")


def test_defaults_are_the_papers():
    cfg = NSAConfig()
    assert (cfg.cmp_block, cfg.cmp_stride, cfg.sel_block, cfg.num_selected, cfg.window) == (32, 16, 64, 16, 512)
    assert cfg.combine is Combine.MERGED


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [0, -16, 16.0, "16", None])
def test_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=rf"NSAConfig\.{field} must be a positive integer"):
        NSAConfig(**{field: value})


@pytest.mark.parametrize("cmp_block,cmp_stride", [(24, 16), (32, 12), (8, 3)])
def test_stride_must_divide_cmp_block(cmp_block, cmp_stride):
    with pytest.raises(ValueError, match=r"NSAConfig\.cmp_stride .*must divide cmp_block"):
        NSAConfig(cmp_block=cmp_block, cmp_stride=cmp_stride, sel_block=96)


@pytest.mark.parametrize("sel_block", [40, 72, 24])
def test_stride_must_divide_sel_block(sel_block):
    with pytest.raises(ValueError, match=r"NSAConfig\.cmp_stride .*must divide sel_block"):
        NSAConfig(cmp_block=16, cmp_stride=16, sel_block=sel_block)


@pytest.mark.parametrize("cmp_block,sel_block", [(128, 64), (64, 32), (48, 32)])
def test_cmp_block_must_not_exceed_sel_block(cmp_block, sel_block):
    with pytest.raises(ValueError, match=r"NSAConfig\.cmp_block .*must not exceed sel_block"):
        NSAConfig(cmp_block=cmp_block, cmp_stride=16, sel_block=sel_block)


@pytest.mark.parametrize("n", [1, 2])
def test_num_selected_at_least_three(n):
    with pytest.raises(ValueError, match=r"NSAConfig\.num_selected must be at least 3"):
        NSAConfig(num_selected=n)


@pytest.mark.parametrize("combine", ["dense", "Merged", "", 1, None])
def test_unknown_combine(combine):
    with pytest.raises(ValueError, match=r"NSAConfig\.combine must be one of"):
        NSAConfig(combine=combine)


def test_valid_edge_configs():
    NSAConfig(cmp_block=16, cmp_stride=16, sel_block=16, num_selected=3, window=1)  # l = d = l', n = 3
    NSAConfig(cmp_block=12, cmp_stride=4, sel_block=24)
    assert NSAConfig(combine="gated").combine is Combine.GATED
    assert NSAConfig(combine=Combine.MERGED).combine is Combine.MERGED


@pytest.mark.parametrize(
    "length,cmp_tokens,sel_blocks",
    [(0, 0, 0), (1, 0, 1), (31, 0, 1), (32, 1, 1), (47, 1, 1), (48, 2, 1), (64, 3, 1), (65, 3, 2), (1100, 67, 18)],
)
def test_counts(length, cmp_tokens, sel_blocks):
    cfg = NSAConfig()
    assert cfg.num_cmp_tokens(length) == cmp_tokens
    assert cfg.num_sel_blocks(length) == sel_blocks


@pytest.mark.parametrize("hq,hkv,group", [(8, 8, 1), (8, 2, 4), (9, 3, 3), (64, 4, 16), (8, 1, 8)])
def test_check_heads_returns_group(hq, hkv, group):
    assert check_heads(hq, hkv) == group


@pytest.mark.parametrize("hq,hkv", [(6, 4), (9, 2), (3, 6), (7, 3)])
def test_check_heads_rejects_non_divisible(hq, hkv):
    with pytest.raises(ValueError, match=rf"query heads \({hq}\).*KV heads \({hkv}\)"):
        check_heads(hq, hkv)


@pytest.mark.parametrize("hq,hkv", [(0, 1), (4, 0), (-4, 2)])
def test_check_heads_rejects_non_positive(hq, hkv):
    with pytest.raises(ValueError, match=r"Head counts must be positive"):
        check_heads(hq, hkv)

