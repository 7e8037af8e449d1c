"""The rejection sampler reproduces the target distribution."""

from __future__ import annotations

import torch

from specsa.spec.acceptance import greedy_accept, rejection_sample

DRAWS = 200_000


def total_variation(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    return 0.5 * float((counts / counts.sum() - probs.double()).abs().sum())


def test_committed_tokens_follow_the_target_distribution():
    gen = torch.Generator().manual_seed(0)
    p0 = torch.tensor([0.5, 0.2, 0.2, 0.1, 0.0])  # token 4 impossible for the target...
    q0 = torch.tensor([0.1, 0.1, 0.3, 0.2, 0.3])  # ...but often drafted
    p1 = torch.tensor([0.05, 0.05, 0.6, 0.3, 0.0])
    q1 = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    p2 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])  # the bonus distribution

    d0 = torch.multinomial(q0.expand(DRAWS, -1), 1, generator=gen)
    d1 = torch.multinomial(q1.expand(DRAWS, -1), 1, generator=gen)
    draft_tokens = torch.cat([d0, d1], 1)
    draft_probs = torch.stack([q0, q1]).expand(DRAWS, -1, -1)
    target_probs = torch.stack([p0, p1, p2]).expand(DRAWS, -1, -1)
    accepted, next_token = rejection_sample(draft_tokens, draft_probs, target_probs, torch.full((DRAWS,), 2), gen)

    first = torch.where(accepted >= 1, draft_tokens[:, 0], next_token)
    assert total_variation(first, p0) < 0.01
    assert not (first == 4).any()
    took_first = accepted >= 1
    second = torch.where(accepted[took_first] >= 2, draft_tokens[took_first, 1], next_token[took_first])
    assert total_variation(second, p1) < 0.01
    all_kept = accepted == 2
    assert all_kept.sum() > 10_000
    assert total_variation(next_token[all_kept], p2) < 0.01


def test_no_drafts_is_a_plain_sample_and_padding_is_ignored():
    gen = torch.Generator().manual_seed(1)
    p = torch.tensor([0.3, 0.3, 0.4])
    draft_tokens = torch.zeros(DRAWS, 2, dtype=torch.long)  # padding only
    draft_probs = torch.full((DRAWS, 2, 3), 1 / 3)
    target_probs = p.expand(DRAWS, 3, -1)
    accepted, next_token = rejection_sample(draft_tokens, draft_probs, target_probs, torch.zeros(DRAWS, dtype=torch.long), gen)
    assert (accepted == 0).all()
    assert total_variation(next_token, p) < 0.01


def test_greedy_accepts_the_agreeing_prefix_and_emits_the_argmax():
    one_hot = torch.nn.functional.one_hot
    target_argmax = torch.tensor([[2, 0, 1, 3]])
    draft_tokens = torch.tensor([[2, 0, 3]])  # third draft disagrees
    accepted, next_token = rejection_sample(
        draft_tokens, one_hot(draft_tokens, 4).float(), one_hot(target_argmax, 4).float(), torch.tensor([3]), None
    )
    assert accepted.tolist() == [2] and next_token.tolist() == [1]


def test_seeded_runs_are_deterministic():
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        probs = torch.softmax(torch.randn(64, 4, 10, generator=torch.Generator().manual_seed(9)), -1)
        drafts = torch.multinomial(probs[:, 0], 3, replacement=True, generator=gen)
        return rejection_sample(drafts, probs[:, :3], probs, torch.full((64,), 3), gen)

    assert all(torch.equal(a, b) for a, b in zip(run(5), run(5)))
    assert not all(torch.equal(a, b) for a, b in zip(run(5), run(6)))


def test_greedy_accept_is_the_rejection_rule_with_a_one_hot_target():
    """The engine's greedy path skips the [B, K, V] distributions and decides on the host;
    it must decide alike, with drafts that agree for a while, fewer drafts than K, and none."""
    gen = torch.Generator().manual_seed(5)
    batch, k, vocab = 64, 5, 7
    argmax = torch.randint(vocab, (batch, k + 1), generator=gen)
    agree = torch.randint(k + 1, (batch,), generator=gen)  # drafts agree up to here
    draft_tokens = torch.where(torch.arange(k) < agree[:, None], argmax[:, :k], (argmax[:, :k] + 1) % vocab)
    num_drafts = torch.randint(k + 1, (batch,), generator=gen)
    target = torch.nn.functional.one_hot(argmax, vocab).float()
    draft = torch.nn.functional.one_hot(draft_tokens, vocab).float()
    expected = rejection_sample(draft_tokens, draft, target, num_drafts, gen)
    drafts = [row[:n] for row, n in zip(draft_tokens.tolist(), num_drafts.tolist())]
    accepted, next_token = greedy_accept(drafts, argmax.tolist())
    assert accepted == expected[0].tolist() and next_token == expected[1].tolist()
    assert accepted == torch.minimum(agree, num_drafts).tolist()
