"""Prompt lookup: the incremental n-gram index proposes exactly what a scan of the whole
context would, as the text grows, across sequences sharing a drafter, and after reuse
of a slot."""

from __future__ import annotations

import random

import pytest

from specsa.spec.ngram import NgramDrafter


def scan(context: list[int], num_tokens: int, min_n: int, max_n: int) -> list[int]:
    """The definition: after the latest earlier match of the longest suffix."""
    for n in range(min(max_n, len(context) - 1), min_n - 1, -1):
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == context[-n:]:
                return context[start + n : start + n + num_tokens]
    return []


@pytest.mark.parametrize("seed", range(40))
def test_index_equals_scan_as_text_grows(seed):
    rng = random.Random(seed)
    min_n = rng.randint(1, 3)
    max_n = rng.randint(min_n, 5)
    drafter = NgramDrafter(min_n, max_n)
    texts = [[rng.randint(0, 4) for _ in range(rng.randint(1, 6))] for _ in range(2)]
    for _ in range(25):
        proposal = drafter.propose([0, 1], texts, [4, 2])
        assert proposal.tokens == [scan(texts[0], 4, min_n, max_n), scan(texts[1], 2, min_n, max_n)]
        for text in texts:
            text += [rng.randint(0, 4) for _ in range(rng.randint(1, 3))]


def test_a_new_sequence_in_a_released_or_reused_slot_is_indexed_afresh():
    drafter = NgramDrafter(1, 2)
    assert drafter.propose([0], [[1, 2, 3, 1]], [2]).tokens == [[2, 3]]
    drafter.release(0)
    assert drafter.propose([0], [[5, 6, 5]], [2]).tokens == [[6, 5]]
    # not released, but the text is not a continuation of the indexed one: rebuilt
    assert drafter.propose([0], [[7, 8, 7]], [1]).tokens == [[8]]
