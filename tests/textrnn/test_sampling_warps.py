"""typical-p, the frequency and presence penalties and top-n alternatives: their meaning, and
that a row's choice never depends on its batch."""

from __future__ import annotations

import torch

from textrnn.sampling import (
    RowParams,
    apply_additive_penalties,
    choose_tokens,
    top_alternatives,
    typical_mask,
)


def _params(n: int, temperature: float = 1.0, typical_p: float = 1.0, frequency: float = 0.0,
            presence: float = 0.0, seeds: list[int] | None = None) -> RowParams:
    return RowParams(torch.full((n,), temperature), torch.zeros(n, dtype=torch.long),
                     torch.ones(n), torch.ones(n),
                     torch.tensor(seeds or list(range(n)), dtype=torch.long),
                     torch.full((n,), typical_p), torch.full((n,), frequency),
                     torch.full((n,), presence))


def test_typical_keeps_the_tokens_nearest_the_entropy_up_to_the_mass() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    entropy = float(-(probs * probs.log()).sum())
    distance = (-probs.log() - entropy).abs()[0]
    order = distance.argsort().tolist()  # nearest first
    dropped = typical_mask(logits, torch.tensor([0.6]))[0]
    kept, mass = set(), 0.0
    for i in order:  # the smallest nearest-first set whose mass reaches 0.6
        kept.add(i)
        mass += float(probs[0, i])
        if mass >= 0.6:
            break
    assert {i for i in range(4) if not dropped[i]} == kept
    assert not typical_mask(logits, torch.tensor([1.0])).any()  # 1 is off
    assert (~typical_mask(logits, torch.tensor([1e-6]))).sum() == 1  # at least one token


def test_typical_p_samples_only_from_the_typical_set() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    ids, _ = choose_tokens(logits, _params(2000, typical_p=0.6, seeds=list(range(2000))),
                           torch.zeros(2000, dtype=torch.long))
    allowed = ~typical_mask(logits[:1], torch.tensor([0.6]))[0]
    assert allowed[ids].all() and len(set(ids.tolist())) == int(allowed.sum())


def test_frequency_and_presence_penalties_subtract_per_count_and_once() -> None:
    logits = torch.zeros(1, 3)
    counts = torch.tensor([[3.0, 1.0, 0.0]])
    out = apply_additive_penalties(logits, counts, torch.tensor([0.5]), torch.tensor([0.25]))
    assert out.tolist() == [[-1.75, -0.75, 0.0]]
    ids, _ = choose_tokens(torch.tensor([[2.0, 1.9, 1.0]]), _params(1, temperature=0.0,
                           frequency=1.0), torch.zeros(1, dtype=torch.long),
                           torch.tensor([[1.0, 0.0, 0.0]]))
    assert ids.item() == 1  # the repeated leader falls behind


def test_top_alternatives_are_best_first_with_ties_by_id() -> None:
    logprobs = torch.log_softmax(torch.tensor([[1.0, 3.0, 3.0, 0.0]]), -1)
    ids, values = top_alternatives(logprobs, 3)
    assert ids.tolist() == [[1, 2, 0]] and values[0, 0] == values[0, 1] > values[0, 2]


def test_new_warps_keep_a_rows_choice_independent_of_its_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 40)
    counts = torch.randint(0, 3, (6, 40)).float()
    params = RowParams(torch.tensor([0.8, 1.0, 0.0, 1.2, 0.9, 1.0]),
                       torch.tensor([0, 10, 0, 0, 5, 0]), torch.tensor([1.0, 0.9, 1, 1, 1, 0.8]),
                       torch.tensor([1.0, 1.0, 1.3, 1, 1, 1]), torch.arange(6) + 100,
                       torch.tensor([0.5, 1.0, 0.9, 0.3, 1.0, 0.7]),
                       torch.tensor([0.0, 0.5, 0.0, -0.5, 1.0, 0.0]),
                       torch.tensor([0.0, 0.0, 0.4, 0.0, 0.0, 1.5]))
    steps = torch.arange(6)
    together, logp = choose_tokens(logits.clone(), params, steps, counts.clone(), banned=0)
    for row in range(6):
        index = torch.tensor([row])
        alone, lp = choose_tokens(logits[index].clone(), params.rows(index), steps[index],
                                  counts[index].clone(), banned=0)
        assert alone.item() == together[row].item() and lp.item() == logp[row].item()


def test_rows_without_the_optional_columns_mix_with_rows_that_have_them() -> None:
    plain = RowParams(torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(2),
                      torch.ones(2), torch.arange(2))
    both = RowParams.cat([plain, _params(1, typical_p=0.5, frequency=0.2)])
    assert both.typical_p is not None and both.typical_p.tolist() == [1.0, 1.0, 0.5]
    assert both.presence_penalty is not None and both.uses.typical and both.uses.additive
    assert RowParams.cat([plain, plain]).typical_p is None and not plain.uses.typical
