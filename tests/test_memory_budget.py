"""The memory budget that concurrent photo decodes share (service.memory_budget)."""

from __future__ import annotations

import threading

import pytest
from conftest import encode
from PIL import Image

import service.intake
from service.intake import DECODE_PEAK_BYTES_PER_PIXEL, open_photo
from service.memory_budget import MemoryBudget

WAIT_S = 10  # generous for a busy machine; only ever waited out when a test fails


def start_holding(budget: MemoryBudget, cost: int) -> tuple[threading.Event, threading.Event]:
    """A thread that holds `cost` until released: (holding, release)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with budget.hold(cost):
            holding.set()
            release.wait(WAIT_S)

    threading.Thread(target=hold, daemon=True).start()
    return holding, release


def test_holds_that_fit_together_run_together() -> None:
    budget = MemoryBudget(100)
    first_holding, first_release = start_holding(budget, 60)
    assert first_holding.wait(WAIT_S)
    second_holding, second_release = start_holding(budget, 40)
    assert second_holding.wait(WAIT_S)
    assert budget.available == 0
    first_release.set()
    second_release.set()


def test_a_hold_that_does_not_fit_waits_until_the_bytes_are_free() -> None:
    budget = MemoryBudget(100)
    first_holding, first_release = start_holding(budget, 60)
    assert first_holding.wait(WAIT_S)
    second_holding, second_release = start_holding(budget, 50)
    assert not second_holding.wait(0.2)
    first_release.set()
    assert second_holding.wait(WAIT_S)
    second_release.set()


def test_waiters_are_served_in_arrival_order() -> None:
    """A large hold waiting is not overtaken by a small one that arrives after it, even though
    the small one would fit: otherwise a stream of small ones could keep the large one waiting."""
    budget = MemoryBudget(100)
    first_holding, first_release = start_holding(budget, 60)
    assert first_holding.wait(WAIT_S)
    large_holding, large_release = start_holding(budget, 80)
    deadline = threading.Event()
    while not budget._waiting and not deadline.wait(0.01):  # the large one is in line
        pass
    small_holding, small_release = start_holding(budget, 10)
    assert not small_holding.wait(0.2)
    first_release.set()
    assert large_holding.wait(WAIT_S)
    assert small_holding.wait(WAIT_S)  # 80 + 10 fit together
    large_release.set()
    small_release.set()


def test_a_cost_above_the_budget_runs_alone_and_everything_is_given_back() -> None:
    budget = MemoryBudget(100)
    with budget.hold(500):
        assert budget.available == 0
    assert budget.available == 100
    with pytest.raises(RuntimeError), budget.hold(30):
        raise RuntimeError("a decode that fails")
    assert budget.available == 100


def test_a_decode_holds_its_decoded_size_from_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PNG holds its full size (it cannot be decoded smaller); a large JPEG only the size of
    its reduced decode."""
    held: list[int] = []

    class Recording(MemoryBudget):
        def hold(self, cost: int):  # type: ignore[override]
            held.append(cost)
            return super().hold(cost)

    monkeypatch.setattr(service.intake, "DECODE_MEMORY", Recording(1 << 30))
    flat = Image.new("RGB", (1600, 1200), (90, 120, 150))
    open_photo(encode(flat, "PNG"))
    open_photo(encode(flat, "JPEG"), working_side=448)
    assert held[0] == 1600 * 1200 * DECODE_PEAK_BYTES_PER_PIXEL
    # 1/2 scale is the smallest that still covers 448 px on the long side: 800x600.
    assert held[1] == 800 * 600 * DECODE_PEAK_BYTES_PER_PIXEL


def test_a_waiter_interrupted_in_line_leaves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait cut short (Ctrl-C in the thread that waits) left its turn at the head of the line,
    and every later hold then waited for ever behind a turn nobody would take."""
    budget = MemoryBudget(100)
    first_holding, first_release = start_holding(budget, 60)
    assert first_holding.wait(WAIT_S)

    def interrupted(*_: object, **__: object) -> bool:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(budget._changed, "wait_for", interrupted)
        with pytest.raises(KeyboardInterrupt), budget.hold(50):
            pass
    first_release.set()
    second_holding, second_release = start_holding(budget, 50)
    assert second_holding.wait(WAIT_S)
    second_release.set()
