"""The stop automaton against the obvious check of every stop's every prefix."""

from __future__ import annotations

import random

from textrnn.stops import StopMatcher


def _naive(text: str, stops: list[str]) -> tuple[bool, int]:
    """(whether a stop ended anywhere in text, the longest end of text that begins a stop)."""
    hit = any(text[:i].endswith(s) for i in range(len(text) + 1) for s in stops if s)
    pending = max((k for s in stops for k in range(1, len(s) + 1) if text.endswith(s[:k])),
                  default=0)
    return hit, pending


def test_the_automaton_agrees_with_the_naive_check_on_random_texts() -> None:
    rng = random.Random(0)
    for _ in range(300):
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 5)))
                 for _ in range(rng.randint(1, 4))]
        matcher = StopMatcher(stops)
        text, state, hit = "", 0, False
        for _ in range(rng.randint(1, 30)):
            piece = "".join(rng.choice("ab\nc") for _ in range(rng.randint(1, 2)))
            text += piece
            state, now = matcher.feed(state, piece)
            hit = hit or now
            assert (hit, matcher.pending(state)) == _naive(text, stops), (stops, text)


def test_a_stop_inside_another_and_overlapping_ends_are_found() -> None:
    matcher = StopMatcher(["\n\n", "END", "ab"])
    state, hit = matcher.feed(0, "xxEN")
    assert not hit and matcher.pending(state) == 2
    state, hit = matcher.feed(state, "D")
    assert hit
    state, hit = matcher.feed(0, "aab")
    assert hit
    assert not StopMatcher([]) and matcher


def test_the_cost_per_character_does_not_grow_with_the_stops() -> None:
    """16 stops of 64 characters that share prefixes with the text: the work per character is
    a handful of transitions, counted, not timed."""
    stops = ["a" * 63 + chr(ord("b") + i) for i in range(16)]
    matcher = StopMatcher(stops)
    steps = 0
    original = matcher._fail

    class Counting(list[int]):
        def __getitem__(self, i: int) -> int:  # type: ignore[override]
            nonlocal steps
            steps += 1
            return original[i]

    matcher._fail = Counting(original)
    state = 0
    for _ in range(10_000):
        state, _ = matcher.feed(state, "a")
    assert steps <= 2 * 10_000  # amortised: each character follows at most a fallback or two
