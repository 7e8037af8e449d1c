"""The refresh step in Triton: the compressed branch, block importance and top-n selection
for T queries per sequence (T = 1 decode, γ+1 verification, a prefill chunk).

Block parts. Compressed token i covers stride-d sub-blocks i … i + l/d - 1, and selection
block j is sub-blocks j·l'/d …, so token i adds to its own block i // (l'/d) ("own"
weight) and, near the block's end, to the next one ("spill" weight); block j's score is
own[j] + spill[j - 1], the same sums for every block, so tied blocks stay tied.

Query t of sequence b sits at position seq_lens[b] - T + t (a chain), or, for a draft
tree (`TREE`, `nsa/tree.py`), at seq_lens[b] - T + depth(t) with the compressed tokens of
its own path past the prefix's; a "query row" is b·T + t.

1. `_cmp_partial_kernel`, grid (B·query tiles, Hkv, splits): the compressed branch of a
   tile of queries × the KV head's G query heads as one [rows, BLOCK_N] tile on the
   tensor cores (the compressed tokens are loaded once for all of them), split-K over the
   compressed tokens; each query keeps its own causal limit. Each tile's probabilities
   leave the chip already summed per selection block (the block parts above), against
   the tile's running max: half the bytes of raw scores, read back contiguously.
2. `_block_candidates_kernel`, grid (B·T, Hkv, ranges): block scores from the block parts
   rescaled to the merged softmax (summed over a `shared` group's queries when asked),
   the range's top n as int64 keys that carry the block (bitonic top-k).
3. `_select_kernel`, grid (B·T·Hkv,): the global top n among the candidates, when the
   sparse kernel's programs serve groups of queries; a program serving one query (decode)
   ranks its query's candidates itself, which saves this launch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from specsa.launch import pdl_prologue

# fp32 inputs (fp32 models, the tests) are multiplied in full fp32, as torch does by
# default, not rounded to TF32's 10-bit mantissa; bf16 and fp16 inputs ignore it.
FP32_DOT = tl.constexpr("ieee")


@triton.jit
def _softmax_stats_step(b_s, b_m, b_l):
    """The running max and denominator after scores b_s [R, N] (-inf where masked); rows
    that have seen nothing yet stay at (m=-inf, l=0). Also returns what earlier terms are
    rescaled by, and the tile's probabilities b_p [R, N] against the new max (0 where it
    is -inf)."""
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
    b_alpha = tl.exp(b_m - b_m_safe)
    b_p = tl.exp(b_s - b_m_safe[:, None])
    return b_m_new, b_l * b_alpha + tl.sum(b_p, 1), b_alpha, b_p


@triton.jit
def _online_softmax_step(b_s, b_m, b_l, b_acc, b_v):
    """One online-softmax update with scores b_s [R, N] and values b_v [N, D] (as
    `_softmax_stats_step`, acc=0 until a row sees a token). Also returns b_p."""
    b_m, b_l, b_alpha, b_p = _softmax_stats_step(b_s, b_m, b_l)
    b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=FP32_DOT)
    return b_m, b_l, b_acc, b_p


@triton.jit
def _online_softmax_row_step(b_s, b_m, b_l, b_acc, b_v):
    """One online-softmax update with one score per row, b_s [R] (-inf where masked), and
    each row's own value b_v [R, D] (a tree node's own compressed token)."""
    b_m_new = tl.maximum(b_m, b_s)
    b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
    b_alpha = tl.exp(b_m - b_m_safe)
    b_p = tl.exp(b_s - b_m_safe)
    return b_m_new, b_l * b_alpha + b_p, b_acc * b_alpha[:, None] + b_p[:, None] * b_v.to(tl.float32)


@triton.jit
def _num_cmp_tokens(length, CMP_BLOCK: tl.constexpr, CMP_STRIDE: tl.constexpr):
    """Complete compressed tokens among `length` raw ones: (len - l) // d + 1, or 0."""
    return tl.maximum(length + CMP_STRIDE - CMP_BLOCK, 0) // CMP_STRIDE


@triton.jit
def _block_weights(r, CMP_BLOCK: tl.constexpr, CMP_STRIDE: tl.constexpr, PAGE: tl.constexpr):
    """For a compressed token starting at sub-block r of its selection block: how many of
    its l/d sub-blocks fall in that block (own) and in the next one (spill), as fp32."""
    own = tl.minimum(CMP_BLOCK // CMP_STRIDE, PAGE // CMP_STRIDE - r)
    spill = tl.maximum(r + CMP_BLOCK // CMP_STRIDE - PAGE // CMP_STRIDE, 0)
    return own.to(tl.float32), spill.to(tl.float32)


@triton.jit
def _cmp_partial_kernel(
    q_ptr,  # [B, T, Hq, D]
    k_cmp_ptr,  # [slots, C, Hkv, D]
    v_cmp_ptr,
    slots_ptr,  # [B] int32
    seq_lens_ptr,  # [B] int32, including the T new tokens
    own_ptr,  # [B·T, Hq, NUM_BLOCK_PARTS] fp32: block parts (module docstring), against…
    spill_ptr,  # [B·T, Hq, NUM_BLOCK_PARTS] fp32
    tile_max_ptr,  # [B·T, Hq, NUM_TILES] fp32: … each tile's running max
    path_scores_ptr,  # [B·T, Hq, NUM_PATH] fp32 (TREE): raw scores of each node's own compressed tokens
    part_o_ptr,  # [B·T, Hq, CMP_SPLITS, D] fp32: unnormalised partial outputs (OUTPUT)
    part_ml_ptr,  # [B·T, Hq, CMP_SPLITS, 2] fp32: (max, denominator)
    depths_ptr,  # [B·T] int32 (TREE): each node's depth
    k_path_ptr,  # [B·T, NUM_PATH, Hkv, D] (TREE): each node's compressed tokens past the prefix's own
    v_path_ptr,
    num_queries,  # T
    num_path,  # NUM_PATH (TREE)
    stride_qb,
    stride_qt,
    stride_qh,
    stride_cs,
    stride_cc,
    stride_ch,
    scale,
    C,
    CHUNK,  # compressed tokens per split, a multiple of BLOCK_N
    CMP_SPLITS,
    NUM_BLOCK_PARTS,  # NUM_TILES · BLOCK_N / (l'/d)
    NUM_TILES,  # ⌈C / BLOCK_N⌉
    CMP_BLOCK: tl.constexpr,
    CMP_STRIDE: tl.constexpr,
    PAGE: tl.constexpr,
    QUERY_TILE: tl.constexpr,  # queries per program
    G: tl.constexpr,
    G_PAD: tl.constexpr,  # rows per query: G padded to a power of two
    ROWS: tl.constexpr,  # max(16, QUERY_TILE·G_PAD): the tile's rows
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,  # a multiple of l'/d
    TREE: tl.constexpr,  # the T queries are draft-tree nodes (`nsa/tree.py`), not a chain
    SELECTING: tl.constexpr,  # write what the selection reads (block parts, tile maxes, path scores)
    OUTPUT: tl.constexpr,  # write the branch's output (gated); merged uses the branch only to select
    PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    SUBS_PER_BLOCK: tl.constexpr = PAGE // CMP_STRIDE
    BLOCKS_PER_TILE: tl.constexpr = BLOCK_N // SUBS_PER_BLOCK
    b_own_w, b_spill_w = _block_weights(tl.arange(0, SUBS_PER_BLOCK), CMP_BLOCK, CMP_STRIDE, PAGE)  # [l'/d] each
    num_tiles = tl.cdiv(num_queries, QUERY_TILE)
    i_b, i_tile = tl.program_id(0) // num_tiles, tl.program_id(0) % num_tiles
    i_h, i_split = tl.program_id(1), tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    slot = tl.load(slots_ptr + i_b)
    length = tl.load(seq_lens_ptr + i_b)

    o_r = tl.arange(0, ROWS)
    o_d = tl.arange(0, D)
    query = i_tile * QUERY_TILE + o_r // G_PAD  # [ROWS] query index t of each row
    head = i_h * G + o_r % G_PAD  # [ROWS] query head
    m_r = (o_r // G_PAD < QUERY_TILE) & (query < num_queries) & (o_r % G_PAD < G)
    if TREE:  # the cache's compressed tokens end with the prefix; the rest are the node's own
        n_prefix = _num_cmp_tokens(length - num_queries, CMP_BLOCK, CMP_STRIDE)
        depth = tl.load(depths_ptr + i_b * num_queries + query, mask=m_r, other=0)
        n_path = tl.where(m_r, _num_cmp_tokens(length - num_queries + depth + 1, CMP_BLOCK, CMP_STRIDE) - n_prefix, 0)
        n_cmp = tl.where(m_r, n_prefix, 0)  # [ROWS]
    else:
        n_cmp = tl.where(m_r, _num_cmp_tokens(length - num_queries + query + 1, CMP_BLOCK, CMP_STRIDE), 0)  # [ROWS]
    rows = (i_b * num_queries + query) * (num_kv_heads * G) + head  # [ROWS] rows of [B·T, Hq]
    p_q = q_ptr + i_b * stride_qb + query[:, None] * stride_qt + head[:, None] * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_r[:, None], other=0.0)  # [ROWS, D]
    base = slot * stride_cs + i_h * stride_ch

    b_m = tl.full([ROWS], float("-inf"), tl.float32)
    b_l = tl.zeros([ROWS], tl.float32)
    b_acc = tl.zeros([ROWS, D], tl.float32)
    for start in range(i_split * CHUNK, tl.minimum((i_split + 1) * CHUNK, tl.max(n_cmp, 0)), BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N)
        p_kv = base + o_n[:, None] * stride_cc + o_d[None, :]
        m_n = o_n < C
        b_k = tl.load(k_cmp_ptr + p_kv, mask=m_n[:, None], other=0.0)  # [BLOCK_N, D]
        visible = o_n[None, :] < n_cmp[:, None]  # [ROWS, BLOCK_N]
        b_s = tl.where(visible, tl.dot(b_q, tl.trans(b_k), input_precision=FP32_DOT) * scale, float("-inf"))
        if OUTPUT:
            b_v = tl.load(v_cmp_ptr + p_kv, mask=m_n[:, None], other=0.0)
            b_m, b_l, b_acc, b_p = _online_softmax_step(b_s, b_m, b_l, b_acc, b_v)
        else:  # merged: the compressed values are never read
            b_m, b_l, _, b_p = _softmax_stats_step(b_s, b_m, b_l)
        if SELECTING:
            b_ref = tl.where(b_m == float("-inf"), 0.0, b_m)  # [ROWS] the max the tile's parts (b_p) are against
            b_p = tl.reshape(b_p, [ROWS, BLOCKS_PER_TILE, SUBS_PER_BLOCK])
            o_part = start // SUBS_PER_BLOCK + tl.arange(0, BLOCKS_PER_TILE)  # [BLOCKS_PER_TILE]
            p_part = rows[:, None] * NUM_BLOCK_PARTS + o_part[None, :]
            tl.store(own_ptr + p_part, tl.sum(b_p * b_own_w[None, None, :], 2), mask=m_r[:, None])
            tl.store(spill_ptr + p_part, tl.sum(b_p * b_spill_w[None, None, :], 2), mask=m_r[:, None])
            tl.store(tile_max_ptr + rows * NUM_TILES + start // BLOCK_N, b_ref, mask=m_r)
    if TREE:
        if i_split == 0:  # each node's own compressed tokens, one per row, after the prefix's
            for e in range(0, num_path):
                m_e = n_path > e  # [ROWS]
                p_path = (((i_b * num_queries + query) * num_path + e) * num_kv_heads + i_h) * D
                b_k = tl.load(k_path_ptr + p_path[:, None] + o_d[None, :], mask=m_e[:, None], other=0.0)  # [ROWS, D]
                b_v = tl.load(v_path_ptr + p_path[:, None] + o_d[None, :], mask=m_e[:, None], other=0.0)
                b_s = tl.sum(b_q.to(tl.float32) * b_k.to(tl.float32), 1) * scale
                b_s = tl.where(m_e, b_s, float("-inf"))  # [ROWS]
                if SELECTING:
                    tl.store(path_scores_ptr + rows * num_path + e, b_s, mask=m_e)
                b_m, b_l, b_acc = _online_softmax_row_step(b_s, b_m, b_l, b_acc, b_v)
    part = rows * CMP_SPLITS + i_split  # [ROWS]
    if OUTPUT:
        tl.store(part_o_ptr + part[:, None] * D + o_d[None, :], b_acc, mask=m_r[:, None])
    tl.store(part_ml_ptr + part * 2, b_m, mask=m_r)
    tl.store(part_ml_ptr + part * 2 + 1, b_l, mask=m_r)


_INDEX_MASK = tl.constexpr(2**31 - 1)


@triton.jit
def _ranking_keys(b_score, o_j):
    """Unique int64 keys in the selection's order: by score, then the lower block first.
    Scores are ≥ 0 or ±inf, and non-negative floats order as their bits; a -inf score
    (a block that cannot be selected) gives a negative key, below every selectable one."""
    b_score = tl.where(b_score == 0.0, 0.0, b_score)  # -0.0 would order below every positive score
    b_bits = b_score.to(tl.int32, bitcast=True).to(tl.int64)
    return (b_bits << 32) | (o_j.to(tl.int64) ^ _INDEX_MASK)  # low bits: MASK - j


@triton.jit
def _block_of(b_key):
    """The block a ranking key stands for, or -1 for a key that cannot be selected."""
    return tl.where(b_key >= 0, ((b_key & _INDEX_MASK) ^ _INDEX_MASK).to(tl.int32), -1)


@triton.jit
def _query_block_scores(
    own_ptr,
    spill_ptr,
    tile_max_ptr,
    path_scores_ptr,
    cmp_part_ml_ptr,
    row0,  # the query's first row of [B·T, Hq] for this KV head
    position,
    n_cached,  # compressed tokens of this query in the cache (all of them, but a tree node's own)
    num_path,  # NUM_PATH (TREE)
    o_j,  # [BLOCKS_PER_SPLIT] block indices
    CMP_SPLITS,
    NUM_BLOCK_PARTS,
    NUM_TILES,
    CMP_SPLITS_PAD: tl.constexpr,
    CMP_BLOCK: tl.constexpr,
    CMP_STRIDE: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCKS_PER_SPLIT: tl.constexpr,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    TREE: tl.constexpr,
):
    """Σ_i w(i, j)·P[i] for the blocks o_j: the group's importance P from the softmax over
    the query's compressed tokens, its max and denominator merged from step 1's splits."""
    SUBS_PER_BLOCK: tl.constexpr = PAGE // CMP_STRIDE
    BLOCKS_PER_TILE: tl.constexpr = BLOCK_N // SUBS_PER_BLOCK
    o_g = tl.arange(0, G_PAD)
    m_g = o_g < G
    rows = row0 + o_g  # [G_PAD]
    o_cs = tl.arange(0, CMP_SPLITS_PAD)
    m_part = m_g[:, None] & (o_cs < CMP_SPLITS)[None, :]
    p_part = cmp_part_ml_ptr + (rows[:, None] * CMP_SPLITS + o_cs[None, :]) * 2
    b_m_parts = tl.load(p_part, mask=m_part, other=float("-inf"))  # [G_PAD, CMP_SPLITS_PAD]
    b_m = tl.max(b_m_parts, 1)
    b_w = tl.where(b_m_parts > float("-inf"), tl.exp(b_m_parts - b_m[:, None]), 0.0)
    b_l = tl.sum(b_w * tl.load(p_part + 1, mask=m_part, other=0.0), 1)

    # Block j: its own tokens' parts and the spill of block j - 1, each rescaled from its
    # tile's max to the merged one. Only tiles holding one of the query's tokens were written.
    m_own = (o_j * SUBS_PER_BLOCK < n_cached)[:, None] & m_g[None, :]  # [BPS, G_PAD]
    m_spill = ((o_j >= 1) & ((o_j - 1) * SUBS_PER_BLOCK < n_cached))[:, None] & m_g[None, :]
    p_row = rows[None, :] * NUM_BLOCK_PARTS
    p_max = rows[None, :] * NUM_TILES
    b_own = tl.load(own_ptr + p_row + o_j[:, None], mask=m_own, other=0.0)  # [BPS, G_PAD]
    b_own_max = tl.load(tile_max_ptr + p_max + (o_j // BLOCKS_PER_TILE)[:, None], mask=m_own, other=0.0)
    b_spill = tl.load(spill_ptr + p_row + (o_j - 1)[:, None], mask=m_spill, other=0.0)
    b_spill_max = tl.load(tile_max_ptr + p_max + ((o_j - 1) // BLOCKS_PER_TILE)[:, None], mask=m_spill, other=0.0)
    b_p = tl.where(m_own, b_own * tl.exp(b_own_max - b_m[None, :]), 0.0)
    b_p += tl.where(m_spill, b_spill * tl.exp(b_spill_max - b_m[None, :]), 0.0)
    if TREE:  # a node's own compressed tokens, past the prefix's: raw scores
        n_path = _num_cmp_tokens(position + 1, CMP_BLOCK, CMP_STRIDE) - n_cached
        for e in range(0, num_path):
            token = n_cached + e
            b_s = tl.load(path_scores_ptr + rows * num_path + e, mask=m_g & (e < n_path), other=float("-inf"))  # [G_PAD]
            b_pe = tl.where(b_s > float("-inf"), tl.exp(b_s - b_m), 0.0)  # [G_PAD]
            own_w, spill_w = _block_weights(token % SUBS_PER_BLOCK, CMP_BLOCK, CMP_STRIDE, PAGE)
            weight = tl.where(o_j == token // SUBS_PER_BLOCK, own_w, 0.0)
            weight += tl.where(o_j == token // SUBS_PER_BLOCK + 1, spill_w, 0.0)  # [BPS]
            b_p += weight[:, None] * b_pe[None, :]
    return tl.sum(b_p / b_l[None, :], 1)


@triton.jit
def _block_candidates_kernel(
    seq_lens_ptr,  # [B] int32
    own_ptr,  # [B·T, Hq, NUM_BLOCK_PARTS] fp32: block parts from _cmp_partial_kernel
    spill_ptr,
    tile_max_ptr,  # [B·T, Hq, NUM_TILES] fp32
    path_scores_ptr,  # [B·T, Hq, NUM_PATH] fp32 (TREE)
    cmp_part_ml_ptr,  # [B·T, Hq, CMP_SPLITS, 2]
    cand_key_ptr,  # [B·T, Hkv, SEL_SPLITS, NUM_SEL] int64: the range's top n ranking keys, in rank order
    depths_ptr,  # [B·T] int32 (TREE): each node's depth
    num_queries,  # T
    num_path,  # NUM_PATH (TREE)
    CMP_SPLITS,
    NUM_BLOCK_PARTS,
    NUM_TILES,
    CMP_SPLITS_PAD: tl.constexpr,
    CMP_BLOCK: tl.constexpr,
    CMP_STRIDE: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,  # _cmp_partial_kernel's tile
    NUM_BLOCKS,
    BLOCKS_PER_SPLIT: tl.constexpr,  # a power of two ≥ NUM_SEL_PAD
    NUM_SEL: tl.constexpr,
    NUM_SEL_PAD: tl.constexpr,
    SHARE_GROUP: tl.constexpr,  # `shared`: rank by the scores summed over this many adjacent queries
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    TREE: tl.constexpr,  # queries are draft-tree nodes at their depths (SHARE_GROUP = 1)
    PDL: tl.constexpr,
):
    """The refresh step of one query for one range of selection blocks: block scores and
    the range's own top n. The global top n is among these candidates."""
    pdl_prologue(PDL)
    i_row, i_h, i_split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    i_b, i_t = i_row // num_queries, i_row % num_queries
    first_position = tl.load(seq_lens_ptr + i_b) - num_queries  # position of query 0
    if TREE:
        t = first_position + tl.load(depths_ptr + i_row)
    else:
        t = first_position + i_t
    o_j = i_split * BLOCKS_PER_SPLIT + tl.arange(0, BLOCKS_PER_SPLIT)

    b_score = tl.zeros([BLOCKS_PER_SPLIT], tl.float32)
    group_start = i_t // SHARE_GROUP * SHARE_GROUP
    for member in tl.static_range(SHARE_GROUP):
        other = group_start + member  # SHARE_GROUP = 1: the query itself
        if other < num_queries:
            if TREE:
                position = t
            else:
                position = first_position + other
            if TREE:
                n_cached = _num_cmp_tokens(first_position, CMP_BLOCK, CMP_STRIDE)
            else:
                n_cached = _num_cmp_tokens(position + 1, CMP_BLOCK, CMP_STRIDE)
            b_score += _query_block_scores(
                own_ptr, spill_ptr, tile_max_ptr, path_scores_ptr, cmp_part_ml_ptr,
                ((i_b * num_queries + other) * num_kv_heads + i_h) * G, position, n_cached, num_path, o_j,
                CMP_SPLITS, NUM_BLOCK_PARTS, NUM_TILES, CMP_SPLITS_PAD, CMP_BLOCK, CMP_STRIDE, PAGE, BLOCK_N,
                BLOCKS_PER_SPLIT, G, G_PAD, TREE,
            )  # fmt: skip

    current = t // PAGE
    forced = (o_j == 0) | (o_j == current) | (o_j == current - 1)
    b_score = tl.where(forced, float("inf"), b_score)
    b_score = tl.where((o_j * PAGE <= t) & (o_j < NUM_BLOCKS), b_score, float("-inf"))
    # Bitonic top n (about BPS·log²n compares, where ranking every pair took BPS²).
    b_top = tl.topk(_ranking_keys(b_score, o_j), NUM_SEL_PAD)  # [NUM_SEL_PAD], descending
    o_slot = tl.arange(0, NUM_SEL_PAD)
    out = ((i_row * num_kv_heads + i_h) * tl.num_programs(2) + i_split) * NUM_SEL + o_slot
    tl.store(cand_key_ptr + out, b_top, mask=o_slot < NUM_SEL)


@triton.jit
def _select_kernel(
    cand_key_ptr,  # [B·T·Hkv, NUM_CAND] int64 from _block_candidates_kernel
    selected_ptr,  # [B·T·Hkv, NUM_SEL] int32: rank order, -1 pads
    NUM_CAND,
    NUM_CAND_PAD: tl.constexpr,
    NUM_SEL: tl.constexpr,
    NUM_SEL_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    """The global top n among one row's candidates: a bitonic top n over their keys,
    which carry the block index (unique keys: ties go to the lower block)."""
    pdl_prologue(PDL)
    o_c = tl.arange(0, NUM_CAND_PAD)
    b_key = tl.load(cand_key_ptr + tl.program_id(0) * NUM_CAND + o_c, mask=o_c < NUM_CAND, other=-1)
    b_top = tl.topk(b_key, NUM_SEL_PAD)  # [NUM_SEL_PAD], descending
    o_slot = tl.arange(0, NUM_SEL_PAD)
    tl.store(selected_ptr + tl.program_id(0) * NUM_SEL + o_slot, _block_of(b_top), mask=o_slot < NUM_SEL)
