"""The batch job behind `triage batch`: score thousands of historical claim photos, resumably.

Manifest (CSV, JSONL or Parquet, by extension): one row per photo with `claim_id`, `photo` (a
path under the images root), optional `listing_images` (paths separated by ';'), `reason`,
`opened_at`, `status`, `escalated`, and any other columns, which are passed through.

Output (Parquet by default, CSV or JSONL by extension): the input columns plus `damage`,
`mismatch`, `match_similarity`, `quality_codes` (';'-separated, like `listing_images`),
`model_version` and `error`, one row per manifest row in manifest order; a photo that cannot be
read or scored gets an `error` and never stops the run. Beside it, `<out>.claims.<ext>`: one row
per claim with the triage policy's support, sufficiency, lane, priority and reasons.

Resuming: results are written as they are made, a chunk of rows at a time, into parts under
`<out>.parts/` (each part written to a temporary name and renamed, so a killed run leaves only
whole parts). `--resume` skips the manifest rows the parts already hold; the final files are
assembled from the parts at the end. Duplicate detection across claims runs in manifest order
with the API's duplicate index and look-up (`service.checks.find_duplicates`, each photo stored
under its crop windows), and is rebuilt from the parts on resume, so a resumed run finds the same
duplicates as an uninterrupted one.

Engines: `local` decodes the next photos in a background thread while the model scores the
current one (both cores busy, one onnxruntime session); `ray` (the optional `ray` extra) runs the
same decode-and-score code in Ray Data `map_batches` actors and leaves the order-dependent
duplicate pass and the writing to the driver.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from service.assessment import Assessor, ScoredFile
from service.checks import DUPLICATE_ACROSS_CLAIMS, find_duplicates, reuse_detectable
from service.duplicates import (
    DuplicateIndex,
    claim_of_ref,
    evidence_ref,
    format_hashes,
    parse_hashes,
)
from service.engine import ScoringEngine
from service.intake import Photo, PhotoRejected, open_photo
from service.policy import ClaimFacts, PhotoFacts, PolicyConfig, triage_claim

Engine = Literal["local", "ray"]
REQUIRED_COLUMNS = ("claim_id", "photo")
SCORE_COLUMNS = (
    "damage",
    "mismatch",
    "match_similarity",
    "quality_codes",
    "model_version",
    "error",
)
# Kept in the parts for resuming and for the claim file, dropped from the final output.
ROW = "_row"
PHOTO_ID = "_photo_id"
WINDOW_HASHES = "_window_hashes"
ISSUES = "_issues"
DUPLICATE_CLAIMS = "_duplicate_claims"
INTERNAL_COLUMNS = (ROW, PHOTO_ID, WINDOW_HASHES, ISSUES, DUPLICATE_CLAIMS)
TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
DEFAULT_CHUNK_ROWS = 128
PREFETCH_PHOTOS = 4  # photos decoded ahead of the model
LISTING_CACHE_SIZE = 512  # decoded listing photos kept; their embeddings are cached separately

PART_SCHEMA = pa.schema(
    [
        ("damage", pa.float64()),
        ("mismatch", pa.float64()),
        ("match_similarity", pa.float64()),
        ("quality_codes", pa.string()),
        ("model_version", pa.string()),
        ("error", pa.string()),
        (ROW, pa.int64()),
        (PHOTO_ID, pa.string()),
        (WINDOW_HASHES, pa.string()),
        (ISSUES, pa.string()),
        (DUPLICATE_CLAIMS, pa.string()),
    ]
)


CLAIM_SCHEMA = pa.schema(
    [
        ("claim_id", pa.string()),
        ("reason", pa.string()),
        ("photos", pa.int64()),
        ("support", pa.float64()),
        ("sufficiency", pa.string()),
        ("lane", pa.string()),
        ("priority", pa.int64()),
        ("reasons", pa.string()),
        ("deadline", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
    ]
)


class ManifestError(ValueError):
    """The manifest cannot be used: unknown format, unreadable, or a required column missing."""


# --- tables in and out -----------------------------------------------------------------------


def table_format(path: Path) -> str:
    try:
        return TABLE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ManifestError(
            f"{path.name}: unknown table format {path.suffix!r}; use .csv, .jsonl or .parquet"
        ) from None


def read_manifest(path: Path) -> pa.Table:
    """The manifest as an Arrow table; paths and ids are read as text whatever they look like."""
    kind = table_format(path)
    text_columns = ("claim_id", "photo", "listing_images", "reason", "status")
    try:
        if kind == "csv":
            table = pa_csv.read_csv(
                path,
                convert_options=pa_csv.ConvertOptions(
                    column_types=dict.fromkeys(text_columns, pa.string())
                ),
            )
        elif kind == "jsonl":
            table = pa_json.read_json(path)
        else:
            table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise ManifestError(f"{path.name} cannot be read as {kind}: {error}") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise ManifestError(f"{path.name} lacks the required column(s) {', '.join(missing)}")
    clashes = [name for name in (*SCORE_COLUMNS, *INTERNAL_COLUMNS) if name in table.column_names]
    if clashes:
        raise ManifestError(f"{path.name} already has output column(s) {', '.join(clashes)}")
    for column in text_columns:
        if column in table.column_names and table.schema.field(column).type != pa.string():
            index = table.column_names.index(column)
            table = table.set_column(index, column, table[column].cast(pa.string()))
    return table


def write_table(table: pa.Table, path: Path) -> None:
    """Write by extension (Parquet, CSV, JSONL), atomically: a reader never sees half a file."""
    kind = table_format(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    if kind == "parquet":
        pq.write_table(table, temporary)
    elif kind == "csv":
        pa_csv.write_csv(table, temporary)
    else:
        with temporary.open("w", encoding="utf-8") as stream:
            for record in table.to_pylist():
                stream.write(json.dumps(record, default=str) + "\n")
    os.replace(temporary, path)


def claims_path(out: Path) -> Path:
    """`scores.parquet` -> `scores.claims.parquet`."""
    return out.with_name(f"{out.stem}.claims{out.suffix}")


def parts_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.parts")


# --- scoring one row --------------------------------------------------------------------------


@dataclass(frozen=True)
class RowInput:
    row: int
    claim_id: str
    photo: str
    listing_images: tuple[str, ...]


@dataclass(frozen=True)
class RowScore:
    """One manifest row's results, as plain data (Ray ships it between processes)."""

    row: int
    claim_id: str
    fields: dict[str, Any]  # damage, mismatch, match_similarity, model_version, error
    issues: tuple[tuple[str, str], ...]  # (code, severity)
    photo_id: str | None
    window_hashes: tuple[int, ...]  # the photo's crop windows, whole frame first; () if unscored
    unusable_listing_images: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, item: RowInput, scored: ScoredFile, unusable: Sequence[tuple[str, str]] = ()
    ) -> RowScore:
        fields = scored.score_fields()
        fields.pop("issues")
        assessment = scored.assessment
        return cls(
            row=item.row,
            claim_id=item.claim_id,
            fields=fields,
            issues=tuple((issue.code, issue.severity) for issue in scored.issues),
            photo_id=None if assessment is None else assessment.photo_id,
            window_hashes=() if assessment is None else assessment.window_hashes,
            unusable_listing_images=tuple(unusable),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RowScore:
        record = json.loads(text)
        return cls(
            **record
            | {
                "issues": tuple(tuple(issue) for issue in record["issues"]),
                "window_hashes": tuple(record["window_hashes"]),
                "unusable_listing_images": tuple(
                    tuple(pair) for pair in record["unusable_listing_images"]
                ),
            }
        )

    def with_duplicate_finding(self, duplicate_claims: Sequence[str]) -> RowScore:
        """This score with the duplicate_across_claims finding, when other claims used the photo
        (the row was scored without the index, so the finding is not there yet)."""
        if not duplicate_claims:
            return self
        return replace(
            self,
            issues=(*self.issues, (DUPLICATE_ACROSS_CLAIMS.code, DUPLICATE_ACROSS_CLAIMS.severity)),
        )

    def part_record(self, duplicate_claims: Sequence[str]) -> dict[str, Any]:
        return {
            **self.fields,
            "quality_codes": ";".join(code for code, _ in self.issues),
            ROW: self.row,
            PHOTO_ID: self.photo_id,
            WINDOW_HASHES: format_hashes(self.window_hashes) if self.window_hashes else None,
            ISSUES: json.dumps(self.issues),
            DUPLICATE_CLAIMS: ";".join(duplicate_claims),
        }


def resolve_under(root: Path, relative: str) -> Path:
    """`relative` inside `root`; a manifest may not point outside the images root."""
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise PermissionError(f"{relative} is outside the images root")
    return candidate


def split_list(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(";") if part.strip())


def row_inputs(table: pa.Table, rows: Iterable[int]) -> list[RowInput]:
    claim_ids = table["claim_id"].to_pylist()
    photos = table["photo"].to_pylist()
    listings = (
        table["listing_images"].to_pylist()
        if "listing_images" in table.column_names
        else [None] * table.num_rows
    )
    return [
        RowInput(row, str(claim_ids[row]), str(photos[row] or ""), split_list(listings[row]))
        for row in rows
    ]


def decode_row(images_root: Path, item: RowInput, model_version: str) -> Photo | ScoredFile:
    """The row's decoded photo, or the ScoredFile that says why there is none."""
    if not item.photo:
        return ScoredFile.failed(item.photo, "no photo path in the manifest", model_version)
    try:
        data = resolve_under(images_root, item.photo).read_bytes()
    except PermissionError as error:
        return ScoredFile.failed(item.photo, str(error), model_version)
    except OSError as error:
        return ScoredFile.failed(
            item.photo, f"unreadable: {error.strerror or error}", model_version
        )
    try:
        return open_photo(data)
    except PhotoRejected as error:
        return ScoredFile.rejected(item.photo, error, model_version)


class ListingPhotos:
    """Decoded listing images by path, shared by the rows that name them (bounded LRU)."""

    def __init__(self, images_root: Path, max_size: int = LISTING_CACHE_SIZE) -> None:
        self.images_root = images_root
        self.max_size = max_size
        self._photos: OrderedDict[str, Photo | str] = OrderedDict()

    def get(self, relative_paths: Sequence[str]) -> tuple[list[Photo], list[tuple[str, str]]]:
        """The usable listing photos among these paths, and (path, problem) for the others."""
        photos, unusable = [], []
        for relative in relative_paths:
            if relative not in self._photos:
                self._photos[relative] = self._decode(relative)
                while len(self._photos) > self.max_size:
                    self._photos.popitem(last=False)
            self._photos.move_to_end(relative)
            photo = self._photos[relative]
            if isinstance(photo, Photo):
                photos.append(photo)
            else:
                unusable.append((relative, photo))
        return photos, unusable

    def _decode(self, relative: str) -> Photo | str:
        try:
            return open_photo(resolve_under(self.images_root, relative).read_bytes())
        except (OSError, PhotoRejected) as error:
            return str(error)


class RowScorer:
    """Decode-and-score for manifest rows: the code both engines run."""

    def __init__(self, engine: ScoringEngine, images_root: Path) -> None:
        self.assessor = Assessor(engine)
        self.images_root = images_root
        self.listing_photos = ListingPhotos(images_root)

    def decode(self, item: RowInput) -> Photo | ScoredFile:
        return decode_row(self.images_root, item, self.assessor.model_version)

    def score(self, item: RowInput, decoded: Photo | ScoredFile) -> RowScore:
        """Score a decoded photo. Cross-claim duplicates are left to the run, which sees every
        row in manifest order (a Ray actor sees only its own batches)."""
        if isinstance(decoded, ScoredFile):
            return RowScore.of(item, decoded)
        listing_photos, unusable = self.listing_photos.get(item.listing_images)
        assessment = self.assessor.assess(decoded, listing_photos=listing_photos)
        return RowScore.of(item, ScoredFile.of(item.photo, assessment), unusable)


def prefetched(
    function: Callable[[RowInput], Photo | ScoredFile], items: Iterable[RowInput], depth: int
) -> Iterator[tuple[RowInput, Photo | ScoredFile]]:
    """`(item, function(item))` in order, computed up to `depth` items ahead in a thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-decode") as pool:
        iterator = iter(items)
        pending = deque((item, pool.submit(function, item)) for item in islice(iterator, depth))
        while pending:
            item, future = pending.popleft()
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(function, following)))
            yield item, future.result()


# --- the run ----------------------------------------------------------------------------------


@dataclass
class DuplicateTracker:
    """Cross-claim duplicate detection in manifest order, with the API's index and look-up.

    The rows are scored without the index (a Ray actor sees only its own batches), so the
    look-up `inspect_photo` makes during an API upload is made here, on the driver, instead.
    """

    index: DuplicateIndex = field(default_factory=DuplicateIndex)
    # Each claim's own refs, left out of its look-ups as the API leaves out a claim's photos.
    refs_by_claim: dict[str, set[str]] = field(default_factory=dict)

    def duplicate_claims(
        self, claim_id: str, window_hashes: Sequence[int], quality_codes: Sequence[str]
    ) -> list[str]:
        """Other claims whose photos this one repeats (same, near-same or cropped copies)."""
        if not reuse_detectable(quality_codes):
            return []
        matches = find_duplicates(
            window_hashes[0], self.index, exclude_refs=self.refs_by_claim.get(claim_id, set())
        )
        return sorted({claim_of_ref(match.ref) for match in matches})

    def add(self, claim_id: str, photo_id: str, window_hashes: Sequence[int]) -> None:
        ref = evidence_ref(claim_id, photo_id)
        self.index.add_photo(window_hashes, ref)
        self.refs_by_claim.setdefault(claim_id, set()).add(ref)


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    scored_now: int
    resumed: int
    errors: int
    claims: int
    out: Path
    claims_out: Path
    unusable_listing_images: dict[str, str]


class BatchJob:
    """One `triage batch` run. Call `run()`; `on_progress(n)` hears each time n rows finish."""

    def __init__(
        self,
        manifest: Path,
        *,
        images_root: Path,
        out: Path,
        engine: ScoringEngine,
        policy: PolicyConfig,
        resume: bool = False,
        engine_kind: Engine = "local",
        ray_actors: int = 2,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        now: datetime | None = None,
        on_progress: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self.table = read_manifest(manifest)
        table_format(out)  # refuse an unknown output format before any work
        if not images_root.is_dir():
            raise ManifestError(f"the images root {images_root} is not a folder")
        self.images_root = images_root.resolve()
        self.out = out
        self.engine = engine
        self.policy = policy.for_card(engine.card.thresholds)
        self.resume = resume
        self.engine_kind = engine_kind
        self.ray_actors = ray_actors
        self.chunk_rows = chunk_rows
        self.now = now or datetime.now(UTC)
        self.on_progress = on_progress
        self.parts = parts_dir(out)
        self.duplicates = DuplicateTracker()
        self.unusable_listing_images: dict[str, str] = {}

    def run(self) -> BatchSummary:
        done = self._read_parts() if self.resume else None
        if not self.resume:
            self._clear_parts()
        self.parts.mkdir(parents=True, exist_ok=True)
        finished = set() if done is None else set(done[ROW].to_pylist())
        pending = [row for row in range(self.table.num_rows) if row not in finished]
        if done is not None:
            self._replay_duplicates(done)
            self.on_progress(len(finished))
        if pending:
            if self.engine_kind == "ray":
                self._write_parts(self._score_with_ray(pending))
            else:
                self._write_parts(self._score_locally(pending))
        results = self._read_parts()
        output = self._assemble(results)
        claims = self.claim_table(results)
        write_table(output, self.out)
        write_table(claims, claims_path(self.out))
        return BatchSummary(
            rows=self.table.num_rows,
            scored_now=len(pending),
            resumed=len(finished),
            errors=sum(value is not None for value in output["error"].to_pylist()),
            claims=claims.num_rows,
            out=self.out,
            claims_out=claims_path(self.out),
            unusable_listing_images=dict(self.unusable_listing_images),
        )

    # scoring

    def _score_locally(self, rows: Sequence[int]) -> Iterator[RowScore]:
        scorer = RowScorer(self.engine, self.images_root)
        items = row_inputs(self.table, rows)
        # Decoding the next photos overlaps the model run of the current one.
        for item, decoded in prefetched(scorer.decode, items, PREFETCH_PHOTOS):
            yield scorer.score(item, decoded)

    def _score_with_ray(self, rows: Sequence[int]) -> Iterator[RowScore]:
        import ray

        # Joins the cluster named by RAY_ADDRESS if there is one, else starts a local Ray and
        # stops it again at the end (a cluster someone else started is left running).
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True  # the duplicate pass needs it
            context.enable_progress_bars = False  # the CLI draws its own
            items = [
                {
                    "row": item.row,
                    "claim_id": item.claim_id,
                    "photo": item.photo,
                    "listing_images": ";".join(item.listing_images),
                }
                for item in row_inputs(self.table, rows)
            ]
            scored = ray.data.from_items(items).map_batches(
                RayRowScorer,
                fn_constructor_kwargs={
                    "model_dir": str(self.engine.model_dir),
                    "images_root": str(self.images_root),
                },
                batch_size=16,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=self.ray_actors),
            )
            for record in scored.iter_rows():
                yield RowScore.from_json(record["score"])
        finally:
            if started_here:
                ray.shutdown()

    # parts

    def _write_parts(self, scores: Iterator[RowScore]) -> None:
        chunk: list[dict[str, Any]] = []
        for score in scores:
            duplicate_claims: list[str] = []
            if score.photo_id is not None and score.window_hashes:
                duplicate_claims = self.duplicates.duplicate_claims(
                    score.claim_id, score.window_hashes, [code for code, _ in score.issues]
                )
                self.duplicates.add(score.claim_id, score.photo_id, score.window_hashes)
            self.unusable_listing_images.update(score.unusable_listing_images)
            score = score.with_duplicate_finding(duplicate_claims)
            chunk.append(score.part_record(duplicate_claims))
            if len(chunk) >= self.chunk_rows:
                self._flush(chunk)
                chunk = []
        if chunk:
            self._flush(chunk)

    def _flush(self, records: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(records, schema=PART_SCHEMA)
        name = f"part-{records[0][ROW]:09d}-{uuid.uuid4().hex[:8]}.parquet"
        write_table(table, self.parts / name)
        self.on_progress(len(records))

    def _clear_parts(self) -> None:
        if self.parts.is_dir():
            for stale in self.parts.glob("part-*.parquet"):
                stale.unlink()

    def _read_parts(self) -> pa.Table:
        files = sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []
        tables = [pq.read_table(file, schema=PART_SCHEMA) for file in files]
        return pa.concat_tables(tables) if tables else PART_SCHEMA.empty_table()

    def _replay_duplicates(self, done: pa.Table) -> None:
        claim_ids = self.table["claim_id"].to_pylist()
        for record in done.sort_by(ROW).select([ROW, PHOTO_ID, WINDOW_HASHES]).to_pylist():
            if record[WINDOW_HASHES] is not None and record[ROW] < len(claim_ids):
                self.duplicates.add(
                    str(claim_ids[record[ROW]]),
                    record[PHOTO_ID],
                    parse_hashes(record[WINDOW_HASHES]),
                )

    # assembly

    def _assemble(self, results: pa.Table) -> pa.Table:
        results = results.sort_by(ROW)
        if results[ROW].to_pylist() != list(range(self.table.num_rows)):
            raise ManifestError(
                f"the results in {self.parts} do not match the manifest (was it changed since "
                "the interrupted run?); run again without --resume"
            )
        output = self.table
        for name in SCORE_COLUMNS:
            output = output.append_column(name, results[name])
        return output

    def claim_table(self, results: pa.Table) -> pa.Table:
        """One row per claim, in order of first appearance, with the triage policy's verdict."""
        results = results.sort_by(ROW)
        rows_by_claim: dict[str, list[int]] = {}
        for row, claim_id in enumerate(self.table["claim_id"].to_pylist()):
            rows_by_claim.setdefault(str(claim_id), []).append(row)
        manifest = {name: self.table[name].to_pylist() for name in self.table.column_names}
        scores = {name: results[name].to_pylist() for name in results.column_names}
        records = []
        for claim_id, rows in rows_by_claim.items():
            photos = tuple(
                PhotoFacts(
                    index=number,
                    damage=scores["damage"][row],
                    mismatch=scores["mismatch"][row],
                    issues=tuple(
                        (code, severity) for code, severity in json.loads(scores[ISSUES][row])
                    ),
                    duplicate_claims=split_list(scores[DUPLICATE_CLAIMS][row]),
                )
                for number, row in enumerate(rows, start=1)
            )
            first = {name: values[rows[0]] for name, values in manifest.items()}
            records.append(
                {"claim_id": claim_id, "reason": first.get("reason"), "photos": len(rows)}
                | self._triage(first, photos)
            )
        return pa.Table.from_pylist(records, schema=CLAIM_SCHEMA)

    def _triage(self, first: dict[str, Any], photos: tuple[PhotoFacts, ...]) -> dict[str, Any]:
        """The claim's triage from its first manifest row's claim columns and all its photos."""
        try:
            facts = ClaimFacts(
                reason=first.get("reason") or "",
                opened_at=parse_time(first.get("opened_at"), self.now),
                status=str(first.get("status") or "open"),
                escalated=parse_flag(first.get("escalated")),
                photos=photos,
            )
            triage = triage_claim(facts, config=self.policy, now=self.now)
        except ValueError as error:
            return {"error": str(error)}
        return {
            "support": triage.support,
            "sufficiency": triage.sufficiency,
            "lane": triage.lane,
            "priority": triage.priority,
            "reasons": "; ".join(triage.reasons),
            "deadline": triage.deadline,
            "error": None,
        }


class RayRowScorer:
    """A Ray Data actor: loads the engine once, then decodes and scores batches of rows."""

    def __init__(self, model_dir: str, images_root: str) -> None:
        self.scorer = RowScorer(ScoringEngine.load(Path(model_dir)), Path(images_root))

    def __call__(self, batch: pa.Table) -> pa.Table:
        scores = []
        for record in batch.to_pylist():
            item = RowInput(
                record["row"],
                record["claim_id"],
                record["photo"],
                split_list(record["listing_images"]),
            )
            scores.append(self.scorer.score(item, self.scorer.decode(item)).to_json())
        return pa.table({"score": pa.array(scores, pa.string())})


def parse_time(value: object, default: datetime) -> datetime:
    """A manifest timestamp (ISO 8601 text or a timestamp column) as an aware datetime."""
    if value is None or value == "":
        return default
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            raise ValueError(f"opened_at {value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return bool(value)
