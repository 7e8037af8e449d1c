"""What a step costs: as `specsa profile` measured it (StepCosts), and as the running loop
shows it (LoopCosts), which is what the planner decides with.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from specsa.config import StepVariant


@dataclass(frozen=True)
class StepCosts:
    """Measured milliseconds at one (context, batch): a target step appending T tokens per
    sequence (T = 1 is a decode step), and each drafter's time per drafted token."""

    target_ms: dict[int, float]  # T -> ms
    draft_ms_per_token: dict[str, float]
    # T -> how the step runs where the profile found a better way than the defaults;
    # `target_ms` is the time with it
    variants: dict[int, StepVariant] = field(default_factory=dict)

    def step_ms(self, drafter: str | None, gamma: int) -> float:
        if gamma == 0:
            return self.target_ms[1]
        return gamma * self.draft_ms_per_token[drafter] + self.target_ms[gamma + 1]


def variants_by_shape(profile: dict[int, StepCosts]) -> dict[tuple[int, int], StepVariant]:
    """(batch bucket, T) -> how that step shape runs, from a profile by batch bucket, for
    the target's captured steps (`StepGraphs`)."""
    return {(batch, t): variant for batch, costs in profile.items() for t, variant in costs.variants.items()}


def linear_costs(max_gamma: int) -> StepCosts:
    """The cost model without a profile (the CPU): a step of T tokens costs T decodes, so
    speculation never pays and `auto` decodes plainly."""
    return StepCosts({t: float(t) for t in range(1, max_gamma + 2)}, {"ngram": 0.0})


class LoopCosts:
    """The profile's time for a step's shape, corrected by the wall time the loop's own
    steps have taken.

    The profile times CUDA-graph replays back to back. A step of the loop also drafts,
    copies the feed, accepts and books the result, and part of that host work overlaps the
    GPU's, so the loop pays more than the profile says, and not by the same amount at
    every width: SmolLM2 at 4K, batch 1 (H100) took 1.95 ms for 8- and for 9-token steps
    alike, where the profile has 1.54 and 1.72 ms. One overhead per kind of step (plain,
    speculative) kept the planner off the wider step for good. So the correction (wall
    time - profile) is learnt per width: a width taken is planned at its own recent median;
    one not taken yet at the correction of the widths taken beside it (interpolated). Until
    a width has been taken `settled_after` times it is assumed no dearer than the widest
    one taken below it, so that it is tried and measured, and one slow step (the same
    graph replays vary by 10% in the loop) does not rule it out for good; but that
    assumption never takes it below its profiled time, which the loop adds host work to
    and does not take from: a 17-token step assumed as cheap as a 2-token one looked worth
    trying at 5% acceptance, and kept being tried (1B 64K, up to 16 drafts, simulated:
    0.92× plain decoding; 1.00× with the profile as the floor). A width not taken for `forget_after` steps is
    forgotten, and so planned again as if never taken: the GPU's speed drifts by ~10% over
    seconds, and a width measured in a slow stretch and then left kept that stretch's
    correction against widths measured since (1B, 16K, H100: `auto` verified 7 drafts in
    119 of 129 steps where 8 paid 4% more)."""

    window = 16  # the recent steps a median is over
    settled_after = 3  # steps at a width before its own median may rank it dearer than a narrower one
    forget_after = 2 * window  # steps without a width before its correction is dropped

    def __init__(self, profile: dict[int, StepCosts], drafter: str):
        """`profile`: the measured costs by batch size; `drafter` names the per-token
        drafting cost in them that speculative steps pay."""
        self.profile = dict(sorted(profile.items()))
        self.drafter = drafter
        self.residuals: dict[int, deque[float]] = {}  # width -> wall - profiled ms of its recent steps
        self.corrections: dict[int, float] = {}  # width -> the median of its residuals, kept up to date
        self.step_ms: dict[int, list[float]] = {}  # width -> every step's wall time, for reports
        self.steps = 0  # steps observed
        self.last_taken: dict[int, int] = {}  # width -> the step it was last taken at

    def profiled(self, running: int) -> StepCosts:
        """The profile at the smallest measured batch holding `running` sequences (a
        captured step runs at its batch bucket); the largest measured if none does."""
        return next((costs for batch, costs in self.profile.items() if batch >= running), list(self.profile.values())[-1])

    def observe(self, width: int, running: int, ms: float) -> None:
        """A whole step verifying `width` drafts per sequence (0: plain) for `running`
        sequences took `ms` of wall time."""
        self._forget_stale()
        self.step_ms.setdefault(width, []).append(ms)
        residual = ms - self.profiled(running).step_ms(self.drafter if width else None, width)
        recent = self.residuals.setdefault(width, deque(maxlen=self.window))
        recent.append(residual)
        self.corrections[width] = statistics.median(recent)
        self.last_taken[width] = self.steps
        self.steps += 1

    def _forget_stale(self) -> None:
        """Drops the corrections of widths not taken in the last `forget_after` steps."""
        for width, step in list(self.last_taken.items()):
            if self.steps - step > self.forget_after:
                del self.residuals[width], self.corrections[width], self.last_taken[width]

    def corrections_ms(self) -> dict[int, float]:
        """Width -> the median of wall - profiled time over its recent steps. Medians, not
        means, so that one slow step (a garbage collection, a new shape) does not move them."""
        return dict(sorted(self.corrections.items()))

    def mean_step_ms(self) -> dict[int, float]:
        """Width -> the mean wall time of the steps taken at it."""
        return {width: sum(times) / len(times) for width, times in sorted(self.step_ms.items())}

    def current(self, running: int) -> StepCosts:
        """The costs to plan the next step for `running` sequences with. A kind of step not
        seen yet (plain, or any speculative width) is taken at its profiled cost:
        optimistic, so that it is tried. (Giving plain steps the speculative ones'
        correction could lock the planner out of them: at 5% acceptance a one-token draft
        then looks as cheap as a plain step, and the plain step's smaller cost is never
        seen.)"""
        profiled = self.profiled(running)
        taken = sorted(width for width in self.corrections if width)  # speculative widths measured
        target_ms, widest_taken_ms, below = {}, None, -1  # below: index in `taken` of the last one ≤ width
        for query_len, profiled_ms in sorted(profiled.target_ms.items()):
            width, ms = query_len - 1, profiled_ms
            while below + 1 < len(taken) and taken[below + 1] <= width:
                below += 1
            if width == 0 or width in self.corrections:
                ms += self.corrections.get(width, 0.0)
            else:
                ms += self._interpolated(width, taken[below] if below >= 0 else None,
                                         taken[below + 1] if below + 1 < len(taken) else None)  # fmt: skip
            steps = len(self.residuals.get(width, ()))
            if width and steps < self.settled_after and widest_taken_ms is not None:
                ms = min(ms, max(widest_taken_ms, profiled_ms))
            if width and steps:
                widest_taken_ms = ms
            target_ms[query_len] = ms
        return StepCosts(target_ms, profiled.draft_ms_per_token)

    def _interpolated(self, width: int, below: int | None, above: int | None) -> float:
        """The correction at an untaken width: linear between the nearest widths taken on
        either side, the nearest one's beyond the ends, 0 if none is."""
        if below is None or above is None:
            nearest = above if below is None else below
            return 0.0 if nearest is None else self.corrections[nearest]
        low, high = self.corrections[below], self.corrections[above]
        return low + (high - low) * (width - below) / (above - below)
