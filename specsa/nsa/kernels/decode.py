"""Triton NSA decode: one new query per sequence over a paged KV cache.

Three steps, each computing exactly what `nsa/reference.py` computes:

1. `_cmp_attention_kernel`, grid (B, Hkv): the compressed branch for the G query heads of
   a KV head as one [G, BLOCK_N] tile per step, then a second pass that turns the scores
   into probabilities and sums them over the group: the GQA-shared importance P[i].
2. Block scores (P weighted by w(i, j)) and top-n selection: a few small torch ops.
3. `_sparse_attention_kernel`, grid (B, Hkv, splits): selected blocks and the window in
   one pass, a page (= selection block) at a time; with `merged` a window block that is
   also selected is skipped, so every token counts once. The work of one KV head is split
   across programs (split-K) and merged by log-sum-exp, so batch 1 fills the GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from specsa.config import Combine, NSAConfig
from specsa.nsa.reference import select_blocks


@triton.jit
def _cmp_attention_kernel(
    q_ptr,  # [B, Hq, D]
    k_cmp_ptr,  # [slots, C, Hkv, D]
    v_cmp_ptr,
    slots_ptr,  # [B] int32
    seq_lens_ptr,  # [B] int32, including the new token
    o_ptr,  # [B, Hq, D] fp32: the compressed branch
    imp_ptr,  # [B, Hkv, C] fp32, zero-filled: importance P
    stride_qb,
    stride_qh,
    stride_cs,
    stride_cc,
    stride_ch,
    stride_ob,
    stride_oh,
    stride_ib,
    stride_ih,
    scale,
    CMP_BLOCK: tl.constexpr,
    CMP_STRIDE: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots_ptr + i_b)
    length = tl.load(seq_lens_ptr + i_b)
    # Every complete compressed token is visible to the newest query.
    n_cmp = tl.maximum(length + CMP_STRIDE - CMP_BLOCK, 0) // CMP_STRIDE  # (len - l) // d + 1, or 0

    o_g = tl.arange(0, G_PAD)
    o_d = tl.arange(0, D)
    m_g = o_g < G
    p_q = q_ptr + i_b * stride_qb + (i_h * G + o_g[:, None]) * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_g[:, None], other=0.0)  # [G_PAD, D]
    base = slot * stride_cs + i_h * stride_ch

    b_m = tl.full([G_PAD], float("-inf"), tl.float32)  # running max
    b_l = tl.zeros([G_PAD], tl.float32)  # running denominator
    b_acc = tl.zeros([G_PAD, D], tl.float32)
    for start in range(0, n_cmp, BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N)
        m_n = o_n < n_cmp
        p_kv = base + o_n[:, None] * stride_cc + o_d[None, :]
        b_k = tl.load(k_cmp_ptr + p_kv, mask=m_n[:, None], other=0.0)  # [BLOCK_N, D]
        b_v = tl.load(v_cmp_ptr + p_kv, mask=m_n[:, None], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k)) * scale  # [G_PAD, BLOCK_N]
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp(b_m - b_m_new)
        b_p = tl.exp(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        b_m = b_m_new
    b_o = tl.where(b_l[:, None] > 0, b_acc / b_l[:, None], 0.0)
    p_o = o_ptr + i_b * stride_ob + (i_h * G + o_g[:, None]) * stride_oh + o_d[None, :]
    tl.store(p_o, b_o, mask=m_g[:, None])

    # Second pass: normalised probabilities, summed over the group.
    for start in range(0, n_cmp, BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N)
        m_n = o_n < n_cmp
        b_k = tl.load(k_cmp_ptr + base + o_n[:, None] * stride_cc + o_d[None, :], mask=m_n[:, None], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k)) * scale  # [G_PAD, BLOCK_N]
        b_p = tl.exp(b_s - b_m[:, None]) / b_l[:, None]
        b_p = tl.where(m_g[:, None] & m_n[None, :], b_p, 0.0)
        tl.store(imp_ptr + i_b * stride_ib + i_h * stride_ih + o_n, tl.sum(b_p, 0), mask=m_n)


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
    selected_ptr,  # [B, Hkv, NUM_SEL] int64, -1 pads
    part_o_ptr,  # [B, Hq, SPLITS, 2, D] fp32: unnormalised partial outputs (branch 0 slc/merged, 1 win)
    part_ml_ptr,  # [B, Hq, SPLITS, 2, 2] fp32: (max, denominator)
    stride_qb,
    stride_qh,
    stride_pp,
    stride_pt,
    stride_ph,
    stride_bt,
    stride_sb,
    stride_sh,
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
    p_sel = selected_ptr + i_b * stride_sb + i_h * stride_sh
    b_sel = tl.load(p_sel + tl.arange(0, NUM_SEL_PAD), mask=tl.arange(0, NUM_SEL_PAD) < NUM_SEL, other=-1)

    b_m0 = tl.full([G_PAD], float("-inf"), tl.float32)  # selected (merged: everything)
    b_l0 = tl.zeros([G_PAD], tl.float32)
    b_acc0 = tl.zeros([G_PAD, D], tl.float32)
    b_m1 = tl.full([G_PAD], float("-inf"), tl.float32)  # window, gated only
    b_l1 = tl.zeros([G_PAD], tl.float32)
    b_acc1 = tl.zeros([G_PAD, D], tl.float32)

    for item in range(i_split, NUM_SEL, SPLITS):
        block = tl.load(p_sel + item)
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


def block_scores(importance: Tensor, cfg: NSAConfig, num_blocks: int) -> Tensor:
    """Σ_i w(i, j)·P[i] without the [Nc, Nb] weight matrix: token i covers stride-d
    sub-blocks i … i + l/d - 1, and block j is sub-blocks j·l'/d … (j+1)·l'/d - 1.

    importance [..., C] -> scores [..., num_blocks]."""
    subs_per_token = cfg.cmp_block // cfg.cmp_stride
    subs_per_block = cfg.sel_block // cfg.cmp_stride
    num_subs = num_blocks * subs_per_block
    padded = torch.nn.functional.pad(importance, (subs_per_token - 1, max(num_subs - importance.shape[-1], 0)))
    sub_scores = sum(padded[..., m : m + num_subs] for m in range(subs_per_token))  # [..., num_subs]
    return sub_scores.unflatten(-1, (num_blocks, subs_per_block)).sum(-1)


def merge_splits(part_o: Tensor, part_ml: Tensor) -> Tensor:
    """Log-sum-exp merge over splits: [B, Hq, S, 2, D], [B, Hq, S, 2, 2] -> [B, Hq, 2, D]."""
    m, l = part_ml.unbind(-1)  # [B, Hq, S, 2]
    m_max = m.amax(2, keepdim=True)
    weight = torch.where(m > float("-inf"), torch.exp(m - m_max), 0.0)
    denominator = (weight * l).sum(2)  # [B, Hq, 2]
    out = (weight[..., None] * part_o).sum(2)
    return torch.where(denominator[..., None] > 0, out / denominator[..., None], 0.0)


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
    gates [B, Hq, 3] for `gated`. Returns out [B, Hq, D] and selected [B, Hkv, n].
    """
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, page = k_pages.shape[2], k_pages.shape[1]
    if page != cfg.sel_block:
        raise ValueError(f"The cache's page ({page}) must equal the selection block ({cfg.sel_block}).")
    group = num_q_heads // num_kv_heads
    group_pad = max(16, triton.next_power_of_2(group))
    scale = head_dim**-0.5 if scale is None else scale
    num_blocks = block_table.shape[1]

    o_cmp = torch.empty(batch, num_q_heads, head_dim, device=q.device, dtype=torch.float32)
    importance = torch.zeros(batch, num_kv_heads, k_cmp.shape[1], device=q.device, dtype=torch.float32)
    _cmp_attention_kernel[(batch, num_kv_heads)](
        q, k_cmp, v_cmp, slots, seq_lens, o_cmp, importance,
        q.stride(0), q.stride(1), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
        o_cmp.stride(0), o_cmp.stride(1), importance.stride(0), importance.stride(1), scale,
        CMP_BLOCK=cfg.cmp_block, CMP_STRIDE=cfg.cmp_stride, G=group, G_PAD=group_pad, D=head_dim, BLOCK_N=64,
    )  # fmt: skip

    positions = seq_lens.long() - 1  # [B]
    # The reference's selection, with the decode batch standing in for its query axis.
    scores = block_scores(importance, cfg, num_blocks)[None]  # [1, B, Hkv, Nb]
    selected = select_blocks(scores, positions, cfg)[0]  # [B, Hkv, n]

    num_window_blocks = math.ceil((cfg.window - 1) / cfg.sel_block) + 1
    work = cfg.num_selected + num_window_blocks
    if splits is None:  # about two programs per SM on an H100
        splits = max(1, min(work, math.ceil(264 / (batch * num_kv_heads))))
    part_o = torch.empty(batch, num_q_heads, splits, 2, head_dim, device=q.device, dtype=torch.float32)
    part_ml = torch.empty(batch, num_q_heads, splits, 2, 2, device=q.device, dtype=torch.float32)
    _sparse_attention_kernel[(batch, num_kv_heads, splits)](
        q, k_pages, v_pages, block_table, slots, seq_lens, selected, part_o, part_ml,
        q.stride(0), q.stride(1), k_pages.stride(0), k_pages.stride(1), k_pages.stride(2),
        block_table.stride(0), selected.stride(0), selected.stride(1), scale,
        WINDOW=cfg.window, NUM_SEL=cfg.num_selected, NUM_SEL_PAD=triton.next_power_of_2(cfg.num_selected),
        NUM_WIN_BLOCKS=num_window_blocks, SPLITS=splits, MERGED=cfg.combine is Combine.MERGED,
        G=group, G_PAD=group_pad, D=head_dim, PAGE=page,
    )  # fmt: skip
    branches = merge_splits(part_o, part_ml)  # [B, Hq, 2, D]
    if cfg.combine is Combine.MERGED:
        out = branches[:, :, 0]
    else:
        g_cmp, g_slc, g_win = gates.float().unbind(-1)
        out = g_cmp[..., None] * o_cmp + g_slc[..., None] * branches[:, :, 0] + g_win[..., None] * branches[:, :, 1]
    return out.to(q.dtype), selected
