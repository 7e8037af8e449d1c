"""The benchmarks' reference lookup: prompt lookup's drafts and acceptance on the reference
text, whatever tokens the target committed."""

from __future__ import annotations

from specsa.spec.ngram import NgramDrafter
from specsa.spec.reference_lookup import ReferenceLookup

PROMPT = [5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 3, 4] * 2 + [5, 6]
CONTINUATION = [7, 8, 9, 5, 6, 7, 1, 2, 3, 3, 4, 5]


def test_drafts_and_verdicts_are_prompt_lookups_on_the_reference():
    drafter = ReferenceLookup([[0, 0], PROMPT], [[1], CONTINUATION])
    drafter.start(3, PROMPT + CONTINUATION[:1])
    for done in (1, 4, 8):
        text = PROMPT + CONTINUATION[:done]
        proposal = drafter.propose([3], [text], [5])
        expected, match = NgramDrafter().lookup(text, 5, slot=0)
        assert proposal.tokens == [expected] and proposal.evidence == [match]
        accepted = 0
        while accepted < len(expected) and expected[accepted] == CONTINUATION[done + accepted]:
            accepted += 1
        assert proposal.verdict == [accepted]
    assert drafter.propose([3], [PROMPT + CONTINUATION[:8]], [5]).verdict == [1]  # 3, 4 drafted where 3, 3 follows


def test_a_committed_token_off_the_reference_does_not_move_the_drafts():
    """bf16 rounding may commit another token than the reference's: the drafts still come
    from the reference at the number of tokens committed."""
    drafter = ReferenceLookup([PROMPT], [CONTINUATION])
    drafter.start(0, PROMPT + CONTINUATION[:1])
    on_reference = drafter.propose([0], [PROMPT + CONTINUATION[:4]], [4])
    drafter = ReferenceLookup([PROMPT], [CONTINUATION])
    drafter.start(0, PROMPT + CONTINUATION[:1])
    off_reference = drafter.propose([0], [PROMPT + CONTINUATION[:3] + [99]], [4])
    assert off_reference.tokens == on_reference.tokens and off_reference.verdict == on_reference.verdict
