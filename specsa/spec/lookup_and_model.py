"""`auto`'s drafters when a draft model is given: prompt lookup, free, looked up at every
step, and a model drafter, run only on the steps where the planner expects its drafts to
pay for their cost (`AutoPlanner.plan`)."""

from __future__ import annotations

from specsa.spec.drafter import Drafter, Proposal


class LookupAndModel:
    proposals_are_free = True  # `propose` is the lookup; the model drafts only when asked

    def __init__(self, lookup: Drafter, model_drafter: Drafter):
        if not lookup.proposals_are_free or model_drafter.proposals_are_free:
            raise ValueError("LookupAndModel pairs a free drafter (prompt lookup) with a costly one (a model).")
        self.lookup, self.model_drafter = lookup, model_drafter

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        return self.lookup.propose(slots, contexts, num_tokens)

    def start(self, slot: int, context: list[int]) -> None:
        self.lookup.start(slot, context)
        self.model_drafter.start(slot, context)

    def release(self, slot: int) -> None:
        self.lookup.release(slot)
        self.model_drafter.release(slot)
