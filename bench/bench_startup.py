"""Start-up re-triage of every open claim: per-claim photo queries against chunked loading.

    python bench/bench_startup.py [--sizes 2000,20000] [--photos 3]
        [--postgres postgresql+psycopg://user@host:port/db]

For each N, one temporary SQLite data folder (the service's migrations, WAL mode) is filled with
N claims of 3 evidence photos each (random scores, issues, 7x7 damage maps; 95 % of them open,
escalated or awaiting evidence, the rest resolved), then copied, so each way starts from the very
same file. Timed, in the same run and on the same copy of the data:

- old: what start-up did before, one transaction, the stale claims loaded at once, then per claim
  `crud.claim_photos` (one query each) and `retriage`, the ORM flushing the changes at commit;
- new: `triage.refresh_stale_in_chunks` (what `Runtime.start` calls now): 500 claims per chunk,
  their photos in one query, one executemany UPDATE, a commit per chunk;
- new, one transaction: `triage.refresh_stale` as a queue read runs it (same chunks, no commits).

Each row gives the seconds, the SQL statements sent (SQLAlchemy `before_cursor_execute`), the
longest transaction (engine `begin` to `commit`) and whether the stored triage of every claim is
identical to the old way's. Only the re-triage is timed (not the migrations or model loading of
a real start-up). Run on purpose, not in CI.

With `--postgres URL` the same runs go to that PostgreSQL database instead (its public schema is
dropped and rebuilt!): between ways the triage columns are reset to the placeholder and the
tables vacuumed and analysed, since a PostgreSQL database cannot be copied like a file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine, event, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from service.api import triage
from service.db import crud
from service.db.migrate import upgrade_to_head
from service.db.models import ApiKey, Claim, ClaimPhoto, Listing, Photo
from service.db.session import make_engine, make_session_factory, transaction
from service.engine import DEFAULT_MODEL_DIR
from service.policy import CLAIM_REASONS, PolicyConfig

STATUSES = (("open", 0.70), ("escalated", 0.15), ("awaiting_evidence", 0.10), ("resolved", 0.05))
ISSUES = (
    [],
    [],
    [],
    [{"code": "blurry", "severity": "warning"}],
    [{"code": "too_dark", "severity": "blocker"}],
)


def shipped_policy() -> PolicyConfig:
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    return PolicyConfig().for_card(SimpleNamespace(**card["thresholds"]))


def build_database(url: str, *, claims: int, photos: int, now: datetime, seed: int) -> None:
    """`claims` claims with `photos` evidence photos each, triaged long ago (all stale)."""
    rng = random.Random(seed)
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    upgrade_to_head(engine)
    long_ago = now - timedelta(days=30)
    with engine.begin() as connection:
        connection.execute(
            insert(ApiKey),
            [
                {
                    "key_id": "key_bench",
                    "name": "bench",
                    "role": "buyer",
                    "key_hash": "0" * 64,
                    "display_prefix": "bench",
                    "created_at": long_ago,
                }
            ],
        )
        connection.execute(
            insert(Listing),
            [{"listing_id": "lst-bench", "title": "Mug", "category": None, "created_at": long_ago}],
        )
        claim_rows: list[dict[str, Any]] = []
        photo_rows: list[dict[str, Any]] = []
        evidence_rows: list[dict[str, Any]] = []
        claim_ids = [crud.new_id("clm") for _ in range(claims)]
        for claim_id in claim_ids:
            status = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES])[0]
            opened_at = now - timedelta(days=rng.uniform(0, 20))
            claim_rows.append(
                {
                    "claim_id": claim_id,
                    "owner_key_id": "key_bench",
                    "listing_id": "lst-bench",
                    "order_ref": "ORD-1",
                    "reason": rng.choice(CLAIM_REASONS),
                    "resolution": "full_refund",
                    "description": None,
                    "amount": None,
                    "currency": None,
                    "opened_at": opened_at,
                    "created_at": opened_at,
                    "updated_at": opened_at,
                    "status": status,
                    "escalated_at": opened_at if status == "escalated" else None,
                    "decision": None,
                    "decided_at": None,
                    "idempotency_key": claim_id,
                    "request_fingerprint": "f" * 64,
                    "support": None,
                    "sufficiency": "insufficient",
                    "lane": "needs_more_evidence",
                    "priority": 0,
                    "reasons": [],
                    "triaged_at": opened_at,
                }
            )
            for position in range(photos):
                photo_id = secrets.token_hex(32)
                photo_rows.append(
                    {
                        "photo_id": photo_id,
                        "format": "JPEG",
                        "byte_size": 1_700_000,
                        "width": 4000,
                        "height": 3000,
                        "has_gps": False,
                        "perceptual_hash": None,
                        "window_hashes": None,
                        "created_at": opened_at,
                    }
                )
                evidence_rows.append(
                    {
                        "claim_id": claim_id,
                        "photo_id": photo_id,
                        "position": position,
                        "filename": f"photo{position + 1}.jpg",
                        "damage": rng.random(),
                        "mismatch": rng.random() if rng.random() < 0.8 else None,
                        "match_similarity": rng.random(),
                        "issues": rng.choice(ISSUES),
                        "damage_map": [
                            [round(rng.random(), 4) for _ in range(7)] for _ in range(7)
                        ],
                        "duplicate_claims": [rng.choice(claim_ids)] if rng.random() < 0.03 else [],
                        "model_version": "bench",
                        "created_at": opened_at,
                    }
                )
        connection.execute(insert(Claim), claim_rows)
        connection.execute(insert(Photo), photo_rows)
        connection.execute(insert(ClaimPhoto), evidence_rows)
    if engine.dialect.name == "postgresql":
        vacuum(engine)
    engine.dispose()  # on SQLite the last connection to close checkpoints the WAL into the file


def vacuum(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))


def reset_triage(engine: Engine) -> None:
    """Every claim back to the placeholder triage `build_database` gave it (PostgreSQL runs)."""
    with engine.begin() as connection:
        connection.execute(
            update(Claim).values(
                support=None,
                sufficiency="insufficient",
                lane="needs_more_evidence",
                priority=0,
                reasons=[],
                triaged_at=Claim.opened_at,
            )
        )
    vacuum(engine)


def copy_database(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


def old_startup_refresh(
    sessions: sessionmaker[Session], policy: PolicyConfig, now: datetime
) -> int:
    """Start-up's re-triage before this change, verbatim: one transaction, a query per claim."""
    with transaction(sessions) as session:
        stale = list(
            session.scalars(
                select(Claim).where(
                    Claim.status.in_(crud.OPEN_STATUSES), Claim.triaged_at < now - timedelta(0)
                )
            )
        )
        for claim in stale:
            triage.retriage(session, claim, policy=policy, now=now)
    return len(stale)


def new_startup_refresh(
    sessions: sessionmaker[Session], policy: PolicyConfig, now: datetime
) -> int:
    return triage.refresh_stale_in_chunks(sessions, policy=policy, now=now, max_age=timedelta(0))


def new_single_transaction(
    sessions: sessionmaker[Session], policy: PolicyConfig, now: datetime
) -> int:
    with transaction(sessions) as session:
        return triage.refresh_stale(session, policy=policy, now=now, max_age=timedelta(0))


@dataclass
class Activity:
    statements: int = 0
    longest_transaction_s: float = 0.0
    _began: float | None = None


@contextmanager
def watching(engine: Engine) -> Iterator[Activity]:
    """SQL statements sent, and the longest time from BEGIN to COMMIT / ROLLBACK."""
    activity = Activity()

    def statement(*_args: object) -> None:
        activity.statements += 1

    def begin(*_args: object) -> None:
        activity._began = time.perf_counter()

    def end(*_args: object) -> None:
        if activity._began is not None:
            held = time.perf_counter() - activity._began
            activity.longest_transaction_s = max(activity.longest_transaction_s, held)
            activity._began = None

    listeners = {
        "before_cursor_execute": statement,
        "begin": begin,
        "commit": end,
        "rollback": end,
    }
    for name, listener in listeners.items():
        event.listen(engine, name, listener)
    try:
        yield activity
    finally:
        for name, listener in listeners.items():
            event.remove(engine, name, listener)


def stored_triage(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                Claim.claim_id,
                Claim.support,
                Claim.sufficiency,
                Claim.lane,
                Claim.priority,
                Claim.reasons,
                Claim.triaged_at,
            ).order_by(Claim.claim_id)
        )
        return [tuple(row) for row in rows]


Way = Callable[[sessionmaker[Session], PolicyConfig, datetime], int]
WAYS: dict[str, Way] = {
    "old (query per claim)": old_startup_refresh,
    "new (chunks, commit each)": new_startup_refresh,
    "new, one transaction": new_single_transaction,
}


def measure(
    size: int, photos: int, folder: Path, policy: PolicyConfig, postgres: str | None
) -> list[dict[str, Any]]:
    now = crud.utcnow()
    source = folder / f"source-{size}.sqlite3"
    started = time.perf_counter()
    build_database(
        postgres or f"sqlite:///{source}", claims=size, photos=photos, now=now, seed=size
    )
    print(f"N={size}: built in {time.perf_counter() - started:.1f} s", flush=True)
    results: list[dict[str, Any]] = []
    reference: list[tuple[Any, ...]] | None = None
    for name, way in WAYS.items():
        if postgres:
            engine = make_engine(postgres)
            if results:
                reset_triage(engine)
        else:
            copy = folder / f"way{len(results)}-{size}.sqlite3"
            copy_database(source, copy)
            engine = make_engine(f"sqlite:///{copy}")
        sessions = make_session_factory(engine)
        with watching(engine) as activity:
            started = time.perf_counter()
            refreshed = way(sessions, policy, now)
            seconds = time.perf_counter() - started
        stored = stored_triage(engine)
        engine.dispose()
        if reference is None:
            reference = stored
        results.append(
            {
                "size": size,
                "way": name,
                "refreshed": refreshed,
                "seconds": seconds,
                "statements": activity.statements,
                "longest_transaction": activity.longest_transaction_s,
                "identical": stored == reference,
            }
        )
        print(f"  {name}: {seconds:.2f} s, {activity.statements} statements", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="numbers of claims, comma-separated")
    parser.add_argument("--photos", type=int, default=3, help="evidence photos per claim")
    parser.add_argument(
        "--postgres", help="a PostgreSQL URL to use instead of SQLite (its schema is dropped)"
    )
    args = parser.parse_args()
    policy = shipped_policy()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        for size in (int(value) for value in args.sizes.split(",")):
            rows.extend(measure(size, args.photos, Path(folder), policy, args.postgres))
    load_after = os.getloadavg()
    print()
    print(
        "| claims | re-triaged | way | seconds | old / this | SQL statements "
        "| longest transaction s | same triage |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    for row in rows:
        old = next(r for r in rows if r["size"] == row["size"] and r["way"].startswith("old"))
        print(
            f"| {row['size']} | {row['refreshed']} | {row['way']} | {row['seconds']:.2f} "
            f"| {old['seconds'] / row['seconds']:.1f}x | {row['statements']} "
            f"| {row['longest_transaction']:.2f} | {'yes' if row['identical'] else 'NO'} |"
        )
    print(
        f"\n{'PostgreSQL' if args.postgres else 'SQLite'}; load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
