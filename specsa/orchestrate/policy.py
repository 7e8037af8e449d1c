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


def expected_committed(rates: list[float], gamma: int) -> float:
    """Mean tokens committed by a step drafting γ tokens; positions past len(rates) take
    the last rate."""
    total, alive = 1.0, 1.0
    for k in range(gamma):
        alive *= rates[min(k, len(rates) - 1)] if rates else 0.0
        total += alive
    return total


@dataclass(frozen=True)
class StepCosts:
    """Measured milliseconds at one (context, batch): a target step appending T tokens per
    sequence (T = 1 is a decode step), and each drafter's time per drafted token."""

    target_ms: dict[int, float]  # T -> ms
    draft_ms_per_token: dict[str, float]

    def step_ms(self, drafter: str | None, gamma: int) -> float:
        if gamma == 0:
            return self.target_ms[1]
        return gamma * self.draft_ms_per_token[drafter] + self.target_ms[gamma + 1]


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


@dataclass
class AcceptanceTracker:
    """Acceptance rates by draft position, learnt from what a request shows: exponential
    moving averages, starting from a prior so that the first steps still speculate."""

    max_gamma: int
    prior: float = 0.6
    decay: float = 0.8  # weight of the past per observation
    rates: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rates = [self.prior] * self.max_gamma

    def observe(self, num_drafted: int, num_accepted: int) -> None:
        """Position k (< num_drafted) was reached if k ≤ num_accepted; accepted if k < num_accepted."""
        for k in range(min(num_drafted, num_accepted + 1)):
            accepted = 1.0 if k < num_accepted else 0.0
            self.rates[k] = self.decay * self.rates[k] + (1 - self.decay) * accepted


class AutoPlanner:
    """`--spec auto`: the draft length of every step, from the measured costs and the
    acceptance this request has shown so far. While plain decoding wins it drafts nothing,
    but probes with one token now and then, so a request that turns predictable (a quoted
    passage, code being copied) is noticed."""

    probe_every = 16  # autoregressive steps between probes

    def __init__(self, costs: StepCosts, drafter: str, max_gamma: int, costs_source: str = ""):
        self.costs, self.drafter, self.max_gamma = costs, drafter, max_gamma
        self.costs_source = costs_source  # where the costs came from, for reports
        self.tracker = AcceptanceTracker(max_gamma)
        self.chosen: dict[int, int] = {}  # γ -> steps
        self.since_speculating = 0
        self.can_pay = choose(costs, {drafter: [1.0]}, max_gamma).gamma > 0  # even at perfect acceptance?

    def gamma(self) -> int:
        gamma = choose(self.costs, {self.drafter: self.tracker.rates}, self.max_gamma).gamma
        self.since_speculating = 0 if gamma else self.since_speculating + 1
        if not gamma and self.can_pay and self.since_speculating >= self.probe_every:
            gamma, self.since_speculating = 1, 0
        self.chosen[gamma] = self.chosen.get(gamma, 0) + 1
        return gamma

    def observe(self, num_drafted: int, num_accepted: int) -> None:
        self.tracker.observe(num_drafted, num_accepted)


def linear_costs(max_gamma: int) -> StepCosts:
    """The cost model without a profile (the CPU): a step of T tokens costs T decodes, so
    speculation never pays and `auto` decodes plainly."""
    return StepCosts({t: float(t) for t in range(1, max_gamma + 2)}, {"ngram": 0.0})
