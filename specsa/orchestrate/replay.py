"""Replay a recorded greedy generation through prompt lookup and a draft-length policy,
on a measured step-cost curve: the tokens per millisecond each policy would reach,
without the run-to-run noise of timing a GPU (±12% for the same tokens on SmolLM2).

Greedy verification accepts a draft up to its first token that differs from what the
target generates, and the target's tokens do not depend on how they were verified (up to
float rounding), so one recorded continuation tells what any proposal would have got.
"""

from __future__ import annotations

from specsa.orchestrate.policy import AutoPlanner, StepCosts
from specsa.spec.ngram import NgramDrafter


def replay(prompt: list[int], continuation: list[int], costs: StepCosts, max_gamma: int,
           planner: AutoPlanner | None = None) -> float:  # fmt: skip
    """Tokens per ms of prompt lookup over `continuation` (the greedy tokens after
    `prompt`): drafting up to `max_gamma` tokens every step and verifying them all, or as
    many as `planner` picks. Costs: `costs.step_ms` per step, its overheads included."""
    drafter = NgramDrafter()
    context, elapsed = prompt + continuation[:1], 0.0
    while len(context) < len(prompt) + len(continuation):
        done = len(context) - len(prompt)
        budget = min(max_gamma, len(continuation) - done - 1)
        proposal = drafter.propose([0], [context], [budget])
        drafts = proposal.tokens[0]
        width = len(drafts) if planner is None else planner.width([0], [context], [drafts], proposal.evidence)
        accepted = 0
        while accepted < width and drafts[accepted] == continuation[done + accepted]:
            accepted += 1
        if planner is not None and width:
            planner.observe(width, accepted, proposal.evidence[0])
        context = context + continuation[done : done + accepted + 1]
        elapsed += costs.step_ms("ngram" if width else None, width)
    return (len(continuation) - 1) / elapsed
