"""`nsa_paged`: NSA for T queries per sequence over the paged cache, in Triton.

Decode (T = 1), speculative verification (T = γ+1) and prefill chunks all run here:
the refresh kernels (`refresh.py`) select blocks for each query, the grouped sparse
kernel (`sparse.py`) attends over the union of a query group's blocks, and the merge
combines. Five launches (four when a program serves one query: the sparse kernel then
ranks the candidates itself), no host sync: a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import triton
from torch import Tensor

from specsa.config import Combine, NSAConfig
from specsa.launch import pdl_options
from specsa.nsa.kernels.refresh import _block_candidates_kernel, _cmp_partial_kernel, _select_kernel
from specsa.nsa.kernels.sparse import _merge_kernel, _sparse_attention_kernel
from specsa.nsa.tree import DraftTree

MAX_TILE_ROWS = 64  # query rows (queries × group heads) per tile
MAX_QUERY_GROUP = 64  # the sparse kernel marks which of a group's queries chose a page in one int64


def _pow2(x: int) -> int:
    return triton.next_power_of_2(x)


@functools.cache
def _programs_wanted(device: torch.device) -> int:
    """About two programs per SM; a handful on the CPU (the interpreter runs them one by one)."""
    if device.type != "cuda":
        return 4
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def _splits_for(device: torch.device, programs: int, most: int) -> int:
    """Split-K factor so that `programs` programs make about two an SM, rounded down: a
    second, partial wave of long programs leaves most SMs idle (compressed kernel, H100,
    64K: batch 32, 2 -> 1 split, 215 -> 193 µs; batch 8, T = 9, 5 -> 4 splits, 37 -> 35 µs)."""
    return max(1, min(most, _programs_wanted(device) // programs))


def _query_group(num_queries: int, group_pad: int, min_groups: int = 1) -> int:
    """Queries per sparse-attention program: T split into the fewest groups that fit a
    tile, or `min_groups` if more, evenly filled: ⌈T / groups⌉ each (T = 17 in 2 groups:
    9 + 8, not 16 + 1; T = 8 in 5 groups: 4 groups of 2)."""
    most = max(1, MAX_TILE_ROWS // group_pad)
    groups = max(math.ceil(num_queries / most), min(num_queries, min_groups))
    return math.ceil(num_queries / groups)


_resident: dict[tuple, int] = {}


def _resident_programs(kernel, launch: dict, device: torch.device, dtype: torch.dtype,
                       args: Callable[[], tuple]) -> int:  # fmt: skip
    """Programs of `kernel`, compiled as `launch` asks for `args()` (tensors of `dtype`),
    that the whole GPU holds at once (registers, shared memory and warps per SM); 2 an SM
    off the GPU. Split counts fill these slots once: a second, partial wave of long
    programs left most SMs idle (v13)."""
    if device.type != "cuda":
        return _programs_wanted(device)
    key = (kernel, device.index, dtype, *sorted(launch.items()))
    if key not in _resident:
        compiled = kernel.warmup(*args(), grid=(1,), **launch)
        compiled._init_handles()  # registers are known once the module is loaded
        props = torch.cuda.get_device_properties(device)
        warps = compiled.metadata.num_warps
        registers = math.ceil(compiled.n_regs * 32 / 256) * 256 * warps  # allocated per warp, 256 at a time
        shared = compiled.metadata.shared + 1024  # the driver reserves 1 KB a block
        per_sm = min(props.regs_per_multiprocessor // registers, props.shared_memory_per_multiprocessor // shared,
                     props.max_threads_per_multi_processor // (32 * warps))  # fmt: skip
        _resident[key] = max(1, per_sm) * props.multi_processor_count
    return _resident[key]


def nsa_paged(
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
    selected: Tensor | None = None,
    share_group: int = 1,
    query_group: int | None = None,
    scale: float | None = None,
    splits: int | None = None,
    tree: DraftTree | None = None,
) -> tuple[Tensor, Tensor]:
    """q [B, T, Hq, D]: query t of sequence b sits at position seq_lens[b] - T + t.

    k_pages, v_pages [pages, l', Hkv, D] (one layer); block_table [slots, max_pages];
    slots, seq_lens [B] int32 (lengths include the T new tokens, already written);
    k_cmp, v_cmp [slots, C, Hkv, D] (every complete compressed token written).
    gates [B, T, Hq, 3] for `gated`. `selected` [B, T, Hkv, n] hands in a selection
    (`reuse`); `share_group` C > 1 ranks blocks by the scores summed over groups of C
    adjacent queries (`shared`). `query_group`: queries per sparse-attention program
    (they load the union of their blocks once); default the fewest even groups that fit
    64-row tiles, but enough for a program per 4 SMs.
    `tree`: the T queries are draft-tree nodes (`nsa/tree.py`), not a chain.
    Returns out [B, T, Hq, D] and selected [B, T, Hkv, n] (rank order, -1 pads).
    """
    batch, num_queries, num_q_heads, head_dim = q.shape
    num_kv_heads, page = k_pages.shape[2], k_pages.shape[1]
    if page != cfg.sel_block:
        raise ValueError(f"The cache's page ({page}) must equal the selection block ({cfg.sel_block}).")
    merged = cfg.combine is Combine.MERGED
    if not merged and gates is None:
        raise ValueError("The gated combination needs gates of shape [B, T, Hq, 3].")
    if share_group < 1:
        raise ValueError(f"share_group must be at least 1, got {share_group}.")
    if query_group is not None and not 1 <= query_group <= MAX_QUERY_GROUP:
        raise ValueError(f"query_group is the verifier queries one program serves, 1 … {MAX_QUERY_GROUP}; got {query_group}.")
    if tree is not None and (share_group > 1 or tree.depths.shape != (batch, num_queries)):
        raise ValueError(f"A draft tree needs share_group 1 and one node per query: depths [B, T] = "
                         f"{[batch, num_queries]}, got {list(tree.depths.shape)} with share_group {share_group}.")  # fmt: skip
    # Unused pointers when there is no tree (TREE is a constexpr, so they are never read).
    depths = seq_lens if tree is None else tree.depths.to(torch.int32).contiguous()
    ancestors = seq_lens if tree is None else tree.ancestors.contiguous()
    k_path = q if tree is None else tree.k_cmp.to(q.dtype).contiguous()
    v_path = q if tree is None else tree.v_cmp.to(q.dtype).contiguous()
    num_path = 0 if tree is None else tree.k_cmp.shape[2]
    group = num_q_heads // num_kv_heads
    group_pad = _pow2(group)
    scale = head_dim**-0.5 if scale is None else scale
    num_blocks, capacity = block_table.shape[1], k_cmp.shape[1]
    rows = batch * num_queries
    f32 = dict(device=q.device, dtype=torch.float32)
    pdl = pdl_options(q.device)

    # Compressed branch: needed for the selection, and for the output when gated.
    cmp_splits = 1
    cmp_part_o = cmp_part_ml = None
    if selected is None or not merged:
        block_n = max(64, page // cfg.cmp_stride)  # whole selection blocks a tile
        query_tile = min(_pow2(num_queries), max(1, MAX_TILE_ROWS // group_pad))
        query_tiles = math.ceil(num_queries / query_tile)
        num_tiles = math.ceil(capacity / block_n)
        cmp_splits = _splits_for(q.device, batch * query_tiles * num_kv_heads, num_tiles)
        chunk = math.ceil(capacity / cmp_splits / block_n) * block_n
        cmp_splits = math.ceil(capacity / chunk)
        num_block_parts = num_tiles * block_n // (page // cfg.cmp_stride)
        cmp_part_ml = torch.empty(rows, num_q_heads, cmp_splits, 2, **f32)
        # Merged, the branch only ranks blocks: its values are never loaded, its output never written.
        cmp_part_o = None if merged else torch.empty(rows, num_q_heads, cmp_splits, head_dim, **f32)
        if selected is None:
            own, spill = torch.empty(2, rows, num_q_heads, num_block_parts, **f32)
            tile_max = torch.empty(rows, num_q_heads, num_tiles, **f32)
            path_scores = own if tree is None else torch.empty(rows, num_q_heads, num_path, **f32)  # read only by trees
        else:  # a reused selection, gated: the branch adds only its output (SELECTING is off)
            own = spill = tile_max = path_scores = cmp_part_ml
        _cmp_partial_kernel[(batch * query_tiles, num_kv_heads, cmp_splits)](
            q, k_cmp, v_cmp, slots, seq_lens, own, spill, tile_max, path_scores,
            cmp_part_ml if cmp_part_o is None else cmp_part_o, cmp_part_ml, depths, k_path,
            v_path, num_queries, num_path, q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1),
            k_cmp.stride(2), scale, C=capacity, CHUNK=chunk, CMP_SPLITS=cmp_splits, NUM_BLOCK_PARTS=num_block_parts,
            NUM_TILES=num_tiles, CMP_BLOCK=cfg.cmp_block, CMP_STRIDE=cfg.cmp_stride, PAGE=page, QUERY_TILE=query_tile,
            G=group, G_PAD=group_pad, ROWS=max(16, query_tile * group_pad), D=head_dim, BLOCK_N=block_n,
            TREE=tree is not None, SELECTING=selected is None, OUTPUT=not merged, **pdl,
        )  # fmt: skip

    if query_group is None:
        # At least a program per 4 SMs: with fewer, each program's union is split over many
        # programs, and every split repeats the group's set-up (the dedupe of its C·n
        # blocks). H100, 64K, batch 1, T = 8, similarity 0.9: one group of 8 took 39 (D64)
        # and 48 µs (D128), four groups of 2 34 and 43 µs; T = 16: 70 -> 43 µs (D64).
        programs_floor = _programs_wanted(q.device) // 8
        query_group = _query_group(num_queries, group_pad, math.ceil(programs_floor / (batch * num_kv_heads)))

    candidates = None
    if selected is None:
        # 64 blocks a program (n at least): [64, G] score tiles stay in registers.
        blocks_per_split = max(64, _pow2(cfg.num_selected))
        sel_splits = math.ceil(num_blocks / blocks_per_split)
        cand_key = torch.empty(rows, num_kv_heads, sel_splits, cfg.num_selected, device=q.device, dtype=torch.int64)
        # One warp a program once every SM has several programs: the ranking kernels are
        # chains of small dependent steps, and more warps only lengthen each (H100, 64K:
        # the v12 pairwise select at B·T·Hkv = 576 129 -> 56 µs with one, not re-timed
        # with the top-k; candidates at 1088 and 1224 programs 5.7 -> 5.3 and 6.5 -> 5.7
        # µs). With fewer, 4 warps stay faster or even (candidates at 136 programs 3.2 µs,
        # 3.8 with one; at 612 with G = 16 11.9, 13.9).
        cand_warps = 1 if rows * num_kv_heads * sel_splits >= 4 * _programs_wanted(q.device) else 4
        _block_candidates_kernel[(rows, num_kv_heads, sel_splits)](
            seq_lens, own, spill, tile_max, path_scores, cmp_part_ml, cand_key, depths, num_queries, num_path,
            CMP_SPLITS=cmp_splits, NUM_BLOCK_PARTS=num_block_parts, NUM_TILES=num_tiles,
            CMP_SPLITS_PAD=_pow2(cmp_splits), CMP_BLOCK=cfg.cmp_block, CMP_STRIDE=cfg.cmp_stride, PAGE=page,
            BLOCK_N=block_n, NUM_BLOCKS=num_blocks, BLOCKS_PER_SPLIT=blocks_per_split,
            NUM_SEL=cfg.num_selected, NUM_SEL_PAD=_pow2(cfg.num_selected), SHARE_GROUP=min(share_group, num_queries),
            G=group, G_PAD=group_pad, TREE=tree is not None, num_warps=cand_warps, **pdl,
        )  # fmt: skip
        selected = torch.empty(batch, num_queries, num_kv_heads, cfg.num_selected, device=q.device, dtype=torch.int32)
        if query_group == 1:  # the sparse kernel ranks them: a program's set-up holds one query's keys
            candidates = cand_key
        else:
            num_candidates = sel_splits * cfg.num_selected
            select_warps = 1 if rows * num_kv_heads >= _programs_wanted(q.device) else 4
            _select_kernel[(rows * num_kv_heads,)](
                cand_key, selected, num_candidates, NUM_CAND_PAD=_pow2(num_candidates), NUM_SEL=cfg.num_selected,
                NUM_SEL_PAD=_pow2(cfg.num_selected), num_warps=select_warps, **pdl,
            )  # fmt: skip
    elif selected.shape != (batch, num_queries, num_kv_heads, cfg.num_selected):
        raise ValueError(f"A reused selection must be [B, T, Hkv, n] = "
                         f"{[batch, num_queries, num_kv_heads, cfg.num_selected]}, got {list(selected.shape)}.")  # fmt: skip
    else:
        selected = selected.to(torch.int32).contiguous()

    out = _attend_union(
        q, k_pages, v_pages, block_table, slots, seq_lens, selected, window=cfg.window, merged=merged, scale=scale,
        query_group=query_group, splits=splits, gates=gates, cmp_parts=(cmp_part_o, cmp_part_ml, cmp_splits),
        tree=(depths, ancestors) if tree is not None else None, candidates=candidates,
    )  # fmt: skip
    return out, selected


def dense_paged(
    q: Tensor, k_pages: Tensor, v_pages: Tensor, block_table: Tensor, slots: Tensor, seq_lens: Tensor, *, scale: float
) -> Tensor:
    """Dense causal attention over the paged cache, graph-capturable: the sparse kernel
    with no selected block and a window as long as the cache (paged flash-decoding).
    q [B, T, Hq, D] at the last T positions; returns [B, T, Hq, D]."""
    batch, num_queries, num_kv_heads = q.shape[0], q.shape[1], k_pages.shape[2]
    nothing = torch.full((batch, num_queries, num_kv_heads, 1), -1, dtype=torch.int32, device=q.device)
    window = block_table.shape[1] * k_pages.shape[1]
    return _attend_union(q, k_pages, v_pages, block_table, slots, seq_lens, nothing, window=window, merged=True,
                         scale=scale, query_group=_query_group(q.shape[1], _pow2(q.shape[2] // k_pages.shape[2])),
                         splits=None)  # fmt: skip


def _attend_union(
    q, k_pages, v_pages, block_table, slots, seq_lens, selected, *, window, merged, scale, query_group, splits,
    gates=None, cmp_parts=(None, None, 1), tree=None, candidates=None,
) -> Tensor:  # fmt: skip
    """The grouped selected + window attention, then the merge (and the gated combination).
    `candidates` (ranking keys [B·T, Hkv, ranges, n] int64): rank them into `selected` in
    the sparse kernel (one query a program)."""
    batch, num_queries, num_q_heads, head_dim = q.shape
    num_kv_heads, page = k_pages.shape[2], k_pages.shape[1]
    num_selected = selected.shape[-1]
    group_pad = _pow2(num_q_heads // num_kv_heads)
    rows = batch * num_queries
    pdl = pdl_options(q.device)
    query_groups = math.ceil(num_queries / query_group)
    spread = num_queries if tree is not None else query_group  # positions a group's window covers
    window_blocks = min(math.ceil((window + spread - 1) / page) + 1, block_table.shape[1])
    programs = batch * query_groups * num_kv_heads
    most_items = num_selected * query_group + window_blocks
    # A third stage pays for groups of verifier queries (v13 sweep, H100: 64q/4kv B8 T5
    # −10%, other T > 1 within ±3%), not for one query's rows (decode, batch 1 to 32:
    # +5 to +12%; query-centric verification, B8 T8 D128, overlap 0.3: 126 -> 105 µs).
    num_stages = 3 if query_group > 1 else 2
    tree_args = tree if tree is not None else (seq_lens, seq_lens)
    cand_key = selected if candidates is None else candidates  # unread unless RANKING
    num_candidates = 0 if candidates is None else candidates.shape[2] * candidates.shape[3]

    def args(union: Tensor, part_o: Tensor, part_ml: Tensor) -> tuple:
        return (q, k_pages, v_pages, block_table, slots, seq_lens, selected, cand_key, union, part_o, part_ml,
                *tree_args, num_queries, num_candidates, q.stride(0), q.stride(1), q.stride(2), k_pages.stride(0),
                k_pages.stride(1), k_pages.stride(2), block_table.stride(0), scale)  # fmt: skip

    launch = dict(
        WINDOW=window, NUM_SEL=num_selected, NUM_SEL_PAD=_pow2(num_selected),
        NUM_CAND_PAD=_pow2(max(num_candidates, 1)), RANKING=candidates is not None, MERGED=merged,
        QUERY_GROUP=query_group, QUERY_GROUP_PAD=_pow2(query_group), G=num_q_heads // num_kv_heads, G_PAD=group_pad,
        ROWS=max(16, _pow2(query_group) * group_pad), D=head_dim, PAGE=page, NUM_STAGES=num_stages,
        TREE=tree is not None, **pdl,
    )  # fmt: skip
    if splits is None:

        def with_placeholders() -> tuple:  # only called to compile
            unused = torch.empty(0, device=q.device, dtype=torch.float32)
            return args(unused.int(), unused, unused)

        resident = _resident_programs(_sparse_attention_kernel, dict(launch, SPLITS=2), q.device, q.dtype,
                                      with_placeholders)  # fmt: skip
        splits = max(1, min(most_items, resident // programs))
    union = torch.empty(programs * splits, _pow2(query_group) * _pow2(num_selected), device=q.device, dtype=torch.int32)
    part_o = torch.empty(rows, num_q_heads, splits, 2, head_dim, device=q.device, dtype=torch.float32)
    part_ml = torch.empty(rows, num_q_heads, splits, 2, 2, device=q.device, dtype=torch.float32)
    _sparse_attention_kernel[(batch * query_groups, num_kv_heads, splits)](
        *args(union, part_o, part_ml), SPLITS=splits, **launch
    )  # fmt: skip

    cmp_part_o, cmp_part_ml, cmp_splits = cmp_parts
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    # A warp per 4096 elements of the largest [splits, D] tile merged, up to 4: at batch 1
    # the default 4 warps made this tiny kernel 1–2 µs slower (H100, `t8_tweaks.json`).
    widest = splits if cmp_part_o is None else max(splits, cmp_splits)  # merged reads no compressed partials
    merge_warps = max(1, min(4, _pow2(widest) * head_dim // 4096))
    _merge_kernel[(rows * num_q_heads,)](
        part_o, part_ml, part_o if cmp_part_o is None else cmp_part_o, part_ml if cmp_part_ml is None else cmp_part_ml,
        part_ml if gates is None else gates.contiguous(), out,
        SPLITS=splits, SPLITS_PAD=_pow2(splits), CMP_SPLITS=cmp_splits, CMP_SPLITS_PAD=_pow2(cmp_splits),
        MERGED=merged, D=head_dim, num_warps=merge_warps, **pdl,
    )  # fmt: skip
    return out
