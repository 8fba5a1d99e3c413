"""A bounded request queue drained by one generation worker thread, in batches.

Independent of HTTP so that it can be tested on its own. The model is not
thread-safe, so every call into it (the per-request ``check`` as well as
``generate``) happens on the single worker thread.

Batching: the worker takes the oldest queued job, waits a little for more
jobs with the same decoding settings (``batch_key``), and runs up to
``max_batch_size`` of them in one ``generate`` call. Jobs with other settings
stay queued in arrival order, so none is starved: the oldest job always leads
the next batch. The wait is ``batch_wait_s``, or ``wait_fraction`` of the
recent batch duration if that is longer (capped at ``max_wait_s``): clients
whose answers just came back need a few milliseconds to send their next
request, and without that grace they would form a second, half-full batch
that alternates with the first for ever. The wait never applies when a full
batch is already queued.

Events reach a job's ``listener(kind, payload)`` from the worker thread:
``("start", None)`` when its batch begins, ``("text", delta)`` while decoding,
then ``("done", Generation)`` or ``("error", exception)``. A cancelled job
gets no further events.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, Optional

from mogu.model.config import DecodingConfig
from mogu.model.generation import Generation, TextCallback
from mogu.model.chat import ChatInput

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[ChatInput], DecodingConfig, Optional[TextCallback]], list[Generation]]
#: Raises (typically ``ValueError``) if a prompt cannot be generated from; runs on the worker thread.
CheckFn = Callable[[ChatInput, DecodingConfig], None]
Listener = Callable[[str, Any], None]
JobState = Literal["queued", "running", "done", "cancelled"]


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` jobs; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the request queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new jobs."""


class JobCancelledError(RuntimeError):
    """The job was cancelled before it produced an answer."""


class _AllCancelled(Exception):
    """Raised from the text callback to abandon a batch nobody is waiting for."""


def batch_key(decoding: DecodingConfig) -> str:
    """Jobs with equal keys can share one ``generate`` call.

    ``return_gates`` does not split batches (gates are computed for the batch
    and dropped for jobs that did not ask). A seed is irrelevant when greedy;
    a seeded *sample* runs alone, since the random stream is shared by the
    rows of a batch and its answer would otherwise depend on its neighbours.
    """
    if decoding.temperature > 0 and decoding.seed is not None:
        return f"seeded-sample-{uuid.uuid4().hex}"
    seed = decoding.seed if decoding.temperature > 0 else None
    return decoding.model_copy(update={"return_gates": False, "seed": seed}).model_dump_json()


class Job:
    """One queued prompt: its settings, its result future, and where its events go."""

    def __init__(self, prompt: ChatInput, decoding: DecodingConfig, listener: Listener | None = None) -> None:
        self.prompt = prompt
        self.decoding = decoding
        self.listener = listener
        self.key = batch_key(decoding)
        self.future: Future[Generation] = Future()
        self.state: JobState = "queued"
        self.cancelled = False
        self.enqueued_at = time.monotonic()
        self.started_at: float | None = None

    def result(self, timeout: float | None = None) -> Generation:
        """Block until the answer is ready (raises the job's error, or ``CancelledError`` if dropped)."""
        return self.future.result(timeout)

    def _emit(self, kind: str, payload: Any) -> None:
        if self.cancelled or self.listener is None:
            return
        try:
            self.listener(kind, payload)
        except Exception:  # a broken listener must not take down the worker
            log.exception("listener of a job failed on event %r", kind)


@dataclass
class BatcherStats:
    submitted: int = 0
    rejected: int = 0
    cancelled: int = 0
    completed: int = 0
    failed: int = 0
    batches: int = 0
    batched_jobs: int = 0
    largest_batch: int = 0
    mean_batch_seconds: float = 0.0  # exponential moving average, for Retry-After

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class Batcher:
    """Bounded queue + one worker thread calling ``generate`` on batches of jobs."""

    def __init__(
        self,
        generate: GenerateFn,
        *,
        max_batch_size: int = 8,
        max_queue: int = 64,
        batch_wait_s: float = 0.005,
        wait_fraction: float = 0.02,
        max_wait_s: float = 0.1,
        check: CheckFn | None = None,
        min_retry_after_s: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self._generate = generate
        self._check = check
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.wait_fraction = wait_fraction
        self.max_wait_s = max(max_wait_s, batch_wait_s)
        self.min_retry_after_s = min_retry_after_s
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = BatcherStats()

    # ------------------------------------------------------------ client side
    def start(self) -> Batcher:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="mogu-serve-worker", daemon=True)
                self._thread.start()
        return self

    def submit(self, prompt: ChatInput, decoding: DecodingConfig, listener: Listener | None = None) -> Job:
        """Queue a prompt; raises ``QueueFullError`` or ``BatcherClosedError`` instead of waiting."""
        job = Job(prompt, decoding, listener)
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFullError(self._retry_after())
            self._queue.append(job)
            self.stats.submitted += 1
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> bool:
        """Forget a job whose client has gone.

        A queued job leaves the queue at once (its slot is free again); a
        running job gets no further events, and a batch in which every job is
        cancelled is abandoned at its next decoded piece of text. Returns True
        if the job was still queued.
        """
        with self._cond:
            if job.cancelled or job.state in ("done", "cancelled"):
                return False
            job.cancelled = True
            self.stats.cancelled += 1
            if job.state == "queued":
                self._queue.remove(job)
                job.state = "cancelled"
                job.future.cancel()
                self._cond.notify_all()
                return True
            return False

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Take no new jobs; the worker still finishes every queued and running job, then stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def _retry_after(self) -> int:
        # A queue slot frees when the worker takes the next batch: about one batch duration.
        return max(self.min_retry_after_s, math.ceil(self.stats.mean_batch_seconds))

    # ------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                log.debug("batcher worker stops: closed and drained")
                return
            try:
                self._execute(batch)
            except Exception:  # never leave a client waiting on a job that will not finish
                log.exception("batch failed unexpectedly")
                for job in batch:
                    if job.state == "running":
                        self._finish(job, RuntimeError("internal error while generating"))
                self._clear_running()

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None
                wait = min(self.max_wait_s, max(self.batch_wait_s, self.wait_fraction * self.stats.mean_batch_seconds))
                deadline = time.monotonic() + wait
                while self._queue and not self._closed:
                    head = self._queue[0].key
                    if sum(job.key == head for job in self._queue) >= self.max_batch_size:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._queue:  # all cancelled while gathering
                    continue
                head = self._queue[0].key
                batch = [job for job in self._queue if job.key == head][: self.max_batch_size]
                for job in batch:
                    self._queue.remove(job)
                    job.state = "running"
                self._running = batch
                return batch

    def _execute(self, batch: list[Job]) -> None:
        ready = []
        for job in batch:
            if job.cancelled:
                self._finish(job, JobCancelledError("cancelled"))
                continue
            try:
                if self._check is not None:
                    self._check(job.prompt, job.decoding)
            except Exception as err:
                self._finish(job, err)
                continue
            ready.append(job)
        if not ready:
            self._clear_running()
            return
        started = time.monotonic()
        for job in ready:
            job.started_at = started
            job.future.set_running_or_notify_cancel()
            job._emit("start", None)
        outcomes = self._run(ready)
        elapsed = time.monotonic() - started
        with self._cond:
            stats = self.stats
            stats.batches += 1
            stats.batched_jobs += len(ready)
            stats.largest_batch = max(stats.largest_batch, len(ready))
            stats.mean_batch_seconds = elapsed if stats.batches == 1 else 0.8 * stats.mean_batch_seconds + 0.2 * elapsed
        log.debug("batch of %d done in %.3f s", len(ready), elapsed)
        for job, outcome in zip(ready, outcomes):
            if isinstance(outcome, Generation) and not job.decoding.return_gates:
                outcome.gates = None
            self._finish(job, outcome)
        self._clear_running()

    def _run(self, jobs: Sequence[Job]) -> list[Generation | Exception]:
        """One ``generate`` call; if a bad prompt fails a batch before any text, each job runs alone."""
        decoding = jobs[0].decoding
        if any(job.decoding.return_gates for job in jobs) and not decoding.return_gates:
            decoding = decoding.model_copy(update={"return_gates": True})
        emitted = False

        def on_text(row: int, delta: str) -> None:
            nonlocal emitted
            emitted = True
            jobs[row]._emit("text", delta)
            if all(job.cancelled for job in jobs):
                raise _AllCancelled

        try:
            results = self._generate([job.prompt for job in jobs], decoding, on_text)
        except _AllCancelled:
            log.info("abandoned a batch of %d: every client has gone", len(jobs))
            return [JobCancelledError("cancelled") for _ in jobs]
        except ValueError as err:
            if emitted or len(jobs) == 1:
                return [err for _ in jobs]
            log.info("batch of %d failed (%s); running its jobs one by one", len(jobs), err)
            return [outcome for job in jobs for outcome in self._run([job])]
        except Exception as err:
            log.exception("generation failed for a batch of %d", len(jobs))
            return [err for _ in jobs]
        if len(results) != len(jobs):
            return [RuntimeError(f"generate returned {len(results)} results for {len(jobs)} prompts") for _ in jobs]
        return list(results)

    def _finish(self, job: Job, outcome: Generation | BaseException) -> None:
        with self._cond:
            job.state = "done"
            if job.cancelled:
                pass  # counted when cancelled
            elif isinstance(outcome, BaseException):
                self.stats.failed += 1
            else:
                self.stats.completed += 1
        if isinstance(outcome, BaseException):
            if not job.future.done():
                job.future.set_exception(outcome)
            job._emit("error", outcome)
        else:
            if not job.future.done():
                job.future.set_result(outcome)
            job._emit("done", outcome)

    def _clear_running(self) -> None:
        with self._cond:
            self._running = []
            self._cond.notify_all()
