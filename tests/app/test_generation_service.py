"""The server's side of generation, fed turns by hand: tokens reach their requests in order,
a finish reason ends only a request's last token of a turn, failures become errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.errors import DeadlineExceeded
from app.generation import Generator, TokenEvent
from app.generation.messages import Command, Failure, Turn
from app.generation.service import GenerationFailed


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


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_a_failed_requests_held_tokens_arrive_before_its_error() -> None:
    async def run() -> None:
        generator = Generator("lm", _Recorder(), ["a", "b"], max_queue=8, timeout_s=60)
        job = generator.submit([0], max_new_tokens=9, seed=1, stop=[])
        generator._on_turn(Turn(requests=[0, 0, 0], tokens=[0, 1, 0], logprobs=[-1, -1, -1],
                                failures=[Failure(0, "error", "step failed")], steps=[1, 1]))
        events = _drain(job.events)
        assert [e.text for e in events[:3]] == ["a", "b", "a"]
        assert isinstance(events[3], GenerationFailed) and job.ended

    asyncio.run(run())


def test_a_turn_reaches_each_request_and_its_last_token_carries_the_reason() -> None:
    async def run() -> None:
        transport = _Recorder()
        generator = Generator("lm", transport, ["a", "b", "\n"], max_queue=8, timeout_s=60)
        one = generator.submit([0], max_new_tokens=3, seed=1, stop=["\n\n"])
        two = generator.submit([1], max_new_tokens=3, seed=2, stop=[])
        assert [type(c).__name__ for c in transport.sent] == ["GenerationSpec"] * 2
        # request one: its prompt's last chunk and a step in the same turn, then a stop
        generator._on_turn(Turn(requests=[0, 1, 0], tokens=[2, 1, 2], logprobs=[-1, -2, -3],
                                finished={0: "stop_sequence"}, admitted=[(0, 0.1), (1, 0.2)],
                                steps=[2], active=1))
        assert _drain(one.events) == [TokenEvent(0, 2, "\n", -1), TokenEvent(1, 2, "\n", -3,
                                                                            "stop_sequence")]
        assert _drain(two.events) == [TokenEvent(0, 1, "b", -2)] and two.admitted
        assert one.ended and not two.ended and generator.active == 1
        generator._on_turn(Turn(failures=[Failure(1, "deadline", "waited too long")]))
        error = _drain(two.events)[0]
        assert isinstance(error, DeadlineExceeded) and generator.requests == {}
        three = generator.submit([1], max_new_tokens=3, seed=2, stop=[])
        three.cancel()
        assert transport.sent[-1] == three.spec.id and generator.requests == {}

    asyncio.run(run())
