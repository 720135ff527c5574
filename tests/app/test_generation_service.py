"""The server's side of generation, fed turns by hand: tokens reach their requests in order,
a finish reason ends only a request's last token of a turn, failures become errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app.errors import DeadlineExceeded, Overloaded
from app.generation.choices import Choices, TokenEvent
from app.generation.messages import Command, Failure, GenerationSpec, Sampling, Turn
from app.generation.service import GenerationFailed, Generator


class _Recorder:
    """A transport that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[Command | None] = []

    async def start(self, on_turn: Callable[[Turn], None], on_lost: Callable[[str], None],
                    wrap_step: Any = None) -> None:
        pass

    def send(self, command: Command) -> None:
        self.sent.append(command)

    async def stop(self) -> None:
        pass


def _open(generator: Generator, prompt: list[int], tokens: int, seed: int,
          stop: tuple[str, ...] = (), n: int = 1) -> Choices:
    return generator.open([tuple(prompt)], Sampling(tokens, stop=stop),
                          [seed + i for i in range(n)])


def _drain(choices: Choices) -> list[Any]:
    """The events that have reached the request, then its error if it has one."""
    out: list[Any] = [event for _, event in choices._events]
    choices._events.clear()
    if choices._error is not None:
        out.append(choices._error)
    return out


def test_a_failed_requests_held_tokens_arrive_before_its_error() -> None:
    async def run() -> None:
        generator = Generator("lm", _Recorder(), ["a", "b"], max_queue=8, timeout_s=60)
        job = _open(generator, [0], 9, 1)
        request = job.members[0].spec.id
        generator._on_turn(Turn(requests=[request] * 3, tokens=[0, 1, 0], logprobs=[-1, -1, -1],
                                failures=[Failure(request, "error", "step failed")], steps=[1, 1]))
        events = _drain(job)
        assert [e.text for e in events[:3]] == ["a", "b", "a"]
        assert isinstance(events[3], GenerationFailed) and job.done

    asyncio.run(run())


def test_a_turn_reaches_each_request_and_its_last_token_carries_the_reason() -> None:
    async def run() -> None:
        transport = _Recorder()
        generator = Generator("lm", transport, ["a", "b", "\n"], max_queue=8, timeout_s=60)
        one = _open(generator, [0], 3, 1, stop=("\n\n",))
        two = _open(generator, [1], 3, 2)
        assert [type(c).__name__ for c in transport.sent] == ["GenerationSpec"] * 2
        a, b = one.members[0].spec.id, two.members[0].spec.id
        # request one: its prompt's last chunk and a step in the same turn, then a stop
        generator._on_turn(Turn(requests=[a, b, a], tokens=[2, 1, 2], logprobs=[-1, -2, -3],
                                finished={a: "stop_sequence"}, admitted=[(a, 0.1), (b, 0.2)],
                                steps=[2], active=1))
        assert _drain(one) == [TokenEvent(0, 2, "\n", -1), TokenEvent(1, 2, "\n", -3,
                                                                     "stop_sequence")]
        assert _drain(two) == [TokenEvent(0, 1, "b", -2)] and two.members[0].admitted
        assert one.done and not two.done and generator.active == 1
        generator._on_turn(Turn(failures=[Failure(b, "deadline", "waited too long")]))
        error = _drain(two)[0]
        assert isinstance(error, DeadlineExceeded) and generator.requests == {}
        three = _open(generator, [1], 3, 2)
        three.close()
        assert transport.sent[-1] == three.members[0].spec.id and generator.requests == {}

    asyncio.run(run())


def test_siblings_share_a_group_and_one_failure_cancels_the_others() -> None:
    async def run() -> None:
        transport = _Recorder()
        generator = Generator("lm", transport, ["a", "b"], max_queue=8, timeout_s=60)
        job = _open(generator, [0], 5, 10, n=3)
        specs = [c for c in transport.sent if isinstance(c, GenerationSpec)]
        assert [s.seed for s in specs] == [10, 11, 12]
        assert len({s.group for s in specs}) == 1 and len({s.id for s in specs}) == 3
        first, second, third = (m.spec.id for m in job.members)
        generator._on_turn(Turn(requests=[first, second], tokens=[0, 1], logprobs=[-1, -1],
                                failures=[Failure(third, "error", "step failed")]))
        # the failed member's siblings are dropped from the engine, nobody generates for them
        assert sorted(c for c in transport.sent if isinstance(c, int)) == [first, second]
        assert generator.requests == {} and job.done
        events = _drain(job)
        assert [e.text for e in events[:2]] == ["a", "b"] and isinstance(events[2], GenerationFailed)

    asyncio.run(run())


def test_a_request_that_does_not_fit_the_queue_is_refused_whole() -> None:
    async def run() -> None:
        transport = _Recorder()
        generator = Generator("lm", transport, ["a"], max_queue=4, timeout_s=60)
        _open(generator, [0], 5, 1, n=3)
        with pytest.raises(Overloaded, match="RNN_MAX_QUEUE"):
            _open(generator, [0], 5, 1, n=2)
        assert len(transport.sent) == 3  # none of the refused request's members was queued
        _open(generator, [0], 5, 1, n=1)  # exactly at the limit

    asyncio.run(run())
