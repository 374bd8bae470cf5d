"""Photo assessment: the model's damage and mismatch plus the quality and duplicate findings.

`Assessor.assess` is the one place a claim photo is scored; the API, `triage score` and the batch
job all call it. The model runs on the photo (damage, heatmap, embedding); the listing's images
are embedded once and cached by photo id (their content hash), so a listing with many claims is
embedded once per process; the best-matching listing image gives `match_similarity` and the
card's calibration turns it into `mismatch`. Quality and duplicate findings come from
`service.checks.inspect_photo`, which also names the stored photos a `duplicate_across_claims`
repeats; the model adds `listing_photo_reuse` when the embedding is as close to a listing image as
the card's `listing_reuse_similarity` says only the same picture gets, and the photo's hash backs
it (`service.checks.corroborates_listing_reuse`). Each photo's window hashes
(`service.duplicates.photo_windows`) are computed once here, for the look-up and for storing.

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from service.checks import (
    DUPLICATE_ACROSS_CLAIMS,
    LISTING_PHOTO_REUSE,
    PhotoFindings,
    corroborates_listing_reuse,
    inspect_photo,
    reuse_detectable,
)
from service.duplicates import DuplicateIndex, DuplicateMatch, format_hash, photo_windows
from service.engine import ModelCard, ModelOutput, cosine_similarities
from service.intake import DEFAULT_LIMITS, IntakeLimits, Photo, PhotoRejected, open_photo
from service.quality import QualityIssue, rejection_issue

DEFAULT_LISTING_CACHE_SIZE = 4096  # 256 floats each: about 4 MiB


class Inferencer(Protocol):
    """A ScoringEngine or a MicroBatcher in front of one."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def model_version(self) -> str: ...

    def infer(self, images: Sequence[Image.Image]) -> list[ModelOutput]: ...


@dataclass(frozen=True, eq=False)
class PhotoAssessment:
    """Everything known about one claim photo after scoring.

    `heatmap` is (7, 7) damage probabilities over the letterboxed model input (see
    `heatmap_png`); `embedding` and `window_hashes` (`photo_windows`, whole frame first) are kept
    so the API and the batch job can persist them and index the photo for duplicate look-ups.
    `duplicate_refs` are the index references this photo nearly repeats, nearest first (empty
    when no index was given): the `duplicate_across_claims` finding comes with them.
    """

    photo_id: str
    damage: float
    heatmap: np.ndarray
    mismatch: float | None
    match_similarity: float | None
    matched_listing_photo_id: str | None
    issues: tuple[QualityIssue, ...]
    model_version: str
    embedding: np.ndarray
    window_hashes: tuple[int, ...]
    duplicate_refs: tuple[str, ...] = ()

    @property
    def perceptual_hash(self) -> str:
        """The whole-frame hash, 16 hex digits, as stored and as the look-up uses it."""
        return format_hash(self.window_hashes[0])

    @property
    def quality_codes(self) -> tuple[str, ...]:
        return tuple(issue.code for issue in self.issues)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready scores and findings (the embedding is left out: it is not for people)."""
        return {
            "photo_id": self.photo_id,
            "damage": self.damage,
            "heatmap": self.heatmap.round(4).tolist(),
            "mismatch": self.mismatch,
            "match_similarity": self.match_similarity,
            "matched_listing_photo_id": self.matched_listing_photo_id,
            "issues": [issue.to_dict() for issue in self.issues],
            "model_version": self.model_version,
            "perceptual_hash": self.perceptual_hash,
        }


def with_duplicates(
    assessment: PhotoAssessment, matches: Sequence[DuplicateMatch]
) -> PhotoAssessment:
    """`assessment` with more near copies among its `duplicate_refs` (nearest first after its
    own) and the `duplicate_across_claims` finding: what a look-up outside `assess_many` found,
    such as another upload of the same photo still in progress. Unchanged when there is nothing
    new, or when its quality findings make reuse findings meaningless (`reuse_detectable`)."""
    new_refs = tuple(
        dict.fromkeys(m.ref for m in matches if m.ref not in assessment.duplicate_refs)
    )
    if not new_refs or not reuse_detectable(assessment.quality_codes):
        return assessment
    issues = assessment.issues
    if DUPLICATE_ACROSS_CLAIMS not in issues:
        issues = (*issues, DUPLICATE_ACROSS_CLAIMS)
    return replace(assessment, issues=issues, duplicate_refs=assessment.duplicate_refs + new_refs)


class EmbeddingCache:
    """A thread-safe LRU of listing-image embeddings keyed by photo id (a content hash)."""

    def __init__(self, max_size: int = DEFAULT_LISTING_CACHE_SIZE) -> None:
        self.max_size = max_size
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, photo_id: str) -> np.ndarray | None:
        with self._lock:
            embedding = self._entries.get(photo_id)
            if embedding is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(photo_id)
            return embedding

    def put(self, photo_id: str, embedding: np.ndarray) -> None:
        with self._lock:
            self._entries[photo_id] = embedding
            self._entries.move_to_end(photo_id)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Assessor:
    """Scores claim photos with one engine (or micro-batcher) and one listing-embedding cache."""

    def __init__(
        self, engine: Inferencer, *, listing_cache_size: int = DEFAULT_LISTING_CACHE_SIZE
    ) -> None:
        self.engine = engine
        self.listing_embeddings = EmbeddingCache(listing_cache_size)

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    def listing_embedding_matrix(self, listing_photos: Sequence[Photo]) -> np.ndarray:
        """(len(listing_photos), D) embeddings; uncached images are embedded in one run."""
        cached = {
            photo.photo_id: self.listing_embeddings.get(photo.photo_id) for photo in listing_photos
        }
        missing = {
            photo.photo_id: photo for photo in listing_photos if cached[photo.photo_id] is None
        }
        if missing:
            # The picture, as for evidence: a padded image embeds as its padded copy does.
            outputs = self.engine.infer([photo.picture for photo in missing.values()])
            for photo_id, output in zip(missing, outputs, strict=True):
                self.listing_embeddings.put(photo_id, output.embedding)
                cached[photo_id] = output.embedding
        if not listing_photos:
            return np.zeros((0, self.engine.card.embedding_dim), dtype=np.float32)
        return np.stack([cached[photo.photo_id] for photo in listing_photos])

    def assess(
        self,
        photo: Photo,
        *,
        listing_photos: Sequence[Photo] = (),
        duplicate_index: DuplicateIndex | None = None,
        exclude_refs: Collection[str] = (),
        duplicate_lock: AbstractContextManager[Any] | None = None,
    ) -> PhotoAssessment:
        """Score one decoded photo against its listing's images (see `assess_many`)."""
        (assessment,) = self.assess_many(
            [photo],
            listing_photos=listing_photos,
            duplicate_index=duplicate_index,
            exclude_refs=exclude_refs,
            duplicate_lock=duplicate_lock,
        )
        return assessment

    def assess_many(
        self,
        photos: Sequence[Photo],
        *,
        listing_photos: Sequence[Photo] = (),
        duplicate_index: DuplicateIndex | None = None,
        exclude_refs: Collection[str] = (),
        duplicate_lock: AbstractContextManager[Any] | None = None,
    ) -> list[PhotoAssessment]:
        """Score several photos of one claim in one model run.

        `duplicate_index` and `exclude_refs` go to `inspect_photo` for `duplicate_across_claims`
        and `duplicate_refs` (exclude the claim's own references so a re-upload to the same
        claim is not flagged). `duplicate_lock`, when given, is held only while the index is
        read, never during the model run, so concurrent requests still meet in the
        micro-batcher.
        """
        if not photos:
            return []
        # The picture without padding bands: a phone screenshot's frame is not the item.
        outputs = self.engine.infer([photo.picture for photo in photos])
        listing_matrix = self.listing_embedding_matrix(listing_photos)
        assessments = []
        for photo, output in zip(photos, outputs, strict=True):
            window_hashes = photo_windows(photo.image)
            findings = inspect_photo(
                photo,
                listing_photos=listing_photos,
                duplicate_index=duplicate_index,
                exclude_refs=exclude_refs,
                duplicate_lock=duplicate_lock,
                photo_hash=window_hashes[0],
            )
            assessments.append(
                self._assessment(
                    photo, output, findings, window_hashes, listing_photos, listing_matrix
                )
            )
        return assessments

    def _assessment(
        self,
        photo: Photo,
        output: ModelOutput,
        findings: PhotoFindings,
        window_hashes: tuple[int, ...],
        listing_photos: Sequence[Photo],
        listing_matrix: np.ndarray,
    ) -> PhotoAssessment:
        issues = findings.issues
        mismatch = match_similarity = matched_listing_photo_id = None
        if len(listing_matrix):
            similarities = cosine_similarities(output.embedding, listing_matrix)
            best = int(np.argmax(similarities))
            match_similarity = float(similarities[best])
            matched_listing_photo_id = listing_photos[best].photo_id
            mismatch = self.engine.card.mismatch_probability(match_similarity)
            reuse_similarity = self.engine.card.thresholds.listing_reuse_similarity
            if (
                match_similarity >= reuse_similarity
                and LISTING_PHOTO_REUSE not in issues
                and reuse_detectable([issue.code for issue in issues])
                and corroborates_listing_reuse(window_hashes[0], listing_photos[best])
            ):
                issues = (*issues, LISTING_PHOTO_REUSE)
        return PhotoAssessment(
            photo_id=photo.photo_id,
            damage=output.damage,
            heatmap=output.heatmap,
            mismatch=mismatch,
            match_similarity=match_similarity,
            matched_listing_photo_id=matched_listing_photo_id,
            issues=issues,
            model_version=self.engine.model_version,
            embedding=output.embedding,
            window_hashes=window_hashes,
            duplicate_refs=tuple(match.ref for match in findings.duplicates),
        )


@dataclass(frozen=True, eq=False)
class ScoredFile:
    """The outcome for one photo file: its assessment, or why it could not be assessed."""

    source: str
    assessment: PhotoAssessment | None
    issues: tuple[QualityIssue, ...]
    model_version: str
    error: str | None

    @classmethod
    def of(cls, source: str, assessment: PhotoAssessment) -> ScoredFile:
        return cls(source, assessment, assessment.issues, assessment.model_version, None)

    @classmethod
    def rejected(cls, source: str, error: PhotoRejected, model_version: str) -> ScoredFile:
        """A photo intake refused: the refusal as its one (blocker) issue, and as the error."""
        message = f"{error.code}: {error.message}"
        return cls(source, None, (rejection_issue(error),), model_version, message)

    @classmethod
    def failed(cls, source: str, message: str, model_version: str) -> ScoredFile:
        """A photo that could not even be read (missing file, path outside the root...)."""
        return cls(source, None, (), model_version, message)

    def score_fields(self) -> dict[str, Any]:
        """The columns `triage score --json` and `triage batch` report for a photo."""
        assessment = self.assessment
        return {
            "damage": None if assessment is None else assessment.damage,
            "mismatch": None if assessment is None else assessment.mismatch,
            "match_similarity": None if assessment is None else assessment.match_similarity,
            "issues": [issue.to_dict() for issue in self.issues],
            "model_version": self.model_version,
            "error": self.error,
        }


def assess_bytes(
    assessor: Assessor,
    data: bytes,
    *,
    source: str,
    limits: IntakeLimits = DEFAULT_LIMITS,
    listing_photos: Sequence[Photo] = (),
    duplicate_index: DuplicateIndex | None = None,
    exclude_refs: Collection[str] = (),
) -> ScoredFile:
    """Decode and assess one photo file; a photo intake refuses becomes an error, not a raise."""
    try:
        photo = open_photo(data, limits=limits)
    except PhotoRejected as error:
        return ScoredFile.rejected(source, error, assessor.model_version)
    assessment = assessor.assess(
        photo,
        listing_photos=listing_photos,
        duplicate_index=duplicate_index,
        exclude_refs=exclude_refs,
    )
    return ScoredFile.of(source, assessment)


def heatmap_overlay(image: Image.Image, heatmap: np.ndarray, input_size: int) -> Image.Image:
    """`image` with the damage heatmap laid over it in red, opacity following the probability.

    The heatmap covers the letterboxed model input; the grey bands are cut away so each cell
    lands on the part of the photo the model saw there.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = input_size / max(width, height)
    content = (max(1, round(width * scale)), max(1, round(height * scale)))
    left = (input_size - content[0]) // 2
    top = (input_size - content[1]) // 2
    grid = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    full = grid.resize((input_size, input_size), Image.Resampling.BILINEAR)
    cropped = full.crop((left, top, left + content[0], top + content[1]))
    heat = np.clip(np.asarray(cropped.resize(rgb.size, Image.Resampling.BILINEAR)), 0.0, 1.0)
    alpha = (heat * 0.65)[..., None]
    red = np.array([230.0, 20.0, 20.0], dtype=np.float32)
    blended = np.asarray(rgb, dtype=np.float32) * (1.0 - alpha) + red * alpha
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def heatmap_png(image: Image.Image, heatmap: np.ndarray, *, input_size: int) -> bytes:
    """A PNG of `image` (a photo's picture, as the model saw it) with its damage map laid over
    it, for GET /v1/photos/{id}/heatmap.png."""
    buffer = io.BytesIO()
    heatmap_overlay(image, heatmap, input_size).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
