"""The Triton NSA path equals the reference for decode, verification, `shared` and
`reuse`: small shapes in the interpreter on the CPU, the same tests on a GPU."""

from __future__ import annotations

import pytest
import torch

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.compression import mean_compression
from specsa.nsa.kernels.paged import _query_group, nsa_paged
from specsa.nsa.reference import nsa_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def filled_cache(cfg: NSAConfig, lengths: list[int], heads: int, dim: int, seed: int, tied: bool = False) -> PagedKVCache:
    """A cache holding random keys/values for sequences of the given lengths, written in
    uneven pieces and interleaved, so pages are scattered. `tied`: every key is the same,
    so block scores tie and the lower index must win."""
    gen = torch.Generator().manual_seed(seed)
    cache = PagedKVCache(num_layers=1, num_kv_heads=heads, head_dim=dim, max_seqs=len(lengths),
                         max_len=max(lengths) + 5, page_size=cfg.sel_block, nsa=cfg, dtype=torch.float32, device=DEVICE)  # fmt: skip
    slots = [cache.allocate() for _ in lengths]
    written = [0] * len(lengths)
    while written != lengths:
        for i, slot in enumerate(slots):
            n = min(int(torch.randint(1, 40, (1,), generator=gen)), lengths[i] - written[i])
            if n:
                kv = torch.randn(2, n, heads, dim, generator=gen).to(DEVICE)
                if tied:
                    kv[0] = 0.5
                start = cache.extend(slot, n)
                token_slots = torch.full((n,), slot, device=DEVICE)
                positions = torch.arange(start, start + n, device=DEVICE)
                cache.append(0, kv[0], kv[1], token_slots, positions, mean_compression, mean_compression)
                written[i] += n
    return cache


CASES = {  # name: (config, lengths, Hq, Hkv, D)
    "mixed-lengths": (dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=24), [150, 9, 33, 97], 8, 2, 16),
    "shorter-than-l": (dict(cmp_block=16, cmp_stride=8, sel_block=16, num_selected=4, window=40), [9, 15, 16, 17], 4, 4, 32),
    "group-1-long": (dict(cmp_block=16, cmp_stride=16, sel_block=32, num_selected=5, window=16), [300], 2, 2, 16),
    "window-past-selection": (dict(cmp_block=8, cmp_stride=8, sel_block=16, num_selected=3, window=70), [211, 64], 6, 3, 16),
    # more than 64 blocks: the selection is assembled from several programs' candidates
    "many-blocks": (dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=6, window=24), [1500, 40], 2, 1, 16),
}


def run_both(case: str, combine: str, num_queries: int, seed: int, **kernel_args):
    """The kernel and the reference on the same cache: T queries at the end of each sequence."""
    fields, lengths, hq, hkv, dim = CASES[case.removesuffix("-tied")]
    cfg = NSAConfig(**fields, combine=combine)
    cache = filled_cache(cfg, lengths, hkv, dim, seed=seed, tied=case.endswith("-tied"))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(len(lengths), num_queries, hq, dim, generator=gen).to(DEVICE)
    gates = torch.rand(len(lengths), num_queries, hq, 3, generator=gen).to(DEVICE)
    slots = torch.arange(len(lengths), dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    share_group = kernel_args.get("share_group", 1)
    reused = kernel_args.pop("reuse", None)
    if reused is not None:  # an arbitrary valid selection: each query's own of another head
        kernel_args["selected"] = reused_selection(cfg, lengths, num_queries, hkv, seed)
    out, selected = nsa_paged(
        q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, seq_lens, cache.k_cmp[0], cache.v_cmp[0],
        cfg, gates=gates, **kernel_args,
    )  # fmt: skip
    for b in range(len(lengths)):
        k, v = cache.keys_values(0, b)
        k_cmp, v_cmp = cache.compressed(0, b)
        given = kernel_args.get("selected")
        ref = nsa_attention(q[b, None], k[None], v[None], cfg, gates=gates[b, None], k_cmp=k_cmp[None],
                            v_cmp=v_cmp[None], share_group=share_group,
                            selected=None if given is None else given[b, None].long())  # fmt: skip
        assert torch.equal(ascending(selected[b]), ascending(ref.selected[0])), f"sequence {b}"
        torch.testing.assert_close(out[b], ref.out[0], atol=2e-5, rtol=2e-5)


def ascending(selected: torch.Tensor) -> torch.Tensor:
    """Block indices in ascending order, -1 pads last (the reference's order)."""
    padded = selected.long().masked_fill(selected < 0, 1 << 30).sort(-1).values
    return padded.masked_fill(padded == 1 << 30, -1)


def reused_selection(cfg: NSAConfig, lengths: list[int], num_queries: int, heads: int, seed: int) -> torch.Tensor:
    """A selection for `reuse`: n random causal blocks per query and head, padded with -1."""
    gen = torch.Generator().manual_seed(seed)
    selected = torch.full((len(lengths), num_queries, heads, cfg.num_selected), -1, dtype=torch.int32)
    for b, length in enumerate(lengths):
        for t in range(num_queries):
            causal = (length - num_queries + t) // cfg.sel_block + 1
            for h in range(heads):
                count = min(causal, cfg.num_selected - int(torch.randint(0, 2, (1,), generator=gen)))
                selected[b, t, h, :count] = torch.randperm(causal, generator=gen)[:count].int()
    return selected.to(DEVICE)


@pytest.mark.parametrize("combine", ["merged", "gated"])
@pytest.mark.parametrize("case", [*CASES, "many-blocks-tied"])
def test_decode_equals_reference(case, combine):
    run_both(case, combine, 1, seed=len(case), splits=3)


@pytest.mark.parametrize("combine", ["merged", "gated"])
def test_decode_without_split_equals_reference(combine):
    run_both("many-blocks", combine, 1, seed=1, splits=1)


@pytest.mark.parametrize("combine", ["merged", "gated"])
@pytest.mark.parametrize(
    "case, num_queries, query_group",
    [("mixed-lengths", 4, None), ("shorter-than-l", 4, 3), ("window-past-selection", 8, 1), ("many-blocks", 5, 8)],
)
def test_verification_equals_reference(case, combine, num_queries, query_group):
    """T queries per sequence, each with its own selection and causal limits, grouped so
    that programs load the union of their queries' blocks; query groups of 1 (query-centric)
    and sizes that do not divide T give the same result."""
    run_both(case, combine, num_queries, seed=num_queries + len(case), query_group=query_group, splits=2)


@pytest.mark.parametrize("combine, share_group", [("merged", 2), ("gated", 3)])
def test_shared_selection_equals_reference(combine, share_group):
    run_both("window-past-selection", combine, 7, seed=share_group, share_group=share_group, splits=2)


@pytest.mark.parametrize("combine", ["merged", "gated"])
def test_reused_selection_equals_reference(combine):
    run_both("window-past-selection", combine, 5, seed=3, reuse=True, splits=2)


def test_model_decode_with_kernels_equals_reference(tiny_llama):
    """The model's decode loop through the Triton path gives the reference's tokens and
    logits (gated with a learned compression would go the same way; merged here)."""
    from specsa.generate import generate
    from specsa.model.loader import load_model
    from specsa.sampling import SamplingParams

    model = load_model(str(tiny_llama), nsa_overrides=dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3,
                                                          window=16), device=DEVICE)  # fmt: skip
    prompts = [torch.randint(2, 128, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (56, 23)]
    params = SamplingParams(max_new_tokens=4)
    model.use_kernels = False
    reference = [g.token_ids for g in generate(model, prompts, params, frozenset())]
    cache = model.new_cache(1, 64)
    model(torch.tensor(prompts[0], device=DEVICE), [0], [56], cache)
    ref_logits = model.logits(model(torch.tensor([5], device=DEVICE), [0], [1], cache))
    model.use_kernels = True
    assert [g.token_ids for g in generate(model, prompts, params, frozenset())] == reference
    cache.truncate(0, 56)
    torch.testing.assert_close(model.logits(model(torch.tensor([5], device=DEVICE), [0], [1], cache)), ref_logits,
                               atol=1e-4, rtol=1e-4)  # fmt: skip


TREES = {  # each node's parent; -1: a child of the last committed token
    "two-branches": [-1, 0, 0, 1, 2, 2, 4],
    "two-roots": [-1, -1, 0, 1, 1, 3],
}


@pytest.mark.parametrize("combine", ["merged", "gated"])
@pytest.mark.parametrize(
    "case, tree, query_group",
    [("mixed-lengths", "two-branches", None), ("window-past-selection", "two-roots", 2), ("many-blocks", "two-branches", 1)],
)
def test_tree_verification_equals_reference(case, tree, query_group, combine):
    """Draft-tree nodes (tokens in the cache in node order) each get what decoding along
    their own path gives: their own position, their ancestors only, compressed tokens
    formed along the path (the cache's own, formed in node order, must not be read)."""
    from specsa.nsa.reference import nsa_verify
    from specsa.nsa.tree import draft_tree, tree_mask

    fields, lengths, hq, hkv, dim = CASES[case]
    cfg = NSAConfig(**fields, combine=combine)
    mask = tree_mask(TREES[tree])
    nodes = mask.shape[0]
    lengths = [n + nodes for n in lengths]
    cache = filled_cache(cfg, lengths, hkv, dim, seed=nodes)
    gen = torch.Generator().manual_seed(len(case))
    q = torch.randn(len(lengths), nodes, hq, dim, generator=gen).to(DEVICE)
    gates = torch.rand(len(lengths), nodes, hq, 3, generator=gen).to(DEVICE)
    slots = torch.arange(len(lengths), dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    raw = [cache.keys_values(0, b) for b in range(len(lengths))]
    tree_inputs = draft_tree(mask, [k for k, _ in raw], [v for _, v in raw], cfg)
    out, selected = nsa_paged(
        q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, seq_lens, cache.k_cmp[0], cache.v_cmp[0],
        cfg, gates=gates, query_group=query_group, splits=2, tree=tree_inputs,
    )  # fmt: skip
    for b, (k, v) in enumerate(raw):
        ref = nsa_verify(q[b, None], k[None], v[None], cfg, tree_mask=mask, gates=gates[b, None])
        assert torch.equal(ascending(selected[b]), ascending(ref.selected[0])), f"sequence {b}"
        torch.testing.assert_close(out[b], ref.out[0], atol=2e-5, rtol=2e-5)


def test_draft_tree_rejects_what_the_kernel_cannot_compute():
    from specsa.nsa.tree import draft_tree, tree_mask

    cfg = NSAConfig(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=24)
    deep = tree_mask(list(range(-1, 16)))  # depth 16 = l'
    k = torch.zeros(40, 1, 8)
    with pytest.raises(ValueError, match="shallower"):
        draft_tree(deep, [k], [k], cfg)
    with pytest.raises(ValueError, match="parent"):
        tree_mask([-1, 1])


def test_query_groups_are_even_and_fit_a_tile_unless_more_are_asked_for():
    assert _query_group(17, group_pad=4) == 9  # 9 + 8 rows of 16 queries at most, not 16 + 1
    assert _query_group(8, group_pad=16) == 4  # 64-row tiles hold 4 queries of 16 heads
    assert _query_group(8, group_pad=4, min_groups=5) == 2  # 5 groups asked: ⌈8 / 5⌉ = 2 a group
    assert _query_group(1, group_pad=4, min_groups=5) == 1
    assert _query_group(16, group_pad=4, min_groups=0) == 16


@pytest.mark.parametrize("query_group", [0, 65])
def test_a_query_group_outside_a_tile_is_a_clear_error(query_group):
    cfg = NSAConfig(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=24)
    cache = filled_cache(cfg, [40], heads=1, dim=16, seed=0)
    q = torch.randn(1, 2, 2, 16, device=DEVICE)
    seq = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="query_group is the verifier queries one program serves"):
        nsa_paged(q, cache.k_pages[0], cache.v_pages[0], cache.block_table, seq, seq + 40, cache.k_cmp[0],
                  cache.v_cmp[0], cfg, query_group=query_group)  # fmt: skip
