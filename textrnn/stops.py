"""Stop sequences matched in time linear in the text, however many stops there are.

`StopMatcher` is an Aho-Corasick automaton over the stop strings. Fed one character at a time,
its state is the longest suffix of the text read so far that is a prefix of some stop. That one
state answers both questions a generation asks after each token: has a stop sequence just
ended (the engine's finish check), and how much of the text's end may still grow into one (what
an OpenAI stream must hold back). Each character costs amortised constant work: the cost does
not grow with the number of stops times their length, as checking every stop's every prefix does.
"""

from __future__ import annotations

from collections import deque

__all__ = ["StopMatcher"]


class StopMatcher:
    """The automaton of a set of stop strings; a state is an int, 0 is the empty match."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(stops)
        self._next: list[dict[str, int]] = [{}]
        self._depth = [0]
        self._ends = [False]  # some stop is a suffix of this state's text
        for stop in self.stops:
            state = 0
            for char in stop:
                child = self._next[state].get(char)
                if child is None:
                    child = len(self._next)
                    self._next[state][char] = child
                    self._next.append({})
                    self._depth.append(self._depth[state] + 1)
                    self._ends.append(False)
                state = child
            if stop:
                self._ends[state] = True
        self._fail = [0] * len(self._next)
        order = deque(self._next[0].values())
        while order:  # breadth first: a state's fallback is shallower, so already known
            state = order.popleft()
            self._ends[state] = self._ends[state] or self._ends[self._fail[state]]
            for char, child in self._next[state].items():
                fallback = self._fail[state]
                while fallback and char not in self._next[fallback]:
                    fallback = self._fail[fallback]
                target = self._next[fallback].get(char, 0)
                self._fail[child] = target if target != child else 0
                order.append(child)

    def feed(self, state: int, text: str) -> tuple[int, bool]:
        """The state after reading `text`, and whether a stop ended anywhere in it."""
        hit = False
        nexts, fail, ends = self._next, self._fail, self._ends
        for char in text:
            while state and char not in nexts[state]:
                state = fail[state]
            state = nexts[state].get(char, 0)
            hit = hit or ends[state]
        return state, hit

    def pending(self, state: int) -> int:
        """How many characters at the end of the text could still begin a stop (hold them)."""
        return self._depth[state]

    def __bool__(self) -> bool:
        return any(self.stops)
