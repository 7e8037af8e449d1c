"""Lossless acceptance of drafted tokens (Leviathan et al. 2023, Chen et al. 2023).

Draft i is kept with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the
next token is drawn from normalise(max(p_i - q_i, 0)); if all are kept, a bonus token is
drawn from p_K. Committed tokens are then distributed exactly as the target's own samples.
Greedy decoding is the case where p is the one-hot argmax: the same rule then accepts the
longest agreeing prefix and emits the target's argmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from specsa.spec.drafter import matched_prefix


def rejection_sample(
    draft_tokens: Tensor,
    draft_probs: Tensor,
    target_probs: Tensor,
    num_drafts: Tensor,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """draft_tokens [B, K] (padded), draft_probs [B, K, V], target_probs [B, K+1, V],
    num_drafts [B] (drafts past it are padding). Returns accepted [B] and next_token [B]."""
    batch, k = draft_tokens.shape
    position = torch.arange(k, device=draft_tokens.device)
    is_draft = position < num_drafts[:, None]  # [B, K]
    p_draft = target_probs[:, :k].gather(-1, draft_tokens[..., None])[..., 0]  # [B, K]
    q_draft = draft_probs.gather(-1, draft_tokens[..., None])[..., 0]
    uniform = torch.rand(batch, k, generator=generator, device=draft_tokens.device)
    kept = (uniform * q_draft < p_draft) & is_draft
    accepted = kept.long().cumprod(-1).sum(-1)  # [B]

    # q is zero past the drafts, so the residual there is p itself: the bonus token.
    q_padded = torch.cat([draft_probs * is_draft[..., None], draft_probs.new_zeros(batch, 1, draft_probs.shape[-1])], 1)
    rows = torch.arange(batch, device=draft_tokens.device)
    p_next, q_next = target_probs[rows, accepted], q_padded[rows, accepted]  # [B, V]
    residual = (p_next - q_next).clamp_min(0)
    empty = residual.sum(-1, keepdim=True) <= 0  # only from rounding when p ≈ q
    residual = torch.where(empty, p_next, residual)
    next_token = torch.multinomial(residual, 1, generator=generator)[:, 0]
    return accepted, next_token


def greedy_accept(drafts: list[list[int]], target_argmax: list[list[int]]) -> tuple[list[int], list[int]]:
    """`rejection_sample` for a greedy target (p one-hot at its argmax), on the host and
    without [B, K, V] distributions: the longest prefix of drafts equal to the argmax is
    kept, then the argmax follows. drafts: B lists (any lengths ≤ K); target_argmax [B][K+1]."""
    accepted = [matched_prefix(row_drafts, row) for row_drafts, row in zip(drafts, target_argmax)]
    return accepted, [row[a] for row, a in zip(target_argmax, accepted)]
