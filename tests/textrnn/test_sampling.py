from __future__ import annotations

import torch

from textrnn.sampling import RowParams, choose_tokens, uniform_from_seed, uniform_table


def _params(n: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            penalty: float = 1.0, seeds: list[int] | None = None) -> RowParams:
    return RowParams(torch.full((n,), temperature), torch.full((n,), top_k, dtype=torch.long),
                     torch.full((n,), top_p), torch.full((n,), penalty),
                     torch.tensor(seeds or list(range(n)), dtype=torch.long))


def test_uniforms_are_in_range_and_spread() -> None:
    u = uniform_from_seed(torch.arange(4000), torch.zeros(4000, dtype=torch.long))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.03
    again = uniform_from_seed(torch.arange(4000), torch.zeros(4000, dtype=torch.long))
    assert torch.equal(u, again)
    assert not torch.equal(u, uniform_from_seed(torch.arange(4000), torch.ones(4000, dtype=torch.long)))


def test_greedy_and_top_k_1_pick_the_argmax_and_skip_banned() -> None:
    logits = torch.randn(6, 30)
    logits[:, 0] = 100.0  # the banned id would otherwise win
    steps = torch.zeros(6, dtype=torch.long)
    greedy, logp = choose_tokens(logits.clone(), _params(6, temperature=0.0), steps, banned=0)
    top1, _ = choose_tokens(logits.clone(), _params(6, top_k=1), steps, banned=0)
    expected = logits[:, 1:].argmax(1) + 1
    assert torch.equal(greedy, expected) and torch.equal(top1, expected)
    assert torch.all(logp <= 0)


def test_a_rows_choice_does_not_depend_on_its_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 50)
    params = _params(8, temperature=0.9, top_k=20, top_p=0.9, seeds=[11, 12, 13, 14, 15, 16, 17, 18])
    steps = torch.arange(8)
    together, _ = choose_tokens(logits.clone(), params, steps)
    for row in range(8):
        index = torch.tensor([row])
        alone, _ = choose_tokens(logits[index].clone(), params.rows(index), steps[index])
        assert alone.item() == together[row].item()


def test_samples_follow_the_distribution_within_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    ids, _ = choose_tokens(logits, _params(4000, top_p=0.7, seeds=list(range(4000))),
                           torch.zeros(4000, dtype=torch.long))
    counts = torch.bincount(ids, minlength=4).float() / 4000
    assert counts[2] == 0 and counts[3] == 0  # outside the 0.7 nucleus (0.5 + 0.3 covers it)
    assert abs(float(counts[0]) - 0.5 / 0.8) < 0.04


def test_repetition_penalty_discourages_seen_tokens() -> None:
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[True, False, False]])
    ids, _ = choose_tokens(logits.clone(), _params(1, temperature=0.0, penalty=2.0),
                           torch.zeros(1, dtype=torch.long), seen)
    assert ids.item() == 1


def test_extreme_penalties_never_pick_the_banned_token_or_give_nan() -> None:
    logits = torch.randn(4, 10)
    seen = torch.ones(4, 10, dtype=torch.bool)  # every token seen, the banned one too
    for penalty in (5e-324, 1e-45, 1e30):
        for temperature in (0.0, 1.0):
            ids, logp = choose_tokens(logits.clone(), _params(4, temperature=temperature,
                                                              penalty=penalty),
                                      torch.zeros(4, dtype=torch.long), seen, banned=0)
            assert (ids != 0).all() and torch.isfinite(logp).all()


def test_rows_with_different_warps_choose_as_they_would_alone() -> None:
    # The batch uses every warp, so nothing is skipped for it; alone, each row skips those it
    # does not use. The choices must not change.
    torch.manual_seed(1)
    logits = torch.randn(5, 40)
    params = RowParams(torch.tensor([0.0, 0.7, 1.0, 1.3, 0.9]),
                       torch.tensor([0, 5, 0, 0, 12]), torch.tensor([1.0, 1.0, 0.8, 1.0, 0.9]),
                       torch.tensor([1.0, 1.0, 1.0, 1.6, 1.2]), torch.arange(100, 105))
    seen = torch.rand(5, 40) < 0.3
    steps = torch.tensor([0, 3, 7, 1, 9])
    assert params.uses == params.uses.__class__(True, True, True, True)
    together, logp = choose_tokens(logits.clone(), params, steps, seen, banned=0)
    for row in range(5):
        index = torch.tensor([row])
        alone = params.rows(index)
        assert not all(vars(alone.uses).values())  # something is skipped
        ids, lp = choose_tokens(logits[index].clone(), alone, steps[index], seen[index], banned=0)
        assert ids.item() == together[row].item() and lp.item() == logp[row].item()


def test_uniforms_drawn_ahead_are_the_per_step_ones() -> None:
    seeds = torch.tensor([3, 2**40 + 7, 0])
    table = uniform_table(seeds, 6)
    for t in range(6):
        assert torch.equal(table[:, t], uniform_from_seed(seeds, torch.full((3,), t)))
    logits = torch.randn(3, 20)
    params = RowParams(torch.ones(3), torch.zeros(3, dtype=torch.long), torch.full((3,), 0.9),
                       torch.ones(3), seeds)
    steps = torch.tensor([4, 0, 5])
    by_step, _ = choose_tokens(logits.clone(), params, steps)
    drawn, _ = choose_tokens(logits.clone(), params, None,
                             uniforms=table.gather(1, steps[:, None])[:, 0])
    assert torch.equal(by_step, drawn)
