"""Background triage refresh: keeps stored priorities current without a request paying for it.

Started and stopped by the app's lifespan. Each round runs the (blocking, SQL) refresh in a
worker thread, so the event loop keeps serving requests; a failed round is logged and the next
one runs on schedule, since a database hiccup must not end refreshing for the process's life.

Several processes may serve one data folder (uvicorn `--workers N`), each with its own
refresher. A round runs only in the process that holds an exclusive `flock` on a lock file in
that folder (`round_lock`); the others skip their round instead of repeating the same work, and
try again at their next interval. The lock is taken without waiting, in the round's worker thread
(never on the event loop), on a file opened for that round alone: flock belongs to the open file
description, so two refreshers in one process exclude each other as two processes do, and closing
the file releases it whatever the round did. The lock file itself is never deleted: removing it
while another process holds or is opening it would let two rounds run at once. Start-up
maintenance (`service.api.startup`) takes the same lock, waiting for it, so a round never
interleaves its writes with another process's start-up re-triage.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

logger = logging.getLogger("service.api")

# One round: re-triage what is stale, asking `should_stop` between chunks; returns how many.
RefreshRound = Callable[[Callable[[], bool]], int]


@contextmanager
def round_lock(path: Path, *, wait: bool = False) -> Iterator[bool]:
    """Takes an exclusive lock on `path` (created if missing): tries once without blocking, or
    with `wait` blocks until it is free; yields whether it holds it (always True with `wait`).
    Held until the block ends, however it ends."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            acquired = False
        else:
            acquired = True
        yield acquired
    finally:
        os.close(descriptor)  # releases the lock


class BackgroundRefresher:
    """Runs `refresh` every `interval` seconds (the first round one interval after `start`:
    start-up has just re-triaged every open claim) until `stop`, each round only while holding
    `round_lock(lock_path)`; a round whose lock another refresher holds is skipped."""

    def __init__(self, refresh: RefreshRound, *, interval: float, lock_path: Path) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self._refresh = refresh
        self._interval = interval
        self._lock_path = lock_path
        # Read by the worker thread between chunks, hence a threading and not an asyncio event.
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds attempted, failed and skipped ones included
        self.skipped = 0  # rounds skipped because another refresher held the lock

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
                refreshed = await asyncio.to_thread(self._locked_round)
            except Exception:
                logger.exception("triage refresh failed; retrying next round")
                continue
            if refreshed is None:
                self.skipped += 1
                logger.debug(
                    "triage refresh skipped: another process holds the round lock",
                    extra={"lock_path": str(self._lock_path)},
                )
            elif refreshed:
                logger.info("triage refreshed", extra={"claims_retriaged": refreshed})

    def _locked_round(self) -> int | None:
        """One round in the worker thread: how many claims it re-triaged, or None when another
        refresher holds the lock."""
        with round_lock(self._lock_path) as acquired:
            if not acquired:
                return None
            return self._refresh(self._stopping.is_set)
