"""Prompt lookup: propose what followed the last occurrence of the current suffix."""

from __future__ import annotations

from specsa.spec.drafter import Proposal


class NgramDrafter:
    def __init__(self, min_n: int = 1, max_n: int = 4):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"The n-gram sizes need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}.")
        self.min_n, self.max_n = min_n, max_n

    def lookup(self, context: list[int], num_tokens: int) -> list[int]:
        """The tokens after the latest earlier match of the longest suffix (max_n down to min_n)."""
        for n in range(min(self.max_n, len(context) - 1), self.min_n - 1, -1):
            suffix = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] == suffix:
                    return context[start + n : start + n + num_tokens]
        return []

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        return Proposal([self.lookup(c, k) for c, k in zip(contexts, num_tokens)], None)

    def release(self, slot: int) -> None:
        pass
