"""Data access. Keyword-only functions taking a Session; they never commit (the caller owns the
transaction) and never raise HTTP errors (routes decide what a missing row means)."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from service import auth
from service.db.models import (
    ApiKey,
    AuditEvent,
    Claim,
    ClaimPhoto,
    Listing,
    ListingImage,
    PendingEvidence,
    Photo,
    Review,
)
from service.policy import Triage

OPEN_STATUSES = ("open", "escalated", "awaiting_evidence")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True)
class Actor:
    """Who is acting, as recorded in the audit log (the CLI acts as `system`)."""

    key_id: str | None
    role: str


SYSTEM = Actor(key_id=None, role="system")


# --- API keys -----------------------------------------------------------------------------------


def create_api_key(session: Session, *, role: auth.Role, name: str, now: datetime) -> str:
    """Store a new key (hashed) and return the plaintext key, which is never stored."""
    key = auth.generate_key()
    row = ApiKey(
        key_id=new_id("key"),
        name=name,
        role=role.value,
        key_hash=auth.hash_key(key),
        display_prefix=auth.display_prefix(key),
        created_at=now,
    )
    session.add(row)
    record_audit(
        session,
        actor=SYSTEM,
        action="key_created",
        detail={"key_id": row.key_id, "role": row.role, "name": name},
        now=now,
    )
    return key


def find_active_key(session: Session, *, key: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == auth.hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_id)))


def api_keys_with_prefix(session: Session, *, display_prefix: str) -> list[ApiKey]:
    """The keys shown with this prefix (normally one: six random characters follow `trk_`)."""
    return list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.display_prefix == display_prefix)
            .order_by(ApiKey.created_at, ApiKey.key_id)
        )
    )


def revoke_api_key(session: Session, *, key: ApiKey, now: datetime) -> None:
    """From the next request on the key is refused (`find_active_key` reads it every time)."""
    key.revoked_at = now
    record_audit(
        session,
        actor=SYSTEM,
        action="key_revoked",
        detail={"key_id": key.key_id, "role": key.role, "name": key.name},
        now=now,
    )


# --- photos and listings ------------------------------------------------------------------------


def get_or_add_photo(
    session: Session,
    *,
    photo_id: str,
    image_format: str,
    byte_size: int,
    size: tuple[int, int],
    has_gps: bool,
    perceptual_hash: str | None,
    window_hashes: str | None,
    now: datetime,
) -> Photo:
    row = session.get(Photo, photo_id)
    if row is not None and row.window_hashes is None and window_hashes is not None:
        # Stored first as a listing image (or as evidence before windows were kept), now used
        # as evidence: index it, windows and all, from now on.
        row.perceptual_hash = perceptual_hash
        row.window_hashes = window_hashes
    if row is None:
        row = Photo(
            photo_id=photo_id,
            format=image_format,
            byte_size=byte_size,
            width=size[0],
            height=size[1],
            has_gps=has_gps,
            perceptual_hash=perceptual_hash,
            window_hashes=window_hashes,
            created_at=now,
        )
        session.add(row)
    return row


def get_photo(session: Session, *, photo_id: str) -> Photo | None:
    return session.get(Photo, photo_id)


def create_listing(
    session: Session, *, listing_id: str, title: str, category: str | None, now: datetime
) -> Listing:
    row = Listing(listing_id=listing_id, title=title, category=category, created_at=now)
    session.add(row)
    return row


def get_listing(session: Session, *, listing_id: str) -> Listing | None:
    return session.get(Listing, listing_id)


def listing_images_with_photos(
    session: Session, *, listing_id: str
) -> list[tuple[ListingImage, Photo]]:
    rows = session.execute(
        select(ListingImage, Photo)
        .join(Photo, Photo.photo_id == ListingImage.photo_id)
        .where(ListingImage.listing_id == listing_id)
        .order_by(ListingImage.position)
    )
    return [(image, photo) for image, photo in rows]


def add_listing_image(
    session: Session, *, listing_id: str, photo_id: str, now: datetime
) -> ListingImage:
    existing = session.get(ListingImage, (listing_id, photo_id))
    if existing is not None:
        return existing
    position = session.scalar(
        select(func.count()).select_from(ListingImage).where(ListingImage.listing_id == listing_id)
    )
    row = ListingImage(
        listing_id=listing_id, photo_id=photo_id, position=position or 0, created_at=now
    )
    session.add(row)
    return row


# --- claims -------------------------------------------------------------------------------------


def get_claim(session: Session, *, claim_id: str) -> Claim | None:
    return session.get(Claim, claim_id)


def find_claim_by_idempotency_key(
    session: Session, *, owner_key_id: str, idempotency_key: str
) -> Claim | None:
    return session.scalar(
        select(Claim).where(
            Claim.owner_key_id == owner_key_id, Claim.idempotency_key == idempotency_key
        )
    )


def create_claim(
    session: Session,
    *,
    owner_key_id: str,
    listing_id: str,
    order_ref: str,
    reason: str,
    resolution: str,
    description: str | None,
    amount: Decimal | None,
    currency: str | None,
    opened_at: datetime,
    idempotency_key: str,
    request_fingerprint: str,
    now: datetime,
) -> Claim:
    row = Claim(
        claim_id=new_id("clm"),
        owner_key_id=owner_key_id,
        listing_id=listing_id,
        order_ref=order_ref,
        reason=reason,
        resolution=resolution,
        description=description,
        amount=amount,
        currency=currency,
        opened_at=opened_at,
        created_at=now,
        updated_at=now,
        status="open",
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        # Placeholder triage until the caller computes the real one in the same transaction.
        support=None,
        sufficiency="insufficient",
        lane="needs_more_evidence",
        priority=0,
        reasons=[],
        triaged_at=now,
    )
    session.add(row)
    return row


def claim_photos(session: Session, *, claim_id: str) -> list[ClaimPhoto]:
    return list(
        session.scalars(
            select(ClaimPhoto).where(ClaimPhoto.claim_id == claim_id).order_by(ClaimPhoto.position)
        )
    )


def claim_photos_by_claim(
    session: Session, *, claim_ids: Collection[str]
) -> dict[str, list[ClaimPhoto]]:
    """Each claim's evidence in position order, as `claim_photos` gives it, but for many claims
    in one query per 500 of them (re-triage would otherwise issue one query per claim); a claim
    without evidence maps to []."""
    photos: dict[str, list[ClaimPhoto]] = {}
    for chunk in _chunks(claim_ids):
        photos.update((claim_id, []) for claim_id in chunk)
        rows = session.scalars(
            select(ClaimPhoto)
            .where(ClaimPhoto.claim_id.in_(chunk))
            .order_by(ClaimPhoto.claim_id, ClaimPhoto.position)
        )
        for row in rows:
            photos[row.claim_id].append(row)
    return photos


def _open_evidence(listing_id: str | None, other_than_model: str | None) -> list[Any]:
    """Conditions for the evidence of open claims: of one listing's claims if given, and/or
    only the rows scored by another model than `other_than_model`."""
    conditions: list[Any] = [Claim.status.in_(OPEN_STATUSES)]
    if listing_id is not None:
        conditions.append(Claim.listing_id == listing_id)
    if other_than_model is not None:
        conditions.append(ClaimPhoto.model_version != other_than_model)
    return conditions


def open_claim_photos(
    session: Session, *, listing_id: str | None = None, other_than_model: str | None = None
) -> list[tuple[str, ClaimPhoto]]:
    """(listing id, evidence row) of the open claims' photos (see `_open_evidence`), by listing,
    claim and position."""
    query = (
        select(Claim.listing_id, ClaimPhoto)
        .join(Claim, Claim.claim_id == ClaimPhoto.claim_id)
        .where(*_open_evidence(listing_id, other_than_model))
        .order_by(Claim.listing_id, ClaimPhoto.claim_id, ClaimPhoto.position)
    )
    return [(found_listing, row) for found_listing, row in session.execute(query)]


def open_evidence_photo_ids(
    session: Session, *, listing_id: str | None = None, other_than_model: str | None = None
) -> dict[str, set[str]]:
    """The photo ids of the open claims' evidence (see `_open_evidence`) by listing id: the ids
    alone, not the rows with their maps and findings."""
    query = (
        select(Claim.listing_id, ClaimPhoto.photo_id)
        .join(Claim, Claim.claim_id == ClaimPhoto.claim_id)
        .where(*_open_evidence(listing_id, other_than_model))
    )
    found: dict[str, set[str]] = {}
    for found_listing, photo_id in session.execute(query):
        found.setdefault(found_listing, set()).add(photo_id)
    return found


def add_claim_photo(
    session: Session,
    *,
    claim_id: str,
    photo_id: str,
    filename: str | None,
    damage: float | None,
    mismatch: float | None,
    match_similarity: float | None,
    issues: list[dict[str, Any]],
    damage_map: list[list[float]] | None,
    duplicate_claims: list[str],
    model_version: str,
    now: datetime,
) -> ClaimPhoto:
    position = session.scalar(
        select(func.count()).select_from(ClaimPhoto).where(ClaimPhoto.claim_id == claim_id)
    )
    row = ClaimPhoto(
        claim_id=claim_id,
        photo_id=photo_id,
        position=position or 0,
        filename=filename,
        damage=damage,
        mismatch=mismatch,
        match_similarity=match_similarity,
        issues=issues,
        damage_map=damage_map,
        duplicate_claims=duplicate_claims,
        model_version=model_version,
        created_at=now,
    )
    session.add(row)
    return row


def photo_visible_to_owner(session: Session, *, photo_id: str, owner_key_id: str) -> bool:
    """Whether this buyer has the photo in one of their claims (buyers see nothing else)."""
    found = session.scalar(
        select(ClaimPhoto.photo_id)
        .join(Claim, Claim.claim_id == ClaimPhoto.claim_id)
        .where(ClaimPhoto.photo_id == photo_id, Claim.owner_key_id == owner_key_id)
        .limit(1)
    )
    return found is not None


def claim_photo_for_heatmap(
    session: Session, *, photo_id: str, owner_key_id: str | None
) -> ClaimPhoto | None:
    """The newest evidence row for this photo (restricted to an owner's claims if given)."""
    query = (
        select(ClaimPhoto)
        .join(Claim, Claim.claim_id == ClaimPhoto.claim_id)
        .where(ClaimPhoto.photo_id == photo_id)
    )
    if owner_key_id is not None:
        query = query.where(Claim.owner_key_id == owner_key_id)
    return session.scalar(query.order_by(ClaimPhoto.created_at.desc()).limit(1))


def stored_damage_maps(
    session: Session, *, photo_ids: Collection[str]
) -> list[tuple[str, list[Any]]]:
    """(photo_id, damage_map) of every evidence row of these photos that has a map (one photo
    can be evidence in several claims, each row with the map of its own assessment)."""
    maps: list[tuple[str, list[Any]]] = []
    for chunk in _chunks(photo_ids):
        rows = session.execute(
            select(ClaimPhoto.photo_id, ClaimPhoto.damage_map).where(ClaimPhoto.photo_id.in_(chunk))
        )
        maps.extend(
            (photo_id, damage_map) for photo_id, damage_map in rows if damage_map is not None
        )
    return maps


@dataclass(frozen=True)
class EvidenceHashes:
    claim_id: str
    photo_id: str
    perceptual_hash: str
    window_hashes: str | None  # None for evidence stored before windows were kept
    created_at: datetime


def evidence_hashes(session: Session, *, since: datetime | None = None) -> list[EvidenceHashes]:
    """Every hashed evidence photo, or those added at or after `since`: what the duplicate index
    is built from at start-up and caught up from afterwards."""
    query = (
        select(
            ClaimPhoto.claim_id,
            ClaimPhoto.photo_id,
            Photo.perceptual_hash,
            Photo.window_hashes,
            ClaimPhoto.created_at,
        )
        .join(Photo, Photo.photo_id == ClaimPhoto.photo_id)
        .where(Photo.perceptual_hash.is_not(None))
    )
    if since is not None:
        query = query.where(ClaimPhoto.created_at >= since)
    return [EvidenceHashes(*row) for row in session.execute(query)]


def _evidence_short_of(text_length: int) -> Any:
    """Evidence photos whose `window_hashes` text is shorter than `text_length`, or absent."""
    return and_(
        Photo.perceptual_hash.is_not(None),
        or_(Photo.window_hashes.is_(None), func.length(Photo.window_hashes) < text_length),
        select(ClaimPhoto.photo_id).where(ClaimPhoto.photo_id == Photo.photo_id).exists(),
    )


def count_evidence_short_of(session: Session, *, text_length: int) -> int:
    query = select(func.count()).select_from(Photo).where(_evidence_short_of(text_length))
    return session.scalar(query) or 0


def evidence_photos_short_of(
    session: Session, *, text_length: int, after: str | None, limit: int
) -> list[str]:
    """Ids of evidence photos whose `window_hashes` text is shorter than `text_length` (or
    absent), in id order after `after`, at most `limit`: the photos `triage evidence rehash`
    stores again under every window of the current `photo_windows`."""
    query = (
        select(Photo.photo_id)
        .where(_evidence_short_of(text_length))
        .order_by(Photo.photo_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Photo.photo_id > after)
    return list(session.scalars(query))


def set_photo_hashes(
    session: Session, *, photo_id: str, perceptual_hash: str, window_hashes: str
) -> None:
    session.execute(
        update(Photo)
        .where(Photo.photo_id == photo_id)
        .values(perceptual_hash=perceptual_hash, window_hashes=window_hashes)
    )


def add_pending_evidence(
    session: Session, *, upload_id: str, windows: Mapping[str, str], expires_at: datetime
) -> None:
    """Register an upload's photos (`windows`: ref -> `format_hashes` of its windows)."""
    session.add_all(
        PendingEvidence(upload_id=upload_id, ref=ref, window_hashes=hashes, expires_at=expires_at)
        for ref, hashes in windows.items()
    )


def live_pending_evidence(
    session: Session, *, now: datetime, exclude_upload_id: str
) -> list[tuple[str, str]]:
    """(ref, window hashes) of the photos that other uploads registered and that have not
    expired at `now`."""
    query = select(PendingEvidence.ref, PendingEvidence.window_hashes).where(
        PendingEvidence.expires_at > now, PendingEvidence.upload_id != exclude_upload_id
    )
    return [(ref, hashes) for ref, hashes in session.execute(query)]


def expire_pending_evidence(session: Session, *, upload_id: str, expires_at: datetime) -> None:
    """Set the expiry of an upload's photos (once recorded, it counts from the commit)."""
    session.execute(
        update(PendingEvidence)
        .where(PendingEvidence.upload_id == upload_id)
        .values(expires_at=expires_at)
    )


def delete_pending_evidence(session: Session, *, upload_id: str) -> None:
    """Forget an upload's photos (it failed: nothing of it is stored)."""
    session.execute(delete(PendingEvidence).where(PendingEvidence.upload_id == upload_id))


def purge_pending_evidence(session: Session, *, now: datetime) -> None:
    """Delete the photos expired at `now` (an index range scan)."""
    session.execute(delete(PendingEvidence).where(PendingEvidence.expires_at <= now))


@dataclass(frozen=True)
class TriageUpdate:
    """One claim's triage as its stored columns: the only mapping from a `Triage` to the claim
    row, applied by `set_triage` (a loaded claim) and `set_triages` (many claims by id), so a new
    triage column is added here and nowhere else."""

    claim_id: str
    support: float | None
    sufficiency: str
    lane: str
    priority: int
    reasons: tuple[str, ...]

    @classmethod
    def from_triage(cls, claim_id: str, triage: Triage) -> TriageUpdate:
        return cls(
            claim_id=claim_id,
            support=triage.support,
            sufficiency=triage.sufficiency,
            lane=triage.lane,
            priority=triage.priority,
            reasons=tuple(triage.reasons),
        )

    def columns(self, *, now: datetime) -> dict[str, Any]:
        """The claim's triage attributes and their new values, `triaged_at` included."""
        return {
            "support": self.support,
            "sufficiency": self.sufficiency,
            "lane": self.lane,
            "priority": self.priority,
            "reasons": list(self.reasons),  # a JSON column: stored as a list
            "triaged_at": now,
        }


def set_triage(claim: Claim, triage: Triage, *, now: datetime) -> None:
    """Store `triage` on a loaded claim (flushed with the caller's transaction)."""
    stored = TriageUpdate.from_triage(claim.claim_id, triage)
    for attribute, value in stored.columns(now=now).items():
        setattr(claim, attribute, value)


def set_triages(session: Session, *, updates: Sequence[TriageUpdate], now: datetime) -> None:
    """`set_triage` for many claims as one executemany UPDATE by primary key.

    Setting attributes on loaded claims instead lets the ORM flush group rows by the columns
    that changed, one statement per run of rows that differ (about one per three claims in
    bench/bench_startup.py); every row here sets every triage column, so it is one statement.
    """
    if not updates:
        return
    session.execute(
        update(Claim), [{"claim_id": row.claim_id, **row.columns(now=now)} for row in updates]
    )


@dataclass(frozen=True)
class Page:
    rows: list[Claim]
    count: int
    has_more: bool


def list_claims(
    session: Session,
    *,
    owner_key_id: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> Page:
    """Claims newest first; `after` is the (created_at, claim_id) of the last row seen."""
    scope = [] if owner_key_id is None else [Claim.owner_key_id == owner_key_id]
    count = session.scalar(select(func.count()).select_from(Claim).where(*scope)) or 0
    query = select(Claim).where(*scope)
    if after is not None:
        created_at, claim_id = after
        query = query.where(
            or_(
                Claim.created_at < created_at,
                and_(Claim.created_at == created_at, Claim.claim_id > claim_id),
            )
        )
    rows = list(
        session.scalars(query.order_by(Claim.created_at.desc(), Claim.claim_id).limit(limit + 1))
    )
    return Page(rows=rows[:limit], count=count, has_more=len(rows) > limit)


def queue_page(
    session: Session,
    *,
    statuses: Iterable[str],
    lane: str | None,
    reason: str | None,
    limit: int,
    after: tuple[int, datetime, str] | None,
) -> Page:
    """Claims by priority (highest first), then oldest opened, then id: a stable keyset order.

    `after` is the (priority, opened_at, claim_id) of the last row of the previous page.
    """
    scope = [Claim.status.in_(list(statuses))]
    if lane is not None:
        scope.append(Claim.lane == lane)
    if reason is not None:
        scope.append(Claim.reason == reason)
    count = session.scalar(select(func.count()).select_from(Claim).where(*scope)) or 0
    query = select(Claim).where(*scope)
    if after is not None:
        priority, opened_at, claim_id = after
        query = query.where(
            or_(
                Claim.priority < priority,
                and_(Claim.priority == priority, Claim.opened_at > opened_at),
                and_(
                    Claim.priority == priority,
                    Claim.opened_at == opened_at,
                    Claim.claim_id > claim_id,
                ),
            )
        )
    ordered = query.order_by(Claim.priority.desc(), Claim.opened_at, Claim.claim_id)
    rows = list(session.scalars(ordered.limit(limit + 1)))
    return Page(rows=rows[:limit], count=count, has_more=len(rows) > limit)


def stale_open_claim_ids(session: Session, *, triaged_before: datetime) -> list[str]:
    """Ids of the open claims whose triage is older than `triaged_before`, stalest first.

    A range scan of `ix_claims_stale` (status, triaged_at): for 20,000 open claims of which none
    is stale it takes 0.24 ms, against 17 ms walking every open claim without that index, which
    matters because every queue read asks. Stalest first, so a refresh stopped between chunks
    has done the claims that needed it most."""
    return list(
        session.scalars(
            select(Claim.claim_id)
            .where(Claim.status.in_(OPEN_STATUSES), Claim.triaged_at < triaged_before)
            .order_by(Claim.triaged_at, Claim.claim_id)
        )
    )


def stale_open_claims(
    session: Session, *, claim_ids: Collection[str], triaged_before: datetime
) -> list[Claim]:
    """Those of `claim_ids` still open with triage older than `triaged_before`, looked up by
    primary key (500 ids per query): a claim decided or re-triaged since its id was listed by
    `stale_open_claim_ids` is left out."""
    claims: list[Claim] = []
    for chunk in _chunks(claim_ids):
        # Filtered here, not in SQL: given `status IN (...)` as well, SQLite's planner picks
        # the queue index and scans every open claim for each chunk, instead of 500 key lookups.
        claims.extend(
            claim
            for claim in session.scalars(select(Claim).where(Claim.claim_id.in_(chunk)))
            if claim.status in OPEN_STATUSES and claim.triaged_at < triaged_before
        )
    return claims


def queue_depth_by_lane(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Claim.lane, func.count()).where(Claim.status.in_(OPEN_STATUSES)).group_by(Claim.lane)
    )
    return {lane: count for lane, count in rows}


def count_claims(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Claim)) or 0


# --- reviews and audit --------------------------------------------------------------------------


def hold_unresolved_claim(session: Session, *, claim_id: str, now: datetime) -> bool:
    """Take the claim's row for a change of status (a decision, an escalation) if it is still
    unresolved; False when another transaction resolved it since it was read. A conditional
    UPDATE, not a read then a write: it waits for the row (PostgreSQL) or the write lock
    (SQLite) that a concurrent decision holds and then sees that decision's status, so a second
    decision, or an escalation, cannot overwrite it."""
    held = session.execute(
        update(Claim)
        .where(Claim.claim_id == claim_id, Claim.status != "resolved")
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(held.rowcount)  # type: ignore[attr-defined]  # a CursorResult for an UPDATE


def create_review(
    session: Session,
    *,
    claim_id: str,
    reviewer_key_id: str,
    decision: str,
    amount: Decimal | None,
    notes: str | None,
    labels: list[dict[str, Any]],
    now: datetime,
) -> Review:
    row = Review(
        review_id=new_id("rev"),
        claim_id=claim_id,
        reviewer_key_id=reviewer_key_id,
        decision=decision,
        amount=amount,
        notes=notes,
        labels=labels,
        created_at=now,
    )
    session.add(row)
    return row


@dataclass(frozen=True)
class ReviewLabels:
    """One review's photo labels, as stored: `[{photo_id, damage, matches_listing}]`."""

    claim_id: str
    review_id: str
    created_at: datetime
    labels: list[Any]


def review_labels(session: Session, *, since: datetime | None = None) -> list[ReviewLabels]:
    """Every review's labels, oldest first (ties by review id). With `since`, only the claims
    reviewed at or after it, but with all their reviews: an old label still holds the fields a
    recent correction leaves out."""
    query = select(Review.claim_id, Review.review_id, Review.created_at, Review.labels)
    if since is not None:
        recent = select(Review.claim_id).where(Review.created_at >= since)
        query = query.where(Review.claim_id.in_(recent))
    rows = session.execute(query.order_by(Review.created_at, Review.review_id))
    return [
        ReviewLabels(claim_id=claim_id, review_id=review_id, created_at=created_at, labels=labels)
        for claim_id, review_id, created_at, labels in rows
    ]


# Bound parameters per IN (...) list: well under SQLite's and PostgreSQL's limits.
_IN_CHUNK = 500


def _chunks(values: Collection[str]) -> Iterator[list[str]]:
    ordered = sorted(set(values))
    for start in range(0, len(ordered), _IN_CHUNK):
        yield ordered[start : start + _IN_CHUNK]


def photos_by_id(session: Session, *, photo_ids: Collection[str]) -> dict[str, Photo]:
    """The stored photo rows among `photo_ids` (unknown ids are simply absent)."""
    found: dict[str, Photo] = {}
    for chunk in _chunks(photo_ids):
        found.update(
            (row.photo_id, row)
            for row in session.scalars(select(Photo).where(Photo.photo_id.in_(chunk)))
        )
    return found


def claims_listing_images(
    session: Session, *, claim_ids: Collection[str]
) -> dict[str, list[Photo]]:
    """Each claim's listing images in listing order; a claim whose listing has none maps to []."""
    images: dict[str, list[Photo]] = {}
    for chunk in _chunks(claim_ids):
        images.update((claim_id, []) for claim_id in chunk)
        rows = session.execute(
            select(Claim.claim_id, Photo)
            .join(ListingImage, ListingImage.listing_id == Claim.listing_id)
            .join(Photo, Photo.photo_id == ListingImage.photo_id)
            .where(Claim.claim_id.in_(chunk))
            .order_by(Claim.claim_id, ListingImage.position)
        )
        for claim_id, photo in rows:
            images[claim_id].append(photo)
    return images


def record_audit(
    session: Session,
    *,
    actor: Actor,
    action: str,
    detail: dict[str, Any],
    now: datetime,
    claim_id: str | None = None,
    listing_id: str | None = None,
) -> AuditEvent:
    row = AuditEvent(
        claim_id=claim_id,
        listing_id=listing_id,
        actor_key_id=actor.key_id,
        actor_role=actor.role,
        action=action,
        detail=detail,
        created_at=now,
    )
    session.add(row)
    return row


def audit_trail(session: Session, *, claim_id: str) -> list[AuditEvent]:
    return list(
        session.scalars(
            select(AuditEvent).where(AuditEvent.claim_id == claim_id).order_by(AuditEvent.event_id)
        )
    )
