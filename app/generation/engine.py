"""The generation engine: continuous batching for one language model, as a plain object.

`add(spec)` queues a request, `cancel(id)` drops it, and each `turn()` does one round of work
and returns what it produced. A turn reads one chunk of every prompt being prefilled, so a
long prompt delays the running streams by one chunk's time, not by its whole length; a prompt
read to its end samples its first token and joins the running batch. Then the turn steps every
running sequence by one token in one batched cell step. Each row samples with its
own parameters and its own seed's random numbers, so a text never depends on its batch mates.

Nothing here knows about threads, event loops, HTTP or metrics: the transports
(`app.generation.thread`, `app.generation.process`) run it with `messages.drive`, carrying
specs in and turns out, and the server records what a turn says.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

from app.generation.fair import FairQueue, group_of, share_of
from app.generation.messages import Failure, GenerationSpec, Turn
from app.generation.rows import Rows, Seq, join_rows, take_row
from textrnn.artifact import Artifact
from textrnn.inference import pad_batch
from textrnn.nets import CharLM, State, concat_states, index_state
from textrnn.sampling import RowParams, choose_tokens, top_alternatives, uniform_table

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine:
    """Continuous batching for one language model; see the module's docstring."""

    def __init__(self, net: CharLM, texts: list[str], unk: int, max_active: int,
                 prefill_chunk: int = 128, clock: Callable[[], float] = time.monotonic) -> None:
        self.net, self.texts, self.unk = net, texts, unk
        self.max_active, self.prefill_chunk, self.clock = max_active, prefill_chunk, clock
        self.device = net.head.weight.device
        self.step = net.step  # a transport may wrap it (fault injection, slowed steps)
        self._queue = FairQueue()
        self._cancelled: set[int] = set()
        self._prefilling = Rows()
        self._running = Rows()

    @classmethod
    def from_artifact(cls, artifact: Artifact, max_active: int, prefill_chunk: int) -> Engine:
        """The engine of a loaded language model folder."""
        assert isinstance(artifact.net, CharLM)
        unk = artifact.tokenizer.get_vocab().get("<unk>", 0)
        return cls(artifact.net, artifact.token_texts, unk, max_active, prefill_chunk)

    @property
    def idle(self) -> bool:
        """Whether a turn would have nothing to do."""
        return not (self._queue or self._prefilling.seqs or self._running.seqs)

    def add(self, spec: GenerationSpec) -> None:
        """Queue a request."""
        self._queue.push(spec)

    def cancel(self, request: int) -> None:
        """Drop a request, queued or running, before the next turn's work."""
        self._cancelled.add(request)

    def turn(self) -> Turn:
        """Admit, prefill one chunk, step the running batch; what happened. A failing step
        fails the requests it held, never the engine."""
        turn = Turn()
        self._drop_cancelled()
        self._admit(turn)
        try:
            # Prefill first: a short prompt's first token then leaves in the turn it arrived
            # in, and its row takes part in this turn's step too.
            if self._prefilling.seqs:
                self._prefill(turn)
            if self._running.seqs:
                self._step(turn)
        except Exception as exc:
            log.exception("generation step failed")
            for seq in self._prefilling.seqs + self._running.seqs:
                turn.failures.append(Failure(seq.spec.id, "error", f"{type(exc).__name__}: {exc}"))
            self._prefilling, self._running = Rows(), Rows()
        turn.active = len(self._prefilling.seqs) + len(self._running.seqs)
        turn.waiting = len(self._queue)
        return turn

    def _drop_cancelled(self) -> None:
        if not self._cancelled:
            return
        gone = self._cancelled
        self._queue.drop(gone)
        for rows in (self._prefilling, self._running):
            rows.keep([i for i, seq in enumerate(rows.seqs) if seq.spec.id not in gone])
        self._cancelled = set()

    def _holders(self) -> tuple[Counter[str], Counter[int]]:
        """Slots held by each sender and each request (running or prefilling)."""
        tenants: Counter[str] = Counter()
        groups: Counter[int] = Counter()
        for seq in self._prefilling.seqs + self._running.seqs:
            tenants[seq.spec.tenant] += 1
            groups[group_of(seq.spec)] += 1
        return tenants, groups

    def _preempt(self, tenants: Counter[str], groups: Counter[int]) -> None:
        """While every slot is taken and someone waits who holds fewer than a running
        sequence's sender (or, for one sender, its request) would after giving one up, park
        that sequence: its row leaves the batch with its recurrent state, and it queues at
        the front of its request's line to resume where it stopped."""
        running = self._running
        while (len(self._prefilling.seqs) + len(running.seqs) >= self.max_active
               and running.seqs and self._queue):
            needy = self._queue.neediest(tenants, groups)
            assert needy is not None
            (held, group_held), tenant = needy
            row = max(range(len(running.seqs)),
                      key=lambda r: share_of(running.seqs[r].spec, tenants, groups))
            spec = running.seqs[row].spec
            rich, rich_group = share_of(spec, tenants, groups)
            if spec.tenant != tenant and rich - 1 < held + 1:
                return
            if spec.tenant == tenant and rich_group - 1 < group_held + 1:
                return
            seq = running.seqs[row]
            seq.parked = take_row(running, row)
            tenants[spec.tenant] -= 1
            groups[group_of(spec)] -= 1
            self._queue.push(seq, front=True)

    def _admit(self, turn: Turn) -> None:
        now = self.clock()
        new: list[Seq] = []
        resumed: list[Rows] = []
        tenants, groups = self._holders()
        if self._queue:
            self._preempt(tenants, groups)
        busy = len(self._prefilling.seqs) + len(self._running.seqs)
        while self._queue and busy + len(new) + len(resumed) < self.max_active:
            item = self._queue.pop(tenants, groups)
            if isinstance(item, Seq):  # parked: back into the running batch as it was
                assert item.parked is not None
                resumed.append(item.parked)
                item.parked = None
                continue
            spec = item
            if now > spec.deadline:
                tenants[spec.tenant] -= 1
                groups[group_of(spec)] -= 1
                turn.failures.append(Failure(spec.id, "deadline", f"request waited "
                                             f"{now - spec.enqueued:.1f} s, past its deadline"))
                continue
            turn.admitted.append((spec.id, now - spec.enqueued))
            new.append(Seq(spec))
        if resumed:
            self._running = join_rows([self._running, *resumed])
        if not new:
            return
        # Each request's random numbers, one per token, drawn now: a step then needs one
        # small tensor for them instead of hashing seeds and steps.
        seeds = torch.tensor([q.spec.seed for q in new], dtype=torch.long)
        table = uniform_table(seeds, max(q.spec.sampling.max_new_tokens for q in new)).tolist()
        for seq, row in zip(new, table, strict=True):
            seq.uniforms = row[:seq.spec.sampling.max_new_tokens]
        state = self.net.initial_state(len(new), self.device)
        group = self._prefilling
        group.seqs = group.seqs + new
        group.state = state if group.state is None else concat_states([group.state, state])

    def _prefill(self, turn: Turn) -> None:
        """Read the next chunk of every prompt being prefilled; prompts read to the end
        sample their first token and join the running batch."""
        group, chunk = self._prefilling, self.prefill_chunk
        assert group.state is not None
        pieces = [list(q.spec.prompt_ids[q.read:q.read + chunk]) or [self.unk]
                  for q in group.seqs]
        ids, lengths = pad_batch(pieces, self.device)  # B T
        logits, group.state = self.net.prefill(ids, lengths, group.state)  # B V
        for seq, piece in zip(group.seqs, pieces, strict=True):
            seq.read += len(piece)
        done = [i for i, q in enumerate(group.seqs) if q.read >= len(q.spec.prompt_ids)]
        if not done:
            return
        index = torch.tensor(done, dtype=torch.long, device=self.device)
        seqs = [group.seqs[i] for i in done]
        state = index_state(group.state, index)
        finished = set(done)
        group.keep([i for i in range(len(group.seqs)) if i not in finished])
        self._join(seqs, state, logits.index_select(0, index), turn)

    def _join(self, seqs: list[Seq], state: State, logits: Tensor, turn: Turn) -> None:
        """Add prefilled sequences to the running batch with their first tokens."""
        specs = [q.spec.sampling for q in seqs]
        params = RowParams(
            torch.tensor([s.temperature for s in specs], device=self.device),
            torch.tensor([s.top_k for s in specs], dtype=torch.long, device=self.device),
            torch.tensor([s.top_p for s in specs], device=self.device),
            torch.tensor([s.repetition_penalty for s in specs], device=self.device),
            torch.tensor([q.spec.seed for q in seqs], dtype=torch.long, device=self.device),
            self._column([s.typical_p for s in specs], 1.0),
            self._column([s.frequency_penalty for s in specs], 0.0),
            self._column([s.presence_penalty for s in specs], 0.0))
        vocab = len(self.texts)
        seen = torch.zeros(len(seqs), vocab, device=self.device)  # B V
        for row, seq in enumerate(seqs):
            seen[row] = torch.bincount(torch.tensor(seq.spec.prompt_ids, dtype=torch.long),
                                       minlength=vocab)[:vocab].to(seen)
        last = torch.zeros(len(seqs), dtype=torch.long, device=self.device)
        start = len(self._running.seqs)
        self._running = join_rows([self._running, Rows(seqs, state, last, seen, params)])
        turn.firsts += len(seqs)
        self._sample(logits, range(start, start + len(seqs)), turn)

    def _step(self, turn: Turn) -> None:
        batch = self._running
        assert batch.last is not None
        logits, batch.state = self.step(batch.last, batch.state)  # B V
        turn.steps.append(len(batch.seqs))
        self._sample(logits, range(len(batch.seqs)), turn)

    def _sample(self, logits: Tensor, rows: range, turn: Turn) -> None:
        """Sample the given rows of the running batch from `logits` (one row each), record
        the tokens in `turn`, and retire the rows that finished."""
        batch = self._running
        assert batch.params is not None and batch.seen is not None and batch.last is not None
        params = batch.params
        if len(rows) != len(batch.seqs):
            params = params.rows(torch.arange(rows.start, rows.stop, device=self.device))
        seqs = batch.seqs[rows.start:rows.stop]
        uniforms = torch.tensor([q.uniforms[q.generated] for q in seqs], device=self.device)
        # Counts matter only to rows with a penalty, and a row's penalties are fixed: without
        # one in the batch, the counts are neither read nor kept.
        penalised = params.uses.penalty or params.uses.additive
        seen = batch.seen[rows.start:rows.stop] if penalised else None
        ids, logprobs = choose_tokens(logits, params, None, seen, banned=self.unk,
                                      uniforms=uniforms)
        if seen is not None:
            seen[torch.arange(len(rows), device=self.device), ids] += 1
        batch.last[rows.start:rows.stop] = ids
        self._alternatives(logits, seqs, len(turn.requests), turn)
        keep = list(range(rows.start))
        for row, seq, token, logprob in zip(rows, seqs, ids.tolist(), logprobs.tolist(),
                                            strict=True):
            turn.requests.append(seq.spec.id)
            turn.tokens.append(token)
            turn.logprobs.append(logprob)
            seq.generated += 1
            reason = self._finish_reason(seq, self.texts[token])
            if reason is None:
                keep.append(row)
            else:
                turn.finished[seq.spec.id] = reason
        batch.keep(keep + list(range(rows.stop, len(batch.seqs))))

    def _column(self, values: list[float], neutral: float) -> Tensor | None:
        """A per-row parameter column, or None when every row has the neutral value."""
        if all(v == neutral for v in values):
            return None
        return torch.tensor(values, device=self.device)

    def _alternatives(self, logits: Tensor, seqs: list[Seq], at: int, turn: Turn) -> None:
        """Each row's likeliest tokens under the model, for the rows that asked for some."""
        wanted = [q.spec.sampling.top_n_tokens for q in seqs]
        most = max(wanted)
        if most == 0:
            return
        logits = logits.float().clone()
        logits[:, self.unk] = float("-inf")
        ids, logprobs = top_alternatives(torch.log_softmax(logits, dim=-1), most)  # B n
        for row, (n, row_ids, row_lps) in enumerate(zip(wanted, ids.tolist(), logprobs.tolist(),
                                                        strict=True)):
            if n:
                turn.alternatives[at + row] = list(zip(row_ids[:n], row_lps[:n], strict=True))

    @staticmethod
    def _finish_reason(seq: Seq, text: str) -> str | None:
        if seq.stops is not None:
            seq.matched, hit = seq.stops.feed(seq.matched, text)
            if hit:
                return "stop_sequence"
        return "length" if seq.generated >= seq.spec.sampling.max_new_tokens else None

