"""Background triage refresh: keeps stored priorities current without a request paying for it.

Started and stopped by the app's lifespan. Each round runs the (blocking, SQL) refresh in a
worker thread, so the event loop keeps serving requests; a failed round is logged and the next
one runs on schedule, since a database hiccup must not end refreshing for the process's life.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import suppress

logger = logging.getLogger("service.api")

# One round: re-triage what is stale, asking `should_stop` between chunks; returns how many.
RefreshRound = Callable[[Callable[[], bool]], int]


class BackgroundRefresher:
    """Runs `refresh` every `interval` seconds (the first round one interval after `start`:
    start-up has just re-triaged every open claim) until `stop`."""

    def __init__(self, refresh: RefreshRound, *, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self._refresh = refresh
        self._interval = interval
        # Read by the worker thread between chunks, hence a threading and not an asyncio event.
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds attempted, failed ones included

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the refresher was already started")
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="triage-refresh")

    async def stop(self) -> None:
        """Ends the loop: a sleeping one at once, a round in progress after its current chunk
        (not cancelled: its thread would go on using the database while the app closes it)."""
        self._stopping.set()
        if self._task is None:
            return
        assert self._wake is not None
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            if self._stopping.is_set():
                return
            self.rounds += 1
            try:
                refreshed = await asyncio.to_thread(self._refresh, self._stopping.is_set)
            except Exception:
                logger.exception("triage refresh failed; retrying next round")
            else:
                if refreshed:
                    logger.info("triage refreshed", extra={"claims_retriaged": refreshed})
