"""The generation engine driven turn by turn, with no server, thread or process: batched
equals alone, seeds, cancellation, deadlines, stop sequences, length limits, chunked
prefill, and a failing step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from app.generation.engine import Engine
from app.generation.messages import GenerationSpec, Sampling, Turn, drive
from textrnn.artifact import Artifact, load_artifact


@pytest.fixture(scope="module")
def artifact(models_dir: Path) -> Artifact:
    return load_artifact(models_dir / "shakespeare", torch.device("cpu"), "float16")


@pytest.fixture(autouse=True)
def _inference() -> Iterator[None]:
    with torch.inference_mode():
        yield


def _engine(artifact: Artifact, max_active: int = 64, chunk: int = 128,
            clock: Callable[[], float] | None = None) -> Engine:
    engine = Engine.from_artifact(artifact, max_active, chunk)
    if clock is not None:
        engine.clock = clock
    return engine


def _spec(artifact: Artifact, id: int, prompt: str = "ROMEO:", n: int = 40, **kwargs: Any
          ) -> GenerationSpec:
    ids = tuple(artifact.tokenizer.encode(prompt, add_special_tokens=False).ids)
    spec_fields = {k: kwargs.pop(k) for k in ("seed", "enqueued", "deadline", "group", "tenant")
                   if k in kwargs}
    sampling = Sampling(n, **({"temperature": 0.9} | kwargs))
    return GenerationSpec(id, ids, sampling, **({"seed": id} | spec_fields))


def _run(engine: Engine, turns: int = 10_000) -> tuple[dict[int, str], dict[int, str], list[Turn]]:
    """Turn until idle: each request's text and finish reason, and the turns."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    seen: list[Turn] = []
    for _ in range(turns):
        if engine.idle:
            break
        turn = engine.turn()
        seen.append(turn)
        for request, token in zip(turn.requests, turn.tokens, strict=True):
            texts[request] = texts.get(request, "") + engine.texts[token]
        reasons |= turn.finished
    return texts, reasons, seen


def test_a_request_alone_and_among_others_gives_the_same_text(artifact: Artifact) -> None:
    alone = {}
    for i in range(5):
        engine = _engine(artifact)
        engine.add(_spec(artifact, i, "JULIET:" if i % 2 else "ROMEO:\nShall", 30 + 7 * i,
                         top_p=0.9, repetition_penalty=1.1))
        alone[i] = _run(engine)[0][i]
    engine = _engine(artifact, max_active=3)  # fewer slots than requests: some wait, then join
    for i in range(5):
        engine.add(_spec(artifact, i, "JULIET:" if i % 2 else "ROMEO:\nShall", 30 + 7 * i,
                         top_p=0.9, repetition_penalty=1.1))
    together, reasons, turns = _run(engine)
    assert together == alone
    assert set(reasons.values()) == {"length"}
    assert max(max(t.steps, default=0) for t in turns) == 3
    assert len({len(t) for t in together.values()}) == 5


def test_the_seed_decides_the_text(artifact: Artifact) -> None:
    def text(seed: int) -> str:
        engine = _engine(artifact)
        engine.add(_spec(artifact, 0, n=60, seed=seed))
        return _run(engine)[0][0]
    assert text(1) == text(1) != text(2)


def test_greedy_decoding_picks_the_likeliest_token(artifact: Artifact) -> None:
    engine = _engine(artifact)
    engine.add(_spec(artifact, 0, n=1, temperature=0.0))
    turn = engine.turn()
    ids = artifact.tokenizer.encode("ROMEO:", add_special_tokens=False).ids
    logits, _ = artifact.net.prefill(torch.tensor([ids]), torch.tensor([len(ids)]))
    logits[0, 0] = float("-inf")  # the unknown token is never produced
    assert turn.tokens == [int(logits.argmax())] and turn.finished == {0: "length"}


def test_cancelled_requests_leave_at_the_next_turn_queued_or_running(artifact: Artifact) -> None:
    engine = _engine(artifact, max_active=1)
    engine.add(_spec(artifact, 0, n=500))
    engine.add(_spec(artifact, 1, n=500))  # waits for the only slot
    engine.turn()
    engine.turn()
    engine.cancel(0)
    engine.cancel(1)
    turn = engine.turn()
    assert turn.requests == [] and turn.active == 0 and turn.waiting == 0 and engine.idle


def test_a_request_queued_past_its_deadline_fails_without_running(artifact: Artifact) -> None:
    now = [100.0]
    engine = _engine(artifact, max_active=1, clock=lambda: now[0])
    engine.add(_spec(artifact, 0, n=3, enqueued=100.0, deadline=200.0))
    engine.add(_spec(artifact, 1, n=3, enqueued=100.0, deadline=101.0))
    engine.turn()
    now[0] = 102.0
    texts, _, turns = _run(engine)
    failures = [f for t in turns for f in t.failures]
    assert [(f.request, f.kind) for f in failures] == [(1, "deadline")]
    assert "past its deadline" in failures[0].message and 1 not in texts
    assert [a for t in turns for a in t.admitted] == []  # request 0 was admitted earlier


def test_a_stop_sequence_ends_the_text_with_it(artifact: Artifact) -> None:
    engine = _engine(artifact)
    engine.add(_spec(artifact, 0, n=300, temperature=0.0))
    free = _run(engine)[0][0]
    stop = free[5:8]  # a piece the text reaches
    engine.add(_spec(artifact, 1, n=300, temperature=0.0, stop=(stop, "never there")))
    texts, reasons, _ = _run(engine)
    assert texts[1] == free[:free.index(stop) + len(stop)] and reasons[1] == "stop_sequence"


def test_a_long_prompt_is_read_in_chunks_between_the_running_batchs_steps(
        artifact: Artifact) -> None:
    prompt = ("ROMEO:\nBut soft, what light through yonder window breaks? " * 20)[:1000]
    whole = _engine(artifact, chunk=10_000)
    whole.add(_spec(artifact, 1, prompt, n=20))
    expected = _run(whole)[0][1]

    engine = _engine(artifact, chunk=100)
    engine.add(_spec(artifact, 0, n=200))
    engine.turn()  # request 0 prefilled and running
    engine.add(_spec(artifact, 1, prompt, n=20))
    read: list[int] = []  # the characters of request 1's prompt the net reads, per turn
    prefill = engine.net.prefill

    def counting(ids: Any, lengths: Any, state: Any) -> Any:
        read.extend(lengths.tolist())
        return prefill(ids, lengths, state)

    engine.net.prefill = counting  # type: ignore[method-assign]
    try:
        turns = [engine.turn() for _ in range(10)]
    finally:
        del engine.net.prefill  # the shared net's own method again
    assert read == [100] * 10  # every character once, in chunks of 100
    # Each of the 10 turns steps request 0 once while request 1's prompt is read, 100 at a time;
    # in the last, request 1 samples its first token and takes part in the step.
    assert all(t.requests.count(0) == 1 for t in turns)
    assert [t.steps for t in turns] == [[1]] * 9 + [[2]]
    assert [t.firsts for t in turns] == [0] * 9 + [1]  # request 1's first token: urgent
    assert [t.requests.count(1) for t in turns] == [0] * 9 + [2]
    texts, _, _ = _run(engine)
    last = turns[-1]
    first = "".join(engine.texts[tok] for req, tok in zip(last.requests, last.tokens, strict=True)
                    if req == 1)
    assert first + texts.get(1, "") == expected


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(artifact: Artifact) -> None:
    engine = _engine(artifact)
    real = engine.step

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")
    engine.add(_spec(artifact, 0, n=10))
    engine.turn()
    engine.step = broken
    turn = engine.turn()
    assert [(f.request, f.kind) for f in turn.failures] == [(0, "error")]
    assert "boom" in turn.failures[0].message and engine.idle
    engine.step = real
    engine.add(_spec(artifact, 1, n=10))
    assert len(_run(engine)[0][1]) == 10


def test_drive_takes_commands_runs_turns_and_stops(artifact: Artifact) -> None:
    engine = _engine(artifact)
    inbox: list[list[Any] | None] = [[_spec(artifact, 0, n=5), _spec(artifact, 1, n=500)], [1]]
    blocked: list[bool] = []
    turns: list[Turn] = []

    def receive(block: bool) -> list[Any] | None:
        blocked.append(block)
        if inbox:
            return inbox.pop(0)
        return None if block else []

    drive(engine, receive, turns.append)
    assert sum(t.requests.count(0) for t in turns) == 5
    assert turns[-1].active == 0  # request 1 cancelled on the second command
    assert blocked[0] and blocked[-1]  # waits for work only while idle


def test_drive_holds_tokens_mid_generation_and_sends_starts_and_ends_at_once(
        artifact: Artifact) -> None:
    def run(hold_s: float) -> list[Turn]:
        engine = _engine(artifact)
        inbox: list[list[Any]] = [[_spec(artifact, 0, n=5), _spec(artifact, 1, n=30)]]
        turns: list[Turn] = []
        drive(engine, lambda block: inbox.pop(0) if inbox else None if block else [],
              turns.append, hold_s)
        return turns

    each, held = run(0.0), run(3600.0)
    assert len(each) == 29  # a message per turn (the first turn gives each request two tokens)
    # Held: the first turn (both requests start), request 0's end, request 1's end.
    assert [sorted(t.finished.items()) for t in held] == [[], [(0, "length")],
                                                          [(1, "length")]]
    assert [t.firsts for t in held] == [2, 0, 0]
    assert [len(t.steps) for t in held] == [1, 3, 25]
    for request in (0, 1):  # the same tokens, in the same order, whichever way they went
        assert [(tok, lp) for t in held for r, tok, lp in zip(t.requests, t.tokens, t.logprobs,
                                                             strict=True) if r == request] \
            == [(tok, lp) for t in each for r, tok, lp in zip(t.requests, t.tokens, t.logprobs,
                                                             strict=True) if r == request]
    assert held[-1].active == 0


class _Scripted:
    """An engine stand-in that plays back turns, one per call, then goes idle."""

    def __init__(self, turns: list[Turn]) -> None:
        self.turns = turns

    @property
    def idle(self) -> bool:
        return not self.turns

    def turn(self) -> Turn:
        return self.turns.pop(0)

    def add(self, spec: GenerationSpec) -> None:
        raise AssertionError("no commands in this test")

    cancel = add


def test_drive_lets_held_tokens_go_when_their_time_is_up_even_on_an_empty_turn() -> None:
    now = [0.0]
    emitted: list[tuple[float, list[int]]] = []
    turns = [Turn(requests=[0], tokens=[5], logprobs=[0.0], firsts=1, steps=[1], active=2),
             Turn(requests=[0], tokens=[6], logprobs=[0.0], steps=[1], active=2),
             Turn(active=2),  # nothing produced: a long prompt being read, say
             Turn(active=2), Turn(active=2)]

    def clock() -> float:
        now[0] += 0.004
        return now[0]

    def emit(turn: Turn) -> None:
        emitted.append((now[0], turn.tokens))

    inbox: list[list[Any]] = [[]]
    drive(cast(Engine, _Scripted(turns)), lambda block: inbox.pop(0) if inbox else None if block
          else [], emit, hold_s=0.01, clock=clock)
    assert [tokens for _, tokens in emitted] == [[5], [6]]  # first at once, then on time
    assert emitted[1][0] - 0.004 < 0.02  # held 0.01 s or a tick more, not until idle


def _first_token_turn(turns: list[Turn], request: int) -> int:
    return next(i for i, t in enumerate(turns) if request in t.requests)


def test_a_one_stream_request_gets_a_slot_at_once_beside_a_request_holding_them_all(
        artifact: Artifact) -> None:
    """A request of 8 generations holds all 4 slots; a one-generation request arriving later
    takes a slot in the next turn (a big one's sequence is parked with its state), and every
    text is the one it makes alone: parking changes when a sequence steps, not what it writes."""
    alone = {}
    for i in range(9):
        engine = _engine(artifact)
        engine.add(_spec(artifact, i, "ROMEO:" if i < 8 else "JULIET:", 30, group=0 if i < 8 else 1,
                         top_p=0.9, repetition_penalty=1.2))
        alone[i] = _run(engine)[0][i]
    engine = _engine(artifact, max_active=4)
    for i in range(8):
        engine.add(_spec(artifact, i, "ROMEO:", 30, group=0, top_p=0.9, repetition_penalty=1.2))
    early = [engine.turn() for _ in range(3)]
    assert early[-1].active == 4 and early[-1].waiting == 4
    engine.add(_spec(artifact, 8, "JULIET:", 30, group=1, top_p=0.9, repetition_penalty=1.2))
    _, reasons, turns = _run(engine)
    assert _first_token_turn(turns, 8) == 0  # the turn right after it arrived
    assert max(max(t.steps, default=0) for t in turns) == 4
    full = {i: "".join(engine.texts[tok] for t in early + turns
                       for r, tok in zip(t.requests, t.tokens, strict=True) if r == i)
            for i in range(9)}
    assert full == alone
    assert set(reasons.values()) == {"length"}


def test_slots_are_shared_between_senders_before_requests(artifact: Artifact) -> None:
    """Sender a sends two requests of 4, sender b one of 4, with 4 slots: b holds two of
    them, as many as a, not one in three."""
    engine = _engine(artifact, max_active=4)
    for i in range(12):
        tenant, group = ("a", 0) if i < 4 else ("a", 1) if i < 8 else ("b", 2)
        engine.add(_spec(artifact, i, "ROMEO:", 200, group=group, tenant=tenant))
    turns = [engine.turn() for _ in range(3)]
    running = set(turns[-1].requests)
    assert len(running) == 4
    assert len(running & set(range(8, 12))) == 2  # sender b
    assert len(running & set(range(4))) == 1 and len(running & set(range(4, 8))) == 1


def test_a_request_never_parks_its_own_sequences_for_each_other(artifact: Artifact) -> None:
    engine = _engine(artifact, max_active=2)
    for i in range(6):
        engine.add(_spec(artifact, i, "ROMEO:", 20, group=0))
    texts, _, turns = _run(engine)
    # first come first served within one request: 0 and 1 run to their end before 2 starts
    assert _first_token_turn(turns, 2) > max(i for i, t in enumerate(turns) if 0 in t.requests)
    assert sorted(texts) == list(range(6))
