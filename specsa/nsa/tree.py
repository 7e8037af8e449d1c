"""Draft trees for the verification kernel: what `nsa_paged` needs to verify T draft nodes
per sequence as decoding along each node's root-to-node path would (`nsa_verify` with a
tree mask is the reference).

The nodes' tokens sit in the cache in node order at positions L … L+T-1; node t attends
as if at position L + depth(t), over the prefix and its own ancestors. While the tree is
shallower than a selection block and the window, every ancestor lies in a forced block
(the query's own or the one before) and in the window, so the kernel only needs which
nodes are ancestors. The compressed tokens that cover draft positions depend on the path,
so they are formed here, per node, from the path's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specsa.config import NSAConfig
from specsa.nsa.compression import Compression, compress, mean_compression
from specsa.nsa.reference import tree_paths

MAX_NODES = 64  # ancestors travel as one int64 bitmask per node


def tree_mask(parents: list[int]) -> Tensor:
    """The ancestor-or-self mask [T, T] bool of a tree given each node's parent (-1: a root,
    a child of the last committed token); parents come before their children."""
    mask = torch.zeros(len(parents), len(parents), dtype=torch.bool)
    for node, parent in enumerate(parents):
        if not -1 <= parent < node:
            raise ValueError(f"Node {node}'s parent must be -1 or an earlier node, got {parent}.")
        if parent >= 0:
            mask[node] = mask[parent]
        mask[node, node] = True
    return mask


@dataclass
class DraftTree:
    ancestors: Tensor  # [B, T] int64: bit u set when node u is node t's ancestor or t itself
    depths: Tensor  # [B, T] int32
    k_cmp: Tensor  # [B, T, E, Hkv, D]: node t's compressed tokens past the prefix's own, formed along its path
    v_cmp: Tensor  # [B, T, E, Hkv, D] (zero-padded to the longest node's E)


def draft_tree(
    tree_mask: Tensor,
    keys: list[Tensor],
    values: list[Tensor],
    cfg: NSAConfig,
    phi_k: Compression = mean_compression,
    phi_v: Compression = mean_compression,
) -> DraftTree:
    """tree_mask [T, T] bool (ancestor-or-self, topological order), one tree for every
    sequence; keys[b], values[b] [L_b + T, Hkv, D]: sequence b's prefix, then its nodes."""
    paths = tree_paths(tree_mask)  # validates the mask
    nodes = len(paths)
    if nodes > MAX_NODES:
        raise ValueError(f"A draft tree has at most {MAX_NODES} nodes per sequence, got {nodes}.")
    depth = max(len(path) for path in paths) - 1
    if depth >= min(cfg.sel_block, cfg.window) or cfg.num_selected < 3:
        raise ValueError(
            f"The tree kernel needs trees shallower than the selection block and the window "
            f"(depth {depth}, l' = {cfg.sel_block}, w = {cfg.window}) and n ≥ 3 (forced blocks); use a shallower tree."
        )
    device = keys[0].device
    masks = [sum(1 << u for u in path) for path in paths]
    bits = torch.tensor([m - (1 << 64) if m >= 1 << 63 else m for m in masks], dtype=torch.int64)  # bit 63: the sign
    prefixes = [k.shape[0] - nodes for k in keys]
    firsts = [cfg.num_cmp_tokens(prefix) for prefix in prefixes]  # compressed tokens wholly inside each prefix
    extra = max(cfg.num_cmp_tokens(prefix + depth + 1) - first for prefix, first in zip(prefixes, firsts))
    shape = (len(keys), nodes, extra, *keys[0].shape[1:])
    k_out, v_out = keys[0].new_zeros(shape), values[0].new_zeros(shape)
    for b, (k, v, prefix, first) in enumerate(zip(keys, values, prefixes, firsts)):
        start = first * cfg.cmp_stride  # compressed token `first` starts here; earlier ones are the cache's
        for t, path in enumerate(paths):
            rows = torch.cat([torch.arange(start, prefix), prefix + torch.tensor(path, dtype=torch.long)]).to(device)
            k_own, v_own = compress(k[None, rows], cfg, phi_k)[0], compress(v[None, rows], cfg, phi_v)[0]
            k_out[b, t, : k_own.shape[0]], v_out[b, t, : v_own.shape[0]] = k_own, v_own
    depths = torch.tensor([len(path) - 1 for path in paths], dtype=torch.int32)
    return DraftTree(
        ancestors=bits.repeat(len(keys), 1).to(device),
        depths=depths.repeat(len(keys), 1).to(device),
        k_cmp=k_out,
        v_cmp=v_out,
    )
