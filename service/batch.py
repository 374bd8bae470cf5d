"""The batch job behind `triage batch`: score thousands of historical claim photos, resumably.

Manifest (CSV, JSONL or Parquet, by extension): one row per photo with `claim_id`, `photo` (a
path under the images root), optional `listing_images` (paths separated by ';', or a list of
paths in JSONL and Parquet; paths are read without surrounding spaces), `reason`, `opened_at`,
`status`, `escalated`, and any other columns, which are passed through unchanged (a CSV is read
as text throughout, so an `order_ref` of "000038" stays "000038"). A known column of a type the
job cannot read is a ManifestError.

Output (Parquet by default, also when OUT has no extension; CSV or JSONL by extension): the input
columns plus `damage`, `mismatch`, `match_similarity`, `quality_codes` (';'-separated, like
`listing_images`), `quality_blockers` (those of them that are blockers), `model_version`,
`error` (the photo itself could not be read or scored) and `listing_errors` (listing images of
the row that could not be read, "path: problem; ..."), one row per manifest row in manifest
order; a bad photo or listing image never stops the run. CSV
writes nested pass-through values as JSON text, JSONL writes times as ISO 8601, both write
binary values as their UTF-8 text, or as hex where they are not text, and JSON (JSONL, and
nested values in CSV) writes NaN and infinities as null. Beside it,
`<out>.claims.<ext>` (`<out>.claims` when OUT has no extension), in the same format: one row per
claim with the triage policy's support, sufficiency, lane, priority and reasons. A claim's photos
are counted by content, as in the API: the same photo listed twice is one photo ("photo N" in a
reason is still the claim's Nth manifest row).

Resuming: results are written as they are made, a chunk at a time, into parts under
`<out>.parts/` (each part written to a temporary name and renamed, so a killed run leaves only
whole parts). Each saved result carries the fingerprint of what it was scored from (the photo
path and the listing image paths, and each of those files' size and modification time) and the
model version. `--resume` reuses a saved result for every manifest row with the same fingerprint,
scored by the same model, wherever the row is now, and scores the rest: re-sorting the manifest
costs nothing, fixing a photo path rescores just that row, a photo or listing image replaced
under the same path rescores the rows that use it, removed rows are ignored and added rows are
scored. Duplicates across claims and the claim file depend on the whole manifest and its order,
so they are never saved: they are worked out from all the rows when the output is assembled, and
a resumed run writes what a fresh run of the same manifest would. (Rescoring the changed rows
rather than refusing the resume keeps an analyst's hours of scoring when a manifest is
corrected.) Rows that failed are tried again (a missing file may have been added since).

The files are stamped by one stat each, on the driver (which must see the images root, as the
workers must), before any is read, each distinct path once: about 50 us a file here, 5 s for
100,000 photos, against some 20 ms to score one; reading every file to hash it would double the
job's I/O. A file changed during the run is scored again by the next resume. What size and time
cannot see: other bytes of the same size written with the old modification time put back (`touch
-r`, some archive tools), or within one tick of a coarse clock. A copy of the images root made
with the times kept (`cp -p`, `rsync -a`) resumes; one made without them is scored afresh.

Duplicate detection across claims runs in manifest order with the API's duplicate index and
look-up (`service.checks.find_duplicates`, each photo stored under its crop windows).

Engines: `local` decodes the next photos in a background thread while the model scores the
current one (both cores busy, one onnxruntime session); `ray` (the optional `ray` extra) runs the
same decode-and-score code in Ray Data `map_batches` actors and leaves the order-dependent
duplicate pass and the writing to the driver.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, time
from functools import cached_property
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
from service.policy import (
    NO_LISTING_IMAGES_REASON,
    ClaimFacts,
    PhotoFacts,
    PolicyConfig,
    triage_claim,
)

Engine = Literal["local", "ray"]
REQUIRED_COLUMNS = ("claim_id", "photo")
# Known columns read as text whatever type the manifest gives them (ids may be numbers).
TEXT_COLUMNS = ("claim_id", "photo", "reason", "status")
LISTING_IMAGES = "listing_images"
# The model's results for a row, as saved in the parts and written to the output.
MODEL_FIELDS = ("damage", "mismatch", "match_similarity", "model_version", "error")
OUTPUT_SCHEMA = pa.schema(
    [
        ("damage", pa.float64()),
        ("mismatch", pa.float64()),
        ("match_similarity", pa.float64()),
        ("quality_codes", pa.string()),
        # The codes among quality_codes that are blockers: the photo is left out of the claim's
        # support for them (a code such as overexposed is a blocker on one photo, a warning on
        # another).
        ("quality_blockers", pa.string()),
        ("model_version", pa.string()),
        ("error", pa.string()),
        ("listing_errors", pa.string()),
    ]
)
SCORE_COLUMNS = tuple(OUTPUT_SCHEMA.names)
# Kept in the parts for resuming, never in the output.
FINGERPRINT = "_fingerprint"
PHOTO_ID = "_photo_id"
WINDOW_HASHES = "_window_hashes"
ISSUES = "_issues"  # the photo's own findings, without duplicates across claims
LISTING_PROBLEMS = "_listing_problems"
TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
DEFAULT_CHUNK_ROWS = 128
PREFETCH_PHOTOS = 4  # photos decoded ahead of the model
LISTING_CACHE_SIZE = 512  # decoded listing photos kept; their embeddings are cached separately

PART_SCHEMA = pa.schema(
    [
        (FINGERPRINT, pa.string()),
        *(OUTPUT_SCHEMA.field(name) for name in MODEL_FIELDS),
        (PHOTO_ID, pa.string()),
        (WINDOW_HASHES, pa.string()),
        (ISSUES, pa.string()),
        (LISTING_PROBLEMS, pa.string()),
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
    """The job cannot start: the manifest is unusable (unknown format, unreadable, a required
    column missing or a known one of the wrong type), or so is the output path or its parts."""


# --- tables in and out -----------------------------------------------------------------------


def table_format(path: Path) -> str:
    try:
        return TABLE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ManifestError(
            f"{path.name}: unknown table format {path.suffix!r}; use .csv, .jsonl or .parquet"
        ) from None


def output_format(path: Path) -> str:
    """An output's format by extension; no extension is Parquet, the contract's default."""
    return "parquet" if not path.suffix else table_format(path)


def _is_list(column_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(column_type)
        or pa.types.is_large_list(column_type)
        or pa.types.is_fixed_size_list(column_type)
    )


def _is_text(column_type: pa.DataType) -> bool:
    return pa.types.is_string(column_type) or pa.types.is_large_string(column_type)


# Known columns that are parsed where they are used (parse_time, parse_flag): the types they can
# be parsed from, and how to say so.
PARSED_COLUMNS: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "opened_at": (
        lambda kind: (
            _is_text(kind)
            or pa.types.is_timestamp(kind)
            or pa.types.is_date(kind)
            or pa.types.is_null(kind)
        ),
        "ISO 8601 text or a timestamp",
    ),
    "escalated": (
        lambda kind: (
            _is_text(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_integer(kind)
            or pa.types.is_null(kind)
        ),
        "a boolean, a number or text",
    ),
}


def read_csv_as_text(path: Path) -> pa.Table:
    """Every column as the text it is written as: pass-through columns must come out unchanged
    ("000038" is not 38), and the known ones are parsed where they are used."""
    with pa_csv.open_csv(path) as reader:  # only to learn the column names
        names = reader.schema.names
    return pa_csv.read_csv(
        path, convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    )


def read_manifest(path: Path) -> pa.Table:
    """The manifest as an Arrow table; ids and paths are text whatever they look like, and
    `listing_images` is text or a list of texts."""
    kind = table_format(path)
    try:
        if kind == "csv":
            table = read_csv_as_text(path)
        elif kind == "jsonl":
            table = pa_json.read_json(path)
        else:
            table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise ManifestError(f"{path.name} cannot be read as {kind}: {error}") from None
    repeated = [name for name, count in Counter(table.column_names).items() if count > 1]
    if repeated:
        # Which of them a row means cannot be guessed, and the output could not hold both.
        raise ManifestError(f"{path.name} names a column more than once: {', '.join(repeated)}")
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise ManifestError(f"{path.name} lacks the required column(s) {', '.join(missing)}")
    clashes = [name for name in SCORE_COLUMNS if name in table.column_names]
    if clashes:
        raise ManifestError(f"{path.name} already has output column(s) {', '.join(clashes)}")
    return known_columns_typed(table, path.name)


def known_columns_typed(table: pa.Table, source: str) -> pa.Table:
    """`table` with its known columns in the types the job reads them as; a ManifestError that
    names the column when one cannot be read so."""
    for index, column_field in enumerate(table.schema):
        name, column_type = column_field.name, column_field.type
        if name in PARSED_COLUMNS:
            readable, expected = PARSED_COLUMNS[name]
            if not readable(column_type):
                raise ManifestError(
                    f"{source}: column {name} is {column_type}; expected {expected}"
                )
            continue
        if name in TEXT_COLUMNS:
            target, expected = pa.string(), "text"
        elif name == LISTING_IMAGES:
            target, expected = (
                (pa.list_(pa.string()), "a list of paths")
                if _is_list(column_type)
                else (pa.string(), "paths separated by ';' or a list of paths")
            )
        else:
            continue
        try:
            table = table.set_column(index, name, table[name].cast(target))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            raise ManifestError(
                f"{source}: column {name} is {column_type}; expected {expected}"
            ) from None
    return table


def json_value(value: object) -> str:
    """What json.dumps cannot write itself: times as ISO 8601, bytes as binary_text, anything
    else as its text."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return binary_text(value)
    return str(value)


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON has no word for them, and what Python
    writes for them (NaN, Infinity) is refused by strict parsers (JSON.parse, Go, BigQuery)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def binary_text(value: bytes) -> str:
    """Bytes as the text they hold (some Parquet writers leave text columns unannotated, and
    they read as binary), or as hex where they hold none (a hash, say)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.hex()


def _is_binary(column_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(column_type)
        or pa.types.is_large_binary(column_type)
        or pa.types.is_fixed_size_binary(column_type)
    )


def as_csv_text(table: pa.Table) -> pa.Table:
    """What CSV cannot hold as text: nested columns (structs, lists, maps) as JSON text, binary
    ones as binary_text (the CSV writer refuses bytes that are not UTF-8)."""
    for index, column_field in enumerate(table.schema):
        if pa.types.is_nested(column_field.type):
            texts = [
                None if value is None else json.dumps(json_safe(value), default=json_value)
                for value in table.column(index).to_pylist()
            ]
        elif _is_binary(column_field.type):
            texts = [
                None if value is None else binary_text(value)
                for value in table.column(index).to_pylist()
            ]
        else:
            continue
        table = table.set_column(index, column_field.name, pa.array(texts, pa.string()))
    return table


def write_table(table: pa.Table, path: Path, kind: str | None = None) -> None:
    """Write as `kind` (default: by extension, see output_format), atomically: a reader never
    sees half a file."""
    kind = kind or output_format(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if kind == "parquet":
            pq.write_table(table, temporary)
        elif kind == "csv":
            pa_csv.write_csv(as_csv_text(table), temporary)
        else:
            with temporary.open("w", encoding="utf-8") as stream:
                for record in table.to_pylist():
                    stream.write(json.dumps(json_safe(record), default=json_value) + "\n")
        os.replace(temporary, path)
    except BaseException:  # a full disk, a value the format cannot hold, Ctrl-C
        temporary.unlink(missing_ok=True)
        raise


def claims_path(out: Path) -> Path:
    """`scores.parquet` -> `scores.claims.parquet`; `scores` -> `scores.claims`."""
    return out.with_name(f"{out.stem}.claims{out.suffix}")


def parts_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.parts")


# --- scoring one row --------------------------------------------------------------------------


# A file as the run found it, (size, mtime_ns): one stat, no read. None: nothing to stat (no
# path, no such file, outside the images root), and such a row fails and is tried again anyway.
FileStamp = tuple[int, int] | None


@dataclass(frozen=True)
class RowInput:
    """What a manifest row is scored from: nothing else of the row changes its scores."""

    photo: str
    listing_images: tuple[str, ...]
    # The photo's stamp, then each listing image's, taken on the driver before any is read: a
    # file replaced under the same path, before or during the run, gives another fingerprint.
    stamps: tuple[FileStamp, ...] = ()

    @cached_property
    def fingerprint(self) -> str:
        """The key its results are saved under and found again by on resume."""
        text = json.dumps([self.photo, list(self.listing_images), list(self.stamps)])
        return hashlib.sha256(text.encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """As plain data for a Ray worker. The driver's stamps travel with it, so the results
        come back under the fingerprints the driver looks them up by, whatever the worker sees."""
        return {
            "photo": self.photo,
            "listing_images": list(self.listing_images),
            "stamps": json.dumps(self.stamps),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RowInput:
        return cls(
            record["photo"],
            listing_paths(record["listing_images"]),
            tuple(
                None if stamp is None else (stamp[0], stamp[1])
                for stamp in json.loads(record["stamps"])
            ),
        )


@dataclass(frozen=True)
class RowScore:
    """The results for one RowInput, as plain data (Ray ships it between processes, the parts
    keep it). Duplicates across claims are not in it: they depend on the rest of the manifest."""

    fingerprint: str
    fields: dict[str, Any]  # MODEL_FIELDS
    issues: tuple[tuple[str, str], ...]  # (code, severity)
    photo_id: str | None
    window_hashes: tuple[int, ...]  # the photo's crop windows, whole frame first; () if unscored
    unusable_listing_images: tuple[tuple[str, str], ...] = ()  # (path, problem)

    @classmethod
    def of(
        cls, item: RowInput, scored: ScoredFile, unusable: Sequence[tuple[str, str]] = ()
    ) -> RowScore:
        fields = scored.score_fields()
        fields.pop("issues")
        assessment = scored.assessment
        return cls(
            fingerprint=item.fingerprint,
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

    def part_record(self) -> dict[str, Any]:
        return {
            **self.fields,
            FINGERPRINT: self.fingerprint,
            PHOTO_ID: self.photo_id,
            WINDOW_HASHES: format_hashes(self.window_hashes) if self.window_hashes else None,
            ISSUES: json.dumps(self.issues),
            LISTING_PROBLEMS: json.dumps(self.unusable_listing_images),
        }

    @classmethod
    def from_part_record(cls, record: dict[str, Any]) -> RowScore:
        return cls(
            fingerprint=record[FINGERPRINT],
            fields={name: record[name] for name in MODEL_FIELDS},
            issues=tuple((code, severity) for code, severity in json.loads(record[ISSUES])),
            photo_id=record[PHOTO_ID],
            window_hashes=parse_hashes(record[WINDOW_HASHES]) if record[WINDOW_HASHES] else (),
            unusable_listing_images=tuple(
                (path, problem) for path, problem in json.loads(record[LISTING_PROBLEMS])
            ),
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

    def output_record(self) -> dict[str, Any]:
        """The output's score columns (OUTPUT_SCHEMA)."""
        return {
            **self.fields,
            "quality_codes": ";".join(code for code, _ in self.issues),
            "quality_blockers": ";".join(
                code for code, severity in self.issues if severity == "blocker"
            ),
            "listing_errors": "; ".join(
                f"{path}: {problem}" for path, problem in self.unusable_listing_images
            )
            or None,
        }


def resolve_under(root: Path, relative: str) -> Path:
    """`relative` inside `root`; a manifest may not point outside the images root."""
    try:
        candidate = (root / relative).resolve()
    except ValueError:  # the OS refuses the path before looking for the file
        raise OSError(f"{relative!r} is not a usable path: it holds a NUL character") from None
    except RuntimeError:  # pathlib's word for ELOOP
        raise OSError(f"{relative} is a loop of symbolic links") from None
    if not candidate.is_relative_to(root):
        raise PermissionError(f"{relative} is outside the images root")
    return candidate


def read_failure(error: OSError) -> str:
    """Why a file under the images root could not be read, without its absolute path."""
    if error.strerror:
        return f"unreadable: {error.strerror}"
    return str(error)  # resolve_under's refusals, which name the manifest's path


def listing_paths(value: str | Sequence[str | None] | None) -> tuple[str, ...]:
    """A row's listing images, from paths separated by ';' or a list of paths."""
    paths = value.split(";") if isinstance(value, str) else (value or ())
    return tuple(path.strip() for path in paths if path and path.strip())


def file_stamp(images_root: Path, relative: str) -> FileStamp:
    """`relative`'s size and modification time, what tells a replaced file from the one scored
    before without reading it (the same test as make's and rsync's)."""
    if not relative:
        return None
    try:
        status = resolve_under(images_root, relative).stat()
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def row_inputs(table: pa.Table, images_root: Path) -> list[RowInput]:
    """Every row's inputs, its files stamped as they are now (each path once, however many rows
    name it: a listing image is usually shared by many)."""
    photos = table["photo"].to_pylist()
    listings = (
        table[LISTING_IMAGES].to_pylist()
        if LISTING_IMAGES in table.column_names
        else [None] * table.num_rows
    )
    stamps: dict[str, FileStamp] = {}

    def stamped(photo: str, listing_images: tuple[str, ...]) -> RowInput:
        for path in (photo, *listing_images):
            if path not in stamps:
                stamps[path] = file_stamp(images_root, path)
        return RowInput(
            photo, listing_images, tuple(stamps[path] for path in (photo, *listing_images))
        )

    return [
        stamped(str(photo or "").strip(), listing_paths(listing))
        for photo, listing in zip(photos, listings, strict=True)
    ]


def decode_row(images_root: Path, item: RowInput, model_version: str) -> Photo | ScoredFile:
    """The row's decoded photo, or the ScoredFile that says why there is none."""
    if not item.photo:
        return ScoredFile.failed(item.photo, "no photo path in the manifest", model_version)
    try:
        data = resolve_under(images_root, item.photo).read_bytes()
    except OSError as error:
        return ScoredFile.failed(item.photo, read_failure(error), model_version)
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
        """The photo, or the problem in the words a row's `error` would use."""
        try:
            return open_photo(resolve_under(self.images_root, relative).read_bytes())
        except OSError as error:
            return read_failure(error)
        except PhotoRejected as error:
            return f"{error.code}: {error.message}"


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
        own_refs = self.refs_by_claim.setdefault(claim_id, set())
        if ref not in own_refs:  # the API keeps a photo added to a claim twice once
            self.index.add_photo(window_hashes, ref)
            own_refs.add(ref)


@dataclass(frozen=True)
class ScoredRow:
    """A manifest row with its results, duplicates across claims included."""

    claim_id: str
    photo: str
    score: RowScore
    duplicate_claims: tuple[str, ...]

    @property
    def photo_identity(self) -> str:
        """Which photo this is: the same bytes are the same photo id, as in the API; a photo that
        could not be read is known only by its path."""
        return self.score.photo_id or f"path:{self.photo}"


def scored_rows(
    claim_ids: Sequence[str], inputs: Sequence[RowInput], scores: dict[str, RowScore]
) -> list[ScoredRow]:
    """Every manifest row's results, with the duplicates across claims found in manifest order."""
    duplicates = DuplicateTracker()
    rows = []
    for claim_id, item in zip(claim_ids, inputs, strict=True):
        score = scores[item.fingerprint]
        duplicate_claims: list[str] = []
        if score.photo_id is not None and score.window_hashes:
            duplicate_claims = duplicates.duplicate_claims(
                claim_id, score.window_hashes, [code for code, _ in score.issues]
            )
            if claim_id.strip():  # a row of no claim is no claim's evidence to be reused
                duplicates.add(claim_id, score.photo_id, score.window_hashes)
        rows.append(
            ScoredRow(
                claim_id,
                item.photo,
                score.with_duplicate_finding(duplicate_claims),
                tuple(duplicate_claims),
            )
        )
    return rows


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    scored_now: int
    resumed: int
    unused_saved: int  # saved results no manifest row has now (changed, removed, other model)
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
        self.out_format = output_format(out)  # refuse an unknown output format before any work
        if out.is_dir():
            raise ManifestError(f"the output {out} is a folder; name a file (scores.parquet)")
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

    def run(self) -> BatchSummary:
        inputs = row_inputs(self.table, self.images_root)
        saved_scores = self._read_parts() if self.resume else []
        if not self.resume:
            self._clear_parts()
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ManifestError(f"cannot keep the results beside {self.out}: {error}") from None
        # A row that failed is tried again: its file may have been put right since.
        saved = {
            score.fingerprint: score
            for score in saved_scores
            if score.fields["model_version"] == self.engine.model_version
            and score.fields["error"] is None
        }
        resumed = sum(item.fingerprint in saved for item in inputs)
        if resumed:
            self.on_progress(resumed)
        # Rows with the same inputs (the same photo listed twice) are scored once.
        pending: dict[str, RowInput] = {}
        rows_per_input: Counter[str] = Counter()
        for item in inputs:
            if item.fingerprint not in saved:
                pending.setdefault(item.fingerprint, item)
                rows_per_input[item.fingerprint] += 1
        scores = dict(saved)
        if pending:
            scored = (
                self._score_with_ray(list(pending.values()))
                if self.engine_kind == "ray"
                else self._score_locally(list(pending.values()))
            )
            scores |= self._write_parts(scored, rows_per_input)
        rows = scored_rows(
            [
                "" if claim_id is None else str(claim_id)
                for claim_id in self.table["claim_id"].to_pylist()
            ],
            inputs,
            scores,
        )
        output = self._assemble(rows)
        claims = self.claim_table(rows)
        write_table(output, self.out, self.out_format)
        write_table(claims, claims_path(self.out), self.out_format)
        wanted = {item.fingerprint for item in inputs}
        return BatchSummary(
            rows=self.table.num_rows,
            scored_now=self.table.num_rows - resumed,
            resumed=resumed,
            # Saved results no row has now, or from another model (failed rows are retried).
            unused_saved=sum(
                score.fingerprint not in wanted
                or score.fields["model_version"] != self.engine.model_version
                for score in saved_scores
            ),
            errors=sum(value is not None for value in output["error"].to_pylist()),
            claims=claims.num_rows,
            out=self.out,
            claims_out=claims_path(self.out),
            unusable_listing_images={
                path: problem for row in rows for path, problem in row.score.unusable_listing_images
            },
        )

    # scoring

    def _score_locally(self, items: Sequence[RowInput]) -> Iterator[RowScore]:
        scorer = RowScorer(self.engine, self.images_root)
        # Decoding the next photos overlaps the model run of the current one.
        for item, decoded in prefetched(scorer.decode, items, PREFETCH_PHOTOS):
            yield scorer.score(item, decoded)

    def _score_with_ray(self, items: Sequence[RowInput]) -> Iterator[RowScore]:
        import ray

        # Joins the cluster named by RAY_ADDRESS if there is one, else starts a local Ray and
        # stops it again at the end (a cluster someone else started is left running).
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the CLI draws its own
            records = [item.record() for item in items]
            scored = ray.data.from_items(records).map_batches(
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

    def _write_parts(
        self, scores: Iterator[RowScore], rows_per_input: Counter[str]
    ) -> dict[str, RowScore]:
        """Save the scores a chunk at a time as they come; the scores by fingerprint."""
        written: dict[str, RowScore] = {}
        chunk: list[RowScore] = []
        for score in scores:
            written[score.fingerprint] = score
            chunk.append(score)
            if len(chunk) >= self.chunk_rows:
                self._flush(chunk, rows_per_input)
                chunk = []
        if chunk:
            self._flush(chunk, rows_per_input)
        return written

    def _flush(self, scores: list[RowScore], rows_per_input: Counter[str]) -> None:
        table = pa.Table.from_pylist([score.part_record() for score in scores], schema=PART_SCHEMA)
        write_table(table, self.parts / f"part-{uuid.uuid4().hex}.parquet", "parquet")
        self.on_progress(sum(rows_per_input[score.fingerprint] for score in scores))

    def _clear_parts(self) -> None:
        if self.parts.is_dir():
            for stale in self.parts.glob("part-*.parquet"):
                stale.unlink()

    def _read_parts(self) -> list[RowScore]:
        files = sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []
        scores = []
        for file in files:
            try:
                table = pq.read_table(file)
            except (OSError, pa.ArrowException) as error:  # cut short by a copy, a full disk
                raise ManifestError(
                    f"{file} cannot be read ({error}); delete it to score its rows again, or "
                    "run without --resume"
                ) from None
            if FINGERPRINT not in table.column_names:
                raise ManifestError(
                    f"{file} was written by an older version of triage batch, whose results "
                    "cannot be matched to manifest rows safely; run again without --resume"
                )
            records = table.select(PART_SCHEMA.names).cast(PART_SCHEMA).to_pylist()
            scores.extend(RowScore.from_part_record(record) for record in records)
        return scores

    # assembly

    def _assemble(self, rows: Sequence[ScoredRow]) -> pa.Table:
        results = pa.Table.from_pylist(
            [row.score.output_record() for row in rows], schema=OUTPUT_SCHEMA
        )
        output = self.table
        for name in SCORE_COLUMNS:
            output = output.append_column(name, results[name])
        return output

    def claim_table(self, rows: Sequence[ScoredRow]) -> pa.Table:
        """One row per claim, in order of first appearance, with the triage policy's verdict."""
        rows_by_claim: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            rows_by_claim.setdefault(row.claim_id, []).append(index)
        manifest = {name: self.table[name].to_pylist() for name in self.table.column_names}
        records = []
        for claim_id, indexes in rows_by_claim.items():
            photos: list[PhotoFacts] = []
            seen: set[str] = set()
            # "photo N" stays the claim's Nth manifest row; a repeated photo is not counted again.
            for number, index in enumerate(indexes, start=1):
                row = rows[index]
                if row.photo_identity in seen:
                    continue
                seen.add(row.photo_identity)
                photos.append(
                    PhotoFacts(
                        index=number,
                        damage=row.score.fields["damage"],
                        mismatch=row.score.fields["mismatch"],
                        issues=row.score.issues,
                        duplicate_claims=row.duplicate_claims,
                    )
                )
            unreadable_listing = sorted(
                {path for index in indexes for path, _ in rows[index].score.unusable_listing_images}
            )
            first = {name: values[indexes[0]] for name, values in manifest.items()}
            record = {"claim_id": claim_id, "reason": first.get("reason"), "photos": len(photos)}
            if not claim_id.strip():
                # Rows that name no claim are scored, but they are no one claim to triage.
                records.append(record | {"error": "rows with no claim_id: not triaged"})
                continue
            records.append(record | self._triage(first, tuple(photos), unreadable_listing))
        return pa.Table.from_pylist(records, schema=CLAIM_SCHEMA)

    def _triage(
        self, first: dict[str, Any], photos: tuple[PhotoFacts, ...], unreadable_listing: list[str]
    ) -> dict[str, Any]:
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
        reasons = triage.reasons
        if unreadable_listing:
            # The policy only knows no photo was compared; here we know why.
            unreadable = f"listing images could not be read ({', '.join(unreadable_listing)})"
            reasons = tuple(
                unreadable if reason == NO_LISTING_IMAGES_REASON else reason for reason in reasons
            )
        return {
            "support": triage.support,
            "sufficiency": triage.sufficiency,
            "lane": triage.lane,
            "priority": triage.priority,
            "reasons": "; ".join(reasons),
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
            item = RowInput.from_record(record)
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
