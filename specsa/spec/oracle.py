"""An ORACLE drafter for benchmarks: it proposes the target's own greedy continuation
(known from an earlier autoregressive run), each drafted position right with a set
probability. It measures what verification costs at a given acceptance on models whose
real acceptance is meaningless (random weights); its figures must say "oracle". Its
proposals carry their verdict (`Proposal.verdict`), so the acceptance stays the set one
even where the target's bf16 rounding leaves the reference continuation. Each draw is
seeded by the token the draft lands on, so runs with different draft lengths meet the
same luck.
"""

from __future__ import annotations

import random

from specsa.spec.drafter import Proposal


def reference_of(references: list[tuple[list[int], list[int]]], context: list[int]) -> int:
    """The index of the (prompt, continuation) reference whose prompt `context` starts with."""
    for index, (prompt, _) in enumerate(references):
        tail = prompt[-16:]  # enough to tell prompts apart without comparing them whole
        if len(context) >= len(prompt) and context[len(prompt) - len(tail) : len(prompt)] == tail:
            return index
    raise ValueError("The benchmark drafter has no reference continuation for this sequence's prompt.")


class OracleDrafter:
    proposals_are_free = False  # free, but its verdicts are set, not guesses to learn from

    def __init__(self, prompts: list[list[int]], continuations: list[list[int]], acceptance: list[float],
                 vocab_size: int, seed: int = 0):  # fmt: skip
        """acceptance[k]: probability that draft position k is right (independently of the
        others), e.g. the acceptance rates by position measured for a real drafter."""
        if not acceptance or not all(0.0 <= a <= 1.0 for a in acceptance):
            raise ValueError(f"acceptance must be probabilities, one per draft position; got {acceptance}.")
        self.references = [(p, c) for p, c in zip(prompts, continuations)]
        self.acceptance, self.vocab_size = acceptance, vocab_size
        self.seed = seed

    def continuation_of(self, context: list[int]) -> tuple[int, list[int]]:
        """Which reference this sequence is, and what its continuation holds after the
        tokens committed so far. (If rounding made the target leave its reference, the
        drafts are wrong from there on; the verdict keeps the acceptance.)"""
        index = reference_of(self.references, context)
        prompt, continuation = self.references[index]
        return index, continuation[len(context) - len(prompt) :]

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        drafts, verdict = [], []
        for context, k in zip(contexts, num_tokens):
            reference, tokens = self.continuation_of(context)
            tokens = tokens[:k]
            right = []
            for i, token in enumerate(tokens):
                # One draw per token of the sequence, whichever step and draft position
                # lands on it: strategies that split the text into other steps meet the
                # same luck (keyed by the step's start as well, the acceptance length of
                # two strategies that chose the same γ in 58 of 60 steps differed by 12%).
                draw = random.Random(((self.seed * 1_000_003 + reference) << 40) ^ (len(context) + i))
                right.append(draw.random() < self.acceptance[min(i, len(self.acceptance) - 1)])
                if not right[i]:  # a wrong token: some other one
                    tokens[i] = (token + 1 + draw.randrange(self.vocab_size - 1)) % self.vocab_size
            drafts.append(tokens)
            verdict.append(right.index(False) if False in right else len(tokens))
        return Proposal(drafts, None, verdict)

    def start(self, slot: int, context: list[int]) -> None:
        pass

    def release(self, slot: int) -> None:
        pass
