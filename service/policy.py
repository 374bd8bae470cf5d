"""Claim triage policy: support, sufficiency, lane, priority and the reasons for it.

A pure function of the claim's facts, the configuration and the clock: no I/O, no model, no
database, so the API, the batch job and the tests get the same answer from the same facts.

The rules, in the order they are applied (design.md section 3):

- A photo is *usable* when it was scored and no quality finding blocks it.
- `sufficiency`: `insufficient` when no photo is usable; `weak` when fewer than the configured
  number are usable (more for missing parts, where the photos are all the evidence there is) or
  every usable photo carries a warning; `ok` otherwise.
- `support`: damaged / defective -> the highest damage of a usable photo; wrong item / not as
  described -> the mean mismatch of the usable photos compared with a listing image, combined
  with damage as a secondary signal (1 - (1 - mismatch) * (1 - weight * damage)), None when the
  listing has no images to compare
  with; missing parts -> None: the model cannot see what is absent, a human decides. No reason
  given (a historical record in a batch manifest) -> None: nothing to support.
- `lane`: suspicious when a photo reuses a listing image or another claim's photo (even a blocked
  one); needs_more_evidence when insufficient; needs_review for missing parts or unknown support;
  fast_track when support reaches the high threshold (for damage, raised with the number of
  photos the support is taken from: `raised_for_photos`), sufficiency is ok and, for damage, the
  photo that shows it is not flagged as another item than the listed one (its mismatch below the
  high threshold: a photo of some other broken item supports nothing); needs_more_evidence
  when the evidence is weak and support below the low threshold; needs_review otherwise.
- `priority` (0-100): a sum of weighted parts (deadline urgency, escalation, support, suspicion,
  human check, insufficient evidence), clamped and rounded, every part with a reason; closed claims
  get 0. Reasons are ordered by how much they contributed. Escalation adds its own points, so of
  two claims otherwise equal the escalated one always ranks first.

Thresholds default to the model card's (`PolicyConfig.for_card`) so that a retrained model with
recalibrated thresholds moves the lanes with it; any of them can be pinned in configuration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field, NonNegativeFloat, PositiveInt

Sufficiency = Literal["ok", "weak", "insufficient"]
# The reason that says a damage claim's photo count raised its fast-track bar (reviewers only).
FAST_TRACK_BAR_REASON = "fast track needs damage "
Lane = Literal["fast_track", "needs_review", "suspicious", "needs_more_evidence"]
DAMAGE_REASONS = ("damaged", "defective")
MISMATCH_REASONS = ("wrong_item", "not_as_described")
MISSING_PARTS = "missing_parts"
CLAIM_REASONS = (*DAMAGE_REASONS, *MISMATCH_REASONS, MISSING_PARTS)
# A claim whose reason is not known (batch manifests make the column optional): triaged on its
# evidence alone, never fast-tracked.
UNSPECIFIED_REASON = ""
LISTING_REUSE = "listing_photo_reuse"
# The reason when no usable photo could be compared with a listing image (the batch job names the
# cause instead where it knows it: listing images it could not read).
NO_LISTING_IMAGES_REASON = "listing has no images to compare with"
DUPLICATE_ACROSS_CLAIMS = "duplicate_across_claims"


class PriorityWeights(BaseModel):
    """Points each part of the priority can add (or, if negative, take away)."""

    deadline: float = Field(35.0, description="Full points when the deadline is due or past.")
    escalated: float = Field(20.0, description="Points for a claim escalated to the platform.")
    support: float = Field(25.0, description="Points times the support probability.")
    suspicious: float = Field(15.0, description="Points when a photo reuses another's photo.")
    human_check: float = Field(10.0, description="Points for claims only a human can judge.")
    insufficient_evidence: float = Field(
        -10.0, description="Points for claims waiting on the buyer for usable photos."
    )


class PolicyConfig(BaseModel):
    """Triage weights and thresholds; nested in the service's Settings (TRIAGE_POLICY__...)."""

    deadline_days: PositiveInt = Field(15, description="Deadline = opened_at + this many days.")
    deadline_reason_days: NonNegativeFloat = Field(
        5, description="Reasons mention the deadline once it is this close."
    )
    damage_high: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Default: the model card's. A damage claim's fast track is raised from it "
        "with the number of photos (raised_for_photos), pinned or not.",
    )
    damage_low: float | None = Field(None, ge=0, le=1, description="Default: the model card's.")
    mismatch_high: float | None = Field(None, ge=0, le=1, description="Default: the model card's.")
    mismatch_low: float | None = Field(None, ge=0, le=1, description="Default: the model card's.")
    secondary_damage_weight: float = Field(
        0.5, ge=0, le=1, description="How much damage counts for wrong item / not as described."
    )
    min_usable_photos: PositiveInt = Field(1, description="Usable photos for 'ok' evidence.")
    missing_parts_min_photos: PositiveInt = Field(
        2, description="Usable photos for 'ok' evidence of missing parts."
    )
    closed_statuses: tuple[str, ...] = Field(
        ("resolved", "closed", "withdrawn"), description="Statuses that leave the queue."
    )
    weights: PriorityWeights = Field(default_factory=PriorityWeights)

    def for_card(self, thresholds: object) -> PolicyConfig:
        """This config with every unset threshold taken from a model card's `thresholds`."""
        names = ("damage_high", "damage_low", "mismatch_high", "mismatch_low")
        filled = {name: getattr(thresholds, name) for name in names if getattr(self, name) is None}
        return self.model_copy(update=filled)


@dataclass(frozen=True)
class PhotoFacts:
    """What the policy needs to know about one photo. `index` is its 1-based position."""

    index: int
    damage: float | None
    mismatch: float | None = None
    issues: tuple[tuple[str, str], ...] = ()  # (code, severity)
    duplicate_claims: tuple[str, ...] = ()  # other claims that already used this photo

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(code for code, _ in self.issues)

    @property
    def blocked(self) -> bool:
        return any(severity == "blocker" for _, severity in self.issues)

    @property
    def usable(self) -> bool:
        return self.damage is not None and not self.blocked

    @property
    def clean(self) -> bool:
        return self.usable and not self.issues


@dataclass(frozen=True)
class ClaimFacts:
    reason: str
    opened_at: datetime
    status: str = "open"
    escalated: bool = False
    photos: Sequence[PhotoFacts] = field(default_factory=tuple)

    @property
    def is_escalated(self) -> bool:
        return self.escalated or self.status == "escalated"


@dataclass(frozen=True)
class Triage:
    support: float | None
    sufficiency: Sufficiency
    lane: Lane
    priority: int
    reasons: tuple[str, ...]
    deadline: datetime


@dataclass(frozen=True)
class _Thresholds:
    damage_high: float
    damage_low: float
    mismatch_high: float
    mismatch_low: float


@dataclass(frozen=True)
class _Support:
    value: float | None
    reasons: tuple[str, ...]
    high: float
    low: float
    # The supporting photo is flagged as another item than the listed one: never fast-track.
    off_listing: bool = False


def triage_claim(facts: ClaimFacts, *, config: PolicyConfig, now: datetime) -> Triage:
    """Support, sufficiency, lane, priority and reasons for one claim at time `now`."""
    if facts.reason not in (*CLAIM_REASONS, UNSPECIFIED_REASON):
        raise ValueError(
            f"unknown claim reason {facts.reason!r}; expected one of {CLAIM_REASONS}, or none"
        )
    thresholds = _thresholds(config)
    deadline = facts.opened_at + timedelta(days=config.deadline_days)
    sufficiency, sufficiency_reasons = _sufficiency(facts, config)
    support = _support(facts, thresholds, config)
    suspicion_reasons = _suspicion(facts.photos)
    lane = _lane(facts, sufficiency, support, bool(suspicion_reasons))
    if facts.status in config.closed_statuses:
        return Triage(
            support=support.value,
            sufficiency=sufficiency,
            lane=lane,
            priority=0,
            reasons=(f"claim is {facts.status}",),
            deadline=deadline,
        )
    weights = config.weights
    parts: list[tuple[float, tuple[str, ...]]] = [
        _deadline_part(deadline, now, config),
        (weights.escalated, ("escalated",)) if facts.is_escalated else (0.0, ()),
        (weights.support * (support.value or 0.0), support.reasons),
        (weights.suspicious, suspicion_reasons) if suspicion_reasons else (0.0, ()),
        (weights.human_check, ("missing parts: only a human can check what is absent",))
        if facts.reason == MISSING_PARTS
        else (0.0, ()),
        (weights.insufficient_evidence, ()) if sufficiency == "insufficient" else (0.0, ()),
        (0.0, sufficiency_reasons),
    ]
    points = sum(value for value, _ in parts)
    # Stable sort: equal contributions keep the order above (deadline first).
    ordered = sorted(parts, key=lambda part: -abs(part[0]))
    reasons = tuple(reason for _, part_reasons in ordered for reason in part_reasons)
    return Triage(
        support=support.value,
        sufficiency=sufficiency,
        lane=lane,
        priority=round(min(100.0, max(0.0, points))),
        reasons=reasons,
        deadline=deadline,
    )


def _thresholds(config: PolicyConfig) -> _Thresholds:
    values = {
        "damage_high": config.damage_high,
        "damage_low": config.damage_low,
        "mismatch_high": config.mismatch_high,
        "mismatch_low": config.mismatch_low,
    }
    unset = [name for name, value in values.items() if value is None]
    if unset:
        raise ValueError(
            f"policy thresholds {unset} are unset: use config.for_card(card.thresholds)"
        )
    return _Thresholds(**values)  # type: ignore[arg-type]  # checked not None above


def _no_usable_photo(photos: Sequence[PhotoFacts]) -> str:
    """Why none of `photos` (none of them usable) is usable: quality blockers, or no score at
    all (a photo the batch job could not read or score), so that a claim whose files are missing
    does not read as a claim of bad photos."""
    blocked = sum(photo.blocked for photo in photos)
    unscored = len(photos) - blocked  # not blocked, not usable: no damage score
    if blocked == len(photos):
        return f"no usable photo: all {blocked} blocked by quality"
    if unscored == len(photos):
        return f"no usable photo: all {unscored} could not be scored"
    return f"no usable photo: {blocked} blocked by quality, {unscored} could not be scored"


def _sufficiency(facts: ClaimFacts, config: PolicyConfig) -> tuple[Sufficiency, tuple[str, ...]]:
    usable = [photo for photo in facts.photos if photo.usable]
    if not facts.photos:
        return "insufficient", ("no photos yet",)
    if not usable:
        return "insufficient", (_no_usable_photo(facts.photos),)
    needed = (
        config.missing_parts_min_photos
        if facts.reason == MISSING_PARTS
        else config.min_usable_photos
    )
    if len(usable) < needed:
        return "weak", (f"only {len(usable)} usable photo{_plural(len(usable))}, {needed} needed",)
    if not any(photo.clean for photo in usable):
        problems = sorted({code for photo in usable for code in photo.codes})
        return "weak", (f"every usable photo has quality warnings ({', '.join(problems)})",)
    return "ok", ()


def raised_for_photos(threshold: float, photos: int) -> float:
    """The probability whose odds are sqrt(`photos`) times `threshold`'s (`threshold` itself
    for one photo): a damage claim's fast-track threshold. Its support is its most damaged
    photo, and the more photos, the more chances that an intact one reaches the card's
    threshold (4 intact photos reached it 3.7 % of the time on validation, one 1.1 %). Raising
    the odds n-fold held that at one photo's rate but lost too many true claims; sqrt(n) keeps
    both (docs/engine.md, "Damage claims of several photos", session 11). A threshold of 1
    (pinned to keep damage claims off the fast track) has no odds to raise and stays 1."""
    if photos <= 1 or threshold >= 1.0:
        return threshold
    odds = threshold / (1.0 - threshold) * math.sqrt(photos)
    return odds / (1.0 + odds)


def _support(facts: ClaimFacts, thresholds: _Thresholds, config: PolicyConfig) -> _Support:
    usable = [photo for photo in facts.photos if photo.usable]
    if facts.reason in DAMAGE_REASONS:
        if not usable:
            return _Support(None, (), thresholds.damage_high, thresholds.damage_low)

        # Damage on a photo the model takes for another item supports nothing about the listed
        # one: the support comes from the photos of the listed item where there are any.
        def off(photo: PhotoFacts) -> bool:
            return photo.mismatch is not None and photo.mismatch >= thresholds.mismatch_high

        on_listing = [photo for photo in usable if not off(photo)]
        pool = on_listing or usable
        best = max(pool, key=lambda photo: photo.damage or 0.0)
        damage = best.damage or 0.0
        doubted = [photo for photo in usable if off(photo) and (photo.damage or 0.0) >= damage]
        doubts = [
            f"photo {photo.index} may not show the listed item (mismatch {photo.mismatch:.2f})"
            for photo in doubted
        ]
        high = raised_for_photos(thresholds.damage_high, len(pool))
        # Damage the card calls likely, held back only by the number of photos: say so, or the
        # reviewer sees a high score and no fast track with nothing to explain it.
        raised = (
            (f"{FAST_TRACK_BAR_REASON}{high:.2f} with {len(pool)} photos",)
            if thresholds.damage_high <= damage < high
            else ()
        )
        return _Support(
            damage,
            (f"damage {damage:.2f} on photo {best.index}", *doubts, *raised),
            high,
            thresholds.damage_low,
            off_listing=off(best),
        )
    if facts.reason in MISMATCH_REASONS:
        compared = [photo for photo in usable if photo.mismatch is not None]
        if not compared:
            reasons = (NO_LISTING_IMAGES_REASON,) if usable else ()
            return _Support(None, reasons, thresholds.mismatch_high, thresholds.mismatch_low)
        # The mean, not the highest: the photos of one claim show one received item, and the
        # highest of several photos of the listed item reaches the fast-track threshold far more
        # often than one photo does (docs/engine.md, "Wrong-item support", session 11).
        mismatch = sum(photo.mismatch or 0.0 for photo in compared) / len(compared)
        best = max(compared, key=lambda photo: photo.mismatch or 0.0)
        most_damaged = max(usable, key=lambda photo: photo.damage or 0.0)
        damage = most_damaged.damage or 0.0
        support = 1.0 - (1.0 - mismatch) * (1.0 - config.secondary_damage_weight * damage)
        reasons = [
            f"mismatch {mismatch:.2f} on photo {best.index}"
            if len(compared) == 1
            else f"mismatch {mismatch:.2f} over {len(compared)} photos "
            f"(highest {best.mismatch or 0.0:.2f} on photo {best.index})"
        ]
        if damage >= thresholds.damage_low and config.secondary_damage_weight > 0:
            reasons.append(f"damage {damage:.2f} on photo {most_damaged.index}")
        return _Support(support, tuple(reasons), thresholds.mismatch_high, thresholds.mismatch_low)
    reasons = (
        ("no claim reason given: support not judged",) if facts.reason == UNSPECIFIED_REASON else ()
    )
    return _Support(None, reasons, thresholds.damage_high, thresholds.damage_low)


# A reason that names another claim, for reviewers; buyers get it without the other claim's id
# (`reasons_for_buyer`), since they may not learn which other claims exist.
_NAMED_REUSE = re.compile(r"^(photo \d+ reuses a photo from) claim \S+$")


def _reuse_reason(index: int, claim_id: str | None) -> str:
    return f"photo {index} reuses a photo from " + (
        f"claim {claim_id}" if claim_id else "another claim"
    )


def reasons_for_buyer(reasons: Sequence[str]) -> list[str]:
    """`reasons` as the claim's buyer may read them: other claims are not named (a photo that
    repeats photos of two claims is one line), the raised fast-track bar is left out (it would
    tell a buyer that fewer photos clear it more easily), everything else as it is."""
    shown: list[str] = []
    for reason in reasons:
        if reason.startswith(FAST_TRACK_BAR_REASON):
            continue
        anonymous = _NAMED_REUSE.sub(r"\1 another claim", reason)
        if anonymous not in shown:
            shown.append(anonymous)
    return shown


def _suspicion(photos: Sequence[PhotoFacts]) -> tuple[str, ...]:
    reasons: list[str] = []
    for photo in photos:
        if photo.duplicate_claims:
            reasons.extend(
                _reuse_reason(photo.index, claim_id) for claim_id in photo.duplicate_claims
            )
        elif DUPLICATE_ACROSS_CLAIMS in photo.codes:
            reasons.append(_reuse_reason(photo.index, None))
        if LISTING_REUSE in photo.codes:
            reasons.append(f"photo {photo.index} is the seller's listing photo")
    return tuple(reasons)


def _lane(facts: ClaimFacts, sufficiency: Sufficiency, support: _Support, suspicious: bool) -> Lane:
    # Reuse first: a claim whose only photo is someone else's is suspicious, not merely short
    # of evidence, even when the checks block that photo.
    if suspicious:
        return "suspicious"
    if sufficiency == "insufficient":
        return "needs_more_evidence"
    if facts.reason == MISSING_PARTS or support.value is None:
        return "needs_review"
    if support.value >= support.high and sufficiency == "ok" and not support.off_listing:
        return "fast_track"
    if sufficiency == "weak" and support.value < support.low:
        return "needs_more_evidence"
    return "needs_review"


def _deadline_part(
    deadline: datetime, now: datetime, config: PolicyConfig
) -> tuple[float, tuple[str, ...]]:
    days_left = (deadline - now) / timedelta(days=1)
    urgency = min(1.0, max(0.0, 1.0 - days_left / config.deadline_days))
    points = config.weights.deadline * urgency
    if days_left < 0:
        overdue = math.ceil(-days_left)
        return points, (f"deadline passed {overdue} day{_plural(overdue)} ago",)
    if days_left > config.deadline_reason_days:
        return points, ()
    if days_left < 1:
        hours = max(1, math.ceil(days_left * 24))
        return points, (f"deadline in {hours} hour{_plural(hours)}",)
    days = math.floor(days_left)
    return points, (f"deadline in {days} day{_plural(days)}",)


def _plural(count: int) -> str:
    return "" if count == 1 else "s"
