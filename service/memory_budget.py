"""A budget of bytes that concurrent work holds at once, taken in arrival order.

Decoding a photo can take far more memory than the upload is big: a 265 KB PNG of 8000x8000 flat
pixels decodes to some 800 MB at its peak. The pixel cap bounds one decode, not many at once, and
the API decodes uploads on a thread pool of dozens of threads. Each decode therefore holds its
estimated peak from this budget while it runs (`service.intake`), so that the decodes in flight
together stay within it whatever arrives; a decode that would not fit waits for others to end.

Waiters are served first come, first served, so a large decode is not kept waiting for ever by
small ones that keep arriving (they wait behind it instead, for about a second). A cost above the
whole budget is held as the whole budget: it runs alone rather than never.

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class MemoryBudget:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"a memory budget needs a positive capacity, not {capacity}")
        self.capacity = capacity
        self._available = capacity
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def available(self) -> int:
        with self._changed:
            return self._available

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Hold `cost` bytes (at most the whole budget) for the duration of the block, waiting
        in turn until they are free."""
        held = max(0, min(cost, self.capacity))
        turn = object()
        with self._changed:
            self._waiting.append(turn)
            try:
                self._changed.wait_for(lambda: self._waiting[0] is turn and self._available >= held)
            except BaseException:  # interrupted in line: a turn left there would block the rest
                self._waiting.remove(turn)
                self._changed.notify_all()
                raise
            self._waiting.popleft()
            self._available -= held
            self._changed.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            with self._changed:
                self._available += held
                self._changed.notify_all()
