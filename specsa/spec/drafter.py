"""What every drafter gives the speculative loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass
class Proposal:
    tokens: list[list[int]]  # drafted tokens per sequence; may be fewer than asked, or none
    probs: Tensor | None  # [B, K, V] distributions they were drawn from; None means one-hot


class Drafter(Protocol):
    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        """Draft up to num_tokens[i] tokens after contexts[i] (prompt + committed tokens)
        for the sequence in target cache slot slots[i]. A drafter keeps its own state in
        step with what was committed; the target's cache is left as it was found."""
        ...

    def release(self, slot: int) -> None:
        """The sequence in `slot` has finished."""
        ...
