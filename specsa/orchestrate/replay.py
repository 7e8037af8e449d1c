"""Replay recorded greedy generations through prompt lookup and a draft-length policy,
on a measured step-cost curve: the tokens per millisecond each policy would reach,
without the run-to-run noise of timing a GPU (±12% for the same tokens on SmolLM2).

Greedy verification accepts a draft up to its first token that differs from what the
target generates, and the target's tokens do not depend on how they were verified (up to
float rounding), so one recorded continuation tells what any proposal would have got.
"""

from __future__ import annotations

from collections.abc import Callable

from specsa.orchestrate.costs import StepCosts
from specsa.orchestrate.planner import AutoPlanner
from specsa.spec.drafter import matched_prefix
from specsa.spec.ngram import NgramDrafter


def replay(generations: list[tuple[list[int], list[int]]], costs: Callable[[int], StepCosts], max_gamma: int,
           planner: AutoPlanner | None = None) -> float:  # fmt: skip
    """Tokens per ms of prompt lookup over `generations` ((prompt, greedy continuation)
    pairs), decoded as one batch that shrinks as sequences finish: drafting up to
    `max_gamma` tokens every step and verifying them all, or as many as `planner` picks.
    `costs(n)`: what a step really costs with n sequences running; the planner is told
    each step's time, as the loop tells it, and may plan with other costs of its own."""
    drafter = NgramDrafter()
    contexts = [prompt + continuation[:1] for prompt, continuation in generations]
    elapsed = 0.0
    while active := [i for i, (p, c) in enumerate(generations) if len(contexts[i]) < len(p) + len(c)]:
        done = [len(contexts[i]) - len(generations[i][0]) for i in active]
        budgets = [min(max_gamma, len(generations[i][1]) - d - 1) for i, d in zip(active, done)]
        proposal = drafter.propose(active, [contexts[i] for i in active], budgets)
        if planner is None:
            width = max(map(len, proposal.tokens))
        else:
            _, width = planner.plan(active, [contexts[i] for i in active], proposal.tokens, proposal.evidence)
            planner.book_steps(len(active))  # where the engine books: while the GPU runs the step
        for row, (i, d) in enumerate(zip(active, done)):
            drafts, continuation = proposal.tokens[row][:width], generations[i][1]
            accepted = matched_prefix(drafts, continuation[d:])
            if planner is not None and drafts:
                planner.observe(len(drafts), accepted, proposal.evidence[row])
            contexts[i] = contexts[i] + continuation[d : d + accepted + 1]
        step_ms = costs(len(active)).step_ms("ngram" if width else None, width)
        if planner is not None:
            planner.observe_step(width, step_ms, len(active))
        elapsed += step_ms
    return sum(len(c) - 1 for _, c in generations) / elapsed
