"""An independent, loop-per-query NSA written straight from DESIGN.md ("NSA semantics").

It shares nothing with specsa.nsa.reference: overlap weights come from interval
intersection, selection from a Python sort, every branch from a gathered list of key
positions. Only a learned φ (an nn.Module handed in) is called as is.
Plus small helpers the tests share: random inputs, gates, MLP compressions, tree masks
(specsa's own `tree_mask`: a mask builder, not NSA semantics).
"""

from __future__ import annotations

import math

import pytest
import torch

from specsa.config import Combine, NSAConfig
from specsa.nsa.compression import MLPCompression
from specsa.nsa.tree import tree_mask as tree_mask_from_parents  # noqa: F401  (the tests build trees with it)

DTYPE = torch.float64
PAD = -1


# ------------------------------------------------------------------ definition pieces


def overlap_weight(cfg: NSAConfig, i: int, j: int) -> int:
    """Stride-d sub-blocks of compressed token i inside selection block j, via intervals."""
    lo = max(i * cfg.cmp_stride, j * cfg.sel_block)
    hi = min(i * cfg.cmp_stride + cfg.cmp_block, (j + 1) * cfg.sel_block)
    return max(0, hi - lo) // cfg.cmp_stride


def forced_set(t: int, cfg: NSAConfig) -> list[int]:
    current = t // cfg.sel_block
    return sorted({0, current, current - 1} - {-1})


def causal_count(t: int, cfg: NSAConfig) -> int:
    return t // cfg.sel_block + 1


def _compressed_tokens(x: torch.Tensor, cfg: NSAConfig, phi) -> list[torch.Tensor]:
    """Every complete compressed token of x [B, S, H, D] as a list of [B, H, D]."""
    tokens, i = [], 0
    while i * cfg.cmp_stride + cfg.cmp_block <= x.shape[1]:
        block = x[:, i * cfg.cmp_stride : i * cfg.cmp_stride + cfg.cmp_block]  # [B, l, H, D]
        tokens.append(block.mean(dim=1) if phi is None else phi(block[:, None])[:, 0])
        i += 1
    return tokens


def _attend(qg: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """qg [G, D] over keys/values [m, D]; zeros when m == 0."""
    if keys.shape[0] == 0:
        return torch.zeros_like(qg)
    probs = torch.softmax(qg @ keys.T * scale, dim=-1)
    return probs @ values


def naive_nsa(
    q,
    k,
    v,
    cfg: NSAConfig,
    *,
    gates=None,
    phi_k=None,
    phi_v=None,
    share_group: int = 1,
    selected=None,
    scale=None,
):
    """Queries q [B, T, Hq, D] at positions S-T … S-1 over k, v [B, S, Hkv, D].

    phi None means the mean. Returns (out [B, T, Hq, D], selected [B, T, Hkv, n]).
    """
    bsz, num_q, hq, dim = q.shape
    s, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    l, d, lp, n, w = cfg.cmp_block, cfg.cmp_stride, cfg.sel_block, cfg.num_selected, cfg.window
    kc = _compressed_tokens(k, cfg, phi_k)
    vc = _compressed_tokens(v, cfg, phi_v)

    o_cmp = torch.zeros_like(q)
    scores = {}  # (b, qi, h) -> {block: score} over the query's causal blocks
    for b in range(bsz):
        for qi in range(num_q):
            t = s - num_q + qi
            for h in range(hkv):
                heads = slice(h * group, (h + 1) * group)
                qg = q[b, qi, heads]  # [G, D]
                visible = [i for i in range(len(kc)) if i * d + l - 1 <= t]
                big_p = [0.0] * len(visible)
                if visible:
                    keys = torch.stack([kc[i][b, h] for i in visible])
                    vals = torch.stack([vc[i][b, h] for i in visible])
                    probs = torch.softmax(qg @ keys.T * scale, dim=-1)  # [G, m]
                    o_cmp[b, qi, heads] = probs @ vals
                    big_p = probs.sum(dim=0).tolist()
                scores[(b, qi, h)] = {
                    j: sum(overlap_weight(cfg, i, j) * big_p[x] for x, i in enumerate(visible))
                    for j in range(causal_count(t, cfg))
                }

    out = torch.zeros_like(q)
    chosen_all = torch.full((bsz, num_q, hkv, n), PAD, dtype=torch.long)
    for b in range(bsz):
        for qi in range(num_q):
            t = s - num_q + qi
            for h in range(hkv):
                if selected is not None:
                    chosen = sorted(x for x in selected[b, qi, h].tolist() if x != PAD)
                else:
                    if share_group > 1:
                        g0 = (qi // share_group) * share_group
                        members = range(g0, min(g0 + share_group, num_q))
                        rank = {
                            j: sum(scores[(b, m, h)].get(j, 0.0) for m in members)
                            for j in range(causal_count(t, cfg))
                        }
                    else:
                        rank = scores[(b, qi, h)]
                    forced = forced_set(t, cfg)
                    rest = sorted((j for j in rank if j not in forced), key=lambda j: (-rank[j], j))
                    chosen = sorted(forced + rest[: n - len(forced)])
                chosen_all[b, qi, h, : len(chosen)] = torch.tensor(chosen, dtype=torch.long)

                heads = slice(h * group, (h + 1) * group)
                qg = q[b, qi, heads]
                slc = [p for p in range(t + 1) if p // lp in chosen]
                win = list(range(max(0, t - w + 1), t + 1))
                if cfg.combine is Combine.MERGED:
                    union = sorted(set(slc) | set(win))
                    out[b, qi, heads] = _attend(qg, k[b, union, h], v[b, union, h], scale)
                else:
                    o_slc = _attend(qg, k[b, slc, h], v[b, slc, h], scale)
                    o_win = _attend(qg, k[b, win, h], v[b, win, h], scale)
                    g = gates[b, qi, heads]  # [G, 3]
                    out[b, qi, heads] = (
                        g[:, 0:1] * o_cmp[b, qi, heads] + g[:, 1:2] * o_slc + g[:, 2:3] * o_win
                    )
    return out, chosen_all


# ------------------------------------------------------------------ shared helpers


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Autouse in every test module that imports it. These tests run thousands of tiny
    float64 ops: intra-op threads only add synchronisation, and stall badly when another
    process holds one of the CI machine's two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def make_cfg(l=8, d=4, lp=16, n=4, w=16, combine="merged") -> NSAConfig:
    return NSAConfig(cmp_block=l, cmp_stride=d, sel_block=lp, num_selected=n, window=w, combine=combine)


def random_qkv(seed: int, bsz: int, s: int, hq: int, hkv: int, dim: int, t: int | None = None):
    """q [B, T, Hq, D] (T = S unless given), k, v [B, S, Hkv, D], standard normal."""
    gen = torch.Generator().manual_seed(seed)
    t = s if t is None else t
    q = torch.randn(bsz, t, hq, dim, generator=gen, dtype=DTYPE)
    k = torch.randn(bsz, s, hkv, dim, generator=gen, dtype=DTYPE)
    v = torch.randn(bsz, s, hkv, dim, generator=gen, dtype=DTYPE)
    return q, k, v


def random_gates(seed: int, bsz: int, t: int, hq: int) -> torch.Tensor:
    """Gates strictly inside (0, 1): [B, T, Hq, 3]."""
    gen = torch.Generator().manual_seed(seed + 7919)
    return 0.02 + 0.96 * torch.rand(bsz, t, hq, 3, generator=gen, dtype=DTYPE)


def random_mlp(seed: int, cfg: NSAConfig, dim: int, hidden: int = 16) -> MLPCompression:
    """An MLPCompression with random weights, position embedding included, in float64."""
    with torch.random.fork_rng():  # leave the global generator alone
        torch.manual_seed(seed)
        phi = MLPCompression(cfg.cmp_block, dim, hidden).to(DTYPE)
        with torch.no_grad():
            phi.pos.normal_()
            phi.fc1.weight.normal_(0.0, 1.0 / math.sqrt(cfg.cmp_block * dim))
            phi.fc2.weight.normal_(0.0, 2.0 / math.sqrt(hidden))
    return phi.requires_grad_(False)


def path_of(parents: list[int], node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def check_selection_invariants(selected: torch.Tensor, positions, cfg: NSAConfig) -> None:
    """selected [B, T, H, n] for queries at `positions` (a list of ints, one per T)."""
    assert selected.shape[-1] == cfg.num_selected
    for ti, t in enumerate(positions):
        for row in selected[:, ti].reshape(-1, cfg.num_selected).tolist():
            real = [x for x in row if x != PAD]
            assert row == real + [PAD] * (len(row) - len(real)), f"pads not last: {row}"
            assert real == sorted(set(real)), f"not ascending and distinct: {row}"
            assert len(real) == min(cfg.num_selected, causal_count(t, cfg)), (t, row)
            assert all(0 <= x and x * cfg.sel_block <= t for x in real), (t, row)
            assert set(forced_set(t, cfg)) <= set(real), (t, row)
