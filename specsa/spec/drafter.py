"""What every drafter gives the speculative loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass
class Proposal:
    tokens: list[list[int]]  # drafted tokens per sequence; may be fewer than asked, or none
    probs: Tensor | None  # [B, K, V] distributions they were drawn from; None means one-hot
    # Benchmarks' ORACLE only: how many drafts per sequence the verifier is to accept, in
    # place of its own (greedy) decision. Equal to it while the target follows the oracle's
    # reference; it keeps the set acceptance once bf16 rounding has made the target leave
    # it (random weights are full of near-ties), so the cost measured stays the one asked.
    verdict: list[int] | None = None
    # What the drafter knows of each draft's odds, as a small integer the planner learns
    # acceptance for apart (prompt lookup: the length of the matched suffix); None: nothing.
    evidence: list[int] | None = None


def matched_prefix(drafts: list[int], tokens: list[int]) -> int:
    """How many drafts, from the first on, equal the tokens that follow (what greedy
    verification accepts)."""
    matched = 0
    while matched < min(len(drafts), len(tokens)) and drafts[matched] == tokens[matched]:
        matched += 1
    return matched


class Drafter(Protocol):
    # True where a proposal costs next to nothing and its drafts are the drafter's own
    # guesses (not a benchmark's verdict): `auto` then looks up a proposal every step and
    # decides after seeing it whether to verify it, and learns from the ones it declines
    # by comparing them with the tokens committed instead.
    proposals_are_free: bool

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        """Draft up to num_tokens[i] tokens after contexts[i] (prompt + committed tokens)
        for the sequence in target cache slot slots[i]. Steps that decode plainly do not
        call it, so a drafter catches up on everything committed since its last call; the
        target's cache is left as it was found."""
        ...

    def start(self, slot: int, context: list[int]) -> None:
        """The sequence in `slot` starts decoding after `context` (its prompt and first
        token). A drafter reads the prompt here, as part of the request's prefill (prompt
        lookup indexes it, a draft model prefills it), so that its first proposal costs
        what the later ones do."""
        ...

    def release(self, slot: int) -> None:
        """The sequence in `slot` has finished."""
        ...
