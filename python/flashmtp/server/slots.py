"""Slots: P sessions over one engine, each generation stepped in a worker thread, results handed to asyncio.

    scheduler = Scheduler(model, n_slots=2, n_ctx=4096, max_queue=64, metrics=Metrics())
    async with contextlib.aclosing(scheduler.run(job)) as events:
        async for event in events:       # Piece(text)..., then Done(stats, finish_reason) or Failed(error)
            ...

Each slot keeps its session and the tokens in it between requests: a request goes to the free slot whose
cached tokens share the longest prefix with its prompt, and only the rest of the prompt is decoded (an
agent's growing conversation re-decodes only its new turn). Exact rewind and batch-invariant kernels make
the result identical to a fresh session's.

Requests beyond P wait in FIFO order (at most max_queue of them; more get a 503). Each generation runs in
its own worker thread: ``Generation.step`` releases the GIL while the model runs and the engine's thread
pool runs one forward pass at a time, so P generations interleave token by token without blocking the
event loop. A job cancelled (client gone, stop sequence found, handler cancelled) stops before its next
token; its slot is released only once the worker has returned, so a session is never used by two threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flashmtp import _core
from flashmtp.model import Model
from flashmtp.server.logprobs import LogprobGeneration, LoopStats, TokenLogprob
from flashmtp.server.metrics import Metrics
from flashmtp.server.protocol import APIError

__all__ = ["Done", "Failed", "Job", "Piece", "Scheduler", "StopMatcher"]


@dataclass
class Piece:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens sampled in this step


@dataclass
class Done:
    stats: _core.GenerateStats | LoopStats
    finish_reason: str  # "stop" (end-of-generation token or stop sequence) or "length"


@dataclass
class Failed:
    error: APIError


Event = Piece | Done | Failed


class StopMatcher:
    """Cuts text at the first stop sequence. Text that may be the start of a stop sequence is held back
    until the next piece tells, so no part of a stop sequence is ever sent."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop sequence ended the text)."""
        text = self._held + piece
        if not self.stops:
            self._held = ""
            return text, False
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self._held = ""
            return text[:min(found)], True
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@dataclass(eq=False)  # identity: jobs are tracked in a set
class Job:
    """One request's generation: prompt token ids and sampling settings, run by :meth:`Scheduler.run`."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    seed: int
    stop: Sequence[str] = ()
    logprobs: int | None = None  # None: none wanted; n: each token's log-probability and n alternatives
    draft: int = 0  # MTP draft tokens per round: 0 off, -1 auto (Generation's argument)
    draft_mode: str = "coupled"
    cancelled: threading.Event = field(default_factory=threading.Event)  # read by the worker thread
    waiting: asyncio.Future[_Slot] | None = None  # while queued for a slot

    def cancel(self) -> None:
        """Stop the generation before its next token, or leave the queue (call from the event loop)."""
        self.cancelled.set()
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(APIError(499, "the client closed the request", code="client_closed"))


@dataclass
class _Slot:
    session: _core.Session
    cached: list[int] = field(default_factory=list)  # tokens in the session's first positions
    last_used: int = 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class Scheduler:
    def __init__(self, model: Model, n_slots: int, n_ctx: int, max_queue: int, metrics: Metrics) -> None:
        if n_slots < 1:
            raise ValueError(f"--parallel must be >= 1, got {n_slots}")
        if not 1 <= n_ctx <= model.n_ctx_train:
            raise ValueError(f"--ctx must be in [1, {model.n_ctx_train}] (the model's training context), "
                             f"got {n_ctx}")
        if max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {max_queue}")
        self.model = model
        self.n_ctx = n_ctx
        self.max_queue = max_queue
        self.metrics = metrics
        self._slots = [_Slot(model.session(n_ctx)) for _ in range(n_slots)]
        self._free = list(self._slots)
        self._waiters: list[asyncio.Future[_Slot]] = []  # FIFO of requests waiting for a slot
        self._uses = itertools.count(1)
        self._running: set[Job] = set()
        self._executor = ThreadPoolExecutor(n_slots, thread_name_prefix="flashmtp-slot")

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    @property
    def state_bytes(self) -> int:
        """Memory of the slots' sessions (allocated up front)."""
        return sum(slot.session.state_size for slot in self._slots)

    @property
    def n_queued(self) -> int:
        return len(self._waiters)

    def shutdown(self) -> None:
        """Stop every generation at its next token and wait for the worker threads."""
        for job in list(self._running):
            job.cancelled.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _acquire(self, job: Job) -> _Slot:
        if self._free:
            # Longest shared prefix first (least decode work); among equals the least recently used.
            slot = max(self._free, key=lambda s: (_common_prefix(s.cached, job.prompt), -s.last_used))
            self._free.remove(slot)
        else:
            if len(self._waiters) >= self.max_queue:
                raise APIError(503, f"server busy: {self.n_slots} requests running and {len(self._waiters)} "
                                    "queued; retry later", type="server_error", code="queue_full")
            waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            job.waiting = waiter
            self.metrics.queued(+1)
            try:
                slot = await waiter  # handed over by _release in FIFO order, or failed by Job.cancel
            except BaseException:  # cancelled, failed by Job.cancel, or the generator closed
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._release(waiter.result())  # handed a slot, then cancelled before using it
                raise
            finally:
                job.waiting = None
                self.metrics.queued(-1)
        slot.last_used = next(self._uses)
        return slot

    def _release(self, slot: _Slot) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)

    async def run(self, job: Job) -> AsyncIterator[Event]:
        """The job's events, ending with Done or Failed. Closing the iterator early cancels the job."""
        slot = await self._acquire(job)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown): nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        self.metrics.running(+1)
        self._running.add(job)
        future = loop.run_in_executor(self._executor, self._generate, slot, job, emit)
        try:
            while True:
                event = await events.get()
                yield event
                if not isinstance(event, Piece):
                    return
        finally:
            job.cancel()  # no-op once the generation has ended

            def release(_: object) -> None:
                self._running.discard(job)
                self.metrics.running(-1)
                self._release(slot)

            future.add_done_callback(release)

    def _generate(self, slot: _Slot, job: Job, emit: Callable[[Event], None]) -> None:
        """The worker thread: steps the generation until it ends, a stop sequence or cancellation."""
        tokenizer, session, prompt, cached = self.model.tokenizer, slot.session, job.prompt, slot.cached
        generation: _core.Generation | LogprobGeneration
        try:
            if job.logprobs is None:
                generation = _core.Generation(session, tokenizer, prompt, cached, job.max_tokens,
                                              job.temperature, job.top_k, job.top_p, job.min_p, job.seed,
                                              draft=job.draft, draft_mode=job.draft_mode,
                                              draft_costs=self.model.draft_costs)
            else:
                sampler = _core.Sampler(temperature=job.temperature, top_k=job.top_k, top_p=job.top_p,
                                        min_p=job.min_p, seed=job.seed)
                generation = LogprobGeneration(session, tokenizer, prompt, cached, job.max_tokens, sampler,
                                               job.logprobs)
        except ValueError as e:  # the checks the server could not make first (sampler settings)
            emit(Failed(APIError(400, str(e))))
            return
        except Exception as e:
            emit(Failed(APIError(500, f"generation failed: {e}", type="server_error")))
            return
        stop = StopMatcher(job.stop)
        finish_reason = "length"
        try:
            while not job.cancelled.is_set():
                piece = generation.step()
                if piece is None:
                    tail = stop.flush()
                    if tail:
                        emit(Piece(tail))
                    finish_reason = "stop" if generation.stats.stopped_at_eos else "length"
                    break
                text, stopped = stop.feed(piece)
                last = generation.last if isinstance(generation, LogprobGeneration) else None
                logprobs = [last] if last else []
                if text or logprobs:
                    emit(Piece(text, logprobs))
                if stopped:
                    finish_reason = "stop"
                    break
        except Exception as e:  # the engine failed mid-generation: report it, keep the slot consistent
            emit(Failed(APIError(500, f"generation failed: {e}", type="server_error")))
            return
        finally:
            slot.cached = generation.tokens[:generation.n_past]
        stats = generation.stats
        self.metrics.generated(stats)
        emit(Done(stats, finish_reason))
