"""`--spec auto`: the draft length of every step, from the measured costs (`costs.py`) and
what the request has shown so far, by the goodput model of `policy.py`."""

from __future__ import annotations

import statistics
from collections import deque

from specsa.config import StepVariant
from specsa.orchestrate.costs import LoopCosts, StepCosts, variants_by_shape
from specsa.orchestrate.policy import AcceptanceTracker, choose, committed_by_length
from specsa.spec.drafter import matched_prefix

MODEL = "model"  # the key of the model drafter's acceptance among the lookup evidence


class AutoPlanner:
    """Plans each step from the request's acceptance (learnt apart for each kind of
    evidence a drafter gives) and the time its steps really take.

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
    noticed.

    What the loop reports (`observe…`) is queued and learnt from in `book_steps`, which
    the engine calls while the GPU runs a step, so that the host work between two steps,
    while the GPU waits, is only the choice itself: planning one step behind, with what
    the steps before the last one showed, lost nothing in replays of 24 generations."""

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
        self.model_ms_per_token: deque[float] = deque(maxlen=LoopCosts.window)  # its recent drafting times
        self.model_chosen: dict[int, int] = {}  # γ -> steps drafted by the model drafter
        self.drafting_with_model = False  # the step being run drafts with the model drafter
        self.model_drafting_ms = 0.0  # … and took this long to draft
        # evidence (MODEL: the model drafter's) -> acceptance seen with it
        self.trackers: dict[int | str | None, AcceptanceTracker] = {}
        if model_drafter:
            self.trackers[MODEL] = AcceptanceTracker(max_gamma)
        self.pooled = AcceptanceTracker(max_gamma)  # all lookup evidence together: what a rare one leans on
        # slot -> (position, drafts, evidence, verified) of its last proposal with drafts left unverified
        self.unverified: dict[int, tuple[int, list[int], int | None, int]] = {}
        self.chosen: dict[int, int] = {}  # γ -> steps
        self.since_speculating = 0
        # queued for `book_steps`: (evidence, num_drafted, num_accepted, first) and (width, running, ms)
        self.unbooked_acceptance: list[tuple[int | str | None, int, int, int]] = []
        self.unbooked_steps: list[tuple[int, int, float]] = []
        self.booked_since_plan = False
        # what the next step is planned with, as of the last booking
        self.running = 0  # … for this many sequences:
        self.costs = StepCosts({}, {})
        self.step_ms_by_width: list[float] = []  # width (0: plain) -> ms
        self.committed_by_evidence: dict[int | str | None, list[float]] = {}  # -> width -> mean committed
        self.committed_unseen: list[float] = []  # … for evidence not seen yet: the pooled estimate's
        self.can_pay = choose(self.loop.profiled(1), {drafter: [1.0]}, max_gamma).gamma > 0  # even at perfect acceptance?

    @property
    def step_variants(self) -> dict[tuple[int, int], StepVariant]:
        """How the target's captured steps run, by (batch bucket, T), as profiled."""
        return variants_by_shape(self.loop.profile)

    def report(self) -> dict:
        """What the planner chose and learnt, for `--json` and bench rows."""
        self.book_steps(max(self.running, 1))
        return {"steps_by_gamma": self.chosen, "draft_model_steps_by_gamma": self.model_chosen,
                "costs": self.costs_source, "mean_step_ms_by_gamma": self.loop.mean_step_ms(),
                "learnt_correction_ms_by_gamma": self.loop.corrections_ms(),
                "step_variant_by_batch_and_T": {f"{b}:{t}": str(v) for (b, t), v in self.step_variants.items()}}  # fmt: skip

    # --- what the loop reports, and learning from it

    def observe(self, num_drafted: int, num_accepted: int, evidence: int | None = None) -> None:
        """A sequence's drafts in the step just verified: how many were accepted."""
        self.unbooked_acceptance.append((MODEL if self.drafting_with_model else evidence, num_drafted, num_accepted, 0))

    def observe_model_drafting(self, num_tokens: int, ms: float) -> None:
        """The model drafter drafted `num_tokens` per sequence in `ms` this step."""
        self.model_ms_per_token.append(ms / num_tokens)
        self.model_drafting_ms = ms

    def observe_step(self, gamma: int, ms: float, running: int = 1) -> None:
        """A whole step that drafted γ tokens for each of `running` sequences took `ms`;
        the model drafter's part is left out (its time per token is learnt apart)."""
        self.unbooked_steps.append((gamma, running, ms - self.model_drafting_ms if self.drafting_with_model else ms))

    def book_steps(self, running: int) -> None:
        """Learns from what was observed since the last booking, and prepares the tables
        the next step for `running` sequences is planned with (~85 µs on a 2-core CPU)."""
        for evidence, num_drafted, num_accepted, first in self.unbooked_acceptance:
            self._tracker(evidence).observe(num_drafted, num_accepted, first)
            if evidence != MODEL:
                self.pooled.observe(num_drafted, num_accepted, first)
        for width, steps_running, ms in self.unbooked_steps:
            self.loop.observe(width, steps_running, ms)
        self.unbooked_acceptance.clear()
        self.unbooked_steps.clear()
        self.running = running
        self.costs = self.loop.current(running) if self.calibrate else self.loop.profiled(running)
        self.step_ms_by_width = [self.costs.step_ms(None, 0)] + [
            self.costs.step_ms(self.drafter, width) if width + 1 in self.costs.target_ms else float("inf")
            for width in range(1, self.max_gamma + 1)
        ]
        pooled = self.pooled.estimate()
        self.committed_unseen = committed_by_length(pooled, self.max_gamma)
        self.committed_by_evidence = {}
        for evidence, tracker in self.trackers.items():
            rates = tracker.estimate() if evidence == MODEL else self._rates(evidence, pooled)
            self.committed_by_evidence[evidence] = committed_by_length(rates, self.max_gamma)
        self.booked_since_plan = True

    def _tracker(self, evidence: int | str | None) -> AcceptanceTracker:
        if evidence not in self.trackers:
            self.trackers[evidence] = AcceptanceTracker(self.max_gamma)
        return self.trackers[evidence]

    def _rates(self, evidence: int | None, pooled: list[float]) -> list[float]:
        """The acceptance by position of drafts with this evidence. Each position weighs the
        estimate pooled over all evidence as one observation of its own, so a match length
        seen a few times in a request is not judged on those alone (in replays of 256-token
        generations, two- and three-token matches were declined where they would have
        paid; the lowest `auto` / best fixed over 15 generations went 0.947 -> 0.961)."""
        tracker = self.trackers[evidence]
        return [(n * own + shared) / (n + 1) for own, n, shared in zip(tracker.estimate(), tracker.reached, pooled)]

    def _settle(self, slot: int, context: list[int]) -> None:
        """Drafts left unverified are settled by the tokens committed after them: they show
        which of them verification would have accepted, had every draft before them been
        (positions past the committed tokens are left unseen, not counted as rejected)."""
        if slot not in self.unverified:
            return
        position, drafts, evidence, verified = self.unverified.pop(slot)
        committed = context[position : position + len(drafts)]
        matched = matched_prefix(drafts, committed)
        if matched >= verified:  # else a verified draft was rejected, and the loop has said so
            num_drafted = len(drafts) if matched < len(committed) else matched
            self.unbooked_acceptance.append((evidence, num_drafted, matched, verified))

    # --- the choice

    def _prepared(self, running: int) -> None:
        """Books what the loop observed unless the engine did since the last plan (then
        the tables may lack only the step just taken)."""
        if not self.booked_since_plan or self.running != running:
            self.book_steps(running)
        self.booked_since_plan = False

    def gamma(self, running: int = 1) -> int:
        """The draft length of the next step for `running` sequences, chosen before drafting.
        Plain decoding only once the drafter's first position has been judged
        `settled_after` times: plain steps teach a costly drafter nothing, so two early
        rejections (and one slow first step) stopped the oracle for 16 steps, 5% of a
        1024-token run (1B, 16K, H100)."""
        self._prepared(running)
        committed = self.committed_by_evidence.get(None, self.committed_unseen)  # its drafts carry no evidence
        judged = not self.can_pay or (None in self.trackers and self.trackers[None].reached[0] >= LoopCosts.settled_after)
        gamma = max(range(0 if judged else 1, self.max_gamma + 1), key=lambda g: committed[g] / self.step_ms_by_width[g])
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
        self._prepared(len(slots))
        evidence = evidence or [None] * len(drafts)
        width, goodput = self._best_width(drafts, evidence)
        use_model, length = False, width
        if self.model_drafter:
            timed = bool(self.model_ms_per_token)  # untimed, it is tried with one token, taken as free
            per_token = statistics.median(self.model_ms_per_token) if timed else 0.0
            committed = self.committed_by_evidence[MODEL]
            for gamma in range(1, self.max_gamma + 1 if timed else 2):
                if gamma + 1 in self.costs.target_ms:
                    model_goodput = len(slots) * committed[gamma] / (self.costs.target_ms[gamma + 1] + gamma * per_token)
                    if model_goodput > goodput:
                        use_model, length, goodput = True, gamma, model_goodput
            if self._probe_due(speculating=length > 0):
                use_model, length = True, 1
        verified = 0 if use_model else length
        for slot, context, d, e in zip(slots, contexts, drafts, evidence):
            if len(d) > verified:
                self.unverified[slot] = (len(context), d, e, verified)
        self.drafting_with_model = use_model
        counts = self.model_chosen if use_model else self.chosen
        counts[length] = counts.get(length, 0) + 1
        return use_model, length

    def _best_width(self, drafts: list[list[int]], evidence: list[int | None]) -> tuple[int, float]:
        """(width, expected committed tokens per ms) of the best way to verify free drafts:
        a sequence with d drafts commits what d drafts of its evidence commit, at any width
        past d."""
        plain = len(drafts) / self.step_ms_by_width[0]
        longest = max(map(len, drafts), default=0)
        committed = [0.0] * (longest + 1)  # width -> expected committed by the batch
        for d, e in zip(drafts, evidence):
            own = self.committed_by_evidence.get(e, self.committed_unseen)
            for width in range(longest + 1):
                committed[width] += own[min(width, len(d))]
        best, best_goodput = 0, plain
        for width in range(1, longest + 1):
            goodput = committed[width] / self.step_ms_by_width[width]
            if goodput > best_goodput:
                best, best_goodput = width, goodput
        return best, best_goodput
