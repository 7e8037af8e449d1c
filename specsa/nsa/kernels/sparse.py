"""Selected + window attention in Triton for T queries per sequence, grouped.

`_sparse_attention_kernel`, grid (B·query groups, Hkv, splits): a program serves a group of
QUERY_GROUP adjacent queries × the KV head's G query heads as one [rows, D] tile. It walks
the union of what those queries need — every block any of them selected outside the
group's window, then the window's blocks — so each distinct KV page is loaded once and
masked per query: a row counts a token if it is causal and (merged) the row's query
selected its block or it lies in the row's window; (gated) the selected and window
branches keep two softmax states fed by the same loaded tile. The union is split across
programs (split-K); `_merge_kernel` merges the splits by log-sum-exp and combines the
branches.

QUERY_GROUP = 1 is the query-centric kernel (each query loads its own blocks); decode is
T = 1. The overlap between the group's selections decides how much loading is saved. With
`TREE` the queries are draft-tree nodes: prefix tokens follow the rules above at the node's
own position, and the nodes' tokens count for their descendants only. With `RANKING` the
kernel takes each query's global top n of the candidates kernel's keys itself (a program
per query: decode), so the step needs no select launch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from specsa.launch import pdl_prologue
from specsa.nsa.kernels.refresh import FP32_DOT, _block_of, _online_softmax_step


@triton.jit
def _sparse_attention_kernel(
    q_ptr,  # [B, T, Hq, D]
    k_pages_ptr,  # [pages, PAGE, Hkv, D]
    v_pages_ptr,
    block_table_ptr,  # [slots, max_pages]
    slots_ptr,  # [B] int32
    seq_lens_ptr,  # [B] int32, including the T new tokens
    selected_ptr,  # [B·T, Hkv, NUM_SEL] int32, any order, -1 pads (RANKING: written, in rank order)
    cand_key_ptr,  # [B·T, Hkv, NUM_CAND] int64 (RANKING): ranking keys of the candidates, any order
    union_ptr,  # [programs, QUERY_GROUP_PAD·NUM_SEL_PAD] int32 scratch: each program's union blocks
    part_o_ptr,  # [B·T, Hq, SPLITS, 2, D] fp32: unnormalised partial outputs (branch 0 slc/merged, 1 win)
    part_ml_ptr,  # [B·T, Hq, SPLITS, 2, 2] fp32: (max, denominator)
    depths_ptr,  # [B·T] int32 (TREE): each node's depth
    ancestors_ptr,  # [B·T] int64 (TREE): bit u set when node u is the node's ancestor or itself
    num_queries,  # T
    num_candidates,  # NUM_CAND (RANKING)
    stride_qb,
    stride_qt,
    stride_qh,
    stride_pp,
    stride_pt,
    stride_ph,
    stride_bt,
    scale,
    WINDOW,
    NUM_SEL: tl.constexpr,
    NUM_SEL_PAD: tl.constexpr,
    NUM_CAND_PAD: tl.constexpr,
    RANKING: tl.constexpr,  # take each query's top n of its candidates here (no select launch)
    SPLITS,
    MERGED: tl.constexpr,
    QUERY_GROUP: tl.constexpr,
    QUERY_GROUP_PAD: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    ROWS: tl.constexpr,  # max(16, QUERY_GROUP_PAD·G_PAD)
    D: tl.constexpr,
    PAGE: tl.constexpr,
    NUM_STAGES: tl.constexpr,  # software pipelining depth of the page loop
    TREE: tl.constexpr,  # queries are draft-tree nodes (`nsa/tree.py`), their tokens in node order
    PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    num_groups = tl.cdiv(num_queries, QUERY_GROUP)
    i_b, i_group = tl.program_id(0) // num_groups, tl.program_id(0) % num_groups
    i_h, i_split = tl.program_id(1), tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    slot = tl.load(slots_ptr + i_b)
    first_query = i_group * QUERY_GROUP
    position0 = tl.load(seq_lens_ptr + i_b) - num_queries  # position of query 0
    last_query = tl.minimum(first_query + QUERY_GROUP, num_queries) - 1

    # The tile: row r is query first_query + r // G_PAD, head i_h·G + r % G_PAD.
    o_r = tl.arange(0, ROWS)
    o_d = tl.arange(0, D)
    query = first_query + o_r // G_PAD  # [ROWS]
    head = i_h * G + o_r % G_PAD
    m_r = (o_r // G_PAD < QUERY_GROUP) & (query <= last_query) & (o_r % G_PAD < G)
    if TREE:  # node t attends as if at position0 + depth(t); the nodes' tokens fill position0 … position0 + T - 1
        position = position0 + tl.load(depths_ptr + i_b * num_queries + query, mask=m_r, other=0)  # [ROWS]
        b_anc = tl.load(ancestors_ptr + i_b * num_queries + query, mask=m_r, other=0)  # [ROWS] int64
        window_start, window_end = position0 - WINDOW + 1, position0 + num_queries - 1
    else:
        position = position0 + query  # [ROWS]
        window_start, window_end = position0 + first_query - WINDOW + 1, position0 + last_query
    p_q = q_ptr + i_b * stride_qb + query[:, None] * stride_qt + head[:, None] * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_r[:, None], other=0.0)  # [ROWS, D]
    # The group's selections, [QUERY_GROUP_PAD, NUM_SEL_PAD] block indices (-1 pads).
    o_g = tl.arange(0, QUERY_GROUP_PAD)
    g_row = i_b * num_queries + first_query + o_g  # [QUERY_GROUP_PAD] rows of [B·T]
    m_g = (o_g < QUERY_GROUP) & (first_query + o_g <= last_query)
    o_s = tl.arange(0, NUM_SEL_PAD)
    m_gs = m_g[:, None] & (o_s < NUM_SEL)[None, :]
    p_sel = selected_ptr + (g_row[:, None] * num_kv_heads + i_h) * NUM_SEL + o_s[None, :]
    if RANKING:  # every split ranks the same keys; the first writes the selection out
        o_c = tl.arange(0, NUM_CAND_PAD)
        p_keys = cand_key_ptr + (g_row[:, None] * num_kv_heads + i_h) * num_candidates + o_c[None, :]
        m_keys = m_g[:, None] & (o_c < num_candidates)[None, :]
        b_keys = tl.load(p_keys, mask=m_keys, other=-1)  # [QUERY_GROUP_PAD, NUM_CAND_PAD]
        b_sel = tl.where(m_gs, _block_of(tl.topk(b_keys, NUM_SEL_PAD, dim=1)), -1)  # [QG_PAD, NUM_SEL_PAD]
        tl.store(p_sel, b_sel, mask=m_gs & (i_split == 0))
    else:
        b_sel = tl.load(p_sel, mask=m_gs, other=-1)
    row_bit = tl.minimum(o_r // G_PAD, 63).to(tl.int64)  # [ROWS] the bit of the row's query (`MAX_QUERY_GROUP`)

    # The union of the group's selections, as a list of first occurrences: entry
    # (query u, slot s) is kept unless an earlier query of the group chose the same block,
    # or the block lies in the group's window (the window's items load it).
    first_window_block = tl.maximum(window_start, 0) // PAGE
    last_window_block = window_end // PAGE
    o_u = tl.arange(0, QUERY_GROUP_PAD * NUM_SEL_PAD)
    b_union = tl.reshape(b_sel, [QUERY_GROUP_PAD * NUM_SEL_PAD])  # [U]
    seen = (b_union < 0) | ((b_union >= first_window_block) & (b_union <= last_window_block))
    for earlier in tl.static_range(QUERY_GROUP - 1):
        b_earlier = tl.sum(tl.where(o_g[:, None] == earlier, b_sel, 0), 0)  # [NUM_SEL_PAD]
        chosen = tl.sum((b_union[:, None] == b_earlier[None, :]).to(tl.int32), 1) > 0
        seen |= chosen & (o_u // NUM_SEL_PAD > earlier)
    kept = ~seen
    num_union = tl.sum(kept.to(tl.int32), 0)
    # The kept blocks, compacted into this program's row of the scratch list, so the page
    # loop reads item k's block with one load (L1/L2) instead of a reduction over a tile.
    i_program = (tl.program_id(0) * num_kv_heads + i_h) * SPLITS + i_split
    p_union = union_ptr + i_program * QUERY_GROUP_PAD * NUM_SEL_PAD
    tl.store(p_union + tl.cumsum(kept.to(tl.int32), 0) - 1, b_union, mask=kept)
    tl.debug_barrier()  # every warp's part of the list written before any warp reads it

    b_m0 = tl.full([ROWS], float("-inf"), tl.float32)  # selected (merged: everything)
    b_l0 = tl.zeros([ROWS], tl.float32)
    b_acc0 = tl.zeros([ROWS, D], tl.float32)
    b_m1 = tl.full([ROWS], float("-inf"), tl.float32)  # window, gated only
    b_l1 = tl.zeros([ROWS], tl.float32)
    b_acc1 = tl.zeros([ROWS, D], tl.float32)
    o_t = tl.arange(0, PAGE)
    # Items: the union's blocks, then the group's window blocks; this program takes items
    # i_split, i_split + SPLITS, … One straight-line loop (masks, no branch), so Triton
    # pipelines the page loads across all of them.
    num_items = tl.cdiv(tl.maximum(num_union + last_window_block - first_window_block + 1 - i_split, 0), SPLITS)
    for k in tl.range(0, num_items, num_stages=NUM_STAGES):
        item = i_split + k * SPLITS
        in_union = item < num_union
        block_j = tl.where(in_union, tl.load(p_union + item, mask=in_union, other=0),
                           first_window_block + item - num_union)  # fmt: skip
        page = tl.load(block_table_ptr + slot * stride_bt + block_j)
        valid = page >= 0
        p_kv = tl.maximum(page, 0) * stride_pp + o_t[:, None] * stride_pt + i_h * stride_ph + o_d[None, :]
        b_k = tl.load(k_pages_ptr + p_kv, mask=valid, other=0.0)  # [PAGE, D]
        b_v = tl.load(v_pages_ptr + p_kv, mask=valid, other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=FP32_DOT) * scale  # [ROWS, PAGE]
        token = block_j * PAGE + o_t  # [PAGE] positions
        causal = (token[None, :] <= position[:, None]) & valid  # [ROWS, PAGE]
        in_window = token[None, :] > position[:, None] - WINDOW
        query_hits = tl.sum((b_sel == block_j).to(tl.int64), 1) << o_g.to(tl.int64)  # [QG_PAD]: a bit each
        row_selected = (((tl.sum(query_hits, 0) >> row_bit) & 1) == 1)[:, None]  # [ROWS, 1]
        if TREE:  # a node's tokens count for the nodes they are ancestors of, in both branches
            node = token - position0  # [PAGE]
            is_node = (node >= 0) & (node < num_queries)
            ancestor = ((b_anc[:, None] >> tl.maximum(node, 0).to(tl.int64)[None, :]) & 1) == 1
            ancestor = ancestor & is_node[None, :] & valid  # [ROWS, PAGE]
            prefix = ((node < 0) & valid)[None, :]
            causal = prefix | ancestor
            row_selected = (row_selected & prefix) | ancestor
            in_window = (in_window & prefix) | ancestor
        if MERGED:
            b_s0 = tl.where(causal & (row_selected | in_window), b_s, float("-inf"))
            b_m0, b_l0, b_acc0, _ = _online_softmax_step(b_s0, b_m0, b_l0, b_acc0, b_v)
        else:
            b_s0 = tl.where(causal & row_selected, b_s, float("-inf"))
            b_m0, b_l0, b_acc0, _ = _online_softmax_step(b_s0, b_m0, b_l0, b_acc0, b_v)
            b_s1 = tl.where(causal & in_window, b_s, float("-inf"))
            b_m1, b_l1, b_acc1, _ = _online_softmax_step(b_s1, b_m1, b_l1, b_acc1, b_v)

    row = ((i_b * num_queries + query) * (num_kv_heads * G) + head) * SPLITS + i_split  # [ROWS] of [B·T, Hq, SPLITS]
    p_o = part_o_ptr + (row[:, None] * 2) * D + o_d[None, :]
    tl.store(p_o, b_acc0, mask=m_r[:, None])
    tl.store(p_o + D, b_acc1, mask=m_r[:, None])
    p_ml = part_ml_ptr + row * 4
    tl.store(p_ml, b_m0, mask=m_r)
    tl.store(p_ml + 1, b_l0, mask=m_r)
    tl.store(p_ml + 2, b_m1, mask=m_r)
    tl.store(p_ml + 3, b_l1, mask=m_r)


@triton.jit
def _merge_parts(p_o, p_ml, splits, ml_stride, o_stride, SPLITS_PAD: tl.constexpr, D: tl.constexpr):
    """Log-sum-exp merge of `splits` partials: split i has (max, denominator) at
    p_ml + i·ml_stride (+1) and its unnormalised output at p_o + i·o_stride."""
    o_s = tl.arange(0, SPLITS_PAD)
    m_s = o_s < splits
    b_m = tl.load(p_ml + o_s * ml_stride, mask=m_s, other=float("-inf"))  # [SPLITS_PAD]
    m = tl.max(b_m, 0)
    b_w = tl.where(b_m > float("-inf"), tl.exp(b_m - m), 0.0)
    l = tl.sum(b_w * tl.load(p_ml + o_s * ml_stride + 1, mask=m_s, other=0.0), 0)
    b_o = tl.load(p_o + o_s[:, None] * o_stride + tl.arange(0, D)[None, :], mask=m_s[:, None], other=0.0)
    return tl.where(l > 0, tl.sum(b_w[:, None] * b_o, 0) / l, 0.0)


@triton.jit
def _merge_kernel(
    part_o_ptr,  # [B·T, Hq, SPLITS, 2, D]
    part_ml_ptr,  # [B·T, Hq, SPLITS, 2, 2]
    cmp_part_o_ptr,  # [B·T, Hq, CMP_SPLITS, D] (gated only)
    cmp_part_ml_ptr,  # [B·T, Hq, CMP_SPLITS, 2]
    gates_ptr,  # [B·T, Hq, 3] (gated only)
    out_ptr,  # [B·T, Hq, D]
    SPLITS,
    SPLITS_PAD: tl.constexpr,
    CMP_SPLITS,
    CMP_SPLITS_PAD: tl.constexpr,
    MERGED: tl.constexpr,
    D: tl.constexpr,
    PDL: tl.constexpr,
):
    """The split-K partials merged, then the branches combined."""
    pdl_prologue(PDL)
    row = tl.program_id(0)  # over B·T·Hq
    o_d = tl.arange(0, D)
    # Partials are [SPLITS, branch, D] outputs and [SPLITS, branch, (max, denominator)].
    b_out = _merge_parts(part_o_ptr + row * SPLITS * 2 * D, part_ml_ptr + row * SPLITS * 4, SPLITS, 4, 2 * D, SPLITS_PAD, D)
    if not MERGED:
        g_cmp = tl.load(gates_ptr + row * 3).to(tl.float32)
        g_slc = tl.load(gates_ptr + row * 3 + 1).to(tl.float32)
        g_win = tl.load(gates_ptr + row * 3 + 2).to(tl.float32)
        b_win = _merge_parts(
            part_o_ptr + row * SPLITS * 2 * D + D, part_ml_ptr + row * SPLITS * 4 + 2, SPLITS, 4, 2 * D, SPLITS_PAD, D
        )
        b_cmp = _merge_parts(
            cmp_part_o_ptr + row * CMP_SPLITS * D, cmp_part_ml_ptr + row * CMP_SPLITS * 2, CMP_SPLITS, 2, D,
            CMP_SPLITS_PAD, D,
        )  # fmt: skip
        b_out = g_cmp * b_cmp + g_slc * b_out + g_win * b_win
    tl.store(out_ptr + row * D + o_d, b_out.to(out_ptr.dtype.element_ty))
