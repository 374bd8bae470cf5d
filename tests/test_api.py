"""The API through a real uvicorn server, on SQLite and (where configured) PostgreSQL.

Main flows: listing with images, idempotent claim creation, evidence upload and scores, queue
order and paging, review decision and its audit entry; role checks; and every bad input of
design.md section 5 answered by a 4xx problem document with nothing already stored changed.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from api_server import TEST_LIMITS, ApiServer, run_api_server
from conftest import encode, textured_image
from onnx_fixtures import TINY_CARD, TINY_MODEL_VERSION
from PIL import Image, ImageDraw, ImageFilter
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.runtime import pending_evidence_ttl
from service.auth import Role
from service.db import crud
from service.db.models import PendingEvidence
from service.db.session import make_engine, make_session_factory, transaction
from service.duplicates import claim_of_ref, evidence_ref, format_hashes, photo_windows
from service.intake import open_photo

PROBLEM = "application/problem+json"


def red_patch_jpeg(seed: int = 0) -> bytes:
    """A sharp photo with a large red patch: the tiny test model reads red as damage."""
    image = textured_image(seed=seed)
    ImageDraw.Draw(image).rectangle((200, 140, 440, 380), fill=(255, 0, 0))
    return encode(image, "JPEG", quality=92)


def plain_jpeg(seed: int) -> bytes:
    return encode(textured_image(seed=seed), "JPEG", quality=92)


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims 2.5 gigapixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["code"] == code, body
    return body


def files(*items: bytes, field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(items, 1)]


def new_listing(server: ApiServer, *images: bytes) -> str:
    listing_id = f"lst-{uuid.uuid4().hex[:10]}"
    with server.client(server.keys["admin"]) as admin:
        created = admin.post("/v1/listings", json={"listing_id": listing_id, "title": "Blue mug"})
        assert created.status_code == 201, created.text
        if images:
            added = admin.post(f"/v1/listings/{listing_id}/images", files=files(*images))
            assert added.status_code == 201, added.text
            assert added.json()["count"] == len(images)
    return listing_id


def claim_body(listing_id: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "listing_id": listing_id,
        "order_ref": "ORD-1",
        "reason": "damaged",
        "resolution": "full_refund",
        "amount": "20.00",
        "currency": "EUR",
    }
    body.update(overrides)
    return body


def new_claim(server: ApiServer, listing_id: str, key: str | None = None, **overrides: Any) -> str:
    with server.client(key or server.keys["buyer"]) as buyer:
        response = buyer.post(
            "/v1/claims",
            json=claim_body(listing_id, **overrides),
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert response.status_code == 201, response.text
    return response.json()["claim_id"]


def stored_files(server: ApiServer) -> int:
    return sum(1 for path in server.settings.photos_dir.rglob("*") if path.is_file())


# --- operations -----------------------------------------------------------------------------


def test_health_readiness_and_metrics(api_server: ApiServer) -> None:
    with api_server.client() as anyone:
        assert anyone.get("/healthz").json() == {"status": "ok"}
        ready = anyone.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"model": True, "database": True}
        anyone.get("/healthz")
        metrics = anyone.get("/metrics").text
    assert 'triage_http_request_duration_seconds_count{method="GET",route="/healthz"' in metrics
    assert 'triage_model_info{version="tiny-test-0.0.1"} 1.0' in metrics
    assert 'triage_queue_depth{lane="needs_review"}' in metrics
    assert "triage_photos_scored_total" in metrics


def test_openapi_documents_the_surface_with_examples(api_server: ApiServer) -> None:
    with api_server.client() as anyone:
        spec = anyone.get("/openapi.json").json()
    for path in (
        "/v1/listings",
        "/v1/listings/{listing_id}/images",
        "/v1/claims",
        "/v1/claims/{claim_id}",
        "/v1/claims/{claim_id}/evidence",
        "/v1/claims/{claim_id}/escalate",
        "/v1/evidence/check",
        "/v1/queue",
        "/v1/claims/{claim_id}/reviews",
        "/v1/claims/{claim_id}/audit",
        "/v1/photos/{photo_id}",
        "/v1/photos/{photo_id}/heatmap.png",
        "/v1/model",
    ):
        assert path in spec["paths"], path
    assert spec["components"]["schemas"]["ClaimCreate"]["examples"][0]["reason"] == "damaged"
    assert spec["components"]["schemas"]["ModelPublic"]["examples"][0]["thresholds"]
    evidence = spec["paths"]["/v1/claims/{claim_id}/evidence"]["post"]
    assert "multipart/form-data" in evidence["requestBody"]["content"]


@pytest.mark.parametrize("role", ["buyer", "reviewer", "admin"])
def test_model_card_is_readable_with_any_key(api_server: ApiServer, role: str) -> None:
    with api_server.client(api_server.keys[role]) as client:
        response = client.get("/v1/model")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "name": TINY_CARD["name"],
        "version": TINY_CARD["version"],
        "model_version": TINY_MODEL_VERSION,
        "input_size": TINY_CARD["input"]["size"],
        "thresholds": TINY_CARD["thresholds"],
        # Only the numeric top-level entries: the targets table and the notes are not metrics.
        "metrics": [
            {
                "name": "damage_auroc",
                "value": 0.9,
                "baseline": 0.7,
                "target": ">= 0.95",
                "target_met": False,
                "interval_95": [0.85, 0.94],
                "ece_if_perfectly_calibrated": None,
            },
            {
                "name": "mismatch_ece",
                "value": 0.04,
                "baseline": None,
                "target": "<= 0.05",
                "target_met": True,
                "interval_95": None,
                "ece_if_perfectly_calibrated": 0.03,
            },
        ],
        "limitations": TINY_CARD["limitations"],
    }


def test_model_card_needs_a_key(api_server: ApiServer) -> None:
    with api_server.client() as anyone:
        response = anyone.get("/v1/model")
    assert_problem(response, 401, "missing_api_key")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_request_id_is_echoed_or_generated(api_server: ApiServer) -> None:
    with api_server.client() as anyone:
        assert (
            anyone.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
            == "abc-123"
        )
        assert len(anyone.get("/healthz").headers["x-request-id"]) == 16


# --- main flow ------------------------------------------------------------------------------


def test_claim_lifecycle_from_listing_to_audited_decision(api_server: ApiServer) -> None:
    listing_image = plain_jpeg(seed=11)
    listing_id = new_listing(api_server, listing_image)
    buyer = api_server.client(api_server.keys["buyer"])
    reviewer = api_server.client(api_server.keys["reviewer"])
    body = claim_body(listing_id)
    headers = {"Idempotency-Key": f"idem-{uuid.uuid4().hex}"}

    first = buyer.post("/v1/claims", json=body, headers=headers)
    again = buyer.post("/v1/claims", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    claim_id = first.json()["claim_id"]
    assert again.json()["claim_id"] == claim_id
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["triage"]["lane"] == "needs_more_evidence"
    mine = buyer.get("/v1/claims", params={"limit": 100}).json()
    assert [claim["claim_id"] for claim in mine["data"]].count(claim_id) == 1

    damaged = red_patch_jpeg(seed=3)
    uploaded = buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(damaged))
    assert uploaded.status_code == 201, uploaded.text
    evidence = uploaded.json()
    assert evidence["count"] == 1
    photo = evidence["data"][0]
    assert photo["damage"] > 0.9
    assert photo["mismatch"] is not None and photo["model_version"] == "tiny-test-0.0.1"
    assert evidence["triage"]["support"] == pytest.approx(photo["damage"])
    assert any("damage" in reason for reason in evidence["triage"]["reasons"])

    claim = buyer.get(f"/v1/claims/{claim_id}").json()
    assert [p["photo_id"] for p in claim["photos"]] == [photo["photo_id"]]
    assert claim["triage"]["sufficiency"] in ("ok", "weak")

    escalated = buyer.post(f"/v1/claims/{claim_id}/escalate")
    assert escalated.status_code == 200 and escalated.json()["status"] == "escalated"
    assert escalated.json()["triage"]["priority"] > claim["triage"]["priority"]

    queue = reviewer.get("/v1/queue", params={"limit": 100}).json()
    assert claim_id in [item["claim_id"] for item in queue["data"]]

    review = reviewer.post(
        f"/v1/claims/{claim_id}/reviews",
        json={
            "decision": "uphold_partial_refund",
            "amount": "10.00",
            "notes": "Visible damage.",
            "labels": [{"photo_id": photo["photo_id"], "damage": True}],
        },
    )
    assert review.status_code == 201, review.text
    assert review.json()["claim_status"] == "resolved"
    decided = reviewer.get(f"/v1/claims/{claim_id}").json()
    assert decided["decision"] == "uphold_partial_refund"
    assert decided["triage"]["priority"] == 0

    audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()
    actions = [event["action"] for event in audit["data"]]
    assert actions == ["claim_created", "evidence_added", "claim_escalated", "review_recorded"]
    decision = audit["data"][-1]
    assert decision["detail"]["decision"] == "uphold_partial_refund"
    assert decision["detail"]["labels"][0]["photo_id"] == photo["photo_id"]
    assert decision["actor_role"] == "reviewer"

    again = reviewer.post(f"/v1/claims/{claim_id}/reviews", json={"decision": "reject"})
    assert_problem(again, 409, "claim_resolved")
    buyer.close()
    reviewer.close()


def post_at_once(server: ApiServer, posts: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
    """Each (key, path, httpx keyword arguments) posted from its own thread, all released
    together: the statuses, in the order the answers came."""
    start = threading.Barrier(len(posts))
    statuses: list[int] = []

    def post(key: str, path: str, arguments: dict[str, Any]) -> None:
        with server.client(key) as client:
            start.wait()
            statuses.append(client.post(path, **arguments).status_code)

    threads = [threading.Thread(target=post, args=call) for call in posts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_two_reviewers_deciding_one_claim_at_once_record_one_decision(
    api_server: ApiServer,
) -> None:
    """Two reviewers press a decision on the same claim at the same moment: one decision is
    recorded, the other gets 409 claim_resolved, never two contradictory 201s. (Both used to
    read the claim as unresolved before either wrote, and both were recorded.)"""
    listing_id = new_listing(api_server)
    second_reviewer = api_server.create_key(Role.reviewer, "second reviewer")
    claims = [new_claim(api_server, listing_id) for _ in range(6)]
    with api_server.client(api_server.keys["buyer"]) as buyer:
        for seed, claim_id in enumerate(claims):
            uploaded = buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(plain_jpeg(seed)))
            assert uploaded.status_code == 201, uploaded.text
    for claim_id in claims:
        path = f"/v1/claims/{claim_id}/reviews"
        statuses = post_at_once(
            api_server,
            [
                (api_server.keys["reviewer"], path, {"json": {"decision": "reject"}}),
                (second_reviewer, path, {"json": {"decision": "uphold_full_refund"}}),
            ],
        )
        with api_server.client(api_server.keys["reviewer"]) as reviewer:
            audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()["data"]
            claim = reviewer.get(f"/v1/claims/{claim_id}").json()
        recorded = [e["detail"]["decision"] for e in audit if e["action"] == "review_recorded"]
        assert sorted(statuses) == [201, 409], (claim_id, statuses, recorded)
        assert recorded == [claim["decision"]]


def test_an_escalation_at_the_moment_of_a_decision_never_reopens_the_decided_claim(
    api_server: ApiServer,
) -> None:
    """The buyer escalates while a reviewer decides: either order is fine, but a decided claim
    must stay resolved. (The escalation read the claim as open, the decision committed, and the
    escalation then wrote `escalated` over `resolved`: a decided claim back in the queue.)"""
    listing_id = new_listing(api_server)
    claims = [new_claim(api_server, listing_id) for _ in range(8)]
    reviewer_key = api_server.keys["reviewer"]
    for claim_id in claims:
        post_at_once(
            api_server,
            [
                (reviewer_key, f"/v1/claims/{claim_id}/reviews", {"json": {"decision": "reject"}}),
                (api_server.keys["buyer"], f"/v1/claims/{claim_id}/escalate", {}),
            ],
        )
        with api_server.client(api_server.keys["reviewer"]) as reviewer:
            claim = reviewer.get(f"/v1/claims/{claim_id}").json()
            queue = reviewer.get("/v1/queue", params={"limit": 100}).json()["data"]
        assert (claim["status"], claim["decision"]) == ("resolved", "reject"), claim_id
        assert claim_id not in [item["claim_id"] for item in queue]


def test_evidence_arriving_at_the_moment_of_a_decision_never_reopens_the_decided_claim(
    api_server: ApiServer,
) -> None:
    """A claim awaiting evidence: the buyer's upload is being scored while a reviewer decides.
    The upload checked the status only before scoring, then stored the photos and moved the
    claim from awaiting_evidence back to escalated over the decision. Either order is fine;
    a decided claim stays resolved and gets no evidence after its decision."""
    listing_id = new_listing(api_server)
    claims = [new_claim(api_server, listing_id) for _ in range(6)]
    reviewer_key, buyer_key = api_server.keys["reviewer"], api_server.keys["buyer"]
    with api_server.client(reviewer_key) as reviewer, api_server.client(buyer_key) as buyer:
        for claim_id in claims:
            assert buyer.post(f"/v1/claims/{claim_id}/escalate").status_code == 200
            asked = reviewer.post(
                f"/v1/claims/{claim_id}/reviews", json={"decision": "request_more_evidence"}
            )
            assert asked.json()["claim_status"] == "awaiting_evidence", asked.text
    for seed, claim_id in enumerate(claims):
        photos = files(*(plain_jpeg(100 + 4 * seed + n) for n in range(4)))
        post_at_once(
            api_server,
            [
                (reviewer_key, f"/v1/claims/{claim_id}/reviews", {"json": {"decision": "reject"}}),
                (buyer_key, f"/v1/claims/{claim_id}/evidence", {"files": photos}),
            ],
        )
        with api_server.client(reviewer_key) as reviewer:
            claim = reviewer.get(f"/v1/claims/{claim_id}").json()
            audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()["data"]
        assert (claim["status"], claim["decision"]) == ("resolved", "reject"), claim_id
        actions = [event["action"] for event in audit]
        assert actions[-1] == "review_recorded", actions


def test_a_claim_awaiting_evidence_cannot_be_escalated_past_the_reviewers_request(
    api_server: ApiServer,
) -> None:
    """A reviewer asked for more evidence: escalating again put the claim back among escalated
    claims with no new photo, ending the request unanswered and overwriting the time of the
    first escalation. The buyer is told to upload photos instead; an upload ends the wait."""
    listing_id = new_listing(api_server)
    claim_id = new_claim(api_server, listing_id)
    reviewer_key, buyer_key = api_server.keys["reviewer"], api_server.keys["buyer"]
    with api_server.client(reviewer_key) as reviewer, api_server.client(buyer_key) as buyer:
        first = buyer.post(f"/v1/claims/{claim_id}/escalate").json()
        asked = reviewer.post(
            f"/v1/claims/{claim_id}/reviews", json={"decision": "request_more_evidence"}
        )
        assert asked.json()["claim_status"] == "awaiting_evidence", asked.text

        refused = assert_problem(
            buyer.post(f"/v1/claims/{claim_id}/escalate"), 409, "evidence_requested"
        )
        assert "upload" in refused["detail"].lower()
        claim = buyer.get(f"/v1/claims/{claim_id}").json()
        assert claim["status"] == "awaiting_evidence"
        assert claim["escalated_at"] == first["escalated_at"]

        uploaded = buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(plain_jpeg(301)))
        assert uploaded.status_code == 201, uploaded.text
        claim = buyer.get(f"/v1/claims/{claim_id}").json()
        assert (claim["status"], claim["escalated_at"]) == ("escalated", first["escalated_at"])
        actions = [e["action"] for e in reviewer.get(f"/v1/claims/{claim_id}/audit").json()["data"]]
        assert actions.count("claim_escalated") == 1, actions


def test_an_admin_may_escalate_a_claim_awaiting_evidence(api_server: ApiServer) -> None:
    """design.md gives escalation to the owner and admins: an admin puts a claim awaiting
    evidence back in the queue without it, the first escalation's time kept."""
    listing_id = new_listing(api_server)
    claim_id = new_claim(api_server, listing_id)
    reviewer_key, buyer_key = api_server.keys["reviewer"], api_server.keys["buyer"]
    with api_server.client(reviewer_key) as reviewer, api_server.client(buyer_key) as buyer:
        first = buyer.post(f"/v1/claims/{claim_id}/escalate").json()
        asked = reviewer.post(
            f"/v1/claims/{claim_id}/reviews", json={"decision": "request_more_evidence"}
        )
        assert asked.json()["claim_status"] == "awaiting_evidence", asked.text
    with api_server.client(api_server.keys["admin"]) as admin:
        escalated = admin.post(f"/v1/claims/{claim_id}/escalate")
    assert escalated.status_code == 200, escalated.text
    assert escalated.json()["status"] == "escalated"
    assert escalated.json()["escalated_at"] == first["escalated_at"]


def land_first(
    monkeypatch: pytest.MonkeyPatch, server: ApiServer, key: str, path: str, body: Any
) -> None:
    """The next change of status takes the claim's row only after `key` has posted `body` to
    `path` and it has committed: a change that lands between a route's read of the claim and
    its hold on the row (on PostgreSQL the hold waits for the other transaction's row lock, on
    SQLite for its write lock, and then goes on from what it read before)."""
    hold = crud.hold_unresolved_claim
    pending = [True]

    def land_then_hold(session: Session, *, claim_id: str, now: Any) -> bool:
        if pending:
            pending.clear()
            with server.client(key) as client:
                landed = client.post(path, **body)
            assert landed.status_code in (200, 201), landed.text
        return hold(session, claim_id=claim_id, now=now)

    monkeypatch.setattr(crud, "hold_unresolved_claim", land_then_hold)


def test_evidence_answers_a_request_for_it_that_landed_while_it_was_recorded(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reviewer asks for more evidence while the buyer's upload is being recorded. The upload
    comes after the request, so it answers it and the claim goes back to `escalated`; it stayed
    `awaiting_evidence` with its answer attached, because the upload went on from the status it
    had read before it held the row."""
    listing_id = new_listing(api_server)
    claim_id = new_claim(api_server, listing_id)
    reviewer_key, buyer_key = api_server.keys["reviewer"], api_server.keys["buyer"]
    with api_server.client(buyer_key) as buyer:
        assert buyer.post(f"/v1/claims/{claim_id}/escalate").status_code == 200
    land_first(
        monkeypatch,
        api_server,
        reviewer_key,
        f"/v1/claims/{claim_id}/reviews",
        {"json": {"decision": "request_more_evidence"}},
    )
    with api_server.client(buyer_key) as buyer:
        uploaded = buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(plain_jpeg(321)))
        assert uploaded.status_code == 201, uploaded.text
        claim = buyer.get(f"/v1/claims/{claim_id}").json()
    assert claim["status"] == "escalated"
    with api_server.client(reviewer_key) as reviewer:
        audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()["data"]
    assert [event["action"] for event in audit][-2:] == ["review_recorded", "evidence_added"]


def test_a_decision_records_the_status_it_found_when_it_held_the_claim(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buyer escalates while a reviewer asks for more evidence: the request comes after the
    escalation, so its audit entry says it moved the claim from `escalated`, and the triage it
    writes counts the escalation (both came from the claim as read before the row was held)."""
    listing_id = new_listing(api_server)
    claim_id = new_claim(api_server, listing_id)
    land_first(
        monkeypatch,
        api_server,
        api_server.keys["buyer"],
        f"/v1/claims/{claim_id}/escalate",
        {},
    )
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        asked = reviewer.post(
            f"/v1/claims/{claim_id}/reviews", json={"decision": "request_more_evidence"}
        )
        assert asked.status_code == 201, asked.text
        audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()["data"]
    [recorded] = [event["detail"] for event in audit if event["action"] == "review_recorded"]
    assert (recorded["from_status"], recorded["to_status"]) == ("escalated", "awaiting_evidence")
    assert "escalated" in reviewer_reasons(api_server, claim_id)


def test_a_retried_upload_changes_nothing_and_records_nothing(api_server: ApiServer) -> None:
    """A buyer's app retries an upload whose response it lost: the photos are already evidence,
    so the claim and its audit trail stay as they were (an empty `evidence_added` entry was
    written and `updated_at` moved on every retry)."""
    listing_id = new_listing(api_server)
    claim_id = new_claim(api_server, listing_id)
    photos = files(plain_jpeg(311), red_patch_jpeg(312))
    with api_server.client(api_server.keys["buyer"]) as buyer:
        first = buyer.post(f"/v1/claims/{claim_id}/evidence", files=photos)
        assert first.status_code == 201, first.text
        before = buyer.get(f"/v1/claims/{claim_id}").json()
        retried = buyer.post(f"/v1/claims/{claim_id}/evidence", files=photos)
        assert retried.status_code == 201, retried.text
        assert retried.json()["data"] == first.json()["data"]
        assert retried.json()["triage"] == first.json()["triage"]
        assert buyer.get(f"/v1/claims/{claim_id}").json() == before
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()["data"]
    assert [event["action"] for event in audit] == ["claim_created", "evidence_added"]


def test_same_idempotency_key_with_another_body_is_a_conflict(api_server: ApiServer) -> None:
    listing_id = new_listing(api_server)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        assert buyer.post("/v1/claims", json=claim_body(listing_id), headers=headers).is_success
        other = buyer.post(
            "/v1/claims", json=claim_body(listing_id, order_ref="ORD-2"), headers=headers
        )
        assert_problem(other, 409, "idempotency_key_reused")


def test_a_retry_writing_the_same_amount_differently_is_the_same_claim(
    api_server: ApiServer,
) -> None:
    """ "20.00", "20.0", "20" and the JSON number 20.0 are one amount (a JavaScript client
    sends 20.00 as 20): a retry with any of them was refused as idempotency_key_reused."""
    listing_id = new_listing(api_server)
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    with api_server.client(api_server.keys["buyer"]) as buyer:
        first = buyer.post("/v1/claims", json=claim_body(listing_id), headers=headers)
        assert first.status_code == 201, first.text
        for amount in ("20.0", "20", 20.0, 20):
            again = buyer.post(
                "/v1/claims", json=claim_body(listing_id, amount=amount), headers=headers
            )
            assert again.status_code == 201, (amount, again.text)
            assert again.json()["claim_id"] == first.json()["claim_id"]
        other = buyer.post(
            "/v1/claims", json=claim_body(listing_id, amount="20.01"), headers=headers
        )
        assert_problem(other, 409, "idempotency_key_reused")


def test_idempotency_keys_are_per_buyer(api_server: ApiServer) -> None:
    listing_id = new_listing(api_server)
    headers = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    ids = set()
    for name in ("buyer", "other_buyer"):
        with api_server.client(api_server.keys[name]) as buyer:
            response = buyer.post("/v1/claims", json=claim_body(listing_id), headers=headers)
            assert response.status_code == 201
            ids.add(response.json()["claim_id"])
    assert len(ids) == 2


def test_display_copy_and_heatmap(api_server: ApiServer) -> None:
    listing_id = new_listing(api_server, plain_jpeg(seed=21))
    claim_id = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        photo = buyer.post(
            f"/v1/claims/{claim_id}/evidence", files=files(red_patch_jpeg(seed=5))
        ).json()["data"][0]
        copy = buyer.get(photo["url"])
        assert copy.status_code == 200 and copy.headers["content-type"] == "image/jpeg"
        decoded = Image.open(io.BytesIO(copy.content))
        assert decoded.format == "JPEG" and not decoded.getexif()
        heatmap = buyer.get(photo["heatmap_url"])
        assert heatmap.status_code == 200 and heatmap.content.startswith(b"\x89PNG")
    with api_server.client(api_server.keys["other_buyer"]) as stranger:
        assert_problem(stranger.get(photo["url"]), 404, "photo_not_found")
        assert_problem(stranger.get(photo["heatmap_url"]), 404, "photo_not_found")
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        assert reviewer.get(photo["url"]).status_code == 200


def one_photo_two_claims(server: ApiServer, seed: int) -> tuple[bytes, str, str]:
    """A photo and two claims on one listing, by two buyers: the setting for reuse tests."""
    listing_id = new_listing(server, plain_jpeg(seed=seed))
    first = new_claim(server, listing_id)
    second = new_claim(server, listing_id, key=server.keys["other_buyer"])
    return red_patch_jpeg(seed=seed + 2), first, second


def test_reused_photo_from_another_claim_is_flagged_suspicious(api_server: ApiServer) -> None:
    photo, first, second = one_photo_two_claims(api_server, seed=31)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        assert buyer.post(f"/v1/claims/{first}/evidence", files=files(photo)).status_code == 201
        # Uploading the same photo to the same claim again adds nothing and is not "reuse".
        repeat = buyer.post(f"/v1/claims/{first}/evidence", files=files(photo)).json()
        assert repeat["count"] == 1
        assert all(i["code"] != "duplicate_across_claims" for i in repeat["data"][0]["issues"])
    with api_server.client(api_server.keys["other_buyer"]) as other:
        reused = other.post(f"/v1/claims/{second}/evidence", files=files(photo)).json()
    codes = [issue["code"] for issue in reused["data"][0]["issues"]]
    assert "duplicate_across_claims" in codes
    assert reused["triage"]["lane"] == "suspicious"
    # The reviewer learns which claim; the buyer only that the photo was used elsewhere.
    assert f"photo 1 reuses a photo from claim {first}" in reviewer_reasons(api_server, second)
    assert "photo 1 reuses a photo from another claim" in reused["triage"]["reasons"]
    with api_server.client(api_server.keys["other_buyer"]) as other:
        seen_by_buyer = [
            other.get(f"/v1/claims/{second}").json(),
            *other.get("/v1/claims").json()["data"],
        ]
    buyer_reasons = [reason for claim in seen_by_buyer for reason in claim["triage"]["reasons"]]
    assert not any(first in reason for reason in buyer_reasons)


def issue_codes(body: dict[str, Any]) -> list[str]:
    return [issue["code"] for photo in body["data"] for issue in photo["issues"]]


def reviewer_reasons(server: ApiServer, claim_id: str) -> list[str]:
    """The claim's triage reasons as a reviewer reads them: other claims named."""
    with server.client(server.keys["reviewer"]) as reviewer:
        claim = reviewer.get(f"/v1/claims/{claim_id}")
    assert claim.status_code == 200, claim.text
    return claim.json()["triage"]["reasons"]


THROUGH = ["the same process", "another process"]


@contextlib.contextmanager
def server_for(api_server: ApiServer, through: str) -> Iterator[ApiServer]:
    """`api_server` itself, or another server on its database (another uvicorn worker, another
    container), whose duplicate index knows only what it read from the database."""
    if through == "the same process":
        yield api_server
    else:
        with run_api_server(api_server.settings) as other_process:
            yield other_process


@contextlib.contextmanager
def database_session(server: ApiServer) -> Iterator[Session]:
    """A transaction on the server's database, beside the server."""
    engine = make_engine(server.settings.resolved_database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def registrations(server: ApiServer) -> dict[str, PendingEvidence]:
    """The photos that uploads registered (`pending_evidence`), by ref."""
    with database_session(server) as session:
        return {row.ref: row for row in session.scalars(select(PendingEvidence))}


@pytest.mark.parametrize("through", THROUGH)
def test_one_photo_uploaded_to_two_claims_at_once_is_flagged(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """The second upload finds the first while it is still being recorded, also through
    another server on the same database (another uvicorn worker, another container)."""
    from service.api.routes import evidence

    photo, first, second = one_photo_two_claims(
        api_server, seed=41 if through == "the same process" else 61
    )
    record = evidence._record_evidence
    first_is_recording, second_is_done = threading.Event(), threading.Event()

    def record_first_after_second(runtime: Any, key: Any, claim_id: str, *rest: Any) -> Any:
        # The first upload has been scored and is about to commit; hold it there while the
        # same photo goes to another claim, which finds nothing in the index yet.
        if claim_id == first:
            first_is_recording.set()
            if not second_is_done.wait(30):
                raise TimeoutError("the second upload never finished")
        return record(runtime, key, claim_id, *rest)

    monkeypatch.setattr(evidence, "_record_evidence", record_first_after_second)
    responses: dict[str, httpx.Response] = {}

    def upload_first() -> None:
        with api_server.client(api_server.keys["buyer"]) as buyer:
            responses["first"] = buyer.post(f"/v1/claims/{first}/evidence", files=files(photo))

    with server_for(api_server, through) as second_server:
        uploader = threading.Thread(target=upload_first)
        uploader.start()
        try:
            assert first_is_recording.wait(30)
            with second_server.client(api_server.keys["other_buyer"]) as other:
                responses["second"] = other.post(
                    f"/v1/claims/{second}/evidence", files=files(photo)
                )
        finally:
            second_is_done.set()
            uploader.join(30)
    assert responses["first"].status_code == responses["second"].status_code == 201
    assert "duplicate_across_claims" not in issue_codes(responses["first"].json())
    body = responses["second"].json()
    assert "duplicate_across_claims" in issue_codes(body)
    assert body["triage"]["lane"] == "suspicious"
    assert any(first in reason for reason in reviewer_reasons(api_server, second))


def test_a_photo_committed_by_another_process_is_found(api_server: ApiServer) -> None:
    """Two servers on one database (two uvicorn workers, or two containers): the second was
    already running when the first stored the photo, and still finds it."""
    photo, first, second = one_photo_two_claims(api_server, seed=51)
    settings = api_server.settings.model_copy(update={"duplicate_sync_seconds": 0})
    with run_api_server(settings) as other_process:
        with api_server.client(api_server.keys["buyer"]) as buyer:
            assert buyer.post(f"/v1/claims/{first}/evidence", files=files(photo)).status_code == 201
        with other_process.client(api_server.keys["other_buyer"]) as other:
            checked = other.post("/v1/evidence/check", files=files(photo, field="file"))
            reused = other.post(f"/v1/claims/{second}/evidence", files=files(photo))
    assert checked.status_code == 200, checked.text
    assert "duplicate_across_claims" in [issue["code"] for issue in checked.json()["issues"]]
    assert reused.status_code == 201, reused.text
    assert "duplicate_across_claims" in issue_codes(reused.json())
    assert any(first in reason for reason in reviewer_reasons(api_server, second))


def test_evidence_committed_long_after_its_created_at_is_indexed_by_the_next_catch_up(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that stalled five minutes before committing lands behind the rows another
    process has read: its regular syncs (a minute back) miss it, its next catch-up (an hour back,
    every ten minutes) finds it, rather than its next restart."""
    from service.api import runtime as runtime_module
    from service.api.runtime import Runtime

    photo, first, second = one_photo_two_claims(api_server, seed=57)
    other_process = Runtime.start(api_server.settings)
    try:
        with api_server.client(api_server.keys["other_buyer"]) as other:
            newer = red_patch_jpeg(seed=58)
            assert (
                other.post(f"/v1/claims/{second}/evidence", files=files(newer)).status_code == 201
            )
        other_process.sync_duplicate_index(force=True)  # has read up to that upload
        opened = open_photo(photo)
        late = evidence_ref(first, opened.photo_id)
        stalled_since = crud.utcnow() - timedelta(minutes=5)
        with database_session(api_server) as session:
            windows = photo_windows(opened.image)
            crud.get_or_add_photo(
                session,
                photo_id=opened.photo_id,
                image_format=opened.format,
                byte_size=len(photo),
                size=opened.image.size,
                has_gps=False,
                perceptual_hash=format_hashes(windows[:1]),
                window_hashes=format_hashes(windows),
                now=stalled_since,
            )
            session.flush()  # the photo row before the evidence row that refers to it
            crud.add_claim_photo(
                session,
                claim_id=first,
                photo_id=opened.photo_id,
                filename="late.jpg",
                damage=0.5,
                mismatch=None,
                match_similarity=None,
                issues=[],
                damage_map=None,
                duplicate_claims=[],
                model_version=TINY_MODEL_VERSION,
                now=stalled_since,
            )
        other_process.sync_duplicate_index(force=True)
        assert late not in other_process.duplicates
        monkeypatch.setattr(runtime_module, "DUPLICATE_CATCH_UP_SECONDS", 0.0)  # one is due
        other_process.sync_duplicate_index(force=True)
        assert late in other_process.duplicates
    finally:
        other_process.close()


@pytest.mark.parametrize("through", THROUGH)
def test_an_upload_that_fails_leaves_no_photo_to_be_reused(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    from service.api.routes import evidence

    photo, first, second = one_photo_two_claims(
        api_server, seed=45 if through == "the same process" else 67
    )
    record = evidence._record_evidence

    def fail_for_first(runtime: Any, key: Any, claim_id: str, *rest: Any) -> Any:
        if claim_id == first:
            raise OSError("disk full")
        return record(runtime, key, claim_id, *rest)

    monkeypatch.setattr(evidence, "_record_evidence", fail_for_first)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        assert buyer.post(f"/v1/claims/{first}/evidence", files=files(photo)).status_code == 500
    assert not [ref for ref in registrations(api_server) if claim_of_ref(ref) == first]
    with (
        server_for(api_server, through) as later_server,
        later_server.client(api_server.keys["other_buyer"]) as other,
    ):
        later = other.post(f"/v1/claims/{second}/evidence", files=files(photo))
    assert later.status_code == 201, later.text
    assert "duplicate_across_claims" not in issue_codes(later.json())


def test_expired_registrations_are_ignored_and_purged(api_server: ApiServer) -> None:
    """A registration past its expiry (say its process died mid-upload) flags nothing and goes
    with the next upload; one not expired flags the photo and names its claim."""
    listing_id = new_listing(api_server, plain_jpeg(seed=81))
    gone, live, second, third = (
        new_claim(api_server, listing_id, key=api_server.keys["other_buyer"]) for _ in range(4)
    )
    photo = red_patch_jpeg(seed=83)
    opened = open_photo(photo)
    windows = format_hashes(photo_windows(opened.image))
    now = crud.utcnow()
    with database_session(api_server) as session:
        crud.add_pending_evidence(
            session,
            upload_id="upload_gone",
            windows={evidence_ref(gone, opened.photo_id): windows},
            expires_at=now - timedelta(seconds=1),
        )
    with api_server.client(api_server.keys["other_buyer"]) as other:
        ignored = other.post(f"/v1/claims/{second}/evidence", files=files(photo))
        assert ignored.status_code == 201, ignored.text
        assert "duplicate_across_claims" not in issue_codes(ignored.json())
        left = registrations(api_server)
        assert "upload_gone" not in {row.upload_id for row in left.values()}
        # Recorded: registered for the time other processes take to sync, from its commit.
        settled = left[evidence_ref(second, opened.photo_id)].expires_at
        assert settled <= crud.utcnow() + pending_evidence_ttl(api_server.settings)
        with database_session(api_server) as session:
            crud.add_pending_evidence(
                session,
                upload_id="upload_live",
                windows={evidence_ref(live, opened.photo_id): windows},
                expires_at=now + timedelta(minutes=1),
            )
        found = other.post(f"/v1/claims/{third}/evidence", files=files(photo))
    assert found.status_code == 201, found.text
    assert "duplicate_across_claims" in issue_codes(found.json())
    reasons = reviewer_reasons(api_server, third)
    assert any(live in reason for reason in reasons)
    assert not any(gone in reason for reason in reasons)


def test_a_cropped_copy_from_another_claim_is_flagged_and_named(api_server: ApiServer) -> None:
    listing_id = new_listing(api_server, plain_jpeg(seed=35))
    original = textured_image(seed=36)
    ImageDraw.Draw(original).rectangle((200, 140, 440, 380), fill=(255, 0, 0))
    # 10% off the left and top edges: pHash alone moves too far; the stored windows catch it.
    cropped = original.crop((64, 48, original.width, original.height))
    first = new_claim(api_server, listing_id)
    second = new_claim(api_server, listing_id, key=api_server.keys["other_buyer"])
    with api_server.client(api_server.keys["buyer"]) as buyer:
        upload = buyer.post(
            f"/v1/claims/{first}/evidence", files=files(encode(original, "JPEG", quality=92))
        )
        assert upload.status_code == 201, upload.text
    with api_server.client(api_server.keys["other_buyer"]) as other:
        reused = other.post(
            f"/v1/claims/{second}/evidence",
            files=files(encode(cropped, "JPEG", quality=80), plain_jpeg(seed=37)),
        )
    assert reused.status_code == 201, reused.text
    body = reused.json()
    codes = [[issue["code"] for issue in photo["issues"]] for photo in body["data"]]
    assert "duplicate_across_claims" in codes[0]
    assert "duplicate_across_claims" not in codes[1]  # scored in the same run, not a copy
    assert body["triage"]["lane"] == "suspicious"
    assert f"photo 1 reuses a photo from claim {first}" in reviewer_reasons(api_server, second)
    # The windows are stored: a restarted server still finds a cropped copy.
    with run_api_server(api_server.settings) as restarted:
        third = new_claim(restarted, listing_id, key=api_server.keys["other_buyer"])
        with restarted.client(api_server.keys["other_buyer"]) as other:
            again = other.post(
                f"/v1/claims/{third}/evidence", files=files(encode(cropped, "JPEG", quality=75))
            ).json()
    assert "duplicate_across_claims" in [i["code"] for i in again["data"][0]["issues"]]
    assert any(first in reason for reason in reviewer_reasons(api_server, third))


def test_open_claims_are_compared_again_when_listing_images_are_added(
    api_server: ApiServer,
) -> None:
    listing_id = new_listing(api_server)  # no images yet
    listing_image = plain_jpeg(seed=61)
    wrong_item = new_claim(api_server, listing_id, reason="wrong_item")
    reused = new_claim(api_server, listing_id, key=api_server.keys["other_buyer"])
    with api_server.client(api_server.keys["buyer"]) as buyer:
        before = buyer.post(
            f"/v1/claims/{wrong_item}/evidence", files=files(red_patch_jpeg(seed=62))
        ).json()
    with api_server.client(api_server.keys["other_buyer"]) as other:
        # The seller's own photo, before the seller put it on the listing.
        other.post(f"/v1/claims/{reused}/evidence", files=files(listing_image))
    assert before["data"][0]["mismatch"] is None
    assert "listing has no images to compare with" in before["triage"]["reasons"]
    with api_server.client(api_server.keys["admin"]) as admin:
        added = admin.post(f"/v1/listings/{listing_id}/images", files=files(listing_image))
    assert added.status_code == 201, added.text
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        compared = reviewer.get(f"/v1/claims/{wrong_item}").json()
        flagged = reviewer.get(f"/v1/claims/{reused}").json()
        audit = reviewer.get(f"/v1/claims/{wrong_item}/audit").json()
    assert compared["photos"][0]["mismatch"] is not None
    assert compared["photos"][0]["damage"] == before["data"][0]["damage"]  # kept as it was
    assert compared["triage"]["support"] is not None
    assert "listing has no images to compare with" not in compared["triage"]["reasons"]
    assert "evidence_rescored" in [event["action"] for event in audit["data"]]
    assert "listing_photo_reuse" in [issue["code"] for issue in flagged["photos"][0]["issues"]]
    assert flagged["triage"]["lane"] == "suspicious"


# --- the buyer-side check -------------------------------------------------------------------


def test_evidence_check_for_a_claim_does_not_call_its_own_photos_reuse(
    api_server: ApiServer,
) -> None:
    listing_id = new_listing(api_server, plain_jpeg(seed=71))
    claim_id = new_claim(api_server, listing_id)
    other_claim = new_claim(api_server, listing_id, key=api_server.keys["other_buyer"])
    photo = red_patch_jpeg(seed=72)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        assert buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(photo)).status_code == 201
        plain = buyer.post("/v1/evidence/check", files=files(photo, field="file"))
        for_its_claim = buyer.post(
            "/v1/evidence/check", files=files(photo, field="file"), data={"claim_id": claim_id}
        )
        not_theirs = buyer.post(
            "/v1/evidence/check", files=files(photo, field="file"), data={"claim_id": other_claim}
        )
    codes = {
        name: [i["code"] for i in r.json()["issues"]]
        for name, r in {"plain": plain, "own": for_its_claim}.items()
    }
    assert "duplicate_across_claims" in codes["plain"]  # stored in a claim; which is not known
    assert "duplicate_across_claims" not in codes["own"]
    assert_problem(not_theirs, 404, "claim_not_found")


def test_evidence_check_gives_findings_without_storing(api_server: ApiServer) -> None:
    listing_image = plain_jpeg(seed=41)
    listing_id = new_listing(api_server, listing_image)
    before = stored_files(api_server)
    blurry = encode(textured_image(seed=42).filter(ImageFilter.GaussianBlur(8)), "JPEG")
    with api_server.client(api_server.keys["buyer"]) as buyer:
        sharp = buyer.post("/v1/evidence/check", files=files(plain_jpeg(42), field="file"))
        assert sharp.status_code == 200, sharp.text
        assert sharp.json()["usable"] is True
        soft = buyer.post("/v1/evidence/check", files=files(blurry, field="file")).json()
        assert "blurry" in [issue["code"] for issue in soft["issues"]]
        reuse = buyer.post(
            "/v1/evidence/check",
            files=files(listing_image, field="file"),
            data={"listing_id": listing_id},
        ).json()
        assert "listing_photo_reuse" in [issue["code"] for issue in reuse["issues"]]
        refused = buyer.post("/v1/evidence/check", files=files(b"%PDF-1.7 hello", field="file"))
        body = assert_problem(refused, 422, "unsupported_format")
        assert body["issues"][0]["tip"]
        two = buyer.post(
            "/v1/evidence/check", files=files(plain_jpeg(1), plain_jpeg(2), field="file")
        )
        assert_problem(two, 413, "too_many_files")
    assert stored_files(api_server) == before


@pytest.mark.parametrize("copies", [1, 3], ids=["over the cap", "over any upload"])
def test_evidence_check_of_a_photo_over_the_byte_cap_says_how_to_retake_it(
    api_server: ApiServer, copies: int
) -> None:
    """Refused by the streaming cap before intake saw it, an oversized photo got a problem
    without the `issues` every other refused photo carries (no retake tip), and a detail
    reading "at most 1 photos"."""
    too_big = b"\xff\xd8\xff" + b"\x00" * (copies * TEST_LIMITS.max_upload_bytes + 10)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        refused = buyer.post("/v1/evidence/check", files=files(too_big, field="file"))
    body = assert_problem(refused, 413, "upload_too_large")
    assert "1 photos" not in body["detail"]
    [issue] = body["issues"]
    assert (issue["code"], issue["severity"]) == ("file_too_large", "blocker")
    assert "MB" in issue["message"] and issue["tip"]


# --- queue ----------------------------------------------------------------------------------


def test_queue_is_ordered_by_priority_and_pages_without_overlap(api_server: ApiServer) -> None:
    listing_id = new_listing(api_server, plain_jpeg(seed=51))
    from datetime import UTC, datetime, timedelta

    old = (datetime.now(UTC) - timedelta(days=14)).isoformat()
    urgent = new_claim(api_server, listing_id, opened_at=old)
    fresh = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        buyer.post(f"/v1/claims/{urgent}/evidence", files=files(red_patch_jpeg(seed=52)))
        buyer.post(f"/v1/claims/{urgent}/escalate")
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        seen: list[dict] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = reviewer.get("/v1/queue", params=params).json()
            seen.extend(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == page["count"]
        ids = [claim["claim_id"] for claim in seen]
        assert len(ids) == len(set(ids))
        priorities = [claim["triage"]["priority"] for claim in seen]
        assert priorities == sorted(priorities, reverse=True)
        assert ids.index(urgent) < ids.index(fresh)
        lane = seen[0]["triage"]["lane"]
        only = reviewer.get("/v1/queue", params={"lane": lane, "limit": 100}).json()
        assert {claim["triage"]["lane"] for claim in only["data"]} == {lane}
        assert_problem(reviewer.get("/v1/queue", params={"cursor": "garbage"}), 400)
        assert_problem(reviewer.get("/v1/queue", params={"lane": "nope"}), 422)


# --- roles and keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        ("buyer", "GET", "/v1/queue"),
        ("admin", "GET", "/v1/queue"),
        ("reviewer", "POST", "/v1/claims"),
        ("buyer", "POST", "/v1/listings"),
        ("reviewer", "POST", "/v1/listings"),
        ("buyer", "POST", "/v1/claims/{claim}/reviews"),
        ("admin", "POST", "/v1/claims/{claim}/reviews"),
        ("reviewer", "POST", "/v1/claims/{claim}/escalate"),
        ("buyer", "GET", "/v1/claims/{claim}/audit"),
        ("admin", "GET", "/v1/claims/{claim}"),
        ("reviewer", "POST", "/v1/claims/{claim}/evidence"),
    ],
)
def test_roles_are_enforced(api_server: ApiServer, role: str, method: str, path: str) -> None:
    listing_id = new_listing(api_server)
    claim_id = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys[role]) as client:
        response = client.request(
            method, path.format(claim=claim_id), json={}, headers={"Idempotency-Key": "x"}
        )
    assert_problem(response, 403, "forbidden_role")


def test_role_refusals_name_both_roles_with_the_right_article(api_server: ApiServer) -> None:
    with api_server.client(api_server.keys["admin"]) as admin:
        body = assert_problem(admin.get("/v1/queue"), 403, "forbidden_role")
    assert body["detail"] == "This action needs a reviewer key; yours is an admin key."
    with api_server.client(api_server.keys["buyer"]) as buyer:
        body = assert_problem(buyer.post("/v1/listings", json={}), 403, "forbidden_role")
    assert body["detail"] == "This action needs an admin key; yours is a buyer key."


def test_buyers_see_only_their_own_claims(api_server: ApiServer) -> None:
    listing_id = new_listing(api_server)
    claim_id = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys["other_buyer"]) as stranger:
        assert_problem(stranger.get(f"/v1/claims/{claim_id}"), 404, "claim_not_found")
        assert_problem(stranger.post(f"/v1/claims/{claim_id}/escalate"), 404, "claim_not_found")
        upload = stranger.post(f"/v1/claims/{claim_id}/evidence", files=files(plain_jpeg(61)))
        assert_problem(upload, 404, "claim_not_found")
        listed = stranger.get("/v1/claims", params={"limit": 100}).json()
        assert claim_id not in [claim["claim_id"] for claim in listed["data"]]
    with api_server.client(api_server.keys["admin"]) as admin:
        assert admin.post(f"/v1/claims/{claim_id}/escalate").status_code == 200
        assert admin.get(f"/v1/claims/{claim_id}/audit").status_code == 200


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_api_key"),
        ("Basic dXNlcjpwYXNz", "missing_api_key"),
        ("Bearer trk_" + "x" * 43, "invalid_api_key"),
        ("Bearer not-a-key", "invalid_api_key"),
    ],
)
def test_missing_or_wrong_keys_get_401(
    api_server: ApiServer, authorization: str | None, code: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with api_server.client() as anyone:
        for method, path in (("GET", "/v1/queue"), ("POST", "/v1/claims"), ("GET", "/v1/claims")):
            response = anyone.request(method, path, headers=headers)
            assert_problem(response, 401, code)
            assert response.headers["www-authenticate"].startswith("Bearer")


# --- bad input: 4xx problem documents, nothing stored changes ---------------------------------


def multipart_cut_short(*, after_first_part: bool) -> bytes:
    """A photo upload (boundary `xyz`) that ends before its closing boundary: inside the file
    part, or once the file part is whole and the next one has begun."""
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + plain_jpeg(seed=111)
    )
    if after_first_part:
        body += b'\r\n--xyz\r\nContent-Disposition: form-data; name="files"'
    return body


def truncated_jpeg() -> bytes:
    data = plain_jpeg(seed=71)
    return data[: len(data) // 3]


BAD_UPLOADS = {
    "text file": (lambda: [b"just some text, not a photo"], 422, "unsupported_format"),
    "pdf": (lambda: [b"%PDF-1.7\n%binary"], 422, "unsupported_format"),
    "gif": (lambda: [encode(textured_image(64, 64), "GIF")], 422, "unsupported_format"),
    "truncated jpeg": (lambda: [truncated_jpeg()], 422, "corrupt"),
    "corrupt png header": (lambda: [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40], 422, "corrupt"),
    "empty file": (lambda: [b""], 422, "corrupt"),
    "decompression bomb": (lambda: [bomb_png()], 413, "too_many_pixels"),
    "oversized file": (
        lambda: [b"\xff\xd8\xff" + b"\x00" * (TEST_LIMITS.max_upload_bytes + 10)],
        413,
        "upload_too_large",
    ),
    "request larger than any upload": (
        lambda: [b"\xff\xd8\xff" + b"\x00" * (5 * TEST_LIMITS.max_upload_bytes)],
        413,
        "upload_too_large",
    ),
    "too many files": (
        lambda: [plain_jpeg(seed) for seed in range(TEST_LIMITS.max_files_per_request + 1)],
        413,
        "too_many_files",
    ),
    "one bad file among good ones": (
        lambda: [plain_jpeg(81), b"GIF89a not really"],
        422,
        "unsupported_format",
    ),
}


@pytest.fixture(scope="module")
def claim_with_evidence(api_server: ApiServer) -> str:
    listing_id = new_listing(api_server, plain_jpeg(seed=91))
    claim_id = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        response = buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(red_patch_jpeg(92)))
        assert response.status_code == 201
    return claim_id


def snapshot(server: ApiServer, claim_id: str) -> tuple[Any, ...]:
    with server.client(server.keys["reviewer"]) as reviewer:
        claim = reviewer.get(f"/v1/claims/{claim_id}").json()
        audit = reviewer.get(f"/v1/claims/{claim_id}/audit").json()
    return claim, audit["count"], stored_files(server)


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_refused_and_change_nothing(
    api_server: ApiServer, claim_with_evidence: str, case: str
) -> None:
    make, status, code = BAD_UPLOADS[case]
    before = snapshot(api_server, claim_with_evidence)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        response = buyer.post(f"/v1/claims/{claim_with_evidence}/evidence", files=files(*make()))
    body = assert_problem(response, status)
    assert code in (body["code"], *(item["code"] for item in body.get("files") or []))
    assert snapshot(api_server, claim_with_evidence) == before


@pytest.mark.parametrize(
    ("make_request", "status", "code"),
    [
        (
            lambda c, cid: c.post(
                "/v1/claims/clm_doesnotexist/evidence", files=files(plain_jpeg(1))
            ),
            404,
            "claim_not_found",
        ),
        (lambda c, cid: c.get("/v1/claims/../../etc/passwd"), 404, None),
        (lambda c, cid: c.get("/v1/claims/clm_0000000000"), 404, "claim_not_found"),
        (
            lambda c, cid: c.post(
                f"/v1/claims/{cid}/evidence",
                content=b"raw bytes",
                headers={"Content-Type": "image/jpeg"},
            ),
            415,
            "multipart_required",
        ),
        (
            lambda c, cid: c.post(f"/v1/claims/{cid}/evidence", files={"other": ("a.jpg", b"x")}),
            422,
            "unexpected_file_field",
        ),
        (
            lambda c, cid: c.post(f"/v1/claims/{cid}/evidence", files={"note": (None, "no files")}),
            422,
            "no_files",
        ),
        (
            lambda c, cid: c.post(
                f"/v1/claims/{cid}/evidence",
                content=b"--xyz\r\nbroken",
                headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            ),
            400,
            "malformed_multipart",
        ),
        (
            lambda c, cid: c.post(
                f"/v1/claims/{cid}/evidence",
                content=multipart_cut_short(after_first_part=False),
                headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            ),
            400,
            "malformed_multipart",
        ),
        (
            lambda c, cid: c.post(
                f"/v1/claims/{cid}/evidence",
                content=multipart_cut_short(after_first_part=True),
                headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            ),
            400,
            "malformed_multipart",
        ),
        (
            lambda c, cid: c.post(
                "/v1/claims", json={"listing_id": "x"}, headers={"Idempotency-Key": "k"}
            ),
            422,
            "validation_error",
        ),
        (
            lambda c, cid: c.post(
                "/v1/claims",
                json=claim_body("no-such-listing"),
                headers={"Idempotency-Key": uuid.uuid4().hex},
            ),
            422,
            "unknown_listing",
        ),
        (
            lambda c, cid: c.post(
                "/v1/claims",
                json=claim_body("x", reason="bored"),
                headers={"Idempotency-Key": "k2"},
            ),
            422,
            "validation_error",
        ),
        (lambda c, cid: c.post("/v1/claims", json=claim_body("x")), 422, "validation_error"),
        (lambda c, cid: c.get("/v1/claims", params={"cursor": "%%%"}), 400, "invalid_cursor"),
        (lambda c, cid: c.get("/v1/photos/" + "0" * 64), 404, "photo_not_found"),
        (lambda c, cid: c.get("/v1/nowhere"), 404, "not_found"),
    ],
)
def test_bad_requests_get_problem_documents(
    api_server: ApiServer,
    claim_with_evidence: str,
    make_request: Any,
    status: int | None,
    code: str | None,
) -> None:
    before = snapshot(api_server, claim_with_evidence)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        response = make_request(buyer, claim_with_evidence)
    assert_problem(response, status or response.status_code, code)
    assert 400 <= response.status_code < 500
    assert snapshot(api_server, claim_with_evidence) == before


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_json_body_over_the_cap_is_refused_and_stores_nothing(
    api_server: ApiServer, framing: str
) -> None:
    listing_id = new_listing(api_server)
    buyer_key = api_server.create_key(Role.buyer, "json cap")
    # Whitespace may follow a JSON value, so these are valid claims, one byte apart.
    claim = json.dumps(claim_body(listing_id)).encode()
    at_cap = claim.ljust(TEST_LIMITS.max_json_bytes)
    over_cap = at_cap + b" "

    def framed(body: bytes) -> bytes | Iterator[bytes]:
        if framing == "content-length":
            return body
        return iter([body[start : start + 16_384] for start in range(0, len(body), 16_384)])

    with api_server.client(buyer_key) as buyer:
        refused = buyer.post(
            "/v1/claims",
            content=framed(over_cap),
            headers={"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex},
        )
        body = assert_problem(refused, 413, "payload_too_large")
        assert f"{TEST_LIMITS.max_json_bytes:,} bytes" in body["detail"]
        assert buyer.get("/v1/claims").json()["count"] == 0
        accepted = buyer.post(
            "/v1/claims",
            content=framed(at_cap),
            headers={"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex},
        )
        assert accepted.status_code == 201, accepted.text


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_oversized_json_body_is_refused_before_it_has_all_arrived(
    api_server: ApiServer, framing: str
) -> None:
    """Only part of the body is ever sent, so an answer proves the cap did not wait for it."""
    url = httpx.URL(api_server.base_url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/claims")
        connection.putheader("Authorization", f"Bearer {api_server.keys['buyer']}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Idempotency-Key", uuid.uuid4().hex)
        if framing == "content-length":
            connection.putheader("Content-Length", str(500_000_000))
            connection.endheaders()
        else:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            chunk = b" " * 16_000
            for _ in range(TEST_LIMITS.max_json_bytes // len(chunk) + 1):
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = connection.getresponse()
        assert response.status == 413
        assert response.getheader("content-type", "").startswith(PROBLEM)
        assert json.loads(response.read())["code"] == "payload_too_large"
    finally:
        connection.close()


def test_reviews_validate_labels_and_amounts(
    api_server: ApiServer, claim_with_evidence: str
) -> None:
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        path = f"/v1/claims/{claim_with_evidence}/reviews"
        unknown = reviewer.post(
            path, json={"decision": "reject", "labels": [{"photo_id": "f" * 64, "damage": True}]}
        )
        assert_problem(unknown, 422, "unknown_photo")
        assert_problem(
            reviewer.post(path, json={"decision": "uphold_partial_refund"}), 422, "amount_required"
        )
        assert_problem(
            reviewer.post(path, json={"decision": "uphold_partial_refund", "amount": "999.00"}),
            422,
            "amount_too_high",
        )
        assert_problem(
            reviewer.post(path, json={"decision": "reject", "amount": "5.00"}),
            422,
            "amount_not_applicable",
        )
        # A "full" refund of less than the claim is a partial one under the wrong name.
        assert_problem(
            reviewer.post(path, json={"decision": "uphold_full_refund", "amount": "3.00"}),
            422,
            "amount_not_full",
        )
        assert_problem(reviewer.post(path, json={"decision": "maybe"}), 422, "validation_error")
        audit = reviewer.get(f"/v1/claims/{claim_with_evidence}/audit").json()
    assert "review_recorded" not in [event["action"] for event in audit["data"]]


def test_a_full_refund_records_the_claimed_amount(
    api_server: ApiServer, claim_with_evidence: str
) -> None:
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        claimed = reviewer.get(f"/v1/claims/{claim_with_evidence}").json()["amount"]
        review = reviewer.post(
            f"/v1/claims/{claim_with_evidence}/reviews", json={"decision": "uphold_full_refund"}
        )
        assert review.status_code == 201, review.text
        audit = reviewer.get(f"/v1/claims/{claim_with_evidence}/audit").json()["data"]
    assert claimed is not None and review.json()["amount"] == claimed
    recorded = [e["detail"] for e in audit if e["action"] == "review_recorded"]
    assert [detail["amount"] for detail in recorded] == [claimed]


def test_a_restarted_server_rebuilds_the_duplicate_index(api_server: ApiServer) -> None:
    listing_id = new_listing(api_server, plain_jpeg(seed=101))
    photo = red_patch_jpeg(seed=102)
    first = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        assert buyer.post(f"/v1/claims/{first}/evidence", files=files(photo)).status_code == 201
    # A second process on the same database and store knows the photo only from the database.
    with run_api_server(api_server.settings) as restarted:
        restarted.keys = api_server.keys
        second = new_claim(restarted, listing_id, key=api_server.keys["other_buyer"])
        with restarted.client(api_server.keys["other_buyer"]) as other:
            reused = other.post(f"/v1/claims/{second}/evidence", files=files(photo)).json()
    assert "duplicate_across_claims" in [i["code"] for i in reused["data"][0]["issues"]]
    assert any(first in reason for reason in reviewer_reasons(api_server, second))


def test_originals_are_written_before_an_upload_takes_the_database_write_lock(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing an original ends in an fsync; inside the recording transaction it held SQLite's
    write lock, and every other upload with it, for that long (a p99 of 1.2 s at concurrency 8
    in bench_api.py). The store is asked while another connection can still take the lock."""
    url = api_server.settings.resolved_database_url
    if not url.startswith("sqlite"):
        pytest.skip("SQLite's write lock; PostgreSQL locks rows")
    import sqlite3

    from service.store import PhotoStore

    database = url.removeprefix("sqlite:///")
    seen: list[str] = []
    put = PhotoStore.put

    def put_and_probe(store: PhotoStore, data: bytes) -> str:
        probe = sqlite3.connect(database, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            seen.append("free")
        except sqlite3.OperationalError:
            seen.append("locked")
        finally:
            probe.close()
        return put(store, data)

    monkeypatch.setattr(PhotoStore, "put", put_and_probe)
    listing_id = new_listing(api_server, plain_jpeg(seed=301))
    claim_id = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        uploaded = buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(plain_jpeg(302)))
    assert uploaded.status_code == 201, uploaded.text
    assert seen and set(seen) == {"free"}, seen
