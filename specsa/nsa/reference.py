"""Readable PyTorch NSA: the oracle every kernel, model path and speculative strategy
is tested against. It favours being obviously right over being fast: every mask is
materialised and every branch is a plain masked softmax.

One core, `nsa_attention`, computes T queries that sit at the *last* T positions of a
key sequence of length S (prefill: T = S; decode: T = 1; chain verification: T = γ+1).
Tree verification runs each draft node over its own root-to-node path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specsa.config import Combine, NSAConfig, check_heads
from specsa.nsa.compression import Compression, compress, mean_compression

PAD_BLOCK = -1  # fills `selected` where a query has fewer than n causal blocks


@dataclass
class NSAOutput:
    out: Tensor  # [B, T, Hq, D]
    selected: Tensor  # [B, T, Hkv, n] selected block indices, ascending, PAD_BLOCK last


# ---------------------------------------------------------------------------- pieces


def block_overlap_weights(cfg: NSAConfig, num_cmp: int, num_blocks: int) -> Tensor:
    """w(i, j): how many stride-d sub-blocks of compressed token i lie in selection block j.

    Returns [num_cmp, num_blocks] float32. For 32/16/64, block j gets tokens 4j-1 … 4j+3
    with weights 1, 2, 2, 2, 1.
    """
    subs_per_token = cfg.cmp_block // cfg.cmp_stride
    subs_per_block = cfg.sel_block // cfg.cmp_stride
    token_subs = torch.arange(num_cmp)[:, None] + torch.arange(subs_per_token)  # [Nc, l/d]
    block_of_sub = token_subs // subs_per_block
    return (block_of_sub[..., None] == torch.arange(num_blocks)).sum(1).float()


def forced_blocks(positions: Tensor, num_blocks: int, cfg: NSAConfig) -> Tensor:
    """Blocks always selected: block 0 and the two local blocks. [T, num_blocks] bool."""
    block = torch.arange(num_blocks, device=positions.device)  # [Nb]
    current = (positions // cfg.sel_block)[:, None]  # [T, 1]
    return (block == 0) | (block == current) | (block == current - 1)


def causal_blocks(positions: Tensor, num_blocks: int, cfg: NSAConfig) -> Tensor:
    """Blocks that start at or before each query's position. [T, num_blocks] bool."""
    block = torch.arange(num_blocks, device=positions.device)
    return block * cfg.sel_block <= positions[:, None]


def select_blocks(block_scores: Tensor, positions: Tensor, cfg: NSAConfig) -> Tensor:
    """Forced blocks, then the best-scoring causal blocks, up to n; ties to the lower index.

    block_scores [B, T, H, Nb] -> selected [B, T, H, n] (ascending, PAD_BLOCK last).
    """
    num_blocks = block_scores.shape[-1]
    forced = forced_blocks(positions, num_blocks, cfg)[:, None]  # [T, 1, Nb]
    causal = causal_blocks(positions, num_blocks, cfg)[:, None]  # [T, 1, Nb]
    rank_key = block_scores.masked_fill(forced, float("inf"))
    rank_key = rank_key.masked_fill(~causal, float("-inf"))
    # A stable descending sort keeps equal scores in index order: ties go to the lower index.
    order = rank_key.sort(dim=-1, descending=True, stable=True).indices
    chosen = order[..., : cfg.num_selected]  # [B, T, H, min(n, Nb)]
    is_causal = causal.expand_as(rank_key).gather(-1, chosen)
    chosen = chosen.masked_fill(~is_causal, num_blocks)  # sorts last, becomes a pad
    chosen = chosen.sort(dim=-1).values
    chosen = chosen.masked_fill(chosen == num_blocks, PAD_BLOCK)
    missing = cfg.num_selected - chosen.shape[-1]
    return torch.nn.functional.pad(chosen, (0, missing), value=PAD_BLOCK)


def selected_token_mask(selected: Tensor, positions: Tensor, cfg: NSAConfig, length: int) -> Tensor:
    """Tokens of the selected blocks that are causal: [B, T, H, length] bool."""
    token_block = torch.arange(length, device=selected.device) // cfg.sel_block  # [S]
    in_selected = (token_block[:, None] == selected[..., None, :]).any(-1)  # [B, T, H, S]
    causal = torch.arange(length, device=selected.device) <= positions[:, None]  # [T, S]
    return in_selected & causal[:, None, :]


def window_mask(positions: Tensor, cfg: NSAConfig, length: int) -> Tensor:
    """Positions (t - w, t] for each query t: [T, length] bool."""
    key = torch.arange(length, device=positions.device)
    return (key <= positions[:, None]) & (key > positions[:, None] - cfg.window)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention restricted to `mask`; a query that sees nothing gets zeros.

    q [B, T, Hq, D], k/v [B, S, Hkv, D], mask [B or 1, T, Hkv or 1, S] bool.
    Returns out [B, T, Hq, D] and probabilities [B, T, Hq, S].
    """
    group = q.shape[2] // k.shape[2]
    scores = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(group, dim=2)) * scale
    head_mask = mask.repeat_interleave(group, dim=2) if mask.shape[2] > 1 else mask
    probs = scores.masked_fill(~head_mask, float("-inf")).softmax(dim=-1)
    probs = torch.where(head_mask, probs, 0.0)  # all-masked rows were NaN
    out = torch.einsum("bths,bshd->bthd", probs, v.repeat_interleave(group, dim=2))
    return out, probs


# ---------------------------------------------------------------------------- core


def block_importance(p_cmp: Tensor, cfg: NSAConfig, num_blocks: int, num_kv_heads: int) -> Tensor:
    """Selection-block scores from compressed attention, shared by a GQA group.

    p_cmp [B, T, Hq, Nc] -> [B, T, Hkv, Nb]: P[i] = Σ_{h in group} p_cmp[h, i], then Σ_i w(i, j)·P[i].
    """
    b, t, hq, nc = p_cmp.shape
    group_sum = p_cmp.reshape(b, t, num_kv_heads, hq // num_kv_heads, nc).sum(dim=3)
    weights = block_overlap_weights(cfg, nc, num_blocks).to(p_cmp)
    return group_sum @ weights


def share_scores(block_scores: Tensor, share_group: int) -> Tensor:
    """`shared` precision: each query ranks blocks by the summed scores of its group of
    `share_group` adjacent queries (query i is in group i // C). [B, T, H, Nb]."""
    t = block_scores.shape[1]
    group_of = torch.arange(t, device=block_scores.device) // share_group  # [T]
    num_groups = int(group_of[-1]) + 1
    sums = block_scores.new_zeros(block_scores.shape[0], num_groups, *block_scores.shape[2:])
    sums.index_add_(1, group_of, block_scores)
    return sums[:, group_of]


def nsa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cfg: NSAConfig,
    *,
    gates: Tensor | None = None,
    phi_k: Compression = mean_compression,
    phi_v: Compression = mean_compression,
    k_cmp: Tensor | None = None,
    v_cmp: Tensor | None = None,
    selected: Tensor | None = None,
    share_group: int = 1,
    scale: float | None = None,
) -> NSAOutput:
    """NSA for queries q [B, T, Hq, D] at positions S-T … S-1 over keys k, v [B, S, Hkv, D].

    gates      [B, T, Hq, 3] sigmoid gates (cmp, slc, win); required for `gated`.
    k_cmp/v_cmp [B, Nc, Hkv, D] compressed tokens if already known (a cache); else φ(k), φ(v).
    selected   [B, T, Hkv, n] a selection handed in (`reuse` precision); else computed.
    share_group C > 1 gives the `shared` precision; C = 1 is `exact`.
    """
    batch, t, num_q_heads, head_dim = q.shape
    s, num_kv_heads = k.shape[1], k.shape[2]
    check_heads(num_q_heads, num_kv_heads)
    if t > s:
        raise ValueError(f"{t} queries cannot sit at the end of only {s} keys.")
    if cfg.combine is Combine.GATED and gates is None:
        raise ValueError("The gated combination needs gates of shape [B, T, Hq, 3].")
    if share_group < 1:
        raise ValueError(f"share_group must be at least 1, got {share_group}.")
    scale = head_dim**-0.5 if scale is None else scale
    positions = torch.arange(s - t, s, device=q.device)  # [T]
    num_blocks = cfg.num_sel_blocks(s)

    needs_cmp_branch = selected is None or cfg.combine is Combine.GATED
    if needs_cmp_branch:
        if k_cmp is None:
            k_cmp, v_cmp = compress(k, cfg, phi_k), compress(v, cfg, phi_v)
        cmp_end = torch.arange(k_cmp.shape[1], device=q.device) * cfg.cmp_stride + cfg.cmp_block - 1
        cmp_visible = cmp_end <= positions[:, None]  # [T, Nc]
        o_cmp, p_cmp = masked_attention(q, k_cmp, v_cmp, cmp_visible[None, :, None], scale)

    if selected is None:
        block_scores = block_importance(p_cmp, cfg, num_blocks, num_kv_heads)
        if share_group > 1:
            block_scores = share_scores(block_scores, share_group)
        selected = select_blocks(block_scores, positions, cfg)

    slc_mask = selected_token_mask(selected, positions, cfg, s)  # [B, T, Hkv, S]
    win_mask = window_mask(positions, cfg, s)[None, :, None, :]  # [1, T, 1, S]
    if cfg.combine is Combine.MERGED:
        out, _ = masked_attention(q, k, v, slc_mask | win_mask, scale)
    else:
        o_slc, _ = masked_attention(q, k, v, slc_mask, scale)
        o_win, _ = masked_attention(q, k, v, win_mask, scale)
        g_cmp, g_slc, g_win = gates.unbind(-1)
        out = g_cmp[..., None] * o_cmp + g_slc[..., None] * o_slc + g_win[..., None] * o_win
    return NSAOutput(out, selected)


# ---------------------------------------------------------------------------- modes


def nsa_prefill(q: Tensor, k: Tensor, v: Tensor, cfg: NSAConfig, **kw) -> NSAOutput:
    """T queries over their own T keys, causal."""
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"Prefill needs as many queries as keys, got {q.shape[1]} and {k.shape[1]}.")
    return nsa_attention(q, k, v, cfg, **kw)


def nsa_decode(q: Tensor, k: Tensor, v: Tensor, cfg: NSAConfig, **kw) -> NSAOutput:
    """One new query q [B, Hq, D] at position S-1 over a cache k, v [B, S, Hkv, D]."""
    if "gates" in kw and kw["gates"] is not None:
        kw["gates"] = kw["gates"][:, None]
    if "selected" in kw and kw["selected"] is not None:
        kw["selected"] = kw["selected"][:, None]
    result = nsa_attention(q[:, None], k, v, cfg, **kw)
    return NSAOutput(result.out[:, 0], result.selected[:, 0])


def tree_paths(tree_mask: Tensor) -> list[list[int]]:
    """Each draft node's root-to-node path from an ancestor-or-self mask [N, N] bool.

    Nodes must be in topological order (a parent before its children).
    """
    n = tree_mask.shape[0]
    if tree_mask.shape != (n, n) or tree_mask.dtype != torch.bool:
        raise ValueError(f"The tree mask must be a square bool tensor, got {tuple(tree_mask.shape)} {tree_mask.dtype}.")
    if not bool(tree_mask.diagonal().all()) or bool(tree_mask.triu(1).any()):
        raise ValueError("The tree mask must mark each node as its own ancestor and only earlier nodes as ancestors.")
    paths = [torch.nonzero(tree_mask[i]).flatten().tolist() for i in range(n)]
    for i, path in enumerate(paths):
        for depth, node in enumerate(path):
            if paths[node] != path[: depth + 1]:
                raise ValueError(f"Row {i} of the tree mask is not a root-to-node path.")
    return paths


def nsa_verify(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cfg: NSAConfig,
    tree_mask: Tensor | None = None,
    **kw,
) -> NSAOutput:
    """Verification of N new queries q [B, N, Hq, D] appended to a cache; k, v hold the
    cache followed by the N new tokens [B, L + N, Hkv, D].

    Chain order (no tree mask): query i sits at position L + i and sees everything before.
    With a tree mask [N, N] (ancestor-or-self), node i sits at L + depth(i) and sees the
    prefix and its own ancestors only, exactly as decoding along its path would; its
    compressed tokens are formed from that path.
    """
    if tree_mask is None:
        return nsa_attention(q, k, v, cfg, **kw)
    if "k_cmp" in kw or "selected" in kw:
        raise ValueError("Tree verification forms its own compressed tokens and selections per path.")
    prefix = k.shape[1] - q.shape[1]
    outs, selections = [], []
    for node, path in enumerate(tree_paths(tree_mask)):
        keys = list(range(prefix)) + [prefix + p for p in path]
        node_kw = dict(kw)
        if kw.get("gates") is not None:
            node_kw["gates"] = kw["gates"][:, node : node + 1]
        result = nsa_attention(q[:, node : node + 1], k[:, keys], v[:, keys], cfg, **node_kw)
        outs.append(result.out)
        selections.append(result.selected)
    return NSAOutput(torch.cat(outs, dim=1), torch.cat(selections, dim=1))
