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

from specsa.spec.drafter import Proposal


_MASK = (1 << 64) - 1


def _draw(key: int) -> int:
    """A 64-bit pseudo-random number fixed by `key` (splitmix64's finaliser): ~1 µs,
    where seeding a `random.Random` took 9 µs a draft token, 0.7 ms a step at batch 8."""
    z = (key + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


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
        # One draw per token of the sequence, whichever step and draft position lands on it:
        # strategies that split the text into other steps meet the same luck (keyed by the
        # step's start as well, the acceptance length of two strategies that chose the same
        # γ in 58 of 60 steps differed by 12%). reference -> by continuation index: (a
        # uniform draw, the token drafted there when wrong).
        self.luck: list[list[tuple[float, int]]] = []
        for index, (prompt, continuation) in enumerate(self.references):
            draws = [_draw(((seed * 1_000_003 + index) << 40) ^ (len(prompt) + j)) for j in range(len(continuation))]
            self.luck.append([((d >> 11) / 2**53, (token + 1 + d % (vocab_size - 1)) % vocab_size)
                              for d, token in zip(draws, continuation)])  # fmt: skip
        self.reference_by_slot: dict[int, int] = {}

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        """Drafts that are right with the set probability at each position, and their verdict.
        (If rounding made the target leave its reference, the drafts are wrong from there
        on; the verdict keeps the acceptance.)"""
        drafts, verdict = [], []
        for slot, context, k in zip(slots, contexts, num_tokens):
            if slot not in self.reference_by_slot:
                self.reference_by_slot[slot] = reference_of(self.references, context)
            reference = self.reference_by_slot[slot]
            done = len(context) - len(self.references[reference][0])
            tokens, first_wrong = self.references[reference][1][done : done + k], None
            for i, (uniform, wrong_token) in enumerate(self.luck[reference][done : done + len(tokens)]):
                if uniform >= self.acceptance[min(i, len(self.acceptance) - 1)]:
                    tokens[i] = wrong_token
                    first_wrong = i if first_wrong is None else first_wrong
            drafts.append(tokens)
            verdict.append(len(tokens) if first_wrong is None else first_wrong)
        return Proposal(drafts, None, verdict)

    def start(self, slot: int, context: list[int]) -> None:
        pass

    def release(self, slot: int) -> None:
        self.reference_by_slot.pop(slot, None)
