"""The approximate precision classes: `shared` (C adjacent queries rank blocks by their
summed importance) and `reuse` (a selection handed in from another layer)."""

import pytest
import torch

from naive_nsa import (
    PAD,
    check_selection_invariants,
    forced_set,
    make_cfg,
    naive_nsa,
    random_gates,
    random_mlp,
    random_qkv,
)
from naive_nsa import single_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from specsa.nsa.reference import nsa_attention, nsa_decode, nsa_prefill, nsa_verify

TOL = dict(rtol=1e-9, atol=1e-11)
COMBINES = ["merged", "gated"]


# ------------------------------------------------------------------ shared


@pytest.mark.parametrize("combine", COMBINES)
def test_shared_with_group_one_is_exact(combine):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=12, combine=combine)
    prefix, num_new = 70, 6
    q, k, v = random_qkv(20, 2, prefix + num_new, 4, 2, 32, t=num_new)
    gates = random_gates(20, 2, num_new, 4)
    shared = nsa_verify(q, k, v, cfg, gates=gates, share_group=1)
    for i in range(num_new):
        pos = prefix + i
        step = nsa_decode(q[:, i], k[:, : pos + 1], v[:, : pos + 1], cfg, gates=gates[:, i])
        assert torch.equal(shared.selected[:, i], step.selected)
        torch.testing.assert_close(shared.out[:, i], step.out, **TOL)


def _straightforward_shared_selection(q, k, cfg, share_group):
    """Each query: its forced blocks, then its causal blocks by the group's summed score.

    Per-query scores are Σ_i w(i, j)·Σ_h p_cmp[h, i] with mean-pooled compressed tokens,
    written out with plain loops. Returns a list [T][Hkv] of sorted block lists.
    """
    _, num_q, hq, dim = q.shape
    s, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    l, d, lp = cfg.cmp_block, cfg.cmp_stride, cfg.sel_block
    positions = [s - num_q + i for i in range(num_q)]
    result = []
    per_query = {}
    for qi, t in enumerate(positions):
        for h in range(hkv):
            tokens = [k[0, i * d : i * d + l, h].mean(0) for i in range(s) if i * d + l - 1 <= t]
            score = [0.0] * cfg.num_sel_blocks(s)
            if tokens:
                kc = torch.stack(tokens)
                total = torch.zeros(len(tokens), dtype=q.dtype)
                for g in range(group):
                    total += torch.softmax(kc @ q[0, qi, h * group + g] / dim**0.5, dim=0)
                for i, p in enumerate(total.tolist()):
                    for pos in range(i * d, i * d + l, d):  # each stride-d sub-block once
                        score[pos // lp] += p
            per_query[(qi, h)] = score
    for qi, t in enumerate(positions):
        row = []
        for h in range(hkv):
            start = qi - qi % share_group
            members = range(start, min(start + share_group, num_q))
            summed = [sum(per_query[(m, h)][j] for m in members) for j in range(t // lp + 1)]
            forced = forced_set(t, cfg)
            rest = sorted((j for j in range(t // lp + 1) if j not in forced), key=lambda j: (-summed[j], j))
            row.append(sorted(forced + rest[: cfg.num_selected - len(forced)]))
        result.append(row)
    return result


@pytest.mark.parametrize("share_group", [2, 3, 8])
@pytest.mark.parametrize("combine", COMBINES)
def test_shared_selection_definition(share_group, combine):
    cfg = make_cfg(l=8, d=4, lp=16, n=5, w=8, combine=combine)
    prefix, num_new = 117, 8  # the queries straddle the block boundary at 128
    q, k, v = random_qkv(21 + share_group, 1, prefix + num_new, 6, 2, 32, t=num_new)
    gates = random_gates(21, 1, num_new, 6)
    shared = nsa_verify(q, k, v, cfg, gates=gates, share_group=share_group)
    check_selection_invariants(shared.selected, range(prefix, prefix + num_new), cfg)
    expected = _straightforward_shared_selection(q, k, cfg, share_group)
    got = [[[x for x in row if x != PAD] for row in query] for query in shared.selected[0].tolist()]
    assert got == expected
    out, selected = naive_nsa(q, k, v, cfg, gates=gates, share_group=share_group)
    assert torch.equal(shared.selected, selected)
    torch.testing.assert_close(shared.out, out, **TOL)
    # the class is really different from exact here (otherwise this test proves little)
    exact = nsa_verify(q, k, v, cfg, gates=gates)
    assert not torch.equal(exact.selected, shared.selected)


def test_shared_prefill_groups_and_a_ragged_last_group():
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=8)
    s = 99  # 99 = 24·4 + 3: the last group has 3 queries
    q, k, v = random_qkv(22, 1, s, 2, 1, 16)
    shared = nsa_prefill(q, k, v, cfg, share_group=4)
    check_selection_invariants(shared.selected, range(s), cfg)
    out, selected = naive_nsa(q, k, v, cfg, share_group=4)
    assert torch.equal(shared.selected, selected)
    torch.testing.assert_close(shared.out, out, **TOL)


def test_shared_single_query_is_exact():
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=8)
    q, k, v = random_qkv(23, 1, 90, 4, 2, 16, t=1)
    exact = nsa_decode(q[:, 0], k, v, cfg)
    shared = nsa_decode(q[:, 0], k, v, cfg, share_group=4)
    assert torch.equal(exact.selected, shared.selected)
    torch.testing.assert_close(exact.out, shared.out, **TOL)


# ------------------------------------------------------------------ reuse


@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("phi", ["mean", "mlp"])
def test_reuse_of_own_selection_is_exact(combine, phi):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=12, combine=combine)
    s = 100
    q, k, v = random_qkv(24, 2, s, 4, 2, 32)
    gates = random_gates(24, 2, s, 4)
    kw = {} if phi == "mean" else dict(phi_k=random_mlp(1, cfg, 32), phi_v=random_mlp(2, cfg, 32))
    exact = nsa_prefill(q, k, v, cfg, gates=gates, **kw)
    reused = nsa_prefill(q, k, v, cfg, gates=gates, selected=exact.selected, **kw)
    assert torch.equal(reused.selected, exact.selected)
    torch.testing.assert_close(reused.out, exact.out, **TOL)
    for t in [5, 47, 99]:
        step = nsa_decode(q[:, t], k[:, : t + 1], v[:, : t + 1], cfg, gates=gates[:, t], selected=exact.selected[:, t], **kw)
        torch.testing.assert_close(step.out, exact.out[:, t], **TOL)
    tail = nsa_verify(q[:, -5:], k, v, cfg, gates=gates[:, -5:], selected=exact.selected[:, -5:], **kw)
    torch.testing.assert_close(tail.out, exact.out[:, -5:], **TOL)


@pytest.mark.parametrize("combine", COMBINES)
def test_reuse_of_a_different_selection_changes_the_output(combine):
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=8, combine=combine)
    s = 128  # t = 127: forced 0, 6, 7; window (119, 127] inside block 7
    q, k, v = random_qkv(25, 1, s, 4, 2, 32, t=1)
    gates = random_gates(25, 1, 1, 4)
    own = nsa_decode(q[:, 0], k, v, cfg, gates=gates[:, 0])
    free = [x for x in own.selected[0, 0].tolist() if x not in (0, 6, 7)]
    assert len(free) == 1
    other = torch.tensor([[sorted([0, 6, 7, 1 if free[0] != 1 else 2])] * 2])  # [B, Hkv, n]
    changed = nsa_decode(q[:, 0], k, v, cfg, gates=gates[:, 0], selected=other)
    assert torch.equal(changed.selected, other)
    assert (changed.out - own.out).abs().max() > 1e-4
    out, _ = naive_nsa(q, k, v, cfg, gates=gates, selected=other[:, None])
    torch.testing.assert_close(changed.out, out[:, 0], **TOL)


@pytest.mark.parametrize("combine", COMBINES)
def test_reuse_across_layers_follows_the_given_selection(combine):
    """Layer B attends over layer A's blocks, padded rows included."""
    cfg = make_cfg(l=8, d=4, lp=16, n=4, w=10, combine=combine)
    s = 90
    qa, ka, va = random_qkv(26, 1, s, 4, 2, 32)
    qb, kb, vb = random_qkv(27, 1, s, 4, 2, 32)
    gates = random_gates(27, 1, s, 4)
    layer_a = nsa_prefill(qa, ka, va, cfg, gates=gates).selected
    layer_b_exact = nsa_prefill(qb, kb, vb, cfg, gates=gates)
    layer_b = nsa_attention(qb, kb, vb, cfg, gates=gates, selected=layer_a)
    assert torch.equal(layer_b.selected, layer_a)
    assert not torch.equal(layer_a, layer_b_exact.selected)
    out, _ = naive_nsa(qb, kb, vb, cfg, gates=gates, selected=layer_a)
    torch.testing.assert_close(layer_b.out, out, **TOL)
    assert (layer_b.out - layer_b_exact.out).abs().max() > 1e-4
