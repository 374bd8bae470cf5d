"""Request and response bodies. One family per resource: XCreate (input), XPublic (output),
XsPublic (a page: data, count, next_cursor)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

ClaimReason = Literal["damaged", "defective", "not_as_described", "wrong_item", "missing_parts"]
Resolution = Literal["full_refund", "partial_refund", "replacement"]
Decision = Literal[
    "uphold_full_refund", "uphold_partial_refund", "replacement", "reject", "request_more_evidence"
]
ClaimStatus = Literal["open", "escalated", "awaiting_evidence", "resolved"]
Lane = Literal["fast_track", "needs_review", "suspicious", "needs_more_evidence"]
Sufficiency = Literal["ok", "weak", "insufficient"]
EXAMPLE_PHOTO_ID = "9f2c1e5b0a7d4c3e8b6f1a2d3c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a"

_IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Text without control characters: none belongs in an id or a one-line field, and PostgreSQL
# refuses NUL in text outright (a 500 instead of a 422). Free text may keep tabs and line breaks.
_CONTROL_CHARACTERS = r"\x00-\x1f\x7f"
ONE_LINE = rf"^[^{_CONTROL_CHARACTERS}]*$"
# The same characters found anywhere in a text (form fields, cursor values).
CONTROL_CHARACTER = re.compile(rf"[{_CONTROL_CHARACTERS}]")
FREE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


def _utc_expressible(value: datetime) -> datetime:
    """`value` unchanged if UTC can express it (it is stored in UTC); a time in year 1 east of
    Greenwich or in year 9999 west of it cannot, and is invalid here rather than a failure when
    it is written."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range") from None
    return value


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc_expressible)]


class ListingCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"listing_id": "sku-4411", "title": "Ceramic mug, blue", "category": "home"}
            ]
        },
    )

    listing_id: str | None = Field(
        default=None, pattern=_IDENTIFIER, description="Your own id; generated when absent."
    )
    title: str = Field(min_length=1, max_length=300, pattern=ONE_LINE)
    category: str | None = Field(default=None, max_length=100, pattern=ONE_LINE)


class ListingImagePublic(BaseModel):
    photo_id: str
    position: int
    format: str
    width: int
    height: int
    url: str


class ListingPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "listing_id": "sku-4411",
                    "title": "Ceramic mug, blue",
                    "category": "home",
                    "created_at": "2025-11-20T09:30:00Z",
                    "images": [],
                }
            ]
        }
    )

    listing_id: str
    title: str
    category: str | None
    created_at: datetime
    images: list[ListingImagePublic]


class ListingImagesPublic(BaseModel):
    listing_id: str
    data: list[ListingImagePublic]
    count: int


class ClaimCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "listing_id": "sku-4411",
                    "order_ref": "ORD-2025-000183",
                    "reason": "damaged",
                    "resolution": "full_refund",
                    "description": "The mug arrived with a crack along the handle.",
                    "amount": "18.90",
                    "currency": "EUR",
                }
            ]
        },
    )

    listing_id: str = Field(min_length=1, max_length=64, pattern=ONE_LINE)
    order_ref: str = Field(min_length=1, max_length=100, pattern=ONE_LINE)
    reason: ClaimReason
    resolution: Resolution
    description: str | None = Field(default=None, max_length=5000, pattern=FREE_TEXT)
    amount: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=2)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    opened_at: UtcDatetime | None = Field(
        default=None, description="When the buyer opened the dispute; default now."
    )


class IssuePublic(BaseModel):
    code: str
    severity: Literal["blocker", "warning"]
    message: str
    tip: str


class PhotoAssessmentPublic(BaseModel):
    photo_id: str
    position: int
    filename: str | None
    damage: float | None = Field(description="Calibrated probability that damage is visible.")
    mismatch: float | None = Field(
        description="Calibrated probability that this is not the listed item; null without "
        "listing images."
    )
    match_similarity: float | None
    issues: list[IssuePublic]
    model_version: str
    created_at: datetime
    url: str
    heatmap_url: str


class TriagePublic(BaseModel):
    support: float | None
    sufficiency: Sufficiency
    lane: Lane
    priority: int = Field(ge=0, le=100)
    reasons: list[str]
    deadline: datetime
    triaged_at: datetime


class ClaimPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "claim_id": "clm_5d1c0a3e9b7f42a18c6e",
                    "listing_id": "sku-4411",
                    "order_ref": "ORD-2025-000183",
                    "reason": "damaged",
                    "resolution": "full_refund",
                    "description": "The mug arrived with a crack along the handle.",
                    "amount": "18.90",
                    "currency": "EUR",
                    "status": "escalated",
                    "decision": None,
                    "opened_at": "2025-11-20T09:30:00Z",
                    "created_at": "2025-11-20T09:30:02Z",
                    "updated_at": "2025-11-21T10:02:11Z",
                    "escalated_at": "2025-11-21T10:02:11Z",
                    "decided_at": None,
                    "photos": [],
                    "triage": {
                        "support": 0.93,
                        "sufficiency": "ok",
                        "lane": "fast_track",
                        "priority": 61,
                        "reasons": ["damage 0.93 on photo 1", "escalated"],
                        "deadline": "2025-12-05T09:30:00Z",
                        "triaged_at": "2025-11-21T10:02:11Z",
                    },
                }
            ]
        }
    )

    claim_id: str
    listing_id: str
    order_ref: str
    reason: ClaimReason
    resolution: Resolution
    description: str | None
    amount: Decimal | None
    currency: str | None
    status: ClaimStatus
    decision: Decision | None
    opened_at: datetime
    created_at: datetime
    updated_at: datetime
    escalated_at: datetime | None
    decided_at: datetime | None
    photos: list[PhotoAssessmentPublic]
    triage: TriagePublic


class ClaimsPublic(BaseModel):
    data: list[ClaimPublic]
    count: int = Field(description="How many claims match, over all pages.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


class EvidencePublic(BaseModel):
    claim_id: str
    data: list[PhotoAssessmentPublic]
    count: int
    triage: TriagePublic


class EvidenceCheckPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "photo_id": EXAMPLE_PHOTO_ID,
                    "filename": "IMG_0412.jpg",
                    "format": "JPEG",
                    "width": 4032,
                    "height": 3024,
                    "usable": False,
                    "issues": [
                        {
                            "code": "blurry",
                            "severity": "blocker",
                            "message": "This photo is blurry, so the damage cannot be seen.",
                            "tip": "Hold the phone steady and tap the item to focus.",
                        }
                    ],
                }
            ]
        }
    )

    photo_id: str | None
    filename: str | None
    format: str | None
    width: int | None
    height: int | None
    usable: bool = Field(description="False when any issue is a blocker.")
    issues: list[IssuePublic]


class PhotoLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photo_id: str
    damage: bool | None = None
    matches_listing: bool | None = None


class ReviewCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "decision": "uphold_partial_refund",
                    "amount": "9.45",
                    "notes": "Crack visible on photo 1; partial refund agreed.",
                    "labels": [{"photo_id": EXAMPLE_PHOTO_ID, "damage": True}],
                }
            ]
        },
    )

    decision: Decision
    amount: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=2)
    notes: str | None = Field(default=None, max_length=5000, pattern=FREE_TEXT)
    labels: list[PhotoLabel] = Field(default_factory=list, max_length=100)


class ReviewPublic(BaseModel):
    review_id: str
    claim_id: str
    reviewer_key_id: str
    decision: Decision
    amount: Decimal | None
    notes: str | None
    labels: list[PhotoLabel]
    created_at: datetime
    claim_status: ClaimStatus


class AuditEventPublic(BaseModel):
    event_id: int
    claim_id: str | None
    listing_id: str | None
    actor_key_id: str | None
    actor_role: str
    action: str
    detail: dict[str, Any]
    created_at: datetime


class AuditTrailPublic(BaseModel):
    claim_id: str
    data: list[AuditEventPublic]
    count: int


class ModelThresholdsPublic(BaseModel):
    damage_high: float = Field(description="Damage at or above this is likely.")
    damage_low: float = Field(description="Damage at or below this is unlikely.")
    mismatch_high: float = Field(description="Mismatch at or above this: likely not the item.")
    mismatch_low: float = Field(description="Mismatch at or below this: likely the listed item.")
    listing_reuse_similarity: float = Field(
        description="Cosine similarity to a listing image from which a photo counts as a copy."
    )


class ModelMetricPublic(BaseModel):
    name: str
    value: float = Field(description="Measured on the card's held-out test split.")
    baseline: float | None = Field(description="The same metric for the card's baseline model.")
    target: str | None = Field(description='The goal the metric was held to, e.g. ">= 0.95".')
    target_met: bool | None
    interval_95: tuple[float, float] | None = Field(
        default=None,
        description="For an AUROC: its 95% interval when the test products (or package "
        "sources) are resampled; how far another draw of products could move it.",
    )
    ece_if_perfectly_calibrated: float | None = Field(
        default=None,
        description="For an ECE: the median ECE a perfectly calibrated model with the same "
        "scores shows on the same test set; an ECE near it is no evidence of miscalibration.",
    )


class ModelPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "evidence-lite0",
                    "version": "1.3.1",
                    "model_version": "evidence-lite0-1.3.1",
                    "input_size": 224,
                    "thresholds": {
                        "damage_high": 0.82,
                        "damage_low": 0.14,
                        "mismatch_high": 0.62,
                        "mismatch_low": 0.06,
                        "listing_reuse_similarity": 0.957,
                    },
                    "metrics": [
                        {
                            "name": "damage_auroc_real_packages",
                            "value": 0.752,
                            "baseline": 0.7331,
                            "target": ">= 0.85",
                            "target_met": False,
                            "interval_95": [0.6797, 0.8151],
                        }
                    ],
                    "limitations": [
                        "Photos are letterboxed to 224x224: damage smaller than a few pixels at "
                        "that size may be missed; ask for a close-up."
                    ],
                }
            ]
        }
    )

    name: str
    version: str
    model_version: str = Field(description="As in each assessment's `model_version`.")
    input_size: int = Field(description="Photos are letterboxed to this many pixels square.")
    thresholds: ModelThresholdsPublic
    metrics: list[ModelMetricPublic] = Field(
        description="The card's headline test metrics; empty when it has none."
    )
    limitations: list[str] = Field(description="What the scores cannot be relied on for.")


class Problem(BaseModel):
    """RFC 9457 problem document; every 4xx and 5xx answer has this shape."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    request_id: str | None
    errors: list[dict[str, Any]] | None = None
    files: list[dict[str, Any]] | None = None
