"""Start-up maintenance runs once per deployment start, not once per worker.

Start-up re-triages every open claim (the policy configuration, the model's thresholds or the
triage code may have changed since the last run) and sweeps the heatmap cache. Both act on what
the processes serving one data folder share (uvicorn `--workers N`: one database, one cache), so
one process doing them serves all that start together; each doing them multiplied the work by N
and had N processes rewrite the same rows at once.

Each maintenance leaves a record (`MaintenanceRecord`) with a generation, one more than the
record it replaced. A process reads the generation when it begins starting; later it takes the
data folder's lock (the background refresh's, waiting for it) and reads the record again. It
skips the work only when a maintenance finished since it began starting, with the same
fingerprint:

- finished since this process began (a higher generation than it read then): the work was done
  while this process was starting, by a process starting beside it (another worker of the same
  deployment), so the claims triaged before this start have all been re-triaged since and the
  cache swept of what earlier requests left. A process that starts after it finished (a restart,
  a new release whose triage code changed without its configuration) reads that generation at
  its start and does the work again. So does a worker slower than the others to begin, which
  costs time but is never wrong. No clock is compared, so hosts with skewed clocks sharing the
  folder over a network file system decide as processes on one host do.
- the same fingerprint (database, resolved policy, model version): a process with another policy
  or model (a rolling deploy, a second container with other settings on this folder) re-triages
  with its own, so no process serves claims triaged under another configuration because of a
  skip; of processes that disagree, the last to start wins, as when each re-triaged.
- under the lock: a process that waits while another does the work reads its record once the
  lock is free, so it serves only after the claims were re-triaged. The lock is the refresh
  round's, so a background round of a process already running never interleaves its writes with
  a start-up re-triage. It dies with its holder (flock): a crash mid-way writes no record, and
  the next process does the work.

Processes that share a database but not a data folder each do the work, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from service.api.refresher import round_lock
from service.db.crud import utcnow
from service.policy import PolicyConfig
from service.store import write_atomically

logger = logging.getLogger("service.api")


@dataclass(frozen=True)
class StartUpMaintenance:
    """What one start-up maintenance did."""

    claims_retriaged: int
    heatmaps_removed: int
    cache_versions_removed: int  # folders of display copies and heatmaps made by older code


@dataclass(frozen=True)
class MaintenanceRecord:
    """The last start-up maintenance of a data folder: what it was done for, its generation (one
    more than the record it replaced) and when it ended (for people: decisions never read it)."""

    fingerprint: str
    generation: int
    finished_at: datetime

    def covers(self, fingerprint: str, *, generation_at_start: int) -> bool:
        """Whether it makes the same work needless for a process with `fingerprint` that read
        `generation_at_start` when it began starting: it was done since, for the same thing."""
        return self.fingerprint == fingerprint and self.generation > generation_at_start


def generation_of(record: MaintenanceRecord | None) -> int:
    """A record's generation; 0 where there is none (no maintenance yet, or unreadable)."""
    return 0 if record is None else record.generation


def maintenance_fingerprint(*, database_url: str, policy: PolicyConfig, model_version: str) -> str:
    """SHA-256 of what start-up maintenance depends on besides the code: the database it
    re-triages, the policy it triages with (model thresholds filled in) and the model whose
    scores and damage maps it reads. Hashed, so the database password is not written down."""
    material = json.dumps(
        {
            "database": database_url,
            "policy": policy.model_dump(mode="json"),
            "model_version": model_version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def read_record(path: Path) -> MaintenanceRecord | None:
    """The record at `path`, or None when there is none or it cannot be read (then the work is
    done again, which is always safe). A record from before generations were kept reads as
    generation 0. Written by an atomic rename, so it can be read without the lock."""
    try:
        stored = json.loads(path.read_text())
        generation = stored.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise ValueError(f"generation {generation!r} is not a count")
        return MaintenanceRecord(
            fingerprint=str(stored["fingerprint"]),
            generation=generation,
            finished_at=datetime.fromisoformat(stored["finished_at"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("unreadable start-up maintenance record ignored", extra={"path": str(path)})
        return None


def write_record(path: Path, record: MaintenanceRecord) -> None:
    stored = {
        "fingerprint": record.fingerprint,
        "generation": record.generation,
        "finished_at": record.finished_at.isoformat(),
    }
    write_atomically(path, json.dumps(stored).encode())


def maintain_once_per_start(
    maintain: Callable[[], StartUpMaintenance],
    *,
    lock_path: Path,
    record_path: Path,
    fingerprint: str,
    generation_at_start: int,
) -> StartUpMaintenance | None:
    """Runs `maintain` under the lock unless the record shows it done for `fingerprint` since
    this process read `generation_at_start` (`generation_of(read_record(...))` when it began
    starting; see the module docstring); returns what it did, or None when it was skipped."""
    with round_lock(lock_path, wait=True):
        record = read_record(record_path)
        if record is not None and record.covers(
            fingerprint, generation_at_start=generation_at_start
        ):
            return None
        done = maintain()
        write_record(
            record_path,
            MaintenanceRecord(
                fingerprint=fingerprint,
                generation=max(generation_of(record), generation_at_start) + 1,
                finished_at=utcnow(),
            ),
        )
        return done
