"""Compression φ: turns each block of l raw keys (or values) into one compressed token.

Token i summarises raw positions [i·d, i·d + l). Two forms: the training-free mean, and
the NSA paper's learned MLP over the flattened block with an intra-block position
embedding, whose weights a checkpoint supplies.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from specsa.config import NSAConfig

# blocks [B, N, l, H, D] -> compressed tokens [B, N, H, D]
Compression = Callable[[Tensor], Tensor]


def mean_compression(blocks: Tensor) -> Tensor:
    return blocks.mean(dim=2)


class MLPCompression(nn.Module):
    """φ(block) = W2 · silu(W1 · flatten(block + pos) + b1) + b2, shared by the KV heads."""

    def __init__(self, block: int, head_dim: int, hidden: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(block, head_dim))
        self.fc1 = nn.Linear(block * head_dim, hidden)
        self.fc2 = nn.Linear(hidden, head_dim)

    def forward(self, blocks: Tensor) -> Tensor:
        x = blocks + self.pos[:, None, :]  # [B, N, l, H, D]
        x = x.permute(0, 1, 3, 2, 4).flatten(-2)  # [B, N, H, l·D]
        return self.fc2(nn.functional.silu(self.fc1(x)))  # [B, N, H, D]


def compress(x: Tensor, cfg: NSAConfig, phi: Compression) -> Tensor:
    """The compressed tokens complete within x [B, S, H, D]: [B, N, H, D], N may be 0."""
    count = cfg.num_cmp_tokens(x.shape[1])
    if count == 0:
        return x.new_zeros(x.shape[0], 0, *x.shape[2:])
    starts = torch.arange(count, device=x.device) * cfg.cmp_stride  # [N]
    index = starts[:, None] + torch.arange(cfg.cmp_block, device=x.device)  # [N, l]
    return phi(x[:, index])  # x[:, index]: [B, N, l, H, D]
