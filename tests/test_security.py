"""Hostile input and browser hardening, through the real API on a real uvicorn server.

Control characters in text and ids (PostgreSQL refuses NUL in text, so they must be a 4xx before
the database sees them), client filenames, hand-made page cursors and times that UTC cannot
express, the security headers, and the bounded label set of the request metrics.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from api_server import ApiServer
from conftest import encode, textured_image

from service.api.metrics import Metrics, MetricsMiddleware
from service.api.security_headers import REVIEW_PAGE_POLICY
from service.api.uploads import MAX_FILENAME_LENGTH, clean_filename

PROBLEM = "application/problem+json"


def photo(seed: int) -> bytes:
    return encode(textured_image(seed=seed), "JPEG", quality=90)


def new_listing(server: ApiServer) -> str:
    listing_id = f"lst-{uuid.uuid4().hex[:10]}"
    with server.client(server.keys["admin"]) as admin:
        created = admin.post("/v1/listings", json={"listing_id": listing_id, "title": "Mug"})
    assert created.status_code == 201, created.text
    return listing_id


def claim_body(listing_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "listing_id": listing_id,
        "order_ref": "ORD-1",
        "reason": "damaged",
        "resolution": "replacement",
        **overrides,
    }


def new_claim(server: ApiServer, key: str, **overrides: Any) -> str:
    with server.client(key) as buyer:
        response = buyer.post(
            "/v1/claims",
            json=claim_body(new_listing(server), **overrides),
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert response.status_code == 201, response.text
    return response.json()["claim_id"]


def cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def assert_client_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == code


# --- control characters ---------------------------------------------------------------------

Request = Callable[[ApiServer, str], httpx.Response]


def as_role(role: str, method: str, path: str, **kwargs: Any) -> Request:
    """A request by `role`; `{claim}` in the path and form data is the buyer's claim."""

    def send(server: ApiServer, claim_id: str) -> httpx.Response:
        if "data" in kwargs:
            kwargs["data"] = {
                name: value.format(claim=claim_id) for name, value in kwargs["data"].items()
            }
        with server.client(server.keys[role]) as client:
            return client.request(method, path.format(claim=claim_id), **kwargs)

    return send


CONTROL_CHARACTERS: dict[str, tuple[Request, int, str]] = {
    "NUL in a listing title": (
        as_role("admin", "POST", "/v1/listings", json={"title": "Mug\x00"}),
        422,
        "validation_error",
    ),
    "line break in a listing category": (
        as_role("admin", "POST", "/v1/listings", json={"title": "Mug", "category": "a\nb"}),
        422,
        "validation_error",
    ),
    "NUL in an order reference": (
        as_role(
            "buyer",
            "POST",
            "/v1/claims",
            json=claim_body("lst-x", order_ref="ORD\x00"),
            headers={"Idempotency-Key": "nul-order-ref"},
        ),
        422,
        "validation_error",
    ),
    "NUL in a description": (
        as_role(
            "buyer",
            "POST",
            "/v1/claims",
            json=claim_body("lst-x", description="cracked\x00"),
            headers={"Idempotency-Key": "nul-description"},
        ),
        422,
        "validation_error",
    ),
    "escape sequence in a description": (
        as_role(
            "buyer",
            "POST",
            "/v1/claims",
            json=claim_body("lst-x", description="\x1b[2Jcracked"),
            headers={"Idempotency-Key": "esc-description"},
        ),
        422,
        "validation_error",
    ),
    "NUL in review notes": (
        as_role(
            "reviewer",
            "POST",
            "/v1/claims/{claim}/reviews",
            json={"decision": "reject", "notes": "\x00"},
        ),
        422,
        "validation_error",
    ),
    "NUL in a claim id": (as_role("buyer", "GET", "/v1/claims/clm%00x"), 422, "validation_error"),
    "NUL in a claim id to escalate": (
        as_role("buyer", "POST", "/v1/claims/clm%00x/escalate"),
        422,
        "validation_error",
    ),
    "NUL in a claim id for audit": (
        as_role("reviewer", "GET", "/v1/claims/clm%00x/audit"),
        422,
        "validation_error",
    ),
    "NUL in a listing id": (
        as_role("reviewer", "GET", "/v1/listings/l%00"),
        422,
        "validation_error",
    ),
    "NUL in a photo id": (as_role("buyer", "GET", "/v1/photos/a%00b"), 422, "validation_error"),
    "NUL in a heatmap's photo id": (
        as_role("buyer", "GET", "/v1/photos/a%00b/heatmap.png"),
        422,
        "validation_error",
    ),
    "NUL in the check's claim id": (
        as_role(
            "buyer",
            "POST",
            "/v1/evidence/check",
            files={"file": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
            data={"claim_id": "{claim}\x00"},
        ),
        422,
        "invalid_form_field",
    ),
    "NUL in the check's listing id": (
        as_role(
            "buyer",
            "POST",
            "/v1/evidence/check",
            files={"file": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
            data={"listing_id": "lst\x00"},
        ),
        422,
        "invalid_form_field",
    ),
    "NUL in a cursor's claim id": (
        as_role(
            "buyer",
            "GET",
            "/v1/claims",
            params={"cursor": cursor("2025-01-01T00:00:00+00:00", "a\x00")},
        ),
        400,
        "invalid_cursor",
    ),
}


def stored_state(server: ApiServer, claim_id: str) -> tuple[Any, ...]:
    with server.client(server.keys["reviewer"]) as reviewer:
        claims = reviewer.get("/v1/claims", params={"limit": 100}).json()
        audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()
    return claims["count"], audit["count"]


@pytest.mark.parametrize("case", CONTROL_CHARACTERS.values(), ids=CONTROL_CHARACTERS.keys())
def test_control_characters_are_refused_before_the_database_and_change_nothing(
    api_server: ApiServer, case: tuple[Request, int, str]
) -> None:
    send, status, code = case
    claim_id = new_claim(api_server, api_server.keys["buyer"])
    before = stored_state(api_server, claim_id)
    assert_client_error(send(api_server, claim_id), status, code)
    assert stored_state(api_server, claim_id) == before


def test_free_text_keeps_tabs_and_line_breaks(api_server: ApiServer) -> None:
    description = "Crack along the handle.\r\nSecond line:\tchipped rim."
    claim_id = new_claim(api_server, api_server.keys["buyer"], description=description)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        assert buyer.get(f"/v1/claims/{claim_id}").json()["description"] == description


# --- filenames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("IMG_0412.jpg", "IMG_0412.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ana\\Pictures\\mug.jpg", "mug.jpg"),
        ("a\x00b\x1b[31mc\r\n.jpg", "ab[31mc.jpg"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("  spaced  .jpg ", "spaced  .jpg"),
        ("dir/", None),
        ("\x00\x01", None),
        ("é" * 300 + ".jpeg", "é" * (MAX_FILENAME_LENGTH - 5) + ".jpeg"),
        ("x" * 300, "x" * MAX_FILENAME_LENGTH),
    ],
)
def test_client_filenames_are_cleaned(raw: str, clean: str | None) -> None:
    assert clean_filename(raw) == clean


def test_an_uploaded_filename_is_stored_clean_and_short(api_server: ApiServer) -> None:
    claim_id = new_claim(api_server, api_server.keys["buyer"])
    raw = "..\\..\\evil\x07\u202e" + "A" * 1000 + ".jpg"
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="'
        + raw.encode()
        + b'"\r\nContent-Type: image/jpeg\r\n\r\n'
        + photo(seed=5)
        + b"\r\n--xyz--\r\n"
    )
    with api_server.client(api_server.keys["buyer"]) as buyer:
        uploaded = buyer.post(
            f"/v1/claims/{claim_id}/evidence",
            content=body,
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert uploaded.status_code == 201, uploaded.text
        stored = buyer.get(f"/v1/claims/{claim_id}").json()["photos"][0]["filename"]
    assert stored == "evil" + "A" * (MAX_FILENAME_LENGTH - 8) + ".jpg"


# --- hand-made cursors and times ------------------------------------------------------------

FORGED_CURSORS = {
    "queue: priority past 32 bits": ("/v1/queue", cursor(2**31, "2025-01-01T00:00:00+00:00", "c")),
    "queue: priority below 32 bits": (
        "/v1/queue",
        cursor(-(2**31) - 1, "2025-01-01T00:00:00+00:00", "c"),
    ),
    "queue: year 1 east of Greenwich": ("/v1/queue", cursor(5, "0001-01-01T00:00:00+05:00", "c")),
    "claims: year 9999 west of Greenwich": ("/v1/claims", cursor("9999-12-31T23:00:00-05:00", "c")),
}


@pytest.mark.parametrize("case", FORGED_CURSORS.values(), ids=FORGED_CURSORS.keys())
def test_a_forged_cursor_out_of_range_is_a_400(
    api_server: ApiServer, case: tuple[str, str]
) -> None:
    path, value = case
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        assert_client_error(reviewer.get(path, params={"cursor": value}), 400, "invalid_cursor")


def test_a_forged_cursor_in_range_pages_within_the_callers_scope(api_server: ApiServer) -> None:
    mine = new_claim(api_server, api_server.keys["buyer"])
    theirs = new_claim(api_server, api_server.keys["other_buyer"])
    with api_server.client(api_server.keys["buyer"]) as buyer:
        page = buyer.get("/v1/claims", params={"cursor": cursor("9999-01-01T00:00:00+00:00", "")})
    assert page.status_code == 200, page.text
    seen = [claim["claim_id"] for claim in page.json()["data"]]
    assert mine in seen and theirs not in seen
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        queue = reviewer.get(
            "/v1/queue", params={"cursor": cursor(2**31 - 1, "2025-01-01T00:00:00+00:00", "")}
        )
    assert queue.status_code == 200, queue.text


@pytest.mark.parametrize("opened_at", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"])
def test_an_opened_at_that_utc_cannot_express_is_a_422(
    api_server: ApiServer, opened_at: str
) -> None:
    with api_server.client(api_server.keys["buyer"]) as buyer:
        response = buyer.post(
            "/v1/claims",
            json=claim_body(new_listing(api_server), opened_at=opened_at),
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert_client_error(response, 422, "validation_error")


# --- security headers -----------------------------------------------------------------------


def test_the_reviewer_page_cannot_be_framed_and_runs_only_its_own_code(
    api_server: ApiServer,
) -> None:
    with api_server.client() as anyone:
        for path in ("/review/", "/review/app.js"):
            response = anyone.get(path)
            assert response.status_code == 200
            assert response.headers["content-security-policy"] == REVIEW_PAGE_POLICY
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"


def test_photos_heatmaps_and_errors_are_never_sniffed(api_server: ApiServer) -> None:
    claim_id = new_claim(api_server, api_server.keys["buyer"])
    with api_server.client(api_server.keys["buyer"]) as buyer:
        uploaded = buyer.post(
            f"/v1/claims/{claim_id}/evidence",
            files=[("files", ("a.jpg", photo(seed=6), "image/jpeg"))],
        )
        assert uploaded.status_code == 201, uploaded.text
        assessment = uploaded.json()["data"][0]
        answers = {
            "image/jpeg": buyer.get(assessment["url"]),
            "image/png": buyer.get(assessment["heatmap_url"]),
            PROBLEM: buyer.get("/v1/claims/clm_nowhere"),
            "application/json": buyer.get(f"/v1/claims/{claim_id}"),
        }
    for media_type, response in answers.items():
        assert response.headers["content-type"].startswith(media_type)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


# --- metrics --------------------------------------------------------------------------------


def test_request_metrics_label_unknown_methods_as_other() -> None:
    metrics = Metrics(model_version="m", read_queue_depths=dict)

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def ignore(message: Any) -> None:
        return None

    async def nothing() -> Any:
        return {"type": "http.request", "body": b""}

    middleware = MetricsMiddleware(answer, metrics)
    for method in ("GET", *(f"X{number}" for number in range(50))):
        scope = {"type": "http", "method": method, "path": "/healthz"}
        asyncio.run(middleware(scope, nothing, ignore))
    methods = {
        sample.labels["method"]
        for family in metrics.registry.collect()
        if family.name == "triage_http_request_duration_seconds"
        for sample in family.samples
    }
    assert methods == {"GET", "other"}
