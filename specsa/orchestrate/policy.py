"""The cost model and the choice it drives: which drafter and how many tokens to draft,
maximising committed tokens per second (goodput), not acceptance.

A step that drafts γ tokens commits 1 + Σ_{k=1..γ} Π_{i≤k} a_i tokens on average, where
a_i is the probability that draft position i is accepted given that the ones before it
were; it costs the drafter's time for γ tokens plus one verification of γ+1 queries.
Autoregressive decoding is the γ = 0 step (one decode), so speculation is chosen only
when it beats it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specsa.orchestrate.costs import StepCosts


def committed_by_length(rates: list[float], gamma: int) -> list[float]:
    """Mean tokens committed by a step drafting 0, 1, …, γ tokens; positions past
    len(rates) take the last rate."""
    padded = rates[:gamma] + rates[-1:] * (gamma - len(rates)) if rates else [0.0] * gamma
    totals, alive = [1.0], 1.0
    for rate in padded:
        alive *= rate
        totals.append(totals[-1] + alive)
    return totals


def expected_committed(rates: list[float], gamma: int) -> float:
    """Mean tokens committed by a step drafting γ tokens."""
    return committed_by_length(rates, gamma)[gamma]


@dataclass(frozen=True)
class Choice:
    drafter: str | None  # None: plain autoregressive decoding
    gamma: int
    tokens_per_ms: float  # expected goodput per sequence


def choose(costs: StepCosts, rates: dict[str, list[float]], max_gamma: int) -> Choice:
    """The (drafter, γ) with the highest expected goodput, autoregressive included.
    `rates`: acceptance rates by position for each drafter that may be used."""
    best = Choice(None, 0, 1.0 / costs.step_ms(None, 0))
    for drafter, drafter_rates in rates.items():
        for gamma in range(1, max_gamma + 1):
            if gamma + 1 not in costs.target_ms:
                continue
            goodput = expected_committed(drafter_rates, gamma) / costs.step_ms(drafter, gamma)
            if goodput > best.tokens_per_ms:
                best = Choice(drafter, gamma, goodput)
    return best


LATER_PRIOR = 0.9
"""The acceptance of a draft position past the first before drafts reach it. A draft that
holds at its first token mostly holds on (SmolLM2's prompt lookup: 0.61 at the first
position, 0.86-0.99 at the next 15), so with the first position's prior standing for
them a planner drafted short and learnt the later positions only as drafts reached
them (8B 32K, up to 16 drafts, simulated: `auto` 0.956 of γ=16, 0.985 with this prior).
Where drafts fail, one lucky acceptance then makes long drafts look worth ~2 tokens;
`LoopCosts` plans them at no less than their profiled time, which rules them out."""


@dataclass
class AcceptanceTracker:
    """Acceptance rates by draft position, learnt from what a request shows. A position's
    rate starts at the prior as one pseudo-observation, is a running mean over
    its first observations and then a moving average (a memory of ~1/(1 - decay) of
    them): four acceptances already read 0.92 (the plain moving average: 0.84), which
    matters in a run of a few dozen steps. A position never reached takes the estimate of
    the one before it (otherwise positions past the draft length in use would keep the
    prior for ever, and a planner reading them would never try longer drafts), blended
    with `LATER_PRIOR` weighted as one judgement against the first position's: at first
    the planner drafts long, and once the first position has been judged a few times, what
    the drafts showed rules."""

    max_gamma: int
    prior: float = 0.6
    decay: float = 0.8  # weight of the past per observation, once past the first few
    rates: list[float] = field(default_factory=list)
    reached: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rates = [self.prior] * self.max_gamma
        self.reached = [0] * self.max_gamma

    def observe(self, num_drafted: int, num_accepted: int, first: int = 0) -> None:
        """Position k (< num_drafted) was reached if k ≤ num_accepted; accepted if k < num_accepted.
        Positions before `first` are left out (seen already)."""
        for k in range(first, min(num_drafted, num_accepted + 1)):
            weight = max(1 - self.decay, 1 / (self.reached[k] + 2))
            self.rates[k] += weight * ((1.0 if k < num_accepted else 0.0) - self.rates[k])
            self.reached[k] += 1

    def estimate(self) -> list[float]:
        """The rates a planner should use, position by position."""
        estimates, first_judged = [], self.reached[0]
        for k, (rate, reached) in enumerate(zip(self.rates, self.reached)):
            if reached or k == 0:
                estimates.append(rate)
            else:
                estimates.append((first_judged * estimates[-1] + LATER_PRIOR) / (first_judged + 1))
        return estimates
