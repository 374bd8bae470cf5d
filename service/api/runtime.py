"""Everything the app holds for its lifetime: database, photo store, model, duplicate index.

Built once by the lifespan (`Runtime.start`), so the model is loaded once per process and a
misconfiguration (bad database URL, missing model) stops start-up instead of the first request.
Start-up maintenance (re-triage of every open claim, the heatmap sweep) runs once per deployment
start, not once per process: see `service.api.startup`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.api import triage
from service.api.metrics import Metrics
from service.api.startup import (
    StartUpMaintenance,
    generation_of,
    maintain_once_per_start,
    maintenance_fingerprint,
    read_record,
)
from service.assessment import Assessor, PhotoAssessment, heatmap_png, with_duplicates
from service.batching import MicroBatcher
from service.config import Settings
from service.db import crud
from service.db.crud import utcnow
from service.db.migrate import upgrade_to_head
from service.db.session import database_reachable, make_engine, make_session_factory, transaction
from service.duplicates import DuplicateIndex, WindowScan, evidence_ref, format_hashes
from service.engine import ModelCard, ScoringEngine
from service.intake import DISPLAY_COPY_VERSION, Photo, open_photo
from service.policy import PolicyConfig
from service.store import (
    DisplayCache,
    HeatmapCache,
    PhotoStore,
    heatmap_cache_key,
    photo_of_heatmap_key,
)

logger = logging.getLogger("service.api")
# Decoded listing images kept for mismatch and reuse checks (about 0.6 MB each at 448 px).
LISTING_PHOTO_CACHE = 64
# How far back each sync of the duplicate index re-reads evidence rows: a row's created_at is
# set before its transaction commits, so a slow commit can land behind rows already read.
DUPLICATE_SYNC_OVERLAP = timedelta(seconds=60)
# Every DUPLICATE_CATCH_UP_SECONDS a sync reads this far back instead, so evidence committed long
# after its `created_at` (a transaction stalled behind a lock) is indexed within that time rather
# than at the next restart; the window is bounded, so the read stays as cheap as an hour's rows.
DUPLICATE_CATCH_UP_OVERLAP = timedelta(hours=1)
DUPLICATE_CATCH_UP_SECONDS = 600.0
# How long an upload's registration (`Runtime.register_pending_evidence`) counts while the upload
# is being recorded: far longer than recording takes (SQLite alone may wait 10 s for its lock),
# yet bounded, so the registration of a process that died mid-upload stops flagging photos.
PENDING_WHILE_RECORDING = timedelta(minutes=5)
# The least time a recorded upload stays registered after its commit (`pending_evidence_ttl`).
PENDING_AFTER_RECORDING = timedelta(seconds=10)
# The first release of the model scored on a photo's picture (padding bands cut off,
# service.framing): the damage maps its earlier releases stored were made on the whole frame.
PICTURE_MODEL = "evidence-lite0-"
FIRST_PICTURE_RELEASE = (1, 3, 1)


def scored_whole_frame(model_version: str) -> bool:
    """Whether a stored damage map of `model_version` ("evidence-lite0-<x.y.z>[-suffix]", as the
    card names it; a recalibrated "-site" model keeps its release's numbers) was made on the
    whole frame. Other models' maps are taken to be the picture's."""
    if not model_version.startswith(PICTURE_MODEL):
        return False
    release = model_version.removeprefix(PICTURE_MODEL).split("-")[0]
    try:
        numbers = tuple(int(number) for number in release.split("."))
    except ValueError:
        return False
    return numbers < FIRST_PICTURE_RELEASE


# The heatmap PNG's format: bump it with any change to how `render_heatmap` draws or encodes the
# overlay (colours, opacity, resampling, PNG settings), so cached PNGs and their ETags are renewed.
# 2 (session 10): drawn on the photo's picture, padding bands cut off. 3: drawn where the model
# that made the map saw the photo (`scored_whole_frame`).
HEATMAP_FORMAT_VERSION = 3
# Cached heatmap keys checked against the database per query when cleaning up: one IN list of at
# most this many photo ids, and their damage maps (a few kB each) held at once.
HEATMAP_CLEANUP_CHUNK = 500


def heatmap_key(photo_id: str, damage_map: list[Any], input_size: int) -> str:
    """`<photo_id>-<digest>` (`service.store.heatmap_cache_key`), the digest being the SHA-256 hex
    of everything that determines a heatmap PNG's bytes: the format version, the model input size
    the map is laid out on, the photo id and the stored damage map as canonical JSON (the same
    photo can be evidence in several claims, and a rescore or model upgrade changes the map).
    """
    canonical = json.dumps(damage_map, separators=(",", ":"), sort_keys=True)
    material = f"heatmap-v{HEATMAP_FORMAT_VERSION}\n{input_size}\n{photo_id}\n{canonical}"
    return heatmap_cache_key(photo_id, hashlib.sha256(material.encode()).hexdigest())


def pending_evidence_ttl(settings: Settings) -> timedelta:
    """How long a recorded upload stays registered after its commit: until every other process
    has synced its duplicate index past that commit. A process syncs at most every
    `duplicate_sync_seconds`, and then scores an upload before its look-up of registered
    photos; three sync intervals, and never under 10 s, leave room for slow scoring and for
    clocks of different hosts a few seconds apart (expiries are written by one, read by another).
    """
    return max(PENDING_AFTER_RECORDING, timedelta(seconds=3 * settings.duplicate_sync_seconds))


@dataclass
class Runtime:
    settings: Settings
    db_engine: Engine
    sessions: sessionmaker[Session]
    store: PhotoStore
    display_copies: DisplayCache
    heatmaps: HeatmapCache
    batcher: MicroBatcher
    assessor: Assessor
    policy: PolicyConfig
    duplicates: DuplicateIndex
    metrics: Metrics
    # The duplicate index is shared by concurrent uploads; queries and additions are serialised.
    duplicates_lock: threading.Lock = field(default_factory=threading.Lock)
    # Catching up on evidence committed by other processes (`sync_duplicate_index`).
    _duplicate_sync_lock: threading.Lock = field(default_factory=threading.Lock)
    _duplicates_read_to: datetime | None = None  # the newest evidence `created_at` read so far
    _duplicates_synced_at: float = float("-inf")  # time.monotonic() of the last sync
    _duplicates_caught_up_at: float = float("-inf")  # ... of the last one that read an hour back
    _listing_photos: OrderedDict[str, Photo] = field(default_factory=OrderedDict)
    _listing_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, settings: Settings, *, maintain: bool = True) -> Runtime:
        """Open the database, load the model and build the duplicate index; with `maintain`
        (every server process), also the start-up maintenance. A command that only needs the
        runtime for its own work (`triage evidence rescore`) leaves it to the servers: it would
        re-triage every open claim with the command's own settings."""
        # Start-up maintenance done by another process after this moment is not done again.
        generation_at_start = generation_of(read_record(settings.start_up_record_path))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db_engine = make_engine(settings.resolved_database_url)
        upgrade_to_head(db_engine)
        sessions = make_session_factory(db_engine)
        scoring = ScoringEngine.load(settings.model_dir)
        batcher = MicroBatcher(scoring)
        policy = settings.policy.for_card(scoring.card.thresholds)

        def read_queue_depths() -> dict[str, int]:
            with sessions() as session:
                return crud.queue_depth_by_lane(session)

        runtime = cls(
            settings=settings,
            db_engine=db_engine,
            sessions=sessions,
            store=PhotoStore(settings.photos_dir),
            display_copies=DisplayCache(settings.display_dir, version=DISPLAY_COPY_VERSION),
            heatmaps=HeatmapCache(settings.heatmap_dir, version=HEATMAP_FORMAT_VERSION),
            batcher=batcher,
            assessor=Assessor(batcher),
            policy=policy,
            duplicates=DuplicateIndex(),
            metrics=Metrics(
                model_version=scoring.model_version, read_queue_depths=read_queue_depths
            ),
        )
        runtime.sync_duplicate_index(force=True)
        maintenance = (
            maintain_once_per_start(
                runtime.start_up_maintenance,
                lock_path=settings.refresh_lock_path,
                record_path=settings.start_up_record_path,
                fingerprint=maintenance_fingerprint(
                    database_url=settings.resolved_database_url,
                    policy=policy,
                    model_version=scoring.model_version,
                ),
                generation_at_start=generation_at_start,
            )
            if maintain
            else None
        )
        logger.info(
            "started",
            extra={
                "model_version": scoring.model_version,
                # Skipped: another process did it since this one began starting.
                "start_up_maintenance": "skipped" if maintenance is None else "done",
                **(asdict(maintenance) if maintenance is not None else {}),
            },
        )
        return runtime

    def start_up_maintenance(self) -> StartUpMaintenance:
        """Sweep the heatmap cache, delete the cache folders of older versions and re-triage
        every open claim with this process's policy: its configuration may have changed since
        the last run. Committed chunk by chunk: with many open claims one transaction would
        lock the table for all of start-up."""
        heatmaps_removed = self.sweep_heatmaps()
        cache_versions_removed = sum(
            cache.remove_older_versions() for cache in (self.display_copies, self.heatmaps)
        )
        claims_retriaged = triage.refresh_stale_in_chunks(
            self.sessions, policy=self.policy, now=utcnow(), max_age=timedelta(0)
        )
        return StartUpMaintenance(
            claims_retriaged=claims_retriaged,
            heatmaps_removed=heatmaps_removed,
            cache_versions_removed=cache_versions_removed,
        )

    def refresh_stale_triage(self, *, should_stop: Callable[[], bool] | None = None) -> int:
        """One background round: re-triage open claims older than the refresh age, committed
        chunk by chunk (queue reads and uploads keep going in between); returns how many."""
        return triage.refresh_stale_in_chunks(
            self.sessions,
            policy=self.policy,
            now=utcnow(),
            max_age=timedelta(seconds=self.settings.triage_refresh_seconds),
            should_stop=should_stop,
        )

    def sync_duplicate_index(self, *, force: bool = False) -> int:
        """Add to the duplicate index the evidence that other processes committed since the
        last sync (every evidence photo the first time, at start-up); returns how many photos.

        Uploads add their own photos as they commit; photos uploaded through another uvicorn
        worker or another container on the same database arrive only this way. At most one sync
        per `duplicate_sync_seconds` (a caller that finds one running or too recent skips it),
        so a photo committed elsewhere is found about that long after. Rows are read from a
        little before the newest one already read (`DUPLICATE_SYNC_OVERLAP`), since a row's
        `created_at` is set before its transaction commits, and every `DUPLICATE_CATCH_UP_SECONDS`
        from an hour before it (`DUPLICATE_CATCH_UP_OVERLAP`), for a commit that landed later
        still; refs already indexed are skipped.
        """
        if not self._duplicate_sync_lock.acquire(blocking=force):
            return 0
        try:
            started = time.monotonic()
            if not force and (
                started - self._duplicates_synced_at < self.settings.duplicate_sync_seconds
            ):
                return 0
            catch_up = started - self._duplicates_caught_up_at >= DUPLICATE_CATCH_UP_SECONDS
            overlap = DUPLICATE_CATCH_UP_OVERLAP if catch_up else DUPLICATE_SYNC_OVERLAP
            since = self._duplicates_read_to and self._duplicates_read_to - overlap
            with self.sessions() as session:
                rows = crud.evidence_hashes(session, since=since)
            self._duplicates_synced_at = started
            if catch_up:
                self._duplicates_caught_up_at = started
            with self.duplicates_lock:
                new_photos = [
                    # Evidence stored before windows were kept is found only by its whole frame.
                    (ref, row.window_hashes or row.perceptual_hash)
                    for row in rows
                    if (ref := evidence_ref(row.claim_id, row.photo_id)) not in self.duplicates
                ]
                self.duplicates.add_photo_texts(new_photos)
            if rows:
                newest = max(row.created_at for row in rows)
                if self._duplicates_read_to is None or newest > self._duplicates_read_to:
                    self._duplicates_read_to = newest
            return len(new_photos)
        finally:
            self._duplicate_sync_lock.release()

    def register_pending_evidence(
        self,
        upload_id: str,
        assessments: Sequence[PhotoAssessment],
        refs: Sequence[str],
        *,
        own_refs: Collection[str],
    ) -> list[PhotoAssessment]:
        """Before an upload records its photos: register them under `refs` in the database,
        where every process looks, then flag those that other uploads registered for other
        claims and that the index may not hold yet (still being recorded, or committed by
        another process since its last sync). Returns the assessments, flagged where so.

        The registration commits before the look-up reads: of two uploads of one photo, the one
        whose registration commits second then always finds the other, whatever process each
        runs in (both may be flagged when they register at the same moment).
        """
        if not assessments:  # every photo was in the claim already: nothing to record
            return []
        now = utcnow()
        with transaction(self.sessions) as session:
            crud.add_pending_evidence(
                session,
                upload_id=upload_id,
                windows={
                    ref: format_hashes(assessment.window_hashes)
                    for assessment, ref in zip(assessments, refs, strict=True)
                },
                expires_at=now + PENDING_WHILE_RECORDING,
            )
        with self.sessions() as session:
            rows = crud.live_pending_evidence(session, now=now, exclude_upload_id=upload_id)
        # Looked up once: a scan of the parsed hashes, no index to sort (docs/quality.md §5 (c)).
        others = WindowScan((ref, text) for ref, text in rows if ref not in own_refs)
        return [
            with_duplicates(assessment, others.query(assessment.window_hashes[0]))
            for assessment in assessments
        ]

    def settle_pending_evidence(
        self,
        upload_id: str,
        assessments: Sequence[PhotoAssessment],
        refs: Sequence[str],
        *,
        recorded: bool,
    ) -> None:
        """After the upload's transaction: a recorded upload's photos go into this process's
        index and stay registered for `pending_evidence_ttl` from now, until every other
        process has synced past this commit; a failed upload's registration goes at once.
        Expired registrations of any upload are purged on the way.

        Database errors are logged, not raised: the upload's outcome is already decided, and a
        registration left behind expires by itself."""
        if recorded:
            with self.duplicates_lock:
                for assessment, ref in zip(assessments, refs, strict=True):
                    if ref not in self.duplicates:  # a sync may have read it already
                        # Under every window, so a cropped copy in another claim is found too.
                        self.duplicates.add_photo(assessment.window_hashes, ref)
        now = utcnow()
        try:
            with transaction(self.sessions) as session:
                if recorded:
                    crud.expire_pending_evidence(
                        session,
                        upload_id=upload_id,
                        expires_at=now + pending_evidence_ttl(self.settings),
                    )
                else:
                    crud.delete_pending_evidence(session, upload_id=upload_id)
                crud.purge_pending_evidence(session, now=now)
        except SQLAlchemyError:
            logger.warning(
                "pending evidence not settled", extra={"upload_id": upload_id}, exc_info=True
            )

    def listing_photo(self, photo_id: str) -> Photo:
        """A listing image decoded as intake does; recently used ones are kept decoded."""
        with self._listing_lock:
            cached = self._listing_photos.get(photo_id)
            if cached is not None:
                self._listing_photos.move_to_end(photo_id)
                return cached
        photo = open_photo(self.store.get(photo_id))
        with self._listing_lock:
            self._listing_photos[photo_id] = photo
            while len(self._listing_photos) > LISTING_PHOTO_CACHE:
                self._listing_photos.popitem(last=False)
        return photo

    def heatmap_key(self, photo_id: str, damage_map: list[Any]) -> str:
        """The cache key (and ETag material) of this photo's heatmap with this damage map."""
        return heatmap_key(photo_id, damage_map, self.batcher.engine.input_spec.size)

    def live_heatmap_keys(self, photo_ids: Collection[str]) -> set[str]:
        """The keys of the damage maps stored now for these photos: every heatmap the route can
        still serve (it serves the map of one of their evidence rows)."""
        with self.sessions() as session:
            maps = crud.stored_damage_maps(session, photo_ids=photo_ids)
        return {self.heatmap_key(photo_id, damage_map) for photo_id, damage_map in maps}

    def discard_unservable_heatmaps(self, keys: Sequence[str]) -> int:
        """Delete the PNGs of those of `keys` whose damage map is no longer stored (a rescore
        or upgrade replaced it); returns how many files went.

        The caller lists `keys` from the cache BEFORE this reads the database, which is what
        makes it safe beside requests: a listed PNG was made from a map that a request read,
        committed before this read, so while that map is stored this read finds it and the PNG
        stays. A PNG written after the listing is not this call's to judge: the request that
        wrote it prunes once it is stored (`prune_heatmaps`), reading the database after its
        write, so the PNG of a map replaced while it was rendered goes too.
        """
        removed = 0
        for start in range(0, len(keys), HEATMAP_CLEANUP_CHUNK):
            chunk = keys[start : start + HEATMAP_CLEANUP_CHUNK]
            live = self.live_heatmap_keys({photo_of_heatmap_key(key) for key in chunk})
            removed += sum(self.heatmaps.discard(key) for key in chunk if key not in live)
        return removed

    def prune_heatmaps(self, photo_id: str) -> int:
        """For the route, having stored a PNG of this photo that was not cached (mostly a new
        damage map): delete the photo's PNGs that can no longer be served, the one just stored
        included if its map was replaced while it was rendered. One folder listing and one
        database read."""
        return self.discard_unservable_heatmaps(self.heatmaps.keys_of(photo_id))

    def sweep_heatmaps(self) -> int:
        """At start-up: delete every cached PNG whose damage map is no longer stored (left by a
        crash, or by a prune that failed), and any PNG left in an older naming layout. The cache
        is listed once, for both."""
        files = self.heatmaps.files()
        return self.heatmaps.discard_strays(files.strays) + self.discard_unservable_heatmaps(
            files.keys
        )

    def render_heatmap(
        self, original: bytes, damage_map: list[list[float]], *, model_version: str
    ) -> bytes:
        """PNG of the photo as the model that made `damage_map` saw it, with the map laid over
        it: the picture without padding bands, or the whole frame for a map stored by a model
        released before the service cut them (`scored_whole_frame`)."""
        photo = open_photo(original)
        return heatmap_png(
            photo.image if scored_whole_frame(model_version) else photo.picture,
            np.asarray(damage_map, dtype=np.float32),
            input_size=self.batcher.engine.input_spec.size,
        )

    @property
    def model_card(self) -> ModelCard:
        return self.batcher.card

    @property
    def model_version(self) -> str:
        return self.batcher.model_version

    def ready(self) -> dict[str, bool]:
        return {"model": self.batcher is not None, "database": database_reachable(self.db_engine)}

    def close(self) -> None:
        self.batcher.close()
        self.db_engine.dispose()
