"""Property-based tests: random small configurations, ragged lengths (including contexts
shorter than l, l' and w), GQA groups 1..8, head dims 64 and 128, both combinations and
both compression forms. Deterministic: derandomized, no example database."""

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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
from specsa.config import Combine
from specsa.nsa.reference import nsa_decode, nsa_prefill, nsa_verify

TOL = dict(rtol=1e-9, atol=1e-10)

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# (l, d, l') with d | l, d | l', l <= l'
BLOCKS = st.sampled_from([(8, 4, 16), (4, 4, 8), (8, 8, 8), (12, 4, 24), (16, 8, 32), (6, 2, 12), (8, 4, 8)])
NUM_SELECTED = st.integers(3, 5)
WINDOW = st.sampled_from([1, 3, 8, 13, 16, 40, 200])
COMBINE = st.sampled_from(["merged", "gated"])
GROUP = st.integers(1, 8)
KV_HEADS = st.integers(1, 2)
HEAD_DIM = st.sampled_from([64, 128])
SEED = st.integers(0, 2**31 - 1)


def _setup(blocks, n, w, combine, use_mlp, seed, dim):
    l, d, lp = blocks
    cfg = make_cfg(l=l, d=d, lp=lp, n=n, w=w, combine=combine)
    kw = dict(phi_k=random_mlp(seed, cfg, dim), phi_v=random_mlp(seed + 1, cfg, dim)) if use_mlp else {}
    return cfg, kw


@PROPERTY
@given(
    blocks=BLOCKS, n=NUM_SELECTED, w=WINDOW, combine=COMBINE, use_mlp=st.booleans(),
    group=GROUP, hkv=KV_HEADS, dim=HEAD_DIM, s=st.integers(1, 150), seed=SEED, data=st.data(),
)
@example(blocks=(8, 4, 16), n=3, w=40, combine="gated", use_mlp=False, group=8, hkv=1, dim=128, s=5, seed=0, data=None)
def test_prefill_matches_definition_and_decode(blocks, n, w, combine, use_mlp, group, hkv, dim, s, seed, data):
    cfg, kw = _setup(blocks, n, w, combine, use_mlp, seed, dim)
    q, k, v = random_qkv(seed, 1, s, group * hkv, hkv, dim)
    gates = random_gates(seed, 1, s, group * hkv)
    full = nsa_prefill(q, k, v, cfg, gates=gates, **kw)
    assert full.out.shape == q.shape and torch.isfinite(full.out).all()
    check_selection_invariants(full.selected, range(s), cfg)

    out, selected = naive_nsa(q, k, v, cfg, gates=gates, phi_k=kw.get("phi_k"), phi_v=kw.get("phi_v"))
    assert torch.equal(full.selected, selected)
    torch.testing.assert_close(full.out, out, **TOL)

    rows = {s - 1} if data is None else set(data.draw(st.lists(st.integers(0, s - 1), max_size=3))) | {s - 1}
    for t in sorted(rows):
        step = nsa_decode(q[:, t], k[:, : t + 1], v[:, : t + 1], cfg, gates=gates[:, t], **kw)
        assert torch.equal(step.selected, full.selected[:, t]), t
        torch.testing.assert_close(step.out, full.out[:, t], **TOL)


@PROPERTY
@given(
    blocks=BLOCKS, n=NUM_SELECTED, w=WINDOW, combine=COMBINE, use_mlp=st.booleans(),
    group=GROUP, hkv=KV_HEADS, dim=HEAD_DIM, prefix=st.integers(0, 150), num_new=st.integers(1, 8), seed=SEED,
)
def test_chain_verify_equals_successive_decodes(blocks, n, w, combine, use_mlp, group, hkv, dim, prefix, num_new, seed):
    cfg, kw = _setup(blocks, n, w, combine, use_mlp, seed, dim)
    s = prefix + num_new
    q, k, v = random_qkv(seed, 1, s, group * hkv, hkv, dim, t=num_new)
    gates = random_gates(seed, 1, num_new, group * hkv)
    verified = nsa_verify(q, k, v, cfg, gates=gates, **kw)
    assert torch.isfinite(verified.out).all()
    check_selection_invariants(verified.selected, range(prefix, s), cfg)
    for i in range(num_new):
        pos = prefix + i
        step = nsa_decode(q[:, i], k[:, : pos + 1], v[:, : pos + 1], cfg, gates=gates[:, i], **kw)
        assert torch.equal(step.selected, verified.selected[:, i]), i
        torch.testing.assert_close(step.out, verified.out[:, i], **TOL)


@st.composite
def trees(draw):
    size = draw(st.integers(1, 7))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, size)]


@PROPERTY
@given(
    blocks=BLOCKS, n=NUM_SELECTED, w=WINDOW, combine=COMBINE, use_mlp=st.booleans(),
    group=GROUP, hkv=KV_HEADS, dim=HEAD_DIM, prefix=st.integers(0, 130), parents=trees(), seed=SEED,
)
def test_tree_verify_equals_decoding_each_path(blocks, n, w, combine, use_mlp, group, hkv, dim, prefix, parents, seed):
    cfg, kw = _setup(blocks, n, w, combine, use_mlp, seed, dim)
    nodes = len(parents)
    q, k, v = random_qkv(seed, 1, prefix + nodes, group * hkv, hkv, dim, t=nodes)
    gates = random_gates(seed, 1, nodes, group * hkv)
    verified = nsa_verify(q, k, v, cfg, tree_mask=tree_mask_from_parents(parents), gates=gates, **kw)
    assert torch.isfinite(verified.out).all()
    for node in range(nodes):
        path = [prefix + p for p in path_of(parents, node)]
        check_selection_invariants(verified.selected[:, node : node + 1], [len(path) - 1 + prefix], cfg)
        keys = torch.cat([k[:, :prefix], k[:, path]], dim=1)
        vals = torch.cat([v[:, :prefix], v[:, path]], dim=1)
        step = nsa_decode(q[:, node], keys, vals, cfg, gates=gates[:, node], **kw)
        assert torch.equal(step.selected, verified.selected[:, node]), node
        torch.testing.assert_close(step.out, verified.out[:, node], **TOL)


@PROPERTY
@given(
    blocks=BLOCKS, n=NUM_SELECTED, group=GROUP, hkv=KV_HEADS, dim=HEAD_DIM, s=st.integers(1, 150), seed=SEED,
)
def test_merged_is_dense_exactly_when_everything_is_covered(blocks, n, group, hkv, dim, s, seed):
    """Row t of `merged` equals dense causal attention iff selected ∪ window covers [0, t];
    always when the context fits in the n blocks."""
    l, d, lp = blocks
    cfg = make_cfg(l=l, d=d, lp=lp, n=n, w=4)
    q, k, v = random_qkv(seed, 1, s, group * hkv, hkv, dim)
    result = nsa_prefill(q, k, v, cfg)
    assert result.out.shape == q.shape
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    for t in range(s):
        for h in range(hkv):
            blocks_seen = set(result.selected[0, t, h].tolist())
            covered = all(p // lp in blocks_seen or p > t - 4 for p in range(t + 1))
            assert covered or t + 1 > n * lp
            heads = slice(h * group, (h + 1) * group)
            gap = (result.out[0, t, heads] - dense[0, t, heads]).abs().max().item()
            if covered:
                assert gap < 1e-10, (t, h, gap)
            else:
                assert gap > 1e-9, (t, h, gap)
    if cfg.combine is Combine.MERGED and s <= n * lp:
        torch.testing.assert_close(result.out, dense, **TOL)
