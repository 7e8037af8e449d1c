"""Prompt lookup: propose what followed the latest earlier occurrence of the current suffix.

Each sequence keeps an index from every n-gram (min_n ≤ n ≤ max_n) of its text to where
its latest occurrence ends, extended by the tokens committed since the last call, so a
proposal costs O(new tokens), not a scan of a 64K-token context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specsa.spec.drafter import Proposal


@dataclass
class _Index:
    """The n-grams of text[:length] (ending at positions ≤ length-1) -> end of the latest."""

    length: int = 0
    last_token: int | None = None
    ends: dict[tuple[int, ...], int] = field(default_factory=dict)


class NgramDrafter:
    proposals_are_free = True

    def __init__(self, min_n: int = 1, max_n: int = 4):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"The n-gram sizes need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}.")
        self.min_n, self.max_n = min_n, max_n
        self.indexes: dict[int, _Index] = {}

    def _index(self, slot: int, context: list[int]) -> _Index:
        """The slot's index over context[:-1] (the suffix's own n-grams must not match it)."""
        index = self.indexes.get(slot)
        indexed = len(context) - 1
        if index is None or index.length > indexed or (index.length and context[index.length - 1] != index.last_token):
            index = self.indexes[slot] = _Index()  # a new sequence in this slot
        for end in range(index.length, indexed):  # n-grams ending at position `end`
            for n in range(self.min_n, min(self.max_n, end + 1) + 1):
                index.ends[tuple(context[end - n + 1 : end + 1])] = end
        index.length, index.last_token = indexed, context[indexed - 1] if indexed else None
        return index

    def lookup(self, context: list[int], num_tokens: int, slot: int) -> tuple[list[int], int]:
        """The tokens after the latest earlier match of the longest suffix (max_n down to
        min_n), and that suffix's length (0: no match)."""
        index = self._index(slot, context)
        for n in range(min(self.max_n, len(context) - 1), self.min_n - 1, -1):
            end = index.ends.get(tuple(context[-n:]))
            if end is not None:
                return context[end + 1 : end + 1 + num_tokens], n
        return [], 0

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        drafts, match_lengths = zip(*(self.lookup(c, k, s) for s, c, k in zip(slots, contexts, num_tokens)))
        return Proposal(list(drafts), None, evidence=list(match_lengths))

    def start(self, slot: int, context: list[int]) -> None:
        self._index(slot, context)

    def release(self, slot: int) -> None:
        self.indexes.pop(slot, None)
