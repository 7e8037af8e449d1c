"""Selection layouts: which KV blocks the T verifier queries of one step select, per KV head.

A layout is an integer tensor `selected [T, H, n]`: row t holds the block indices chosen
by the query at the t-th of T adjacent positions, for each of H KV heads; PAD_BLOCK (-1)
pads, and the order within a row does not matter. The grouped verify kernel loads each
distinct block of a group of queries once, so its cost follows the *union* of their
selections while a per-query kernel pays for the sum: the functions here measure that
overlap, choose a query grouping from it, and make synthetic or rescaled layouts for
kernel benchmarks when a real model's layouts are too short.
"""

from __future__ import annotations

import torch
from torch import Tensor

from specsa.nsa.reference import PAD_BLOCK


def check_layout(selected: Tensor) -> None:
    """Fail with a sentence when `selected` is not a [T, H, n] integer layout."""
    if selected.dim() != 3:
        raise ValueError(f"A layout is [T, H, n] block indices; got a tensor of shape {tuple(selected.shape)}.")
    if selected.dtype.is_floating_point or selected.dtype == torch.bool:
        raise ValueError(f"A layout holds integer block indices; got dtype {selected.dtype}.")
    if selected.numel() and int(selected.min()) < PAD_BLOCK:
        raise ValueError(f"Block indices are ≥ 0 (or {PAD_BLOCK} for padding); got {int(selected.min())}.")


def to_bitmap(selected: Tensor, num_blocks: int) -> Tensor:
    """selected [T, H, n] -> bool [T, H, num_blocks]: True where a query selects a block."""
    check_layout(selected)
    if selected.numel() and int(selected.max()) >= num_blocks:
        raise ValueError(f"The layout selects block {int(selected.max())}, past num_blocks={num_blocks}.")
    index = selected.long().masked_fill(selected == PAD_BLOCK, num_blocks)  # pads go to a spare column
    bitmap = torch.zeros(*selected.shape[:2], num_blocks + 1, dtype=torch.bool, device=selected.device)
    bitmap.scatter_(-1, index, True)
    return bitmap[..., :num_blocks]


def _bitmap(selected: Tensor) -> Tensor:
    """The layout's bitmap with just enough columns: [T, H, max block + 1]."""
    check_layout(selected)
    return to_bitmap(selected, max(int(selected.max()) + 1, 1) if selected.numel() else 1)


def union_size(selected: Tensor) -> Tensor:
    """Distinct blocks each head needs over all T queries: [H] int64 (the grouped kernel's loads)."""
    return _bitmap(selected).any(dim=0).sum(dim=-1)


def load_savings(selected: Tensor) -> float:
    """Σ_q |S_q| / |∪_q S_q|, averaged over heads: how many times fewer block loads a
    grouped kernel makes than a per-query one (1: no overlap; T: identical selections)."""
    bitmap = _bitmap(selected)  # [T, H, Nb]
    per_query_loads = bitmap.sum(dim=(0, 2)).double()  # [H]
    union = bitmap.any(dim=0).sum(dim=-1).clamp(min=1).double()  # [H]
    return float((per_query_loads / union).mean())


def pairwise_overlap(selected: Tensor) -> float:
    """Mean over heads and query pairs a < b of |S_a ∩ S_b| / min(|S_a|, |S_b|), in [0, 1]."""
    bitmap = _bitmap(selected).transpose(0, 1).double()  # [H, T, Nb]
    num_queries = bitmap.shape[1]
    if num_queries < 2:
        raise ValueError(f"Pairwise overlap needs at least two queries; the layout has {num_queries}.")
    shared = bitmap @ bitmap.transpose(1, 2)  # [H, T, T]
    sizes = bitmap.sum(dim=-1)  # [H, T]
    smaller = torch.minimum(sizes[:, :, None], sizes[:, None, :]).clamp(min=1)  # [H, T, T]
    a, b = torch.triu_indices(num_queries, num_queries, offset=1)
    return float((shared[:, a, b] / smaller[:, a, b]).mean())


def group_queries(selected: Tensor, max_group: int, threshold: float = 0.5) -> list[int]:
    """Sizes of contiguous groups of the T queries, at most `max_group` each, for the grouped kernel.

    Greedy, in query order: the next query joins the current group when the group has room
    and it brings fewer than `threshold` × its own blocks that the group does not load yet
    (counted over all heads, since one kernel program serves every head of a query);
    otherwise it starts a new group. So a query whose blocks are mostly new, which would
    only widen the union every query of the group pays to scan, gets its own group.
    Groups are contiguous because the kernel serves adjacent queries.
    """
    if max_group < 1:
        raise ValueError(f"max_group must be at least 1, got {max_group}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of a query's blocks, in [0, 1]; got {threshold}.")
    bitmap = _bitmap(selected)  # [T, H, Nb]
    sizes: list[int] = []
    union = torch.zeros_like(bitmap[0])  # [H, Nb]: blocks the current group loads
    for query in bitmap:  # [H, Nb]
        new_blocks = int((query & ~union).sum())
        joins = bool(sizes) and sizes[-1] < max_group and new_blocks < threshold * int(query.sum())
        if joins:
            sizes[-1] += 1
            union |= query
        else:
            sizes.append(1)
            union = query.clone()
    return sizes


def synthetic_layout(
    num_queries: int,
    num_heads: int,
    num_selected: int,
    num_blocks: int,
    overlap: float,
    generator: torch.Generator | None = None,
    block_size: int = 64,
) -> Tensor:
    """A random layout whose expected pairwise_overlap is about `overlap`: [T, H, n] int64.

    The T queries sit at positions context-T … context-1 of a context of num_blocks blocks
    (T ≤ block_size, so they share one page), and each keeps its forced blocks (block 0 and
    the two local blocks). Its other m = n - 3 slots are paired with a per-head shared pool
    of m blocks: slot i holds pool[i] with probability p, else a block drawn uniformly from
    the other causal blocks (no duplicates). Two queries then share 3 + m·p² blocks on
    average, so p = sqrt((overlap·n - 3) / m); overlaps below 3/n (forced blocks alone)
    cannot be made.
    """
    forced = torch.tensor([0, num_blocks - 2, num_blocks - 1])  # one page: the same for every query
    free = num_selected - len(forced)  # m
    candidates = num_blocks - len(forced)  # blocks 1 … num_blocks-3
    if not 1 <= num_queries <= block_size:
        raise ValueError(f"num_queries must be in 1 … {block_size} (one page of queries); got {num_queries}.")
    if free < 0 or candidates < 2 * free:
        raise ValueError(
            f"A layout of {num_selected} selected blocks per query needs num_selected ≥ 3 and "
            f"num_blocks ≥ 2·num_selected - 3 (a pool and as many other blocks); got "
            f"num_selected={num_selected}, num_blocks={num_blocks}."
        )
    floor = len(forced) / num_selected
    if not floor <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [{floor:.3f}, 1] (the forced blocks alone give {floor:.3f}); got {overlap}.")
    share = ((overlap * num_selected - len(forced)) / max(free, 1)) ** 0.5  # p

    def shuffled(*shape: int) -> Tensor:
        """Random orders of the candidate blocks: [*shape, candidates] in 1 … num_blocks-3."""
        return torch.rand(*shape, candidates, generator=generator).argsort(dim=-1) + 1

    pool = shuffled(num_heads)[:, :free]  # [H, m]
    in_pool = torch.zeros(num_heads, num_blocks, dtype=torch.bool).scatter_(-1, pool, True)  # [H, Nb]
    order = shuffled(num_queries, num_heads)  # [T, H, candidates]
    pooled_last = in_pool[torch.arange(num_heads)[:, None], order].long()  # [T, H, candidates]
    others = order.gather(-1, pooled_last.argsort(dim=-1, stable=True))[..., :free]  # [T, H, m], not in the pool
    from_pool = torch.rand(num_queries, num_heads, free, generator=generator) < share  # [T, H, m]
    chosen = torch.where(from_pool, pool.expand_as(others), others)
    layout = torch.cat([forced.expand(num_queries, num_heads, -1), chosen], dim=-1)
    return layout.sort(dim=-1).values


def remap_layout(
    selected: Tensor, source_blocks: int, target_blocks: int, generator: torch.Generator | None = None
) -> Tensor:
    """Move a layout captured over a context of `source_blocks` blocks to one of `target_blocks`.

    Block 0 stays 0; the last two source blocks (the local blocks of queries on the last
    page) become the last two target blocks; every other block goes through one random
    injective map into 1 … target_blocks-3, the same for all queries and heads. Which
    queries share which blocks is kept exactly, so load_savings and pairwise_overlap are
    unchanged. Returns a layout like `selected` (PAD_BLOCK stays).
    """
    check_layout(selected)
    if source_blocks < 3 or target_blocks < source_blocks:
        raise ValueError(
            f"remap_layout needs 3 ≤ source_blocks ≤ target_blocks; got {source_blocks} and {target_blocks}."
        )
    if selected.numel() and int(selected.max()) >= source_blocks:
        raise ValueError(f"The layout selects block {int(selected.max())}, past source_blocks={source_blocks}.")
    middle = torch.randperm(target_blocks - 3, generator=generator)[: source_blocks - 3] + 1
    mapping = torch.cat([torch.tensor([0]), middle, torch.tensor([target_blocks - 2, target_blocks - 1])])  # [source]
    mapped = mapping.to(selected.device)[selected.long().clamp(min=0)]
    return torch.where(selected == PAD_BLOCK, selected.long(), mapped).to(selected.dtype)
