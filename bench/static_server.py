"""A static-batching baseline for `python -m bench.openloop`, as TorchServe and LitServe batch.

A collector takes up to `max_batch` waiting requests (waiting at most `window_ms` for more
after the first), prefills them together and steps them in lock-step with the model's `step`
until the longest is done; rows that finished keep stepping as padding but stop streaming.
Only then is the next batch taken. Same model, weights, request shape (TGI's /generate and
/generate_stream) and sampling (`textrnn.sampling`, per-row seeds) as the service, so the two
do the same work per token and differ only in when a request may join a batch.

Run it with `uvicorn --factory bench.static_server:app_from_env` (settings from `STATIC_*`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.errors import InvalidInput, stream_error
from app.routes.generate import TgiFrames
from app.schemas import GenerateRequest
from app.settings import Settings
from textrnn.artifact import Artifact, load_artifact
from textrnn.inference import pad_batch
from textrnn.nets import CharLM
from textrnn.sampling import RowParams, choose_tokens, uniform_table

__all__ = ["StaticBatcher", "StaticJob", "TokenOut", "app_from_env", "create_app"]

# The service's default limits (RNN_MAX_NEW_TOKENS, ...), checked as the service checks them.
_LIMITS = Settings()


@dataclass
class TokenOut:
    """One generated token; `finish_reason` is set on a row's last."""

    index: int
    id: int
    text: str
    logprob: float
    finish_reason: str | None = None
    top_tokens: None = None  # the baseline offers no top_n_tokens


@dataclass
class StaticJob:
    """One request's prompt and parameters, and the queue its tokens come back on."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    loop: asyncio.AbstractEventLoop
    stop: list[str] = field(default_factory=list)
    events: asyncio.Queue[list[TokenOut] | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    # Written by the batcher thread only:
    text: str = ""
    generated: int = 0
    done: bool = False
    pending: list[TokenOut] = field(default_factory=list)


class StaticBatcher:
    """Runs static batches of generation jobs, one batch at a time, in a thread of its own."""

    def __init__(self, artifact: Artifact, max_batch: int, window_s: float,
                 flush_s: float) -> None:
        assert isinstance(artifact.net, CharLM)
        self.net: CharLM = artifact.net
        self.max_batch, self.window_s, self.flush_s = max_batch, window_s, flush_s
        self.unk = artifact.tokenizer.get_vocab().get("<unk>", 0)
        self.vocab_size = artifact.net_config.vocab_size
        self.texts = artifact.token_texts  # as the service's engine reads them
        self.batch_sizes: list[int] = []  # one entry per batch run
        self.steps_run = 0
        self.rows_stepped = 0  # rows over all steps, padding rows included
        self._inbox: queue.Queue[StaticJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="static-batcher", daemon=True)

    def start(self) -> None:
        """Start the batcher thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current batch."""
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: StaticJob) -> None:
        """Queue a job for a later batch (from the event loop)."""
        self._inbox.put(job)

    # The rest runs in the batcher thread.

    def _run(self) -> None:
        with torch.inference_mode():  # grad mode is per thread
            while (jobs := self._collect()) is not None:
                try:
                    self.run_batch(jobs)
                except Exception as exc:  # fail this batch's requests, keep serving
                    for job in jobs:
                        job.loop.call_soon_threadsafe(job.events.put_nowait, exc)

    def _collect(self) -> list[StaticJob] | None:
        """Up to `max_batch` jobs: the first to arrive, and those that come within the window."""
        first = self._inbox.get()
        if first is None:
            return None
        jobs = [first]
        until = time.monotonic() + self.window_s
        while len(jobs) < self.max_batch:
            try:
                job = self._inbox.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._inbox.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs

    def run_batch(self, jobs: list[StaticJob]) -> None:
        """Prefill `jobs` together and step them in lock-step until the longest is done."""
        ids, lengths = pad_batch([j.prompt_ids for j in jobs], "cpu")  # B T
        logits, state = self.net.prefill(ids, lengths)  # B V
        params = RowParams(
            torch.tensor([j.temperature for j in jobs]),
            torch.tensor([j.top_k for j in jobs], dtype=torch.long),
            torch.tensor([j.top_p for j in jobs]),
            torch.tensor([j.repetition_penalty for j in jobs]),
            torch.tensor([j.seed for j in jobs], dtype=torch.long))
        seen = None
        if params.uses.penalty:
            seen = torch.zeros(len(jobs), self.vocab_size, dtype=torch.bool)  # B V
            for row, job in enumerate(jobs):
                seen[row, job.prompt_ids] = True
        longest = max(j.max_new_tokens for j in jobs)
        uniforms = uniform_table(params.seed, longest)  # B longest, as the service draws them
        self.batch_sizes.append(len(jobs))
        flushed = time.monotonic()
        for step in range(longest):
            chosen, logprobs = choose_tokens(logits, params, None, seen, banned=self.unk,
                                             uniforms=uniforms[:, step])  # B, B
            if seen is not None:
                seen[torch.arange(len(jobs)), chosen] = True
            ended = self._record(jobs, chosen.tolist(), logprobs.tolist())
            now = time.monotonic()
            if step == 0 or ended or now - flushed >= self.flush_s:
                self._flush(jobs)
                flushed = now
            if step + 1 < longest:
                # Every row steps, finished ones too: their state is padding until the end.
                logits, state = self.net.step(chosen, state)  # B V
                self.steps_run += 1
                self.rows_stepped += len(jobs)

    def _record(self, jobs: list[StaticJob], ids: list[int], logprobs: list[float]) -> bool:
        """Append each live row's token to its pending events; whether any row ended."""
        ended = False
        for job, token, logprob in zip(jobs, ids, logprobs, strict=True):
            if job.done:
                continue
            text = self.texts[token]
            job.text += text
            job.generated += 1
            reason = _finish_reason(job)
            job.pending.append(TokenOut(job.generated - 1, token, text, logprob, reason))
            if reason is not None:
                job.done = ended = True
        return ended

    def _flush(self, jobs: list[StaticJob]) -> None:
        """Hand the tokens gathered since the last flush to their requests: one wake-up of
        the event loop for the whole batch, and one write per stream per flush, as the
        service's RNN_STREAM_FLUSH_MS paces its streams."""
        out = [(job, job.pending) for job in jobs if job.pending]
        for job in jobs:
            job.pending = []
        if out:
            out[0][0].loop.call_soon_threadsafe(_deliver, out)


def _deliver(out: list[tuple[StaticJob, list[TokenOut]]]) -> None:
    for job, events in out:
        job.events.put_nowait(events)


def _finish_reason(job: StaticJob) -> str | None:
    if job.cancelled:
        return "cancelled"
    if any(job.text.endswith(s) for s in job.stop):
        return "stop_sequence"
    if job.generated >= job.max_new_tokens:
        return "length"
    return None


async def _next(job: StaticJob) -> list[TokenOut]:
    events = await job.events.get()
    if isinstance(events, BaseException):
        raise events
    return events


async def _stream(job: StaticJob) -> AsyncIterator[str]:
    """The job's tokens as TGI's events, written by the service's own frame writer."""
    frames = TgiFrames(job.seed, len(job.prompt_ids))
    try:
        while True:
            events = await _next(job)
            yield "".join(frames.event(e) for e in events)
            if events[-1].finish_reason is not None:
                return
    except Exception as exc:
        yield stream_error(exc, "hf")
    finally:
        job.cancelled = True  # a client that left stops streaming; its row pads on


def _job(body: GenerateRequest, artifact: Artifact, seed: int) -> StaticJob:
    params = body.parameters
    try:
        sampling = params.to_sampling(_LIMITS)
    except InvalidInput as e:
        raise HTTPException(422, str(e)) from None
    return StaticJob(artifact.tokenizer.encode(body.inputs, add_special_tokens=False).ids,
                     sampling.max_new_tokens, sampling.temperature, sampling.top_k,
                     sampling.top_p, sampling.repetition_penalty,
                     params.seed if params.seed is not None else seed,
                     asyncio.get_running_loop(), stop=list(params.stop))


def create_app(folder: Path, max_batch: int = 64, window_ms: float = 5.0,
               weights: str = "float16", flush_ms: float = 20.0) -> FastAPI:
    """The baseline server for the language model in `folder`."""
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(1)  # as the service's RNN_THREADS=1
        artifact = load_artifact(folder, "cpu", weights)
        artifact.net.eval()
        batcher = StaticBatcher(artifact, max_batch, window_ms / 1000, flush_ms / 1000)
        batcher.start()
        state.update(artifact=artifact, batcher=batcher)
        yield
        batcher.stop()

    app = FastAPI(title="static-batching baseline", lifespan=lifespan)
    counter = iter(range(1, 2**53))

    def start(body: GenerateRequest) -> StaticJob:
        artifact, batcher = state["artifact"], state["batcher"]
        assert isinstance(artifact, Artifact) and isinstance(batcher, StaticBatcher)
        job = _job(body, artifact, next(counter))
        batcher.submit(job)
        return job

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        batcher = state["batcher"]
        assert isinstance(batcher, StaticBatcher)
        return {"batches": len(batcher.batch_sizes), "steps": batcher.steps_run,
                "rows_stepped": batcher.rows_stepped}

    @app.post("/generate")
    async def generate(body: GenerateRequest) -> Response:
        job = start(body)
        if body.stream:
            return StreamingResponse(_stream(job), media_type="text/event-stream")
        events: list[TokenOut] = []
        while not events or events[-1].finish_reason is None:
            events += await _next(job)
        out: dict[str, object] = {"generated_text": job.text, "details": None}
        if body.parameters.details:
            out["details"] = {"finish_reason": events[-1].finish_reason,
                              "generated_tokens": len(events), "seed": job.seed,
                              "tokens": [{"id": e.id, "text": e.text, "logprob": e.logprob,
                                          "special": False} for e in events]}
        return JSONResponse(out)

    @app.post("/generate_stream")
    async def generate_stream(body: GenerateRequest) -> Response:
        return StreamingResponse(_stream(start(body)), media_type="text/event-stream")

    app.state.baseline = state
    return app


def app_from_env() -> FastAPI:
    """`create_app` with settings from STATIC_MODEL, STATIC_MAX_BATCH, STATIC_WINDOW_MS,
    STATIC_FLUSH_MS and RNN_WEIGHTS (uvicorn's --factory calls this)."""
    root = Path(__file__).resolve().parent.parent
    return create_app(Path(os.environ.get("STATIC_MODEL", root / "models" / "shakespeare")),
                      int(os.environ.get("STATIC_MAX_BATCH", "64")),
                      float(os.environ.get("STATIC_WINDOW_MS", "5")),
                      os.environ.get("RNN_WEIGHTS", "float16"),
                      float(os.environ.get("STATIC_FLUSH_MS", "20")))
