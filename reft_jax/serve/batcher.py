"""Batching across requests: the prompts of concurrent requests share the filter's static-shape batches.

One worker thread owns the device: it takes the first waiting prompt, waits at most `max_wait` seconds for more
until a batch of filter.batch_size rows is full, scores them with one call (`TeacherFilter.score_rows`; two, shorter
prompts first, when that runs fewer padded tokens) and hands each request its own rows' scores. A request's
prompts are checked before they are queued, so a bad request never reaches a batch; a batch that fails fails only
the requests in it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from reft_jax.serve.teacher_filter import TeacherFilter, shortest_first

log = logging.getLogger(__name__)

_STOP = object()


class Batcher:
    def __init__(self, filt: TeacherFilter, max_wait: float, on_batch: Callable[[int], None] = lambda rows: None):
        self.filt, self.max_wait, self.on_batch = filt, max_wait, on_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="filter-batcher", daemon=True)
        self._thread.start()

    async def score(self, prompt_ids: Sequence[np.ndarray]) -> np.ndarray:
        """The scores of tokenized prompts (float32 [N]), scored in batches with other requests' prompts."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prompt_ids]
        for ids, future in zip(prompt_ids, futures):
            self._queue.put((ids, future, loop))
        return np.asarray(await asyncio.gather(*futures), np.float32)

    def stop(self) -> None:
        """Scores what is queued, then ends the worker."""
        self._queue.put(_STOP)
        self._thread.join()

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            rows, deadline = [first], time.monotonic() + self.max_wait
            while len(rows) < self.filt.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                rows.append(item)
            self._run(rows)

    def _run(self, rows: list) -> None:
        """Scores the gathered rows as one batch, or as two (the shorter prompts, then the longer) when two hold fewer
        tokens: a prompt too long for the short bucket would pad every row of a shared batch to its length."""
        rows = [rows[i] for i in shortest_first([ids for ids, _, _ in rows])]

        def cost(part: list) -> int:
            return self.filt.batch_tokens([ids for ids, _, _ in part]) if part else 0

        cut = min(range(1, len(rows) + 1), key=lambda k: (cost(rows[:k]) + cost(rows[k:]), -k))
        for part in (rows[:cut], rows[cut:]):
            if part:
                self._score(part)

    def _score(self, rows: list) -> None:
        try:
            scores = self.filt.score_rows([ids for ids, _, _ in rows])
        except Exception as e:  # noqa: BLE001 (the requests in this batch get the error; the worker goes on)
            log.exception("scoring a batch of %d rows failed", len(rows))
            for _, future, loop in rows:
                loop.call_soon_threadsafe(_settle, future, None, e)
            return
        self.on_batch(len(rows))
        for (_, future, loop), s in zip(rows, scores):
            loop.call_soon_threadsafe(_settle, future, float(s), None)


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():  # the request went away (its client disconnected)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
