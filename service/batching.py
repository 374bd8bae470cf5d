"""Micro-batching: concurrent `infer` calls from many threads become one onnxruntime run.

The API serves each request on its own worker thread. Running each photo alone would leave the
model's batch dimension unused; instead every caller preprocesses its own photos (in parallel,
Pillow releases the GIL) and queues the input tensor; one worker thread takes the first request,
waits at most `max_wait_ms` for more until `max_batch` photos are gathered, runs them together and
hands each caller its own slice of the outputs. While a run is in progress new requests queue up,
so under load batches fill without waiting at all.

A `MicroBatcher` has the engine's `infer`/`card`/`model_version` surface, so the Assessor takes
either. No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
from PIL import Image

from service.engine import ModelCard, ModelOutput, ScoringEngine

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 5.0


class BatcherClosed(RuntimeError):
    """`infer` was called on a batcher that has been closed."""


@dataclass
class _Request:
    inputs: np.ndarray
    future: Future[list[ModelOutput]] = field(default_factory=Future)


class MicroBatcher:
    """Coalesces concurrent inference requests into batched runs of one engine."""

    def __init__(
        self,
        engine: ScoringEngine,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_ms not negative")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._state_lock = threading.Lock()
        self._closed = False
        self.runs = 0  # how many engine runs served the requests so far (for metrics and tests)
        self._worker = threading.Thread(target=self._serve, name="micro-batcher", daemon=True)
        self._worker.start()

    @property
    def card(self) -> ModelCard:
        return self.engine.card

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    def infer(self, images: Sequence[Image.Image]) -> list[ModelOutput]:
        """Same result as `engine.infer(images)`, computed in a shared batch."""
        if not images:
            return []
        request = _Request(self.engine.preprocess(images))
        with self._state_lock:
            if self._closed:
                raise BatcherClosed("the micro-batcher is closed")
            self._queue.put(request)
        return request.future.result()

    def close(self) -> None:
        """Serve what is queued, then stop the worker. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._worker.join()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first.inputs)
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    # Take whatever is already queued at once; wait only until the deadline.
                    request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if request is None:
                    stopping = True  # run what was gathered, then stop
                    break
                batch.append(request)
                size += len(request.inputs)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            outputs = self.engine.run(np.concatenate([request.inputs for request in batch]))
        except Exception as error:  # every caller must hear about the failure, not hang
            for request in batch:
                request.future.set_exception(error)
            return
        self.runs += 1
        offset = 0
        for request in batch:
            count = len(request.inputs)
            request.future.set_result(outputs[offset : offset + count])
            offset += count
