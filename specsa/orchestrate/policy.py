"""The cost model and the choice it drives: which drafter and how many tokens to draft,
maximising committed tokens per second (goodput), not acceptance.

A step that drafts γ tokens commits 1 + Σ_{k=1..γ} Π_{i≤k} a_i tokens on average, where
a_i is the probability that draft position i is accepted given that the ones before it
were; it costs the drafter's time for γ tokens plus one verification of γ+1 queries.
Autoregressive decoding is the γ = 0 step (one decode), so speculation is chosen only
when it beats it.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from specsa.config import StepVariant
from specsa.orchestrate.costs import LoopCosts, StepCosts, variants_by_shape


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


@dataclass
class AcceptanceTracker:
    """Acceptance rates by draft position, learnt from what a request shows. A position's
    rate starts at the prior as one pseudo-observation, is a running mean over
    its first observations and then a moving average (a memory of ~1/(1 - decay) of
    them): four acceptances already read 0.92 (the plain moving average: 0.84), which
    matters in a run of a few dozen steps. A position never reached takes the estimate of
    the one before it: otherwise positions past the draft length in use would keep the
    prior for ever, and a planner reading them would never try longer drafts."""

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
        estimates = []
        for k, (rate, reached) in enumerate(zip(self.rates, self.reached)):
            estimates.append(rate if reached or k == 0 else estimates[-1])
        return estimates


class AutoPlanner:
    """`--spec auto`: the draft length of every step, from the measured costs and what
    this request has shown so far: its acceptance (learnt apart for each kind of evidence
    a drafter gives), and the time its steps really take.

    A drafter whose proposals cost nothing (prompt lookup) is asked every step, and the
    planner picks how many of the drafted tokens to verify (`plan`). The drafts it leaves
    unverified (all of them, on a plain step) are compared with the tokens committed
    instead, which is what verification would have found (greedy; when sampling, a one-hot
    draft is accepted with the probability that the target samples it), so acceptance is
    still learnt while decoding plainly, and past the width in use. A model drafter beside
    it (`model_drafter`) is run on the steps where its drafts, at their learnt acceptance
    and drafting time, beat the free ones; its first draft is one token, which times it.

    A costly drafter alone gets its length before it drafts (`gamma`). While plain
    decoding wins, a costly drafter drafts nothing, but probes with one token now and
    then, so a request that turns predictable (a quoted passage, code being copied) is
    noticed."""

    probe_every = 16  # autoregressive steps between probes

    def __init__(self, costs: StepCosts | dict[int, StepCosts], drafter: str, max_gamma: int, costs_source: str = "",
                 calibrate: bool = True, model_drafter: bool = False):  # fmt: skip
        """`costs`: the profile at one batch size, or by batch size (the planner then
        uses the costs of the number of sequences still running). `calibrate`: correct
        them by the wall time of the loop's steps (`LoopCosts`); only for costs in
        milliseconds (not `linear_costs`, whose unit is a decode step). `model_drafter`:
        weigh a model drafter (the engine's `LookupAndModel`) against the free `drafter`
        at every step; its drafting time is learnt from the loop (`observe_model_drafting`)."""
        self.drafter, self.max_gamma, self.calibrate = drafter, max_gamma, calibrate
        self.costs_source = costs_source  # where the costs came from, for reports
        profile = costs if isinstance(costs, dict) else {1: costs}
        self.loop = LoopCosts(profile, drafter)
        self.model_drafter = model_drafter
        self.model_tracker = AcceptanceTracker(max_gamma)
        self.model_ms_per_token: deque[float] = deque(maxlen=LoopCosts.window)  # its recent drafting times
        self.model_chosen: dict[int, int] = {}  # γ -> steps drafted by the model drafter
        self.drafting_with_model = False  # the step being run drafts with the model drafter
        self.model_drafting_ms = 0.0  # … and took this long to draft
        self.trackers: dict[int | None, AcceptanceTracker] = {}  # evidence -> acceptance seen with it
        self.pooled = AcceptanceTracker(max_gamma)  # every evidence together: what a rare one leans on
        # slot -> (position, drafts, evidence, verified) of its last proposal with drafts left unverified
        self.unverified: dict[int, tuple[int, list[int], int | None, int]] = {}
        self.chosen: dict[int, int] = {}  # γ -> steps
        self.since_speculating = 0
        self.can_pay = choose(self.loop.profiled(1), {drafter: [1.0]}, max_gamma).gamma > 0  # even at perfect acceptance?

    @property
    def step_variants(self) -> dict[tuple[int, int], StepVariant]:
        """How the target's captured steps run, by (batch bucket, T), as profiled."""
        return variants_by_shape(self.loop.profile)

    def report(self) -> dict:
        """What the planner chose and learnt, for `--json` and bench rows."""
        return {"steps_by_gamma": self.chosen, "draft_model_steps_by_gamma": self.model_chosen,
                "costs": self.costs_source, "mean_step_ms_by_gamma": self.loop.mean_step_ms(),
                "learnt_correction_ms_by_gamma": self.loop.corrections_ms(),
                "step_variant_by_batch_and_T": {f"{b}:{t}": str(v) for (b, t), v in self.step_variants.items()}}  # fmt: skip

    def _costs(self, running: int) -> StepCosts:
        return self.loop.current(running) if self.calibrate else self.loop.profiled(running)

    def _tracker(self, evidence: int | None) -> AcceptanceTracker:
        if evidence not in self.trackers:
            self.trackers[evidence] = AcceptanceTracker(self.max_gamma)
        return self.trackers[evidence]

    def gamma(self, running: int = 1) -> int:
        """The draft length of the next step for `running` sequences, chosen before drafting."""
        gamma = choose(self._costs(running), {self.drafter: self._tracker(None).estimate()}, self.max_gamma).gamma
        if self._probe_due(speculating=gamma > 0):
            gamma = 1
        self.chosen[gamma] = self.chosen.get(gamma, 0) + 1
        return gamma

    def _probe_due(self, speculating: bool) -> bool:
        """Counts the plain steps in a row; True (and restarts) at every `probe_every`-th,
        if speculation could pay at all."""
        self.since_speculating = 0 if speculating else self.since_speculating + 1
        if self.can_pay and self.since_speculating >= self.probe_every:
            self.since_speculating = 0
            return True
        return False

    def plan(self, slots: list[int], contexts: list[list[int]], drafts: list[list[int]],
             evidence: list[int] | None) -> tuple[bool, int]:  # fmt: skip
        """The next step, given each sequence's free drafts: (False, w) verifies the first
        w of them (w = 0: decode plainly), (True, γ) drafts γ tokens with the model
        drafter instead. The choice with the most expected committed tokens per
        millisecond for the batch (sequences with fewer drafts are padded to the width).
        First settles the drafts left unverified before against `contexts` (prompt +
        committed tokens)."""
        for slot, context in zip(slots, contexts):
            self._settle(slot, context)
        costs = self._costs(len(slots))
        width, goodput = self._best_width(costs, len(slots), drafts, evidence)
        use_model, length = False, width
        if self.model_drafter:
            timed = bool(self.model_ms_per_token)  # untimed, it is tried with one token, taken as free
            per_token = statistics.median(self.model_ms_per_token) if timed else 0.0
            committed = committed_by_length(self.model_tracker.estimate(), self.max_gamma)
            for gamma in range(1, self.max_gamma + 1 if timed else 2):
                if gamma + 1 in costs.target_ms:
                    model_goodput = len(slots) * committed[gamma] / (costs.target_ms[gamma + 1] + gamma * per_token)
                    if model_goodput > goodput:
                        use_model, length, goodput = True, gamma, model_goodput
            if self._probe_due(speculating=length > 0):
                use_model, length = True, 1
        verified = 0 if use_model else length
        for slot, context, d, e in zip(slots, contexts, drafts, evidence or [None] * len(drafts)):
            if len(d) > verified:
                self.unverified[slot] = (len(context), d, e, verified)
        self.drafting_with_model = use_model
        counts = self.model_chosen if use_model else self.chosen
        counts[length] = counts.get(length, 0) + 1
        return use_model, length

    def _best_width(self, costs: StepCosts, running: int, drafts: list[list[int]],
                    evidence: list[int] | None) -> tuple[int, float]:  # fmt: skip
        """(width, expected committed tokens per ms) of the best way to verify free drafts."""
        plain = running / costs.step_ms(None, 0)
        longest = max(map(len, drafts), default=0)
        if not longest:  # nothing to verify
            return 0, plain
        evidence = evidence or [None] * len(drafts)
        rates = {e: self._rates(e) for e in set(evidence)}
        by_kind: dict[tuple, list[float]] = {}  # (evidence, drafts) -> width -> expected committed
        for d, e in zip(drafts, evidence):
            if (e, len(d)) not in by_kind:
                own = committed_by_length(rates[e], len(d))
                by_kind[e, len(d)] = own + own[-1:] * (longest - len(d))
        committed = [sum(column) for column in zip(*(by_kind[e, len(d)] for d, e in zip(drafts, evidence)))]
        best, best_goodput = 0, plain
        for width in range(1, longest + 1):
            if width + 1 not in costs.target_ms:
                continue
            goodput = committed[width] / costs.step_ms(self.drafter, width)
            if goodput > best_goodput:
                best, best_goodput = width, goodput
        return best, best_goodput

    def _settle(self, slot: int, context: list[int]) -> None:
        """Drafts left unverified are settled by the tokens committed after them: they show
        which of them verification would have accepted, had every draft before them been
        (positions past the committed tokens are left unseen, not counted as rejected)."""
        if slot not in self.unverified:
            return
        position, drafts, evidence, verified = self.unverified.pop(slot)
        committed = context[position : position + len(drafts)]
        matched = 0
        while matched < len(committed) and drafts[matched] == committed[matched]:
            matched += 1
        if matched >= verified:  # else a verified draft was rejected, and the loop has said so
            num_drafted = len(drafts) if matched < len(committed) else matched
            self._observe(evidence, num_drafted, matched, first=verified)

    def _observe(self, evidence: int | None, num_drafted: int, num_accepted: int, first: int = 0) -> None:
        self._tracker(evidence).observe(num_drafted, num_accepted, first)
        self.pooled.observe(num_drafted, num_accepted, first)

    def _rates(self, evidence: int | None) -> list[float]:
        """The acceptance by position of drafts with this evidence. Each position weighs the
        estimate pooled over all evidence as one observation of its own, so a match length
        seen a few times in a request is not judged on those alone (in replays of 256-token
        generations, two- and three-token matches were declined where they would have
        paid; the lowest `auto` / best fixed over 15 generations went 0.947 -> 0.961)."""
        tracker = self._tracker(evidence)
        pooled = self.pooled.estimate()
        return [(n * own + shared) / (n + 1) for own, n, shared in zip(tracker.estimate(), tracker.reached, pooled)]

    def observe(self, num_drafted: int, num_accepted: int, evidence: int | None = None) -> None:
        if self.drafting_with_model:
            self.model_tracker.observe(num_drafted, num_accepted)
        else:
            self._observe(evidence, num_drafted, num_accepted)

    def observe_model_drafting(self, num_tokens: int, ms: float) -> None:
        """The model drafter drafted `num_tokens` per sequence in `ms` this step."""
        self.model_ms_per_token.append(ms / num_tokens)
        self.model_drafting_ms = ms

    def observe_step(self, gamma: int, ms: float, running: int = 1) -> None:
        """A whole step that drafted γ tokens for each of `running` sequences took `ms`;
        the model drafter's part is left out (its time per token is learnt apart)."""
        self.loop.observe(gamma, running, ms - self.model_drafting_ms if self.drafting_with_model else ms)
