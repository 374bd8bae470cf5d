"""Photo assessment on the tiny fixture model: scores, listing match, cache, heatmap overlay."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from conftest import encode, textured_image
from onnx_fixtures import TINY_MODEL_VERSION, write_tiny_model
from PIL import Image

from service.assessment import (
    Assessor,
    EmbeddingCache,
    PhotoAssessment,
    assess_bytes,
    heatmap_overlay,
    heatmap_png,
    with_duplicates,
)
from service.batching import MicroBatcher
from service.checks import LISTING_REUSE_CORROBORATION_DISTANCE
from service.duplicates import (
    DUPLICATE_MAX_DISTANCE,
    DuplicateIndex,
    DuplicateMatch,
    closest_distance,
    perceptual_hash,
    photo_windows,
)
from service.engine import DEFAULT_MODEL_DIR, ModelOutput, ScoringEngine
from service.intake import Photo, open_photo


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ScoringEngine:
    return ScoringEngine.load(write_tiny_model(tmp_path_factory.mktemp("tiny-model")))


class CountingEngine:
    """The real engine, counting the images it is asked to embed."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine
        self.card = engine.card
        self.model_version = engine.model_version
        self.images_seen = 0
        self.runs = 0

    def infer(self, images: Sequence[Image.Image]) -> list[ModelOutput]:
        self.images_seen += len(images)
        self.runs += 1
        return self.engine.infer(images)


def photo_of(image: Image.Image) -> Photo:
    return open_photo(encode(image, "PNG"))


def damaged_photo(width: int = 448, height: int = 448) -> Photo:
    """A textured photo with a pure red patch in its top-left corner (the fixture's 'damage')."""
    image = textured_image(width, height, seed=4)
    image.paste((255, 0, 0), (0, 0, width // 5, height // 5))
    return photo_of(image)


def test_photo_without_listing_images(engine: ScoringEngine):
    photo = photo_of(textured_image(seed=1))
    result = Assessor(engine).assess(photo)
    (expected,) = engine.infer([photo.image])
    assert result.photo_id == photo.photo_id
    assert result.damage == pytest.approx(expected.damage)
    assert result.mismatch is None and result.match_similarity is None
    assert result.matched_listing_photo_id is None
    assert result.model_version == TINY_MODEL_VERSION
    assert result.embedding.shape == (engine.card.embedding_dim,)
    assert len(result.perceptual_hash) == 16 and int(result.perceptual_hash, 16) >= 0


def test_best_listing_image_decides_the_mismatch(engine: ScoringEngine):
    item = textured_image(seed=2)
    photo = photo_of(item.resize((400, 300)))  # the same item, resized by the buyer's phone
    other = photo_of(Image.new("RGB", (300, 300), (20, 200, 40)))
    same = photo_of(item)
    result = Assessor(engine).assess(photo, listing_photos=[other, same])
    assert result.matched_listing_photo_id == same.photo_id
    assert result.match_similarity is not None and result.match_similarity > 0.97
    assert result.mismatch == pytest.approx(
        engine.card.mismatch_probability(result.match_similarity)
    )
    different = Assessor(engine).assess(photo, listing_photos=[other])
    assert different.match_similarity is not None
    assert different.match_similarity < result.match_similarity
    assert different.mismatch is not None and different.mismatch > result.mismatch


def test_the_listing_photo_itself_is_flagged_as_reuse(engine: ScoringEngine):
    listing = photo_of(textured_image(seed=5))
    result = Assessor(engine).assess(listing, listing_photos=[listing])
    assert "listing_photo_reuse" in result.quality_codes
    assert [code for code in result.quality_codes if code == "listing_photo_reuse"] == [
        "listing_photo_reuse"
    ]  # once, even when the checks found it too
    clean = Assessor(engine).assess(photo_of(textured_image(seed=6)), listing_photos=[listing])
    assert "listing_photo_reuse" not in clean.quality_codes


class EverythingLooksReused:
    """The real engine with a card whose listing_reuse_similarity every embedding reaches."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine
        thresholds = engine.card.thresholds.model_copy(update={"listing_reuse_similarity": -1.0})
        self.card = engine.card.model_copy(update={"thresholds": thresholds})
        self.model_version = engine.model_version

    def infer(self, images: Sequence[Image.Image]) -> list[ModelOutput]:
        return self.engine.infer(images)


def test_an_embedding_match_is_reuse_only_where_the_photos_hash_backs_it(engine: ScoringEngine):
    """Genuine photos of a product can embed as close to its listing image as a copy does (3 % of
    the test products' photos with model 1.3.0); they are other pictures, so they hash far away."""
    listing_image = textured_image(seed=5)
    listing = photo_of(listing_image)
    assessor = Assessor(EverythingLooksReused(engine))
    other = photo_of(textured_image(seed=6))
    assert closest_distance(perceptual_hash(other.image), photo_windows(listing.image)) > (
        LISTING_REUSE_CORROBORATION_DISTANCE
    )
    assert (
        "listing_photo_reuse" not in assessor.assess(other, listing_photos=[listing]).quality_codes
    )
    # An edited copy (a band over its bottom quarter) that the 8-bit hash check misses.
    banded = listing_image.copy()
    banded.paste((200, 20, 20), (0, 360, 640, 480))
    edited = photo_of(banded)
    distance = closest_distance(perceptual_hash(edited.image), photo_windows(listing.image))
    assert DUPLICATE_MAX_DISTANCE < distance <= LISTING_REUSE_CORROBORATION_DISTANCE
    assert "listing_photo_reuse" not in Assessor(engine).assess(edited).quality_codes
    assert "listing_photo_reuse" in assessor.assess(edited, listing_photos=[listing]).quality_codes


def test_listing_embeddings_are_computed_once(engine: ScoringEngine):
    counting = CountingEngine(engine)
    assessor = Assessor(counting)
    listing = [photo_of(textured_image(seed=seed)) for seed in (7, 8)]
    assessor.assess(photo_of(textured_image(seed=9)), listing_photos=listing)
    assert counting.images_seen == 3  # the photo and both listing images
    assessor.assess(photo_of(textured_image(seed=10)), listing_photos=listing)
    assert counting.images_seen == 4  # only the new photo
    assert assessor.listing_embeddings.hits == 2


def test_a_claims_photos_are_scored_in_one_run(engine: ScoringEngine):
    counting = CountingEngine(engine)
    photos = [photo_of(textured_image(seed=seed)) for seed in (12, 13, 14)]
    together = Assessor(counting).assess_many(photos)
    assert counting.runs == 1
    alone = [Assessor(engine).assess(photo) for photo in photos]
    assert [result.damage for result in together] == pytest.approx([a.damage for a in alone])
    assert [result.photo_id for result in together] == [photo.photo_id for photo in photos]
    assert Assessor(counting).assess_many([]) == []


def test_duplicates_across_claims_come_from_the_index(engine: ScoringEngine):
    photo = photo_of(textured_image(seed=15))
    index = DuplicateIndex()
    index.add(perceptual_hash(photo.image), "claim-1/abc")
    lock = threading.Lock()
    assessor = Assessor(engine)
    found = assessor.assess(photo, duplicate_index=index, duplicate_lock=lock)
    assert "duplicate_across_claims" in found.quality_codes
    assert not lock.locked()
    own = assessor.assess(photo, duplicate_index=index, exclude_refs={"claim-1/abc"})
    assert "duplicate_across_claims" not in own.quality_codes
    assert found.perceptual_hash == f"{perceptual_hash(photo.image):016x}"
    assert found.duplicate_refs == ("claim-1/abc",) and own.duplicate_refs == ()


def test_a_cropped_copy_names_the_photo_it_repeats(engine: ScoringEngine):
    image = textured_image(640, 480, seed=16)
    original = photo_of(image)
    assessor = Assessor(engine)
    (stored,) = assessor.assess_many([original])
    assert stored.window_hashes == photo_windows(original.image)
    assert stored.duplicate_refs == ()  # no index given
    index = DuplicateIndex()
    index.add_photo(stored.window_hashes, "claim-1/original")
    index.add_photo(photo_windows(textured_image(640, 480, seed=17)), "claim-2/other")
    cropped = photo_of(image.crop((64, 48, 640, 480)))  # 10% off the left and top edges
    copy, unrelated = assessor.assess_many(
        [cropped, photo_of(textured_image(640, 480, seed=18))], duplicate_index=index
    )
    assert copy.duplicate_refs == ("claim-1/original",)
    assert "duplicate_across_claims" in copy.quality_codes
    assert unrelated.duplicate_refs == ()
    assert "duplicate_across_claims" not in unrelated.quality_codes


def test_with_duplicates_adds_the_finding_and_the_refs_once(engine: ScoringEngine):
    photo = photo_of(textured_image(seed=19))
    index = DuplicateIndex()
    index.add(perceptual_hash(photo.image), "claim-1/abc")
    found = Assessor(engine).assess(photo, duplicate_index=index)
    more = with_duplicates(
        found, [DuplicateMatch("claim-1/abc", 0), DuplicateMatch("claim-2/def", 3)]
    )
    assert more.duplicate_refs == ("claim-1/abc", "claim-2/def")
    assert more.quality_codes.count("duplicate_across_claims") == 1
    clean = Assessor(engine).assess(photo)
    assert with_duplicates(clean, []) is clean
    flagged = with_duplicates(clean, [DuplicateMatch("claim-2/def", 3)])
    assert flagged.duplicate_refs == ("claim-2/def",)
    assert "duplicate_across_claims" in flagged.quality_codes
    # A nearly uniform frame hashes like any other: no reuse finding on top of low_detail.
    blank = Assessor(engine).assess(photo_of(Image.new("RGB", (640, 480), (128, 128, 128))))
    assert "low_detail" in blank.quality_codes
    assert with_duplicates(blank, [DuplicateMatch("claim-2/def", 0)]) is blank


def test_embedding_cache_evicts_the_least_recently_used():
    cache = EmbeddingCache(max_size=2)
    cache.put("a", np.zeros(2))
    cache.put("b", np.ones(2))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", np.ones(2))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2


def test_damage_and_heatmap_come_from_the_model(engine: ScoringEngine):
    damaged = Assessor(engine).assess(damaged_photo())
    intact = Assessor(engine).assess(photo_of(textured_image(448, 448, seed=4)))
    assert damaged.damage > 0.9 > intact.damage
    assert np.unravel_index(np.argmax(damaged.heatmap), (7, 7)) == (0, 0)


def test_micro_batcher_gives_the_same_assessment(engine: ScoringEngine):
    photo = damaged_photo()
    with MicroBatcher(engine, max_wait_ms=1) as batcher:
        batched = Assessor(batcher).assess(photo)
    direct = Assessor(engine).assess(photo)
    assert batched.damage == pytest.approx(direct.damage, abs=1e-6)
    np.testing.assert_allclose(batched.heatmap, direct.heatmap, atol=1e-6)


def test_heatmap_overlay_cuts_away_the_letterbox_bands():
    # A 448x224 photo fills rows 56..168 of the 224 model input; grey bands fill the rest. Cell
    # row 2 (input rows 64..96) is content rows 8..40 of 112, i.e. photo rows 16..80 at 2x.
    heatmap = np.zeros((7, 7), dtype=np.float32)
    heatmap[2, 0] = 1.0
    grey = Image.new("RGB", (448, 224), (128, 128, 128))
    overlay = np.asarray(heatmap_overlay(grey, heatmap, 224), dtype=np.float32)
    redness = overlay[..., 0] - overlay[..., 1]
    assert redness[30:60, :40].mean() > 100  # on the cell, where the model saw it
    assert redness[120:, :].max() < 5  # far below it: untouched
    assert redness[:, 200:].max() < 5  # far to the right: untouched


def test_heatmap_png_is_a_png_of_the_photo(engine: ScoringEngine):
    photo = damaged_photo(320, 240)
    data = heatmap_png(photo.picture, Assessor(engine).assess(photo).heatmap, input_size=224)
    assert data.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(data)).size == photo.image.size


def test_the_model_scores_the_picture_inside_padding_bands(engine: ScoringEngine):
    picture = textured_image(400, 300, seed=8)
    screenshot = Image.new("RGB", (400, 866), (0, 0, 0))  # a dark-mode phone screenshot
    screenshot.paste(picture, (0, 283))
    photo = open_photo(encode(screenshot, "PNG"))
    assessed = Assessor(engine).assess(photo)
    [as_picture] = engine.infer([photo.picture])
    [as_frame] = engine.infer([photo.image])
    assert assessed.damage == pytest.approx(as_picture.damage, abs=1e-6)
    assert assessed.damage != pytest.approx(as_frame.damage, abs=1e-6)


def test_bad_bytes_become_an_error_not_an_exception(engine: ScoringEngine):
    scored = assess_bytes(Assessor(engine), b"\xff\xd8\xff" + b"\x00" * 50, source="x.jpg")
    assert scored.assessment is None
    assert scored.error is not None and scored.error.startswith("corrupt")
    fields = scored.score_fields()
    assert fields["damage"] is None and fields["model_version"] == TINY_MODEL_VERSION
    assert [issue["code"] for issue in fields["issues"]] == ["corrupt"]
    assert fields["issues"][0]["severity"] == "blocker"


def test_assessment_serialises_for_people(engine: ScoringEngine):
    result: PhotoAssessment = Assessor(engine).assess(damaged_photo())
    document = result.to_dict()
    assert document["photo_id"] == result.photo_id
    assert len(document["heatmap"]) == 7 and "embedding" not in document


def test_shipped_model_assesses_a_photo():
    model_dir = DEFAULT_MODEL_DIR
    if not (model_dir / "model_card.json").is_file():
        pytest.skip(f"the shipped model is not in {model_dir}")
    engine = ScoringEngine.load(model_dir)
    photo = photo_of(textured_image(seed=11))
    result = Assessor(engine).assess(photo, listing_photos=[photo])
    assert 0.0 <= result.damage <= 1.0
    assert result.match_similarity == pytest.approx(1.0, abs=1e-4)
    # The lowest mismatch the card's calibration can give (an identical image). A card's low
    # threshold may sit below even that (1.3.0's does: validation found no cut-off that clears
    # at most 5 % wrong listings), so it is not asserted here.
    assert result.mismatch == pytest.approx(engine.card.mismatch_probability(1.0), abs=1e-3)
    assert result.mismatch < engine.card.thresholds.mismatch_high / 10
    assert "listing_photo_reuse" in result.quality_codes
