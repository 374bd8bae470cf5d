"""The reviewer page in a real browser (Debian's Chromium driven by Playwright) against the real
API on a real uvicorn server: sign in, queue order, claim detail, one-key decision, errors.

Screenshots go to pytest's tmp folder (or TRIAGE_WEB_SCREENSHOTS, to look at them by hand).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import TEST_LIMITS, ApiServer, run_api_server
from conftest import encode, textured_image
from onnx_fixtures import TINY_CARD, write_tiny_model
from PIL import Image, ImageDraw

from service.auth import Role
from service.config import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"reviewer page tests need Chromium at {CHROMIUM} (apt-get install chromium)",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")

# Playwright waits (ms): generous for a busy 2-core machine, never part of an assertion.
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API with the reviewer page, on SQLite: the page does not depend on the backend."""
    data_dir = tmp_path_factory.mktemp("web-data")
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'triage.sqlite3'}",
        model_dir=tiny_model_dir,
        limits=TEST_LIMITS,
    )
    with run_api_server(settings) as running:
        for name, role in (
            ("admin", Role.admin),
            ("reviewer", Role.reviewer),
            ("buyer", Role.buyer),
        ):
            running.keys[name] = running.create_key(role, name)
        yield running


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def seeded(server: ApiServer) -> dict[str, Any]:
    """One listing with an image and four claims that land at different priorities."""
    with server.client(server.keys["admin"]) as admin, server.client(server.keys["buyer"]) as buyer:
        listing = _created(admin.post("/v1/listings", json={"title": "Blue ceramic mug"}))
        listing_id = listing["listing_id"]
        _created(
            admin.post(
                f"/v1/listings/{listing_id}/images",
                files=[("files", ("mug.jpg", encode(textured_image(seed=40)), "image/jpeg"))],
            )
        )
        dark = Image.new("RGB", (640, 480), (6, 6, 8))
        plans = [
            ("damaged", "full_refund", [textured_image(seed=1), textured_image(seed=2)], True),
            ("wrong_item", "replacement", [textured_image(seed=3)], False),
            ("missing_parts", "partial_refund", [dark], True),
            ("defective", "full_refund", [], False),
        ]
        claim_ids = []
        for index, (reason, resolution, photos, escalate) in enumerate(plans):
            claim = _created(
                buyer.post(
                    "/v1/claims",
                    json={
                        "listing_id": listing_id,
                        "order_ref": f"ORD-{index}",
                        "reason": reason,
                        "resolution": resolution,
                        "description": f"Test claim {index}: the {reason.replace('_', ' ')} case.",
                        "amount": "24.90",
                        "currency": "EUR",
                    },
                    headers={"Idempotency-Key": f"web-{index}"},
                )
            )
            if photos:
                _created(
                    buyer.post(
                        f"/v1/claims/{claim['claim_id']}/evidence",
                        files=[
                            ("files", (f"p{n}.jpg", encode(photo, quality=90), "image/jpeg"))
                            for n, photo in enumerate(photos)
                        ],
                    )
                )
            if escalate:
                escalated = buyer.post(f"/v1/claims/{claim['claim_id']}/escalate")
                assert escalated.status_code == 200, escalated.text
            claim_ids.append(claim["claim_id"])
    return {"listing_id": listing_id, "claim_ids": claim_ids}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TRIAGE_WEB_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def open_page(browser: Any, server: ApiServer) -> Iterator[Callable[..., Any]]:
    """Opens the page in fresh tabs (fresh sessionStorage), with browser errors collected;
    closes them after the test."""
    contexts = []

    def open_tab(*, width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(f"{server.base_url}/")  # the app redirects / to the page
        return page

    yield open_tab
    for context in contexts:
        context.close()


def sign_in(page: Any, key: str) -> None:
    page.get_by_label("Reviewer API key").fill(key)
    page.get_by_role("button", name="Open the queue").click()


def api_queue(server: ApiServer) -> list[dict[str, Any]]:
    with server.client(server.keys["reviewer"]) as reviewer:
        response = reviewer.get("/v1/queue", params={"limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def api_audit(server: ApiServer, claim_id: str) -> list[dict[str, Any]]:
    with server.client(server.keys["reviewer"]) as reviewer:
        response = reviewer.get(f"/v1/claims/{claim_id}/audit")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def rendered_queue(page: Any) -> list[str]:
    return page.locator("#queue-list .queue-item").evaluate_all(
        "items => items.map(item => item.dataset.claimId)"
    )


def test_queue_matches_api_and_a_key_press_records_the_decision(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any], screenshots: Path
) -> None:
    expected = api_queue(server)
    assert {claim["claim_id"] for claim in expected} == set(seeded["claim_ids"])

    page = open_page()
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").nth(len(expected) - 1).wait_for()
    assert rendered_queue(page) == [claim["claim_id"] for claim in expected]
    assert page.locator("#queue-count").inner_text() == str(len(expected))

    # j / k move through the queue in its order.
    for key, position in (("j", 0), ("j", 1), ("k", 0)):
        page.keyboard.press(key)
        page.locator("#detail-body .detail-sub", has_text=expected[position]["claim_id"]).wait_for()

    # The claim with two photos: evidence as authenticated blobs, heatmaps, the listing beside.
    damaged_id = seeded["claim_ids"][0]
    order = [claim["claim_id"] for claim in expected]
    damaged = expected[order.index(damaged_id)]
    page.locator(f'.queue-item[data-claim-id="{damaged_id}"]').click()
    page.locator("#detail-body .detail-sub", has_text=damaged_id).wait_for()
    assert page.locator("#detail-body .evidence img.photo").count() == 2
    page.wait_for_function(
        "() => [...document.querySelectorAll('#detail-body img.photo')]"
        ".every(img => img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0)"
    )
    assert page.locator("#detail-body .listing img.photo").count() == 1
    page.keyboard.press("h")  # heatmap overlays load on demand
    page.wait_for_function(
        "() => [...document.querySelectorAll('#detail-body .heatmap')]"
        ".every(img => !img.hidden && img.src.startsWith('blob:') && img.naturalWidth > 0)"
    )
    for reason in damaged["triage"]["reasons"]:
        assert page.locator("#detail-body .reasons li", has_text=reason).count() == 1
    page.screenshot(path=str(screenshots / "reviewer-page-1280.png"))

    # 4 = reject: one key, no confirmation; the page goes on with the claim that takes its place.
    position = order.index(damaged_id)
    following = order[position + 1] if position + 1 < len(order) else order[position - 1]
    page.keyboard.press("4")
    page.locator(".toast", has_text="Reject recorded").wait_for()
    page.locator("#detail-body .detail-sub", has_text=following).wait_for()
    with server.client(server.keys["reviewer"]) as reviewer:
        claim = reviewer.get(f"/v1/claims/{damaged_id}").json()
    audit = api_audit(server, damaged_id)
    assert claim["status"] == "resolved"
    assert claim["decision"] == "reject"
    reviews = [event for event in audit if event["action"] == "review_recorded"]
    assert [event["detail"]["decision"] for event in reviews] == ["reject"]
    assert damaged_id not in rendered_queue(page)
    assert page.errors == []


def test_history_shows_the_recorded_review(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    target = api_queue(server)[0]["claim_id"]
    with server.client(server.keys["reviewer"]) as reviewer:
        recorded = reviewer.post(
            f"/v1/claims/{target}/reviews",
            json={"decision": "request_more_evidence", "notes": "Photo of the label, please."},
        )
    assert recorded.status_code == 201, recorded.text

    page = open_page()
    sign_in(page, server.keys["reviewer"])
    page.locator(f'.queue-item[data-claim-id="{target}"]').click()
    history = page.locator('#detail-body .audit li[data-action="review_recorded"]')
    history.wait_for()
    assert "Ask for more evidence" in history.inner_text()


def test_partial_refund_key_asks_for_the_amount_first(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    page = open_page()
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").first.wait_for()
    page.keyboard.press("j")
    claim_id = page.locator("#queue-list .queue-item").first.get_attribute("data-claim-id")
    page.locator("#detail-body .detail-sub", has_text=claim_id).wait_for()

    audit_before = api_audit(server, claim_id)
    page.keyboard.press("2")
    page.locator(".toast", has_text="amount to refund").wait_for()
    assert page.evaluate("document.activeElement.id") == "decision-amount"

    # An amount above the claimed one is refused by the API: its problem detail is shown.
    page.keyboard.type("99.00")
    page.keyboard.press("Enter")
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "exceeds the claimed amount" in alert.inner_text()
    assert api_audit(server, claim_id) == audit_before


def test_a_key_pressed_while_the_next_claim_loads_decides_nothing(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    first, second = (claim["claim_id"] for claim in api_queue(server)[:2])
    before = {claim_id: api_audit(server, claim_id) for claim_id in (first, second)}
    page = open_page()
    # Hold the second claim's responses so that it is still loading when the key is pressed.
    # Routed before anything loads: a request for it can never slip out ahead of the route.
    held: list[Any] = []
    page.route(f"**/v1/claims/{second}", lambda route: held.append(route))
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").first.wait_for()
    page.keyboard.press("j")
    page.locator("#detail-body .detail-sub", has_text=first).wait_for()

    page.keyboard.press("j")
    page.wait_for_function(
        "id => document.querySelector('.queue-item[aria-current=\"true\"]').dataset.claimId === id",
        arg=second,
    )
    deadline = time.monotonic() + WAIT_MS / 1000
    while not held:
        assert time.monotonic() < deadline, "the second claim was never requested"
        page.wait_for_timeout(20)
    page.keyboard.press("4")
    page.locator(".toast", has_text="still loading").wait_for()
    for route in held:
        route.continue_()
    page.locator("#detail-body .detail-sub", has_text=second).wait_for()
    assert {claim_id: api_audit(server, claim_id) for claim_id in (first, second)} == before


def test_a_claim_that_fails_to_load_replaces_the_one_on_screen_and_r_tries_again(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    """The server cannot be reached while the next claim loads: the claim shown before must
    leave the screen (the queue already highlights the next one), a decision key decides
    nothing, and r loads the claim once the server answers again."""
    first, second = (claim["claim_id"] for claim in api_queue(server)[:2])
    before = {claim_id: api_audit(server, claim_id) for claim_id in (first, second)}
    page = open_page()
    failing = f"**/v1/claims/{second}"
    page.route(failing, lambda route: route.abort())
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").first.wait_for()
    page.keyboard.press("j")
    page.locator("#detail-body .detail-sub", has_text=first).wait_for()

    page.keyboard.press("j")
    page.locator("#placeholder-title", has_text="could not be opened").wait_for()
    assert not page.locator("#detail-body").is_visible()
    assert page.get_by_role("alert").is_visible()
    page.keyboard.press("4")
    page.locator(".toast", has_text="press r to try again").wait_for()

    page.unroute(failing)
    page.keyboard.press("r")
    page.locator("#detail-body .detail-sub", has_text=second).wait_for()
    assert not page.locator("#detail-placeholder").is_visible()
    assert {claim_id: api_audit(server, claim_id) for claim_id in (first, second)} == before


def test_a_claim_that_failed_to_load_and_was_decided_meanwhile_leaves_nothing_open(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    """Its load failed, then another reviewer decided it: r reloads a queue without it, and
    the page says no claim is selected instead of asking to try again."""
    first, second = (claim["claim_id"] for claim in api_queue(server)[:2])
    page = open_page()
    failing = f"**/v1/claims/{second}"
    page.route(failing, lambda route: route.abort())
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").first.wait_for()
    page.keyboard.press("j")
    page.locator("#detail-body .detail-sub", has_text=first).wait_for()
    page.keyboard.press("j")
    page.locator("#placeholder-title", has_text="could not be opened").wait_for()
    page.unroute(failing)
    with server.client(server.keys["reviewer"]) as reviewer:
        decided = reviewer.post(f"/v1/claims/{second}/reviews", json={"decision": "reject"})
    assert decided.status_code == 201, decided.text
    page.keyboard.press("r")
    page.locator("#placeholder-title", has_text="No claim selected").wait_for()
    assert second not in rendered_queue(page)
    page.keyboard.press("4")
    page.locator(".toast", has_text="Select a claim first").wait_for()


def test_a_refused_key_shows_the_problem_and_asks_again(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    page = open_page()
    sign_in(page, "trk_" + "x" * 43)
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "This API key is not valid" in alert.inner_text()
    assert page.get_by_label("Reviewer API key").is_visible()
    assert page.evaluate("sessionStorage.getItem('triage.reviewerKey')") is None


def test_a_buyer_key_is_refused_by_the_queue(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    page = open_page()
    sign_in(page, server.keys["buyer"])
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "(403)" in alert.inner_text()
    assert page.get_by_label("Reviewer API key").is_visible()


def test_narrow_screen_has_no_sideways_scrolling(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any], screenshots: Path
) -> None:
    page = open_page(width=390, height=844)
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").first.wait_for()
    page.keyboard.press("j")
    page.locator("#detail-body .decide, #detail-body .decided").first.wait_for()
    page.get_by_text("About the scores").click()  # the model card's limitations, opened
    page.locator("#detail-body .about-scores .limitations").wait_for()
    page.screenshot(path=str(screenshots / "reviewer-page-390.png"), full_page=True)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    assert page.errors == []


def test_filters_and_paging_follow_the_api(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    page_size = 25  # the page's own page size (PAGE_SIZE in app.js)
    missing = page_size + 2 - len(api_queue(server))
    with server.client(server.keys["buyer"]) as buyer:
        for index in range(missing):
            _created(
                buyer.post(
                    "/v1/claims",
                    json={
                        "listing_id": seeded["listing_id"],
                        "order_ref": f"ORD-PAGE-{index}",
                        "reason": "not_as_described",
                        "resolution": "full_refund",
                    },
                    headers={"Idempotency-Key": f"web-page-{index}"},
                )
            )
    expected = [claim["claim_id"] for claim in api_queue(server)]
    assert len(expected) > page_size

    page = open_page()
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").nth(page_size - 1).wait_for()
    assert rendered_queue(page) == expected[:page_size]
    page.get_by_role("button", name="Load more").click()
    page.locator("#queue-list .queue-item").nth(len(expected) - 1).wait_for()
    assert rendered_queue(page) == expected
    assert page.get_by_role("button", name="Load more").is_hidden()

    page.get_by_label("Reason").select_option("not_as_described")
    with server.client(server.keys["reviewer"]) as reviewer:
        filtered = reviewer.get("/v1/queue", params={"reason": "not_as_described", "limit": 100})
    wanted = [claim["claim_id"] for claim in filtered.json()["data"]][:page_size]
    page.wait_for_function(
        "count => document.querySelectorAll('#queue-list .queue-item').length === count",
        arg=len(wanted),
    )
    assert rendered_queue(page) == wanted


@contextmanager
def server_with_one_claim(
    model_dir: Path, data_dir: Path, photo_jpeg: bytes, *, tag: str
) -> Iterator[tuple[ApiServer, str, dict[str, Any]]]:
    """A server of its own (SQLite under `data_dir`, the model in `model_dir`) with one damaged
    claim and one photo as its evidence: (server, a reviewer key, the upload's response)."""
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'triage.sqlite3'}",
        model_dir=model_dir,
        limits=TEST_LIMITS,
    )
    with run_api_server(settings) as alone:
        admin, buyer, reviewer = (
            alone.create_key(role, role.value) for role in (Role.admin, Role.buyer, Role.reviewer)
        )
        with alone.client(admin) as as_admin, alone.client(buyer) as as_buyer:
            listing = _created(as_admin.post("/v1/listings", json={"title": "Mug"}))
            claim = _created(
                as_buyer.post(
                    "/v1/claims",
                    json={
                        "listing_id": listing["listing_id"],
                        "order_ref": f"ORD-{tag.upper()}",
                        "reason": "damaged",
                        "resolution": "full_refund",
                    },
                    headers={"Idempotency-Key": f"web-{tag}"},
                )
            )
            evidence = _created(
                as_buyer.post(
                    f"/v1/claims/{claim['claim_id']}/evidence",
                    files=[("files", ("photo.jpg", photo_jpeg, "image/jpeg"))],
                )
            )
        yield alone, reviewer, evidence


# Damage bands unlike the page's fixed 0.3 / 0.8: the tiny model scores a pure red patch between
# 0.9 and its ceiling sigmoid(6.68 / 1.5) = 0.9886, "high" for the fixed bands, "mid" for these.
BANDED_THRESHOLDS = {**TINY_CARD["thresholds"], "damage_low": 0.9, "damage_high": 0.99}
BANDED_LIMITATIONS = [
    "Learned from red patches only: any other damage goes unseen.",
    "Listing matches compare colours, not shapes.",
]


def test_score_bands_and_the_disclosure_follow_the_model_card(
    browser: Any, tmp_path: Path, screenshots: Path
) -> None:
    model_dir = write_tiny_model(
        tmp_path / "banded-model",
        card_overrides={"thresholds": BANDED_THRESHOLDS, "limitations": BANDED_LIMITATIONS},
    )
    photo = textured_image(seed=7)
    ImageDraw.Draw(photo).rectangle((200, 140, 440, 380), fill=(255, 0, 0))
    with server_with_one_claim(
        model_dir, tmp_path / "data", encode(photo, quality=92), tag="bands"
    ) as (banded, reviewer, evidence):
        damage = evidence["data"][0]["damage"]
        assert BANDED_THRESHOLDS["damage_low"] < damage < BANDED_THRESHOLDS["damage_high"]

        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{banded.base_url}/")
            sign_in(page, reviewer)
            page.locator("#queue-list .queue-item").first.wait_for()
            page.keyboard.press("j")
            damage_value = page.locator("#detail-body .score", has_text="Damage").locator(
                ".score-value"
            )
            assert damage_value.inner_text() == f"{damage:.2f}"
            assert "band-mid" in damage_value.get_attribute("class")

            about = page.locator("#detail-body details.about-scores")
            assert about.get_attribute("open") is None  # unobtrusive: closed until asked for
            about.get_by_text("About the scores").click()
            assert "tiny-test-0.0.1" in about.inner_text()
            assert about.locator(".limitations li").all_inner_texts() == BANDED_LIMITATIONS
            page.screenshot(path=str(screenshots / "reviewer-page-about-scores.png"))

            # Without the card the page keeps its fixed bands and says nothing about the model.
            fallback = context.new_page()
            fallback.set_default_timeout(WAIT_MS)
            fallback.route("**/v1/model", lambda route: route.abort())
            fallback.goto(f"{banded.base_url}/")
            sign_in(fallback, reviewer)
            fallback.locator("#queue-list .queue-item").first.wait_for()
            fallback.keyboard.press("j")
            fallback_value = fallback.locator("#detail-body .score", has_text="Damage").locator(
                ".score-value"
            )
            assert fallback_value.inner_text() == f"{damage:.2f}"
            assert "band-high" in fallback_value.get_attribute("class")
            assert fallback.locator("#detail-body details.about-scores").count() == 0
        finally:
            context.close()


NOW = "2026-03-10T12:00:00Z"


@pytest.mark.parametrize(
    ("deadline", "phrase", "urgency"),
    [
        ("2026-03-13T13:00:00Z", "due in 3 days", "later"),
        ("2026-03-11T12:01:00Z", "due in 1 day", "soon"),
        ("2026-03-10T17:30:00Z", "due in 6 hours", "soon"),
        ("2026-03-10T12:20:00Z", "due in 1 hour", "soon"),
        ("2026-03-10T11:00:00Z", "overdue by 1 day", "overdue"),
        ("2026-03-08T11:00:00Z", "overdue by 3 days", "overdue"),
        (None, "no deadline", "none"),
    ],
)
def test_deadline_wording_matches_the_policy_rounding(
    open_page: Callable[..., Any], deadline: str | None, phrase: str, urgency: str
) -> None:
    page = open_page()
    result = page.evaluate(
        """async ([deadline, now]) => {
            const format = await import("./format.js");
            return [
                format.deadlinePhrase(deadline, new Date(now)),
                format.deadlineUrgency(deadline, new Date(now)),
            ];
        }""",
        [deadline, NOW],
    )
    assert result == [phrase, urgency]


def open_claims(server: ApiServer, listing_id: str, count: int, **fields: Any) -> list[str]:
    """`count` new open claims on the listing, each with its own idempotency key."""
    created = []
    with server.client(server.keys["buyer"]) as buyer:
        for _ in range(count):
            body = {
                "listing_id": listing_id,
                "order_ref": f"ORD-{uuid.uuid4().hex[:8]}",
                "reason": "not_as_described",
                "resolution": "full_refund",
                **fields,
            }
            claim = _created(
                buyer.post("/v1/claims", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
            )
            created.append(claim["claim_id"])
    return created


def test_a_decision_on_the_second_page_goes_on_with_the_claim_that_takes_its_place(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    page_size = 25  # PAGE_SIZE in app.js
    missing = page_size + 3 - len(api_queue(server))
    if missing > 0:
        open_claims(server, seeded["listing_id"], missing)
    expected = [claim["claim_id"] for claim in api_queue(server)]
    assert len(expected) >= page_size + 3

    page = open_page()
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").nth(page_size - 1).wait_for()
    page.get_by_role("button", name="Load more").click()
    page.locator("#queue-list .queue-item").nth(page_size + 1).wait_for()
    decided = expected[page_size]
    page.locator(f'.queue-item[data-claim-id="{decided}"]').click()
    page.locator("#detail-body .detail-sub", has_text=decided).wait_for()

    page.keyboard.press("4")
    page.locator(".toast", has_text="Reject recorded").wait_for()
    # The claim after it now sits where it was, on the second page: not the first page's last.
    page.locator("#detail-body .detail-sub", has_text=expected[page_size + 1]).wait_for()
    selected = page.locator('.queue-item[aria-current="true"]').get_attribute("data-claim-id")
    assert selected == expected[page_size + 1]
    assert (
        rendered_queue(page)[: page_size + 1]
        == [c for c in expected if c != decided][: page_size + 1]
    )
    assert page.errors == []


def test_a_claim_decided_by_another_reviewer_meanwhile_is_not_left_open_on_screen(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    page = open_page()
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").nth(1).wait_for()
    page.keyboard.press("j")
    first, second = rendered_queue(page)[:2]
    page.locator("#detail-body .detail-sub", has_text=first).wait_for()

    reviewed_before = [e for e in api_audit(server, first) if e["action"] == "review_recorded"]
    other = server.create_key(Role.reviewer, "another reviewer")
    with server.client(other) as colleague:
        _created(colleague.post(f"/v1/claims/{first}/reviews", json={"decision": "replacement"}))
    page.keyboard.press("4")

    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "already resolved" in alert.inner_text()
    # The page does not keep offering decisions on a claim that is decided: it goes on with
    # the next one, and the decided claim leaves the queue, as after the reviewer's own decision.
    page.locator("#detail-body .detail-sub", has_text=second).wait_for()
    assert first not in rendered_queue(page)
    assert "already resolved" in alert.inner_text()
    reviews = [e for e in api_audit(server, first) if e["action"] == "review_recorded"]
    assert reviews[: len(reviewed_before)] == reviewed_before
    assert [event["detail"]["decision"] for event in reviews[len(reviewed_before) :]] == [
        "replacement"
    ]
    assert page.errors == []


def test_ids_are_unique_and_the_claim_region_is_named_by_its_heading(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    page = open_page()
    sign_in(page, server.keys["reviewer"])
    page.locator("#queue-list .queue-item").first.wait_for()
    page.keyboard.press("j")
    claim_id = rendered_queue(page)[0]
    page.locator("#detail-body .detail-sub", has_text=claim_id).wait_for()
    duplicates = page.evaluate(
        """() => {
            const ids = [...document.querySelectorAll('[id]')].map(node => node.id);
            return ids.filter((id, index) => ids.indexOf(id) !== index);
        }"""
    )
    assert duplicates == []
    heading = page.locator("#detail-body h2").inner_text()
    # aria-labelledby named the hidden "No claim selected" heading while a claim was shown.
    assert page.get_by_role("region", name=heading, exact=True).count() == 1
    assert page.get_by_role("region", name="No claim selected").count() == 0


CONTRAST = """node => {
    const channels = color => color.match(/[\\d.]+/g).slice(0, 3).map(Number);
    const luminance = color => {
        const [r, g, b] = channels(color).map(value => {
            const v = value / 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    let back = node;
    while (getComputedStyle(back).backgroundColor === 'rgba(0, 0, 0, 0)') back = back.parentElement;
    const [a, b] = [getComputedStyle(node).color, getComputedStyle(back).backgroundColor]
        .map(luminance);
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


def test_an_urgent_deadline_is_readable_on_the_selected_queue_row(
    open_page: Callable[..., Any], server: ApiServer, seeded: dict[str, Any]
) -> None:
    """WCAG AA: 4.5:1 for the 12 px amber "due in ..." on the selected row's tinted background
    (it was 4.46:1)."""
    opened = (datetime.now(UTC) - timedelta(days=14)).isoformat()
    (urgent,) = open_claims(server, seeded["listing_id"], 1, opened_at=opened)
    page = open_page()
    sign_in(page, server.keys["reviewer"])
    row = page.locator(f'.queue-item[data-claim-id="{urgent}"]')
    row.click()
    page.locator("#detail-body .detail-sub", has_text=urgent).wait_for()
    deadline = row.locator(".deadline")
    assert deadline.get_attribute("class") == "deadline deadline-soon"
    assert deadline.evaluate(CONTRAST) >= 4.5


@pytest.mark.parametrize(
    ("path", "rendered"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")]
)
def test_the_api_docs_render_with_nothing_from_outside(
    browser: Any, server: ApiServer, path: str, rendered: str
) -> None:
    """/docs and /redoc load their scripts and styles from the service: every request to another
    host is refused here, as it would fail in an offline deployment. (ReDoc's own "powered by"
    logo is an image from its CDN; offline it is missing, nothing else.)"""
    context = browser.new_context()
    outside: list[str] = []

    def refuse_outside(route: Any) -> None:
        if route.request.url.startswith(server.base_url):
            route.continue_()
            return
        if route.request.resource_type != "image":
            outside.append(route.request.url)
        route.abort()

    context.route("**/*", refuse_outside)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(f"{server.base_url}{path}")
        page.locator(rendered).first.wait_for()
        assert "Evidence Triage" in page.locator(rendered).first.inner_text()
    finally:
        context.close()
    assert outside == []


def test_the_page_keeps_to_its_content_security_policy(
    browser: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The page is served with a policy that refuses inline styles and scripts and anything from
    elsewhere: with a claim's photo and score meters on screen, nothing was refused and the
    meters still have their widths. (A server of its own: one claim, the first in its queue.)"""
    with server_with_one_claim(
        tiny_model_dir, tmp_path / "data", encode(textured_image(seed=9)), tag="csp"
    ) as (alone, reviewer, _):
        context = browser.new_context()
        context.add_init_script(
            "window.refused = [];"
            "document.addEventListener('securitypolicyviolation',"
            " (event) => window.refused.push(`${event.violatedDirective} ${event.blockedURI}`));"
        )
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        try:
            response = page.goto(f"{alone.base_url}/review/")
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            sign_in(page, reviewer)
            page.locator("#queue-list .queue-item").first.click()
            page.locator('#detail img.photo[src^="blob:"]').first.wait_for()
            widths = page.locator("#detail .meter-fill").evaluate_all(
                "fills => fills.map(fill => fill.style.width)"
            )
            refused = page.evaluate("window.refused")
        finally:
            context.close()
    assert widths and all(width.endswith("%") for width in widths)
    assert refused == []
