"""Continuous batching for generation.

One scheduler thread per language model holds every active sequence's recurrent state.
Each turn of its loop prefills newly admitted prompts together (packed, so each row's state
is taken after its own last character), then advances every active sequence by one token in
a single batched cell step, samples each row with its own parameters and seed, streams the
tokens out, and drops the rows that finished, were cancelled or whose client left.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.errors import DeadlineExceeded, Overloaded
from app.metrics import (
    ACTIVE_SEQUENCES,
    BATCH_SIZE,
    GENERATED_TOKENS,
    QUEUE_DEPTH,
    QUEUE_WAIT,
    TIME_TO_FIRST_TOKEN,
)
from textrnn.artifact import Artifact
from textrnn.inference import pad_batch
from textrnn.nets import CharLM, State, concat_states, index_state
from textrnn.sampling import RowParams, choose_tokens, top_alternatives, uniform_table

__all__ = ["GenerationJob", "GenerationScheduler", "TokenEvent"]

log = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    """One generated token, or the end of a sequence (`finish_reason` set)."""

    index: int
    id: int
    text: str
    logprob: float
    finish_reason: str | None = None
    top_tokens: list[tuple[int, str, float]] | None = None  # (id, text, logprob), best first


@dataclass
class GenerationJob:
    """One request's prompt and parameters, and the channel its tokens come back on."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    typical_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    top_n_tokens: int = 0  # alternatives reported with each token
    events: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    on_cancel: Callable[[], None] | None = None  # set by a scheduler that must be told
    ended: bool = False  # its last event was handed over (on the event loop)
    waiter: asyncio.Future[None] | None = None  # a stream's pause; the job's end cuts it short
    # Written by the scheduler thread only:
    admitted: bool = False
    generated: int = 0
    text: str = ""
    uniforms: list[float] = field(default_factory=list)  # one per step, drawn at admission

    def cancel(self) -> None:
        """Ask the scheduler to drop this sequence at its next step."""
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()

    def put(self, event: TokenEvent | BaseException) -> None:
        """Hand the request an event (on the event loop). Its last token or an error ends a
        stream's pause at once, so that the end of a stream is never held back."""
        self.events.put_nowait(event)
        if isinstance(event, BaseException) or event.finish_reason is not None:
            self.ended = True
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def _emit(self, event: TokenEvent | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.put, event)


class _Batch:
    """The running batch: jobs, their state, last tokens, token counts and parameters."""

    def __init__(self) -> None:
        self.jobs: list[GenerationJob] = []
        self.state: State | None = None
        self.last: Tensor = torch.empty(0, dtype=torch.long)  # B
        self.seen: Tensor | None = None  # B V: each token's count so far (prompt included)
        self.params: RowParams | None = None

    def add(self, jobs: list[GenerationJob], state: State, last: Tensor, seen: Tensor,
            params: RowParams) -> None:
        if not self.jobs:
            self.jobs, self.state, self.last, self.seen, self.params = jobs, state, last, seen, params
            return
        assert self.state is not None and self.seen is not None and self.params is not None
        self.jobs = self.jobs + jobs
        self.state = concat_states([self.state, state])
        self.last = torch.cat([self.last, last])
        self.seen = torch.cat([self.seen, seen])
        self.params = RowParams.cat([self.params, params])

    def keep(self, rows: list[int]) -> None:
        if len(rows) == len(self.jobs):
            return
        if not rows:
            self.__init__()  # type: ignore[misc]
            return
        assert self.state is not None and self.seen is not None and self.params is not None
        index = torch.tensor(rows, dtype=torch.long, device=self.last.device)
        self.jobs = [self.jobs[i] for i in rows]
        self.state = index_state(self.state, index)
        self.last = self.last.index_select(0, index)
        self.seen = self.seen.index_select(0, index)
        self.params = self.params.rows(index)


class GenerationScheduler:
    """Runs continuous batching for one language model in a thread of its own."""

    def __init__(self, artifact: Artifact, device: torch.device, max_active: int,
                 max_queue: int, timeout_s: float = 60.0) -> None:
        assert isinstance(artifact.net, CharLM)
        self.name = artifact.name
        self.net: CharLM = artifact.net
        self.device = device
        self.max_active = max_active
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        vocab = artifact.tokenizer.get_vocab()
        self.unk = vocab.get("<unk>", 0)
        self.vocab_size = artifact.net_config.vocab_size
        self.texts = [""] * self.vocab_size
        for token, i in vocab.items():
            self.texts[i] = token
        self.steps_run = 0
        self._inbox: queue.Queue[GenerationJob | None] = queue.Queue()
        self._batch = _Batch()
        self._thread = threading.Thread(target=self._run, name=f"generate-{self.name}", daemon=True)
        self._stopping = False
        # With nothing running, the thread sleeps in the queue until a job arrives. A worker
        # process waits on its socket instead and must find the queue without blocking.
        self.wait_in_queue = True

    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after the current step; unfinished jobs get an error."""
        self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout=10)

    @property
    def active(self) -> int:
        """Sequences in the running batch."""
        return len(self._batch.jobs)

    @property
    def waiting(self) -> int:
        """Jobs queued for a place in the batch."""
        return self._inbox.qsize()

    def submit(self, job: GenerationJob) -> None:
        """Queue a job (from the event loop); raises `Overloaded` when the queue is full."""
        if self._inbox.qsize() >= self.max_queue:
            raise Overloaded(f"model '{self.name}' has {self.max_queue} generations waiting; "
                             "retry later")
        job.deadline = job.enqueued + self.timeout_s
        self._inbox.put(job)
        QUEUE_DEPTH.labels(self.name).set(self._inbox.qsize())

    # The rest runs in the scheduler thread.

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopping:
                self.turn()
        for job in self._batch.jobs:
            job._emit(Overloaded(f"model '{self.name}' is shutting down"))

    def turn(self) -> None:
        """One turn of the loop: admit and prefill, then one step. An exception fails the
        running batch's requests, not the loop (this thread's, or a worker process's)."""
        try:
            self._turn()
        except Exception as exc:
            log.exception("generation step failed on model %s", self.name)
            for job in self._batch.jobs:
                job._emit(exc)
            self._batch = _Batch()

    def _admit(self) -> list[GenerationJob]:
        jobs: list[GenerationJob] = []
        block = self.wait_in_queue and not self._batch.jobs
        while len(self._batch.jobs) + len(jobs) < self.max_active:
            try:
                job = self._inbox.get(block=block and not jobs)
            except queue.Empty:
                break
            if job is None:
                self._stopping = True
                break
            now = time.monotonic()
            if job.cancelled:
                continue
            if now > job.deadline:
                job._emit(DeadlineExceeded(f"request waited {now - job.enqueued:.1f} s, over "
                                           f"the {self.timeout_s:g} s deadline"))
                continue
            QUEUE_WAIT.labels(self.name).observe(now - job.enqueued)
            job.admitted = True
            jobs.append(job)
        QUEUE_DEPTH.labels(self.name).set(self._inbox.qsize())
        return jobs

    def _turn(self) -> None:
        new = self._admit()
        if new:
            self._prefill(new)
        if self._batch.jobs:
            self._step()
        ACTIVE_SEQUENCES.labels(self.name).set(len(self._batch.jobs))

    def _prefill(self, jobs: list[GenerationJob]) -> None:
        ids, lengths = pad_batch([j.prompt_ids for j in jobs], self.device)  # B T
        logits, state = self.net.prefill(ids, lengths)  # B V
        params = RowParams(
            torch.tensor([j.temperature for j in jobs], device=self.device),
            torch.tensor([j.top_k for j in jobs], dtype=torch.long, device=self.device),
            torch.tensor([j.top_p for j in jobs], device=self.device),
            torch.tensor([j.repetition_penalty for j in jobs], device=self.device),
            torch.tensor([j.seed for j in jobs], dtype=torch.long, device=self.device),
            _column([j.typical_p for j in jobs], 1.0, self.device),
            _column([j.frequency_penalty for j in jobs], 0.0, self.device),
            _column([j.presence_penalty for j in jobs], 0.0, self.device),
        )
        seen = torch.zeros(len(jobs), self.vocab_size, device=self.device)  # B V
        for row, job in enumerate(jobs):
            seen[row] = torch.bincount(torch.tensor(job.prompt_ids, dtype=torch.long),
                                       minlength=self.vocab_size)[:self.vocab_size].to(seen)
        # Each job's random numbers, one per step, drawn now: a step then needs one small
        # tensor for them instead of hashing seeds and steps (a dozen tensor operations).
        table = uniform_table(params.seed, max(j.max_new_tokens for j in jobs)).tolist()
        for job, row in zip(jobs, table, strict=True):
            job.uniforms = row[:job.max_new_tokens]
        first = time.monotonic()
        for job in jobs:
            TIME_TO_FIRST_TOKEN.labels(self.name).observe(first - job.enqueued)
        placeholder = torch.zeros(len(jobs), dtype=torch.long, device=self.device)
        start = len(self._batch.jobs)
        self._batch.add(jobs, state, placeholder, seen, params)
        self._emit_tokens(logits, range(start, start + len(jobs)))

    def _step(self) -> None:
        batch = self._batch
        logits, batch.state = self.net.step(batch.last, batch.state)  # B V
        BATCH_SIZE.labels(self.name).observe(len(batch.jobs))
        self.steps_run += 1
        self._emit_tokens(logits, range(len(batch.jobs)))

    def _emit_tokens(self, logits: Tensor, rows: range) -> None:
        """Sample the given rows of the batch from `logits` (one row each), emit, retire."""
        batch = self._batch
        assert batch.params is not None and batch.seen is not None
        params = batch.params
        if len(rows) != len(batch.jobs):
            params = params.rows(torch.arange(rows.start, rows.stop, device=self.device))
        uniforms = torch.tensor([batch.jobs[r].uniforms[batch.jobs[r].generated] for r in rows],
                                device=self.device)
        # Counts matter only to rows with a penalty, and a row's penalties are fixed: without
        # one in the batch, the counts are neither read nor kept.
        penalised = params.uses.penalty or params.uses.additive
        seen = batch.seen[rows.start:rows.stop] if penalised else None
        ids, logprobs = choose_tokens(logits, params, None, seen, banned=self.unk,
                                      uniforms=uniforms)
        if seen is not None:
            seen[torch.arange(len(rows), device=self.device), ids] += 1
        top = self._top_tokens(logits, [batch.jobs[r].top_n_tokens for r in rows])
        batch.last[rows.start:rows.stop] = ids
        GENERATED_TOKENS.labels(self.name).inc(len(rows))
        keep = list(range(rows.start)) if rows.start else []
        out: list[tuple[GenerationJob, TokenEvent]] = []
        for r, token, logprob, alternatives in zip(rows, ids.tolist(), logprobs.tolist(), top,
                                                   strict=True):
            job = batch.jobs[r]
            text = self.texts[token]
            job.text += text
            job.generated += 1
            reason = _finish_reason(job)
            out.append((job, TokenEvent(job.generated - 1, token, text, logprob, reason,
                                        alternatives)))
            if reason is None:
                keep.append(r)
        keep += list(range(rows.stop, len(batch.jobs)))
        batch.keep(keep)
        if out:  # one wake-up of the event loop per step, not one per sequence
            out[0][0].loop.call_soon_threadsafe(_deliver, out)

    def _top_tokens(self, logits: Tensor, wanted: list[int]
                    ) -> list[list[tuple[int, str, float]] | None]:
        """Each row's `wanted` likeliest tokens under the model (None where 0 are wanted)."""
        most = max(wanted, default=0)
        if most == 0:
            return [None] * len(wanted)
        logits = logits.float().clone()
        logits[:, self.unk] = float("-inf")
        ids, logprobs = top_alternatives(torch.log_softmax(logits, dim=-1), most)  # B n
        return [[(i, self.texts[i], lp) for i, lp in zip(row_ids[:n], row_lps[:n], strict=True)]
                if n else None for n, row_ids, row_lps in zip(wanted, ids.tolist(),
                                                              logprobs.tolist(), strict=True)]


def _column(values: list[float], neutral: float, device: torch.device) -> Tensor | None:
    """A per-row parameter column, or None when every row has the neutral value."""
    if all(v == neutral for v in values):
        return None
    return torch.tensor(values, device=device)


def _deliver(events: list[tuple[GenerationJob, TokenEvent]]) -> None:
    """Hand a step's tokens to their requests (runs on the event loop)."""
    for job, event in events:
        job.put(event)


def _finish_reason(job: GenerationJob) -> str | None:
    if job.cancelled:
        return "cancelled"
    tail = job.text[-max((len(s) for s in job.stop), default=0) - 1:]
    if any(tail.endswith(s) for s in job.stop):
        return "stop_sequence"
    if job.generated >= job.max_new_tokens:
        return "length"
    return None


def default_seed() -> int:
    """A fresh random seed for a request that gave none."""
    return int(torch.randint(0, 2**53, (1,)).item())
