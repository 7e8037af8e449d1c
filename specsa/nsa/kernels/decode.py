"""Triton NSA decode: one new query per sequence over a paged KV cache.

Five launches, each computing exactly what `nsa/reference.py` computes, none of them
serial over the context, so batch 1 fills the GPU:

1. `_cmp_partial_kernel`, grid (B, Hkv, splits): the compressed branch of a KV head's G
   query heads as [G, BLOCK_N] tiles on the tensor cores, the compressed tokens split
   across programs; raw scores are kept for step 2.
2. `_block_candidates_kernel`, grid (B, Hkv, splits): the refresh step over a range of
   selection blocks: importance P from the merged softmax, block scores, local top n.
3. `_select_kernel`, grid (B·Hkv, chunks): the top n of the candidates by pairwise ranks.
4. `_sparse_attention_kernel`, grid (B, Hkv, splits): selected blocks and the window in
   one pass, a page (= selection block) at a time; with `merged` a window block that is
   also selected is skipped, so every token counts once.
5. `_merge_kernel`: log-sum-exp merge of the splits and the branch combination.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from specsa.config import Combine, NSAConfig


@triton.jit
def _cmp_partial_kernel(
    q_ptr,  # [B, Hq, D]
    k_cmp_ptr,  # [slots, C, Hkv, D]
    v_cmp_ptr,
    slots_ptr,  # [B] int32
    seq_lens_ptr,  # [B] int32, including the new token
    scores_ptr,  # [B, Hq, C] fp32: raw scores q·k̃ / √D, kept for the importance
    part_o_ptr,  # [B, Hq, CMP_SPLITS, D] fp32: unnormalised partial outputs
    part_ml_ptr,  # [B, Hq, CMP_SPLITS, 2] fp32: (max, denominator)
    stride_qb,
    stride_qh,
    stride_cs,
    stride_cc,
    stride_ch,
    scale,
    C: tl.constexpr,
    CHUNK: tl.constexpr,  # compressed tokens per split, a multiple of BLOCK_N
    CMP_SPLITS: tl.constexpr,
    CMP_BLOCK: tl.constexpr,
    CMP_STRIDE: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The compressed branch of one KV head's G query heads over one chunk of compressed
    tokens, as [G, BLOCK_N] tiles on the tensor cores (split-K over the tokens)."""
    i_b, i_h, i_split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slots_ptr + i_b)
    length = tl.load(seq_lens_ptr + i_b)
    # Every complete compressed token is visible to the newest query.
    n_cmp = tl.maximum(length + CMP_STRIDE - CMP_BLOCK, 0) // CMP_STRIDE  # (len - l) // d + 1, or 0

    o_g = tl.arange(0, G_PAD)
    o_d = tl.arange(0, D)
    m_g = o_g < G
    rows = i_b * G * tl.num_programs(1) + i_h * G + o_g  # [G_PAD] rows of [B, Hq]
    b_q = tl.load(q_ptr + i_b * stride_qb + (i_h * G + o_g[:, None]) * stride_qh + o_d[None, :], mask=m_g[:, None], other=0.0)
    base = slot * stride_cs + i_h * stride_ch

    b_m = tl.full([G_PAD], float("-inf"), tl.float32)  # running max
    b_l = tl.zeros([G_PAD], tl.float32)  # running denominator
    b_acc = tl.zeros([G_PAD, D], tl.float32)
    for start in range(i_split * CHUNK, tl.minimum((i_split + 1) * CHUNK, n_cmp), BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N)
        m_n = o_n < n_cmp
        p_kv = base + o_n[:, None] * stride_cc + o_d[None, :]
        b_k = tl.load(k_cmp_ptr + p_kv, mask=m_n[:, None], other=0.0)  # [BLOCK_N, D]
        b_v = tl.load(v_cmp_ptr + p_kv, mask=m_n[:, None], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k)) * scale  # [G_PAD, BLOCK_N]
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        tl.store(scores_ptr + rows[:, None] * C + o_n[None, :], b_s, mask=m_g[:, None] & m_n[None, :])
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp(b_m - b_m_new)
        b_p = tl.exp(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        b_m = b_m_new
    part = rows * CMP_SPLITS + i_split  # [G_PAD]
    tl.store(part_o_ptr + part[:, None] * D + o_d[None, :], b_acc, mask=m_g[:, None])
    tl.store(part_ml_ptr + part * 2, b_m, mask=m_g)
    tl.store(part_ml_ptr + part * 2 + 1, b_l, mask=m_g)


@triton.jit
def _count_beaten_by(b_key, o_pos, b_other, o_other):
    """For each key, how many of the others beat it: a larger key, or an equal key at a
    lower position (ties go to the lower index). b_key [M], b_other [K] -> [M] int32."""
    larger = b_other[None, :] > b_key[:, None]
    tie_won = (b_other[None, :] == b_key[:, None]) & (o_other[None, :] < o_pos[:, None])
    return tl.sum((larger | tie_won).to(tl.int32), 1)


@triton.jit
def _by_rank(rank, keep, b_value, o_slot, empty):
    """[len(o_slot)]: slot r gets the kept value of rank r, or `empty` (values exceed it)."""
    match = (rank[None, :] == o_slot[:, None]) & keep[None, :]
    return tl.max(tl.where(match, b_value[None, :], empty), 1)


@triton.jit
def _block_candidates_kernel(
    seq_lens_ptr,  # [B] int32
    scores_ptr,  # [B, Hq, C] fp32 from _cmp_partial_kernel
    cmp_part_ml_ptr,  # [B, Hq, CMP_SPLITS, 2]
    cand_block_ptr,  # [B, Hkv, SEL_SPLITS, NUM_SEL] int32: local top-n blocks, -1 pads
    cand_key_ptr,  # [B, Hkv, SEL_SPLITS, NUM_SEL] fp32: their ranking keys
    C: tl.constexpr,
    CMP_SPLITS: tl.constexpr,
    CMP_SPLITS_PAD: tl.constexpr,
    CMP_BLOCK: tl.constexpr,
    CMP_STRIDE: tl.constexpr,
    PAGE: tl.constexpr,
    NUM_BLOCKS: tl.constexpr,
    BLOCKS_PER_SPLIT: tl.constexpr,
    NUM_SEL: tl.constexpr,
    NUM_SEL_PAD: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
):
    """The refresh step for one range of selection blocks: the group's importance P
    (softmax over all compressed tokens, merged from the splits of step 1), weighted into
    block scores, and the range's own top n. The global top n is among these candidates."""
    i_b, i_h, i_split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = tl.load(seq_lens_ptr + i_b) - 1
    n_cmp = tl.maximum(t + 1 + CMP_STRIDE - CMP_BLOCK, 0) // CMP_STRIDE
    o_g = tl.arange(0, G_PAD)
    m_g = o_g < G
    rows = i_b * G * tl.num_programs(1) + i_h * G + o_g  # [G_PAD]

    # The softmax's max and denominator per head, merged from step 1's splits in one tile.
    o_cs = tl.arange(0, CMP_SPLITS_PAD)
    m_part = m_g[:, None] & (o_cs < CMP_SPLITS)[None, :]
    p_part = cmp_part_ml_ptr + (rows[:, None] * CMP_SPLITS + o_cs[None, :]) * 2
    b_m_parts = tl.load(p_part, mask=m_part, other=float("-inf"))  # [G_PAD, CMP_SPLITS_PAD]
    b_m = tl.max(b_m_parts, 1)
    b_w = tl.where(b_m_parts > float("-inf"), tl.exp(b_m_parts - b_m[:, None]), 0.0)
    b_l = tl.sum(b_w * tl.load(p_part + 1, mask=m_part, other=0.0), 1)

    # Block j is stride-d sub-blocks j·l'/d …; token i covers sub-blocks i … i + l/d - 1.
    o_j = i_split * BLOCKS_PER_SPLIT + tl.arange(0, BLOCKS_PER_SPLIT)
    b_score = tl.zeros([BLOCKS_PER_SPLIT], tl.float32)
    for shift in tl.static_range(CMP_BLOCK // CMP_STRIDE):
        for sub in tl.static_range(PAGE // CMP_STRIDE):
            token = o_j * (PAGE // CMP_STRIDE) + sub - shift
            valid = m_g[:, None] & ((token >= 0) & (token < n_cmp) & (o_j < NUM_BLOCKS))[None, :]
            b_s = tl.load(scores_ptr + rows[:, None] * C + token[None, :], mask=valid, other=0.0)  # [G_PAD, BPS]
            b_p = tl.where(valid, tl.exp(b_s - b_m[:, None]) / b_l[:, None], 0.0)
            b_score += tl.sum(b_p, 0)
    current = t // PAGE
    forced = (o_j == 0) | (o_j == current) | (o_j == current - 1)
    b_key = tl.where(forced, float("inf"), b_score)
    b_key = tl.where((o_j * PAGE <= t) & (o_j < NUM_BLOCKS), b_key, float("-inf"))
    rank = _count_beaten_by(b_key, o_j, b_key, o_j)  # [BPS], all in registers
    keep = (rank < NUM_SEL) & (b_key > float("-inf"))
    o_slot = tl.arange(0, NUM_SEL_PAD)
    out = ((i_b * tl.num_programs(1) + i_h) * tl.num_programs(2) + i_split) * NUM_SEL + o_slot
    tl.store(cand_block_ptr + out, _by_rank(rank, keep, o_j, o_slot, -1), mask=o_slot < NUM_SEL)
    tl.store(cand_key_ptr + out, _by_rank(rank, keep, b_key, o_slot, float("-inf")), mask=o_slot < NUM_SEL)


@triton.jit
def _select_kernel(
    cand_block_ptr,  # [B, Hkv, NUM_CAND] int32 from _block_candidates_kernel
    cand_key_ptr,  # [B, Hkv, NUM_CAND] fp32
    selected_ptr,  # [B, Hkv, NUM_SEL] int32: rank order, -1 pads
    NUM_CAND: tl.constexpr,
    NUM_CAND_PAD: tl.constexpr,
    CHUNK: tl.constexpr,
    NUM_SEL: tl.constexpr,
):
    """The global top n among the ranges' candidates. Program (row, c) ranks candidates
    c·CHUNK … against all of them; ranks are unique, so a candidate ranked r < n is
    written to slot r (a -inf one, ranked after every real one, writes a -1 pad).
    Candidates sit in block order within equal keys: position breaks ties like index."""
    base = tl.program_id(0) * NUM_CAND
    o_c = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    m_c = o_c < NUM_CAND
    b_key = tl.load(cand_key_ptr + base + o_c, mask=m_c, other=float("-inf"))
    rank = tl.zeros([CHUNK], tl.int32)
    for other in tl.static_range(0, NUM_CAND_PAD, CHUNK):
        o_k = other + tl.arange(0, CHUNK)
        b_other = tl.load(cand_key_ptr + base + o_k, mask=o_k < NUM_CAND, other=float("-inf"))
        rank += _count_beaten_by(b_key, o_c, b_other, o_k)
    b_block = tl.load(cand_block_ptr + base + o_c, mask=m_c, other=-1)
    b_block = tl.where(b_key > float("-inf"), b_block, -1)
    tl.store(selected_ptr + tl.program_id(0) * NUM_SEL + rank, b_block, mask=m_c & (rank < NUM_SEL))


@triton.jit
def _attend_page(
    b_q,  # [G_PAD, D]
    k_pages_ptr,
    v_pages_ptr,
    page,
    first_pos,  # position of the page's first token
    lo,  # tokens at positions in [lo, hi] take part
    hi,
    b_m,
    b_l,
    b_acc,
    stride_pp,
    stride_pt,
    stride_ph,
    i_h,
    scale,
    PAGE: tl.constexpr,
    D: tl.constexpr,
):
    """One online-softmax step over a page of keys: returns the updated (m, l, acc)."""
    o_t = tl.arange(0, PAGE)
    o_d = tl.arange(0, D)
    p_kv = page * stride_pp + o_t[:, None] * stride_pt + i_h * stride_ph + o_d[None, :]
    b_k = tl.load(k_pages_ptr + p_kv)  # [PAGE, D]
    b_v = tl.load(v_pages_ptr + p_kv)
    pos = first_pos + o_t
    b_s = tl.dot(b_q, tl.trans(b_k)) * scale  # [G_PAD, PAGE]
    b_s = tl.where(((pos >= lo) & (pos <= hi))[None, :], b_s, float("-inf"))
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_alpha = tl.exp(b_m - b_m_new)
    b_p = tl.exp(b_s - b_m_new[:, None])
    b_l = b_l * b_alpha + tl.sum(b_p, 1)
    b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
    return b_m_new, b_l, b_acc


@triton.jit
def _sparse_attention_kernel(
    q_ptr,  # [B, Hq, D]
    k_pages_ptr,  # [pages, PAGE, Hkv, D]
    v_pages_ptr,
    block_table_ptr,  # [slots, max_pages]
    slots_ptr,  # [B] int32
    seq_lens_ptr,  # [B] int32
    selected_ptr,  # [B, Hkv, NUM_SEL] int32 from _select_kernel
    part_o_ptr,  # [B, Hq, SPLITS, 2, D] fp32: unnormalised partial outputs (branch 0 slc/merged, 1 win)
    part_ml_ptr,  # [B, Hq, SPLITS, 2, 2] fp32: (max, denominator)
    stride_qb,
    stride_qh,
    stride_pp,
    stride_pt,
    stride_ph,
    stride_bt,
    scale,
    WINDOW: tl.constexpr,
    NUM_SEL: tl.constexpr,
    NUM_SEL_PAD: tl.constexpr,
    NUM_WIN_BLOCKS: tl.constexpr,
    SPLITS: tl.constexpr,
    MERGED: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    PAGE: tl.constexpr,
):
    i_b, i_h, i_split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slots_ptr + i_b)
    t = tl.load(seq_lens_ptr + i_b) - 1  # the query's position

    o_g = tl.arange(0, G_PAD)
    o_d = tl.arange(0, D)
    m_g = o_g < G
    p_q = q_ptr + i_b * stride_qb + (i_h * G + o_g[:, None]) * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_g[:, None], other=0.0)  # [G_PAD, D]
    o_s = tl.arange(0, NUM_SEL_PAD)
    b_sel = tl.load(selected_ptr + (i_b * tl.num_programs(1) + i_h) * NUM_SEL + o_s, mask=o_s < NUM_SEL, other=-1)

    b_m0 = tl.full([G_PAD], float("-inf"), tl.float32)  # selected (merged: everything)
    b_l0 = tl.zeros([G_PAD], tl.float32)
    b_acc0 = tl.zeros([G_PAD, D], tl.float32)
    b_m1 = tl.full([G_PAD], float("-inf"), tl.float32)  # window, gated only
    b_l1 = tl.zeros([G_PAD], tl.float32)
    b_acc1 = tl.zeros([G_PAD, D], tl.float32)

    for item in range(i_split, NUM_SEL, SPLITS):
        block = tl.sum(tl.where(o_s == item, b_sel, 0))
        if block >= 0:
            page = tl.load(block_table_ptr + slot * stride_bt + block)
            b_m0, b_l0, b_acc0 = _attend_page(
                b_q, k_pages_ptr, v_pages_ptr, page, block * PAGE, 0, t, b_m0, b_l0, b_acc0,
                stride_pp, stride_pt, stride_ph, i_h, scale, PAGE, D,
            )  # fmt: skip

    first_window_block = tl.maximum(t - WINDOW + 1, 0) // PAGE
    for item in range(i_split, NUM_WIN_BLOCKS, SPLITS):
        block = first_window_block + item
        if block <= t // PAGE:
            page = tl.load(block_table_ptr + slot * stride_bt + block)
            if MERGED:
                if tl.sum((b_sel == block).to(tl.int32)) == 0:  # selected blocks were counted whole
                    b_m0, b_l0, b_acc0 = _attend_page(
                        b_q, k_pages_ptr, v_pages_ptr, page, block * PAGE, t - WINDOW + 1, t, b_m0, b_l0, b_acc0,
                        stride_pp, stride_pt, stride_ph, i_h, scale, PAGE, D,
                    )  # fmt: skip
            else:
                b_m1, b_l1, b_acc1 = _attend_page(
                    b_q, k_pages_ptr, v_pages_ptr, page, block * PAGE, t - WINDOW + 1, t, b_m1, b_l1, b_acc1,
                    stride_pp, stride_pt, stride_ph, i_h, scale, PAGE, D,
                )  # fmt: skip

    row = (i_b * G * tl.num_programs(1) + i_h * G + o_g) * SPLITS + i_split  # [G_PAD] index into [B, Hq, SPLITS]
    p_o = part_o_ptr + (row[:, None] * 2) * D + o_d[None, :]
    tl.store(p_o, b_acc0, mask=m_g[:, None])
    tl.store(p_o + D, b_acc1, mask=m_g[:, None])
    p_ml = part_ml_ptr + row * 4
    tl.store(p_ml, b_m0, mask=m_g)
    tl.store(p_ml + 1, b_l0, mask=m_g)
    tl.store(p_ml + 2, b_m1, mask=m_g)
    tl.store(p_ml + 3, b_l1, mask=m_g)


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
    part_o_ptr,  # [B, Hq, SPLITS, 2, D]
    part_ml_ptr,  # [B, Hq, SPLITS, 2, 2]
    cmp_part_o_ptr,  # [B, Hq, CMP_SPLITS, D] (gated only)
    cmp_part_ml_ptr,  # [B, Hq, CMP_SPLITS, 2]
    gates_ptr,  # [B, Hq, 3] (gated only)
    out_ptr,  # [B, Hq, D]
    SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    CMP_SPLITS: tl.constexpr,
    CMP_SPLITS_PAD: tl.constexpr,
    MERGED: tl.constexpr,
    D: tl.constexpr,
):
    """The split-K partials merged, then the branches combined."""
    row = tl.program_id(0)  # over B·Hq
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


def nsa_decode_paged(
    q: Tensor,
    k_pages: Tensor,
    v_pages: Tensor,
    block_table: Tensor,
    slots: Tensor,
    seq_lens: Tensor,
    k_cmp: Tensor,
    v_cmp: Tensor,
    cfg: NSAConfig,
    *,
    gates: Tensor | None = None,
    scale: float | None = None,
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """NSA decode for a batch: q [B, Hq, D] at position seq_lens-1 of each sequence.

    k_pages, v_pages [pages, l', Hkv, D] (one layer); block_table [slots, max_pages];
    slots, seq_lens [B] int32 (lengths include the new token, already written);
    k_cmp, v_cmp [slots, C, Hkv, D] (all complete compressed tokens written);
    gates [B, Hq, 3] for `gated`. Returns out [B, Hq, D] and selected [B, Hkv, n]
    (rank order: forced blocks, then by score; -1 pads). Five launches, no host sync,
    so a step can be captured in a CUDA graph.
    """
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, page = k_pages.shape[2], k_pages.shape[1]
    if page != cfg.sel_block:
        raise ValueError(f"The cache's page ({page}) must equal the selection block ({cfg.sel_block}).")
    if cfg.combine is Combine.GATED and gates is None:
        raise ValueError("The gated combination needs gates of shape [B, Hq, 3].")
    group = num_q_heads // num_kv_heads
    group_pad = max(16, triton.next_power_of_2(group))
    scale = head_dim**-0.5 if scale is None else scale
    num_blocks, capacity = block_table.shape[1], k_cmp.shape[1]
    programs_wanted = 2 * 132  # about two programs per SM on an H100
    f32 = dict(device=q.device, dtype=torch.float32)

    block_n = 64
    cmp_splits = max(1, min(math.ceil(capacity / block_n), math.ceil(programs_wanted / (batch * num_kv_heads))))
    chunk = math.ceil(capacity / cmp_splits / block_n) * block_n
    cmp_splits = math.ceil(capacity / chunk)
    scores = torch.empty(batch, num_q_heads, capacity, **f32)
    cmp_part_o = torch.empty(batch, num_q_heads, cmp_splits, head_dim, **f32)
    cmp_part_ml = torch.empty(batch, num_q_heads, cmp_splits, 2, **f32)
    _cmp_partial_kernel[(batch, num_kv_heads, cmp_splits)](
        q, k_cmp, v_cmp, slots, seq_lens, scores, cmp_part_o, cmp_part_ml,
        q.stride(0), q.stride(1), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2), scale,
        C=capacity, CHUNK=chunk, CMP_SPLITS=cmp_splits, CMP_BLOCK=cfg.cmp_block, CMP_STRIDE=cfg.cmp_stride,
        G=group, G_PAD=group_pad, D=head_dim, BLOCK_N=block_n,
    )  # fmt: skip

    # 64 blocks a program: [G, 64] score tiles stay in registers, and 16·n candidates at 64K.
    blocks_per_split = 64
    sel_splits = math.ceil(num_blocks / blocks_per_split)
    cand_block = torch.empty(batch, num_kv_heads, sel_splits, cfg.num_selected, device=q.device, dtype=torch.int32)
    cand_key = torch.empty(batch, num_kv_heads, sel_splits, cfg.num_selected, **f32)
    _block_candidates_kernel[(batch, num_kv_heads, sel_splits)](
        seq_lens, scores, cmp_part_ml, cand_block, cand_key,
        C=capacity, CMP_SPLITS=cmp_splits, CMP_SPLITS_PAD=triton.next_power_of_2(cmp_splits), CMP_BLOCK=cfg.cmp_block,
        CMP_STRIDE=cfg.cmp_stride, PAGE=page, NUM_BLOCKS=num_blocks, BLOCKS_PER_SPLIT=blocks_per_split,
        NUM_SEL=cfg.num_selected, NUM_SEL_PAD=triton.next_power_of_2(cfg.num_selected),
        G=group, G_PAD=triton.next_power_of_2(group),
    )  # fmt: skip

    selected = torch.empty(batch, num_kv_heads, cfg.num_selected, device=q.device, dtype=torch.int32)
    num_candidates = sel_splits * cfg.num_selected
    rank_chunk = min(64, triton.next_power_of_2(num_candidates))
    _select_kernel[(batch * num_kv_heads, math.ceil(num_candidates / rank_chunk))](
        cand_block, cand_key, selected,
        NUM_CAND=num_candidates, NUM_CAND_PAD=triton.next_power_of_2(num_candidates), CHUNK=rank_chunk,
        NUM_SEL=cfg.num_selected,
    )  # fmt: skip

    num_window_blocks = math.ceil((cfg.window - 1) / cfg.sel_block) + 1
    if splits is None:
        splits = max(1, min(cfg.num_selected + num_window_blocks, math.ceil(programs_wanted / (batch * num_kv_heads))))
    part_o = torch.empty(batch, num_q_heads, splits, 2, head_dim, **f32)
    part_ml = torch.empty(batch, num_q_heads, splits, 2, 2, **f32)
    _sparse_attention_kernel[(batch, num_kv_heads, splits)](
        q, k_pages, v_pages, block_table, slots, seq_lens, selected, part_o, part_ml,
        q.stride(0), q.stride(1), k_pages.stride(0), k_pages.stride(1), k_pages.stride(2), block_table.stride(0), scale,
        WINDOW=cfg.window, NUM_SEL=cfg.num_selected, NUM_SEL_PAD=triton.next_power_of_2(cfg.num_selected),
        NUM_WIN_BLOCKS=num_window_blocks, SPLITS=splits, MERGED=cfg.combine is Combine.MERGED,
        G=group, G_PAD=group_pad, D=head_dim, PAGE=page,
    )  # fmt: skip

    out = torch.empty_like(q)
    _merge_kernel[(batch * num_q_heads,)](
        part_o, part_ml, cmp_part_o, cmp_part_ml, part_ml if gates is None else gates.contiguous(), out,
        SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), CMP_SPLITS=cmp_splits,
        CMP_SPLITS_PAD=triton.next_power_of_2(cmp_splits), MERGED=cfg.combine is Combine.MERGED, D=head_dim,
    )  # fmt: skip
    return out, selected
