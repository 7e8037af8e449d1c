"""The orchestration policy on synthetic profiles: it maximises goodput, falls back to
autoregressive decoding when speculation does not pay, and learns acceptance."""

from __future__ import annotations

import random

import pytest

from specsa.config import StepVariant
from specsa.orchestrate.costs import LoopCosts, StepCosts, linear_costs
from specsa.orchestrate.planner import AutoPlanner
from specsa.orchestrate.policy import LATER_PRIOR, AcceptanceTracker, choose, expected_committed

# A GPU at batch 1: verifying up to 9 tokens costs little more than one decode step.
FLAT = StepCosts({1: 3.0, 2: 3.1, 3: 3.2, 5: 3.4, 9: 4.0}, {"ngram": 0.01, "self": 0.8})


def verified(planner: AutoPlanner, *args, **kwargs) -> int:
    """The width of free drafts the planner verifies (it has no model drafter to pick)."""
    use_model, width = planner.plan(*args, **kwargs)
    assert not use_model
    return width


def test_expected_committed():
    assert expected_committed([1.0], 4) == 5.0
    assert expected_committed([0.5], 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_committed([0.5, 0.0], 3) == 1.5
    assert expected_committed([], 3) == 1.0


def test_picks_the_cheaper_strategy_per_committed_token():
    choice = choose(FLAT, {"ngram": [0.8], "self": [0.9]}, max_gamma=8)
    assert (choice.drafter, choice.gamma) == ("ngram", 8)  # self's draft cost outweighs its better rate
    # with a free self drafter, its higher acceptance wins
    free = StepCosts(FLAT.target_ms, {"ngram": 0.01, "self": 0.0})
    assert choose(free, {"ngram": [0.8], "self": [0.9]}, max_gamma=8).drafter == "self"


def test_falls_back_to_autoregressive_when_acceptance_is_low():
    choice = choose(FLAT, {"ngram": [0.02]}, max_gamma=8)
    assert (choice.drafter, choice.gamma) == (None, 0)
    assert choice.tokens_per_ms == pytest.approx(1 / 3.0)


def test_expensive_verification_shortens_the_draft():
    # a GPU at large batch: every extra verified token costs almost a decode step
    steep = StepCosts({1: 3.0, 2: 5.5, 3: 8.0, 5: 13.0, 9: 23.0}, {"ngram": 0.0})
    assert choose(steep, {"ngram": [0.9]}, max_gamma=8).gamma == 1


def test_only_the_drafters_given_are_considered():
    """The caller passes only strategies inside the user's precision class."""
    assert choose(FLAT, {}, max_gamma=8).drafter is None


def test_tracker_learns_rates_by_position():
    """A position never reached takes the estimate of the one before it, weighed against
    `LATER_PRIOR` as the first position's judgements against one."""
    tracker = AcceptanceTracker(max_gamma=3, prior=0.5, decay=0.5)
    assert tracker.estimate() == [0.5, LATER_PRIOR, LATER_PRIOR]  # nothing seen: drafts past the first hold
    tracker.observe(num_drafted=3, num_accepted=0)  # position 0 rejected (0.5 -> 0.25), 1 and 2 not reached
    _, second, third = tracker.estimate()
    assert second == pytest.approx((0.25 + LATER_PRIOR) / 2)  # one judgement of the first against the prior
    assert third == pytest.approx((second + LATER_PRIOR) / 2)
    for _ in range(20):
        tracker.observe(num_drafted=3, num_accepted=1)  # position 0 accepted, 1 rejected, 2 not reached
    estimate = tracker.estimate()
    assert estimate[0] == pytest.approx(1.0, abs=1e-4)
    assert estimate[1] == pytest.approx(0.0, abs=1e-4)
    assert estimate[2] == pytest.approx(LATER_PRIOR / 22, abs=1e-4)  # 21 judgements of the first against the prior
    assert tracker.rates[2] == 0.5


def test_planner_tries_longer_drafts_than_it_has_used():
    """Acceptance 1 at the first three positions: the positions never reached are not left
    at the prior, so the planner goes past γ = 3."""
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(10):
        planner.observe(num_drafted=3, num_accepted=3)
    assert planner.gamma() == 8


def test_what_the_engine_books_while_the_gpu_runs_is_planned_with_one_step_late():
    """The engine books a step's observations while the next step runs, so the next plan
    may lack the step just taken; one plan later nothing is left unbooked."""
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(10):
        planner.observe(num_drafted=8, num_accepted=8)
    planner.book_steps(1)  # while the step below runs
    for _ in range(30):
        planner.observe(num_drafted=8, num_accepted=0)  # what that step showed: acceptance collapses
    assert planner.gamma() == 8  # planned with the booking
    assert planner.gamma() == 0  # no booking since the last plan: it books now

def test_auto_planner_speculates_where_it_pays_and_stays_lossless(tiny_llama):
    """Engine + planner on a repetitive prompt: with flat (GPU-like) costs it drafts, with
    the no-profile costs it decodes plainly; both give the autoregressive tokens."""
    import torch

    from specsa.generate import generate
    from specsa.model.loader import load_model
    from specsa.orchestrate.costs import linear_costs
    from specsa.orchestrate.planner import AutoPlanner
    from specsa.sampling import SamplingParams
    from specsa.spec.engine import generate_speculative
    from specsa.spec.ngram import NgramDrafter

    model = load_model(str(tiny_llama))
    motif = torch.randint(2, 128, (9,), generator=torch.Generator().manual_seed(3)).tolist()
    prompts = [motif * 6]
    params = SamplingParams(max_new_tokens=24)
    expected = [g.token_ids for g in generate(model, prompts, params, frozenset())]
    flat = StepCosts({t: 1.0 + 0.01 * t for t in range(1, 6)}, {"ngram": 0.0})
    for costs, speculates in ((flat, True), (linear_costs(4), False)):
        planner = AutoPlanner(costs, "ngram", 4, calibrate=costs is flat)
        results = generate_speculative(model, prompts, params, frozenset(), lambda c, g: NgramDrafter(1, 3), 4,
                                       planner=planner)  # fmt: skip
        assert [r.token_ids for r in results] == expected
        assert (sum(n for gamma, n in planner.chosen.items() if gamma > 0) > 0) == speculates


def test_a_costly_drafter_is_not_stopped_before_its_first_position_is_judged():
    """Plain steps teach a costly drafter nothing: two rejections must not stop it."""
    planner = AutoPlanner(FLAT, "self", 8)
    for _ in range(2):
        planner.observe(num_drafted=8, num_accepted=0)
    assert planner.gamma() > 0
    for _ in range(2):
        planner.observe(num_drafted=8, num_accepted=0)
    assert planner.gamma() == 0
    assert AutoPlanner(linear_costs(8), "ngram", 8).gamma() == 0  # where it can never pay, not even at first


def test_auto_planner_probes_after_a_run_of_plain_steps():
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(30):
        planner.observe(num_drafted=8, num_accepted=0)  # acceptance collapses: plain decoding wins
    gammas = [planner.gamma() for _ in range(2 * AutoPlanner.probe_every)]
    assert gammas.count(1) == 2 and set(gammas) == {0, 1}


def test_profiles_are_saved_and_reused(tiny_llama, tmp_path, monkeypatch):
    """A re-run measures only the points the saved profile lacks."""
    from specsa.model.loader import load_model
    from specsa.orchestrate import profile

    monkeypatch.setenv("SPECSA_CACHE", str(tmp_path))
    measured = []

    def fake_measure(model, context, batch, max_gamma):
        measured.append((context, batch))
        return StepCosts({t: float(t) for t in range(1, max_gamma + 2)}, {"ngram": 0.1}, {5: StepVariant(2, exact=True)})

    monkeypatch.setattr(profile, "measure_step_costs", fake_measure)
    model = load_model(str(tiny_llama))
    first = profile.load_or_measure(model, [3000, 9000], [1], max_gamma=4, progress=False)
    assert sorted(measured) == [(4096, 1), (16384, 1)] and first[(4096, 1)].target_ms[5] == 5.0
    again = profile.load_or_measure(model, [4000], [1], max_gamma=4, progress=False)
    assert len(measured) == 2  # reused
    assert again[(4096, 1)].variants == {5: StepVariant(2, exact=True)}  # with the variant each step was fastest as
    # fixed strategies run their steps as the saved profile found fastest, measuring nothing
    assert profile.saved_variants(model, 4000, batch=3) == {(1, 5): StepVariant(2, exact=True)}  # buckets 1, 2, 4: 1 saved
    assert len(measured) == 2
    profile.load_or_measure(model, [4000], [1], max_gamma=8, progress=False)
    assert measured[-1] == (4096, 1)  # a longer draft needs more step sizes: measured again
    monkeypatch.setattr(profile, "_code_digest", lambda: "other kernels")
    profile.load_or_measure(model, [4000], [1], max_gamma=4, progress=False)
    assert len(measured) == 4  # another specsa's costs are not this one's
    assert profile.context_bucket(1) == 4096 and profile.context_bucket(4097) == 8192
    assert profile.batch_bucket(1) == 1 and profile.batch_bucket(6) == 8  # a batch of 6 runs as 8


def test_auto_planner_learns_the_loops_overhead_and_drafts_longer():
    """Whole steps that take 10 ms more than profiled (host work the graph replays leave
    out) make every step dearer alike, so longer drafts pay: γ 4 -> 8 at acceptance 0.7."""
    assert choose(FLAT, {"ngram": [0.7]}, 8).gamma == 4
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(30):
        planner.observe_step(0, FLAT.step_ms(None, 0) + 10.0)
        planner.observe_step(4, FLAT.step_ms("ngram", 4) + 10.0)
    planner.book_steps(1)
    assert planner.loop.corrections_ms() == pytest.approx({0: 10.0, 4: 10.0})
    assert choose(planner.loop.current(1), {"ngram": [0.7]}, 8).gamma == 8


def test_a_wider_step_not_taken_yet_is_tried_and_kept_where_the_loop_makes_it_no_dearer():
    """SmolLM2 at 4K on the H100: the profile has a 9-token step 12% dearer than an
    8-token one, but in the host-bound loop both take 1.95 ms. At acceptance 0.85 the
    wider step commits 5.6% more, so it wins, which the planner finds by trying it."""
    profile = StepCosts({1: 1.32, 8: 1.54, 9: 1.72}, {"ngram": 0.0})
    wall_ms = {0: 1.6, 7: 1.95, 8: 1.95}
    rates = [0.85] * 8
    assert choose(profile, {"ngram": rates}, 8).gamma == 7
    planner = AutoPlanner(profile, "ngram", 8)
    widths = []
    for _ in range(12):
        widths.append(choose(planner.loop.current(1), {"ngram": rates}, 8).gamma)
        planner.observe_step(widths[-1], wall_ms[widths[-1]])
        planner.book_steps(1)
    assert widths[:2] == [7, 8] and widths[-4:] == [8] * 4
    # where the wider step really is dearer, three tries settle it
    planner = AutoPlanner(profile, "ngram", 8)
    for width in (7, 8, 8):
        planner.observe_step(width, profile.target_ms[width + 1] + 0.4)
    planner.book_steps(1)
    assert choose(planner.loop.current(1), {"ngram": rates}, 8).gamma == 8
    planner.observe_step(8, profile.target_ms[9] + 0.4)
    planner.book_steps(1)
    assert [choose(planner.loop.current(1), {"ngram": rates}, 8).gamma for _ in range(3)] == [7] * 3


def test_captured_steps_take_the_variant_profiled_for_their_shape():
    by_batch = {1: StepCosts(FLAT.target_ms, FLAT.draft_ms_per_token, {9: StepVariant(4)}),
                8: StepCosts(FLAT.target_ms, FLAT.draft_ms_per_token, {5: StepVariant(2), 9: StepVariant(8, True)})}  # fmt: skip
    planner = AutoPlanner(by_batch, "ngram", 8)
    assert planner.step_variants == {(1, 9): StepVariant(4), (8, 5): StepVariant(2), (8, 9): StepVariant(8, True)}
    assert planner.report()["step_variant_by_batch_and_T"] == {"1:9": "C=4", "8:5": "C=2", "8:9": "C=8, exact"}


def test_the_profile_keeps_the_fastest_variant_and_exact_selection_where_it_is_as_fast():
    """Under an approximate class, an approximation within `EXACT_MARGIN` of exact
    selection's time is not worth its error; a query group is taken for any gain."""
    from specsa.orchestrate.profile import EXACT_MARGIN, fastest_variants

    default, grouped = StepVariant(), StepVariant(4)
    times = {(1, default): [1.0, 1.1, 1.0], (1, StepVariant(exact=True)): [1.01] * 3,
             (5, default): [2.0] * 3, (5, grouped): [1.8, 9.0, 1.8], (5, StepVariant(4, True)): [1.9] * 3,
             (9, default): [3.0] * 3, (9, StepVariant(exact=True)): [3.0 * (1 + 2 * EXACT_MARGIN)] * 3}  # fmt: skip
    target_ms, variants = fastest_variants(times, approximate=True)
    assert variants == {1: StepVariant(exact=True), 5: grouped}  # 1.8 beats exact's 1.9 by more than the margin
    assert target_ms == {1: 1.01, 5: 1.8, 9: 3.0}
    exact_class = {key: ms for key, ms in times.items() if not key[1].exact}
    assert fastest_variants(exact_class, approximate=False) == ({1: 1.0, 5: 1.8, 9: 3.0}, {5: grouped})


def test_costs_follow_the_number_of_sequences_still_running():
    """A profile by batch: 3 running sequences run at batch bucket 4, and a step's wall
    time is compared with the profile at the batch it ran at."""
    by_batch = {1: FLAT, 4: StepCosts({t: 2 * ms for t, ms in FLAT.target_ms.items()}, FLAT.draft_ms_per_token),
                8: StepCosts({t: 4 * ms for t, ms in FLAT.target_ms.items()}, FLAT.draft_ms_per_token)}
    planner = AutoPlanner(by_batch, "ngram", 8)
    assert planner.loop.profiled(3) is by_batch[4] and planner.loop.profiled(16) is by_batch[8]
    planner.observe_step(0, 2 * 3.0 + 0.5, running=3)
    planner.book_steps(3)
    assert planner.loop.corrections_ms() == pytest.approx({0: 0.5})
    assert planner.loop.current(1).target_ms[1] == pytest.approx(3.5)


def test_a_width_left_for_long_is_measured_again():
    """A width measured in a slow stretch of the GPU and then left keeps that stretch's
    correction against widths measured since, unless it is forgotten and tried again."""
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(3):
        planner.observe_step(8, FLAT.step_ms("ngram", 8) + 1.0)  # a slow stretch
    for _ in range(LoopCosts.forget_after):
        planner.observe_step(4, FLAT.step_ms("ngram", 4))
    planner.book_steps(1)
    assert planner.loop.corrections_ms() == pytest.approx({4: 0.0, 8: 1.0})  # not yet
    planner.observe_step(4, FLAT.step_ms("ngram", 4))
    planner.book_steps(1)
    assert planner.loop.corrections_ms() == pytest.approx({4: 0.0})
    assert planner.loop.current(1).target_ms[9] == pytest.approx(FLAT.target_ms[9])  # its profiled time: tried again


def test_widths_not_taken_yet_are_planned_from_the_widths_beside_them():
    """Plain steps skip drafting and acceptance, so their lower overhead must not make
    speculation look cheap; a width not taken yet gets the correction of the widths taken
    on either side of it, interpolated, but no more than the cost of the widest taken
    below it; a median keeps one slow step from counting."""
    planner = AutoPlanner(FLAT, "ngram", 8)
    planner.observe_step(4, FLAT.step_ms("ngram", 4) + 100.0)  # a one-off slow step
    for _ in range(5):
        planner.observe_step(0, FLAT.step_ms(None, 0) + 0.1)
        planner.observe_step(1, FLAT.step_ms("ngram", 1) + 2.0)
        planner.observe_step(4, FLAT.step_ms("ngram", 4) + 1.0)
    planner.book_steps(1)
    assert planner.loop.corrections_ms() == pytest.approx({0: 0.1, 1: 2.0, 4: 1.0})
    costs = planner.loop.current(1)
    assert costs.target_ms[1] == pytest.approx(3.0 + 0.1)
    assert costs.target_ms[3] == pytest.approx(3.2 + 2.0 - 1.0 / 3)  # width 2: interpolated
    assert costs.target_ms[9] == pytest.approx(3.4 + 1.0)  # width 8: no dearer than width 4 (4.0 + 1.0 interpolated)


def test_at_5_percent_acceptance_drafts_of_up_to_16_lose_little_to_plain_decoding():
    """A width not settled is planned no dearer than the widest taken below it, but no
    cheaper than its profiled time: as cheap as the one-token probes, 16-token drafts
    looked worth trying whenever an acceptance raised the estimate, and were tried again
    each time they were forgotten (9% slower than plain decoding here)."""
    profile = StepCosts({t: 2.0 + 0.05 * (t - 1) for t in range(1, 18)}, {"oracle": 0.0})
    rng = random.Random(0)
    ms, committed = 0.0, 0
    for _ in range(5):  # requests
        planner = AutoPlanner(profile, "oracle", 16)
        for _ in range(300):
            width = planner.gamma()
            accepted = 0
            while accepted < width and rng.random() < 0.05:
                accepted += 1
            if width:
                planner.observe(width, accepted)
            step_ms = (profile.step_ms("oracle", width) + 0.03 * width) * rng.gauss(1, 0.08)  # host work, noise
            planner.observe_step(width, step_ms)
            ms, committed = ms + step_ms, committed + accepted + 1
    assert ms / committed < 1.03 * profile.step_ms(None, 0)


def test_a_kind_of_step_not_seen_yet_is_tried():
    """Speculative steps have shown a large overhead and plain ones none yet: at 5%
    acceptance the planner must try a plain step (and so learn its real cost) rather than
    assume it carries the same overhead and keep drafting one token."""
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(30):
        planner.observe(1, 0)  # acceptance near 5%: one in twenty accepted
    planner.observe(1, 1)
    planner.observe_step(1, FLAT.step_ms("ngram", 1) + 1.0)
    assert planner.gamma() == 0


def test_profile_fit_is_nondecreasing_and_averages_a_slow_sample():
    """A slow first sample (T = 1) must not make every longer step look as cheap as it."""
    from specsa.orchestrate.profile import nondecreasing

    assert nondecreasing([2.0, 1.0, 1.0, 1.0, 3.0]) == [1.25, 1.25, 1.25, 1.25, 3.0]
    assert nondecreasing([1.0, 2.0, 2.0, 3.0]) == [1.0, 2.0, 2.0, 3.0]
    assert nondecreasing([]) == []


def test_planner_reports_measured_step_times():
    planner = AutoPlanner(StepCosts({1: 1.0, 2: 1.1, 3: 1.2}, {"ngram": 0.0}), "ngram", 2)
    for gamma, ms in ((0, 1.5), (2, 2.0), (2, 3.0)):
        planner.observe_step(gamma, ms)
    assert planner.report()["mean_step_ms_by_gamma"] == {0: 1.5, 2: 2.5}


def test_free_drafts_are_verified_by_what_their_evidence_has_shown():
    """Prompt lookup's long matches have been right and its one-token matches wrong: the
    planner verifies the first kind in full and decodes plainly past the second."""
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(30):
        planner.observe(8, 8, evidence=4)
        planner.observe(8, 0, evidence=1)
    drafts = [list(range(10, 18))]
    assert verified(planner, [0], [[1, 2, 3]], drafts, evidence=[4]) == 8
    assert verified(planner, [0], [[1, 2, 3]], drafts, evidence=[1]) == 0
    # a batch pads to one width: the sequence whose drafts pay decides it
    assert verified(planner, [0, 1], [[1, 2, 3], [5, 6]], [drafts[0], drafts[0][:2]], evidence=[4, 1]) == 8


def test_declined_drafts_are_learnt_from_the_tokens_committed_instead():
    """After a stretch of rejected drafts the planner declines to verify, yet it sees the
    declined draft proved right by the plain step's token and verifies again at the next
    step (no wait for a probe), then drafts longer as the verified drafts hold."""
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(30):
        planner.observe(8, 0, evidence=2)
    text = list(range(100, 300))  # the target's continuation, which the drafts now copy
    context, widths = [1, 2], []
    for _ in range(12):
        width = verified(planner, [0], [context], [text[len(context) : len(context) + 8]], evidence=[2])
        if width:
            planner.observe(width, width, evidence=2)  # all accepted, as the loop reports
        context = context + text[len(context) : len(context) + 1 + width]
        widths.append(width)
    assert widths[0] == 0 and widths[1] > 0 and widths[-1] == 8


def test_drafts_past_the_verified_width_are_learnt_from_the_tokens_committed():
    """Drafts have failed from position 3 on, so the planner verifies 3 of 8. Now they hold:
    the token committed after the 3 accepted ones matches the 4th draft, which counts as
    an acceptance at position 3 although it was never verified, and the width grows."""
    planner = AutoPlanner(StepCosts({t: 3.0 + 0.1 * t for t in range(1, 10)}, {"ngram": 0.0}), "ngram", 8)
    for _ in range(30):
        planner.observe(8, 3, evidence=2)
    text = list(range(100, 300))
    context, widths = [1, 2], []
    for _ in range(10):
        width = verified(planner, [0], [context], [text[len(context) : len(context) + 8]], evidence=[2])
        planner.observe(width, width, evidence=2)
        context = context + text[len(context) : len(context) + 1 + width]
        widths.append(width)
    assert widths[0] == 3 and widths[-1] == 8


def test_a_draft_model_is_weighed_against_prompt_lookup_at_every_step():
    """Lookup's long matches have held, so they are verified in full (they cost nothing to
    draft). Where lookup has nothing, the draft model, not timed yet, drafts one token,
    which times it; fast and right, it drafts longer; once its drafts are rejected,
    plain decoding wins, with a one-token probe of the model every `probe_every` plain
    steps. A model step's verification counts with lookup's, its drafting apart."""
    planner = AutoPlanner(FLAT, "ngram", 8, model_drafter=True)
    for _ in range(30):
        planner.observe(8, 8, evidence=4)
    assert planner.plan([0], [[1, 2]], [list(range(8))], [4]) == (False, 8)

    def model_step(accepted: int, ms_per_token: float = 0.1) -> tuple[bool, int]:
        use_model, length = planner.plan([0], [[1, 2]], [[]], [0])
        if use_model:
            planner.observe_model_drafting(length, length * ms_per_token)
            planner.observe(length, min(accepted, length))
            planner.observe_step(length, FLAT.step_ms("ngram", length) + length * ms_per_token)
        return use_model, length

    assert model_step(accepted=1) == (True, 1)
    assert model_step(accepted=8) == (True, 8)
    lengths = [model_step(accepted=0)[1] for _ in range(16)]  # rejected: shorter drafts, then none
    assert lengths[0] == 8 and lengths[-1] == 0 and lengths == sorted(lengths, reverse=True)
    plans = [planner.plan([0], [[1, 2]], [[]], [0]) for _ in range(2 * AutoPlanner.probe_every)]
    assert plans.count((True, 1)) == 2 and set(plans) == {(False, 0), (True, 1)}
    assert planner.chosen[8] == 1 and planner.trackers[4].reached[0] == 30
    # a model step's time less its drafting is a verification like lookup's: no correction
    assert set(planner.loop.corrections_ms().values()) == {0.0}


def test_declined_drafts_that_would_fail_keep_the_planner_plain():
    planner = AutoPlanner(FLAT, "ngram", 8)
    for _ in range(30):
        planner.observe(8, 0, evidence=2)
    context = [1, 2]
    for step in range(40):
        assert verified(planner, [0], [context], [[7] * 8], evidence=[2]) == 0
        context = context + [8]  # the target never writes what the drafts say


@pytest.mark.parametrize("host_ms", [0.0, 2.0])
def test_auto_reaches_the_best_fixed_draft_length_on_recorded_generations(host_ms):
    """SmolLM2's greedy generations on real text (4 on the CPU, 3 on the H100), replayed (a
    proposal is accepted up to its first token that differs from the recorded ones) under
    the H100 profile's step costs:
    `auto` is within 5% of the best fixed prompt-lookup draft length on each generation,
    free of the ±12% timing noise that hides this on the GPU. Also where the loop is
    host-bound (2 ms of host work per step overlapping the GPU's, so every step size
    takes about as long): the planner plans with the profile and learns the rest from
    the steps' times."""
    import json
    from pathlib import Path

    from specsa.orchestrate.profile import saved_costs
    from specsa.orchestrate.replay import replay

    results = Path(__file__).parents[1] / "benchmarks" / "results"
    profile = json.loads((results / "h100" / "profiles" / "smollm2_135m_q4_1.json").read_text())
    streams = json.loads((results / "cpu" / "smollm2_streams.json").read_text())["streams"]  # float32, CPU
    streams += json.loads((results / "h100" / "smollm2_trace_b1_v7.json").read_text())["streams"]  # bf16, H100
    for stream in streams:
        generation = [(stream["prompt"], stream["continuation"])]
        profiled = saved_costs(profile, len(stream["prompt"]) + len(stream["continuation"]) + 8, batch=1)
        wall = StepCosts({t: max(ms, host_ms) for t, ms in profiled.target_ms.items()}, profiled.draft_ms_per_token)
        best_fixed = max(replay(generation, lambda running: wall, gamma) for gamma in (2, 4, 8))
        auto = replay(generation, lambda running: wall, 8, AutoPlanner(profiled, "ngram", 8))
        assert auto >= 0.95 * best_fixed > 1.0 / wall.target_ms[1]
