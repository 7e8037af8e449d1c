"""Prefill, decode, chain and tree verification compute the same NSA; `merged` is dense
attention while the context fits in the n selected blocks and not once it does not."""

import pytest
import torch
import torch.nn.functional as F

from naive_nsa import (
    check_selection_invariants,
    make_cfg,
    naive_nsa,
    path_of,
    random_gates,
    random_mlp,
    random_qkv,
    tree_mask_from_parents,
)
from naive_nsa import single_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from specsa.config import NSAConfig
from specsa.nsa.compression import compress, mean_compression
from specsa.nsa.reference import nsa_attention, nsa_decode, nsa_prefill, nsa_verify, tree_paths

TOL = dict(rtol=1e-9, atol=1e-11)
COMBINES = ["merged", "gated"]
PHIS = ["mean", "mlp"]


def _phi_kw(kind, cfg, dim, seed=0):
    if kind == "mean":
        return {}
    return dict(phi_k=random_mlp(seed + 11, cfg, dim), phi_v=random_mlp(seed + 12, cfg, dim))


def _naive_phi_kw(kw):
    return dict(phi_k=kw.get("phi_k"), phi_v=kw.get("phi_v"))


def _dense_causal(q, k, v):
    """Dense causal attention of S queries over their S keys with SDPA. [B, S, Hq, D]."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )
    return out.transpose(1, 2)


# ------------------------------------------------------------------ against the oracle


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("phi", PHIS)
def test_prefill_matches_naive_definition(combine, phi):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=20, combine=combine)
    q, k, v = random_qkv(1, 2, 83, 6, 2, 32)
    gates = random_gates(1, 2, 83, 6)
    kw = _phi_kw(phi, cfg, 32)
    result = nsa_prefill(q, k, v, cfg, gates=gates, **kw)
    out, selected = naive_nsa(q, k, v, cfg, gates=gates, **_naive_phi_kw(kw))
    assert torch.equal(result.selected, selected)
    torch.testing.assert_close(result.out, out, **TOL)
    check_selection_invariants(result.selected, range(83), cfg)
    # sparse for real: the last rows leave blocks out of the selection
    assert (result.selected[:, -1] >= 0).sum(-1).max() == cfg.num_selected < cfg.num_sel_blocks(83)


# ------------------------------------------------------------------ decode vs prefill


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("phi", PHIS)
def test_decode_equals_prefill_row(combine, phi):
    cfg = make_cfg(l=8, d=4, lp=16, n=3, w=16, combine=combine)
    s = 71
    q, k, v = random_qkv(2, 2, s, 4, 1, 64)
    gates = random_gates(2, 2, s, 4)
    kw = _phi_kw(phi, cfg, 64, seed=2)
    full = nsa_prefill(q, k, v, cfg, gates=gates, **kw)
    for t in range(s):
        step = nsa_decode(q[:, t], k[:, : t + 1], v[:, : t + 1], cfg, gates=gates[:, t], **kw)
        assert step.out.shape == (2, 4, 64) and step.selected.shape == (2, 1, 3)
        assert torch.equal(step.selected, full.selected[:, t]), t
        torch.testing.assert_close(step.out, full.out[:, t], **TOL)


@pytest.mark.parametrize("combine", COMBINES)
def test_decode_with_cached_compressed_tokens(combine):
    """A cache hands in compressed tokens, possibly more than are complete at t (formed by
    later tokens): the result is that of compressing the visible keys."""
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=12, combine=combine)
    q, k, v = random_qkv(3, 1, 90, 4, 2, 32)
    gates = random_gates(3, 1, 90, 4)
    k_cmp, v_cmp = compress(k, cfg, mean_compression), compress(v, cfg, mean_compression)
    for t in [0, 6, 7, 8, 11, 30, 57, 89]:
        plain = nsa_decode(q[:, t], k[:, : t + 1], v[:, : t + 1], cfg, gates=gates[:, t])
        cached = nsa_decode(
            q[:, t], k[:, : t + 1], v[:, : t + 1], cfg, gates=gates[:, t], k_cmp=k_cmp, v_cmp=v_cmp
        )
        assert torch.equal(cached.selected, plain.selected), t
        torch.testing.assert_close(cached.out, plain.out, **TOL)


# ------------------------------------------------------------------ chain verification


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("phi", PHIS)
@pytest.mark.parametrize("prefix,num_new", [(45, 7), (3, 6), (60, 1), (0, 5)])
def test_chain_verify_equals_successive_decodes(combine, phi, prefix, num_new):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=16, combine=combine)
    s = prefix + num_new
    q, k, v = random_qkv(4, 2, s, 8, 2, 64, t=num_new)
    gates = random_gates(4, 2, num_new, 8)
    kw = _phi_kw(phi, cfg, 64, seed=4)
    verified = nsa_verify(q, k, v, cfg, gates=gates, **kw)
    assert verified.out.shape == q.shape
    for i in range(num_new):
        pos = prefix + i
        step = nsa_decode(q[:, i], k[:, : pos + 1], v[:, : pos + 1], cfg, gates=gates[:, i], **kw)
        assert torch.equal(verified.selected[:, i], step.selected), i
        torch.testing.assert_close(verified.out[:, i], step.out, **TOL)
    out, selected = naive_nsa(q, k, v, cfg, gates=gates, **_naive_phi_kw(kw))
    assert torch.equal(verified.selected, selected)
    torch.testing.assert_close(verified.out, out, **TOL)


# ------------------------------------------------------------------ tree verification

TREES = [
    [-1, 0, 0, 1, 1, 2, 3, 6, 4],  # one root, branches of depth up to 4
    [-1, 0, 1, 2, 3, 4],  # a chain written as a tree
    [-1, -1, 0, 1, 0],  # two roots
]


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("phi", PHIS)
@pytest.mark.parametrize("parents", TREES)
@pytest.mark.parametrize("prefix", [45, 13])
def test_tree_verify_equals_decoding_each_path(combine, phi, parents, prefix):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=10, combine=combine)
    nodes = len(parents)
    q, k, v = random_qkv(5, 2, prefix + nodes, 4, 2, 32, t=nodes)
    gates = random_gates(5, 2, nodes, 4)
    kw = _phi_kw(phi, cfg, 32, seed=5)
    mask = tree_mask_from_parents(parents)
    verified = nsa_verify(q, k, v, cfg, tree_mask=mask, gates=gates, **kw)
    assert verified.out.shape == q.shape and verified.selected.shape == (2, nodes, 2, 4)
    for node in range(nodes):
        path = path_of(parents, node)
        keys = torch.cat([k[:, :prefix], k[:, [prefix + p for p in path]]], dim=1)
        vals = torch.cat([v[:, :prefix], v[:, [prefix + p for p in path]]], dim=1)
        step = nsa_decode(q[:, node], keys, vals, cfg, gates=gates[:, node], **kw)
        assert torch.equal(verified.selected[:, node], step.selected), node
        torch.testing.assert_close(verified.out[:, node], step.out, **TOL)
        out, selected = naive_nsa(
            q[:, node : node + 1], keys, vals, cfg, gates=gates[:, node : node + 1], **_naive_phi_kw(kw)
        )
        assert torch.equal(verified.selected[:, node], selected[:, 0])
        torch.testing.assert_close(verified.out[:, node], out[:, 0], **TOL)


@pytest.mark.parametrize("combine", COMBINES)
def test_tree_shaped_as_a_chain_equals_chain_verify(combine):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=10, combine=combine)
    nodes, prefix = 7, 42
    q, k, v = random_qkv(6, 1, prefix + nodes, 4, 1, 32, t=nodes)
    gates = random_gates(6, 1, nodes, 4)
    chain = nsa_verify(q, k, v, cfg, gates=gates)
    tree = nsa_verify(q, k, v, cfg, tree_mask=tree_mask_from_parents(list(range(-1, nodes - 1))), gates=gates)
    assert torch.equal(chain.selected, tree.selected)
    torch.testing.assert_close(chain.out, tree.out, **TOL)


@pytest.mark.parametrize("combine", COMBINES)
def test_tree_nodes_see_ancestors_only(combine):
    """Changing a node's key changes its descendants and nobody else."""
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=64, combine=combine)
    parents = [-1, 0, 0, 1, 2, 3]  # 0 -> 1 -> 3 -> 5 and 0 -> 2 -> 4
    prefix = 30
    q, k, v = random_qkv(7, 1, prefix + 6, 2, 1, 16, t=6)
    gates = random_gates(7, 1, 6, 2)
    mask = tree_mask_from_parents(parents)
    before = nsa_verify(q, k, v, cfg, tree_mask=mask, gates=gates).out
    k2, v2 = k.clone(), v.clone()
    k2[:, prefix + 1] += 3.0  # node 1
    v2[:, prefix + 1] -= 3.0
    after = nsa_verify(q, k2, v2, cfg, tree_mask=mask, gates=gates).out
    changed = [(after[:, i] - before[:, i]).abs().max().item() > 1e-6 for i in range(6)]
    assert changed == [False, True, False, True, False, True]


def test_tree_paths_and_its_validation():
    mask = tree_mask_from_parents([-1, 0, 0, 1, 3])
    assert tree_paths(mask) == [[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 3, 4]]
    with pytest.raises(ValueError):
        tree_paths(mask.to(torch.int64))
    with pytest.raises(ValueError):  # a node that is not its own ancestor
        bad = mask.clone()
        bad[2, 2] = False
        tree_paths(bad)
    with pytest.raises(ValueError):  # an ancestor after the node
        bad = mask.clone()
        bad[1, 2] = True
        tree_paths(bad)
    with pytest.raises(ValueError):  # 3's row claims 2 but 2 is not on 1's path
        bad = mask.clone()
        bad[3, 2] = True
        tree_paths(bad)


def test_argument_validation():
    cfg = make_cfg()
    q, k, v = random_qkv(8, 1, 10, 4, 2, 8)
    with pytest.raises(ValueError):
        nsa_attention(q, k[:, :5], v[:, :5], cfg)  # more queries than keys
    with pytest.raises(ValueError):
        nsa_attention(q, k, v, make_cfg(combine="gated"))  # gated without gates
    with pytest.raises(ValueError):
        nsa_attention(q, k, v, cfg, share_group=0)
    with pytest.raises(ValueError):
        nsa_prefill(q[:, :4], k, v, cfg)
    with pytest.raises(ValueError):
        nsa_attention(q[:, :, :3], k, v, cfg)  # 3 query heads over 2 KV heads
    with pytest.raises(ValueError):
        nsa_verify(q[:, :3], k, v, cfg, tree_mask=tree_mask_from_parents([-1, 0, 1]), k_cmp=k)


# ------------------------------------------------------------------ merged vs dense


@pytest.mark.parametrize("s", [1, 5, 17, 40, 63, 64])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (8, 1)])
@pytest.mark.parametrize("phi", PHIS)
def test_merged_is_dense_while_context_fits(s, hq, hkv, phi):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=8)  # n·l' = 64, window far smaller
    q, k, v = random_qkv(9 + s, 2, s, hq, hkv, 64)
    kw = _phi_kw(phi, cfg, 64)
    dense = _dense_causal(q, k, v)
    torch.testing.assert_close(nsa_prefill(q, k, v, cfg, **kw).out, dense, **TOL)
    torch.testing.assert_close(nsa_decode(q[:, -1], k, v, cfg, **kw).out, dense[:, -1], **TOL)
    last = min(s, 3)
    torch.testing.assert_close(nsa_verify(q[:, -last:], k, v, cfg, **kw).out, dense[:, -last:], **TOL)


@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 3)])
def test_merged_differs_from_dense_once_context_does_not_fit(hq, hkv):
    """Row t equals dense attention exactly when selected blocks ∪ window cover [0, t]."""
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=16)
    s = 150
    q, k, v = random_qkv(10, 1, s, hq, hkv, 32)
    result = nsa_prefill(q, k, v, cfg)
    dense = _dense_causal(q, k, v)
    group = hq // hkv
    uncovered_rows = 0
    for t in range(s):
        for h in range(hkv):
            blocks = set(result.selected[0, t, h].tolist())
            seen = {p for p in range(t + 1) if p // 16 in blocks or p > t - 16}
            diff = (result.out[0, t, h * group : (h + 1) * group] - dense[0, t, h * group : (h + 1) * group])
            if len(seen) == t + 1:
                torch.testing.assert_close(diff, torch.zeros_like(diff), rtol=0, atol=1e-11)
            else:
                uncovered_rows += 1
                assert diff.abs().max() > 1e-4, (t, h)
    assert uncovered_rows > s  # most rows of both heads are really sparse


# ------------------------------------------------------------------ default configuration


def test_default_config_long_context_verify():
    """32/16/64/16/512 at S = 1600 (25 blocks): the selection is sparse, verification
    equals successive decodes and the naive definition, and differs from dense."""
    cfg = NSAConfig()
    s, num_new = 1600, 5
    q, k, v = random_qkv(11, 1, s, 4, 2, 64, t=num_new)
    verified = nsa_verify(q, k, v, cfg)
    check_selection_invariants(verified.selected, range(s - num_new, s), cfg)
    out, selected = naive_nsa(q, k, v, cfg)
    assert torch.equal(verified.selected, selected)
    torch.testing.assert_close(verified.out, out, **TOL)
    for i in range(num_new):
        pos = s - num_new + i
        step = nsa_decode(q[:, i], k[:, : pos + 1], v[:, : pos + 1], cfg)
        assert torch.equal(step.selected, verified.selected[:, i])
        torch.testing.assert_close(step.out, verified.out[:, i], **TOL)
    # window (t-512, t] reaches back to block 17 at most; at most 14 of the 16 picks lie
    # in blocks 0..16, so at least 3 blocks are left out
    scores = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(2, dim=2)) / 8.0
    positions = torch.arange(s - num_new, s)
    dense = torch.einsum(
        "bths,bshd->bthd",
        scores.masked_fill(torch.arange(s) > positions[None, :, None, None], float("-inf")).softmax(-1),
        v.repeat_interleave(2, dim=2),
    )
    assert (verified.out - dense).abs().amax(dim=(0, 2, 3)).min() > 1e-4


@pytest.mark.parametrize("combine", COMBINES)
def test_default_config_prefill_rows_equal_decode(combine):
    cfg = NSAConfig(combine=combine)
    s = 1150  # 18 blocks > n = 16
    q, k, v = random_qkv(12, 1, s, 2, 1, 64)
    gates = random_gates(12, 1, s, 2)
    full = nsa_prefill(q, k, v, cfg, gates=gates)
    rows = [0, 30, 31, 32, 63, 64, 511, 512, 1023, 1024, 1087, 1149]
    check_selection_invariants(full.selected[:, rows], rows, cfg)
    assert (full.selected[0, -1, 0] >= 0).all() and full.selected.max() == 17
    for t in rows:
        step = nsa_decode(q[:, t], k[:, : t + 1], v[:, : t + 1], cfg, gates=gates[:, t])
        assert torch.equal(step.selected, full.selected[:, t]), t
        torch.testing.assert_close(step.out, full.out[:, t], **TOL)
    out, selected = naive_nsa(q[:, -1:], k, v, cfg, gates=gates[:, -1:])
    assert torch.equal(selected[:, 0], full.selected[:, -1])
    torch.testing.assert_close(out[:, 0], full.out[:, -1], **TOL)
