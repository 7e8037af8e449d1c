"""For benchmarks: prompt lookup run on a reference text (an earlier autoregressive run's),
with that text deciding what is accepted, so that every strategy takes the steps it
would take on one and the same text.

In bf16 a verification step rounds a near-tie of two logits otherwise than a decode step
does, so speculative runs leave the autoregressive tokens, and a small model then falls
into another loop of repeated text whose acceptance differs by more than strategies do
(SmolLM2: ngram:8 kept the autoregressive tokens in 5 of 16 generations). Here the
drafts and the verdict (`Proposal.verdict`) come from the reference at the number of
tokens committed so far: the real kernels run every step at the width the strategy
picks, and the steps are those of a replay of the reference. Figures from it must say so.
"""

from __future__ import annotations

from specsa.spec.drafter import Proposal, matched_prefix
from specsa.spec.ngram import NgramDrafter
from specsa.spec.oracle import reference_of


class ReferenceLookup:
    proposals_are_free = True  # `auto` plans over its drafts as over prompt lookup's

    def __init__(self, prompts: list[list[int]], continuations: list[list[int]]):
        self.references = list(zip(prompts, continuations))
        self.lookup = NgramDrafter()
        self.texts: dict[int, tuple[int, list[int]]] = {}  # slot -> (reference, its prompt + committed so far)

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        drafts, verdict, evidence = [], [], []
        for slot, context, k in zip(slots, contexts, num_tokens):
            prompt, continuation = self.references[self.texts[slot][0]]
            text = self._text(slot, len(context) - len(prompt))
            tokens, match = self.lookup.lookup(text, k, slot)
            drafts.append(tokens)
            verdict.append(matched_prefix(tokens, continuation[len(text) - len(prompt) : len(text) - len(prompt) + k]))
            evidence.append(match)
        return Proposal(drafts, None, verdict, evidence)

    def _text(self, slot: int, committed: int) -> list[int]:
        """The reference's prompt and first `committed` tokens, extended in place."""
        reference, text = self.texts[slot]
        prompt, continuation = self.references[reference]
        text += continuation[len(text) - len(prompt) : committed]
        return text

    def start(self, slot: int, context: list[int]) -> None:
        reference = reference_of(self.references, context)
        self.texts[slot] = (reference, list(self.references[reference][0]))
        self.lookup.start(slot, self._text(slot, len(context) - len(self.references[reference][0])))

    def release(self, slot: int) -> None:
        self.texts.pop(slot, None)
        self.lookup.release(slot)
