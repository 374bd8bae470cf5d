"""Perceptual hashes and the multi-index duplicate index."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import encode, textured_image
from PIL import Image, ImageOps

from service.duplicates import (
    DUPLICATE_MAX_DISTANCE,
    FLIPPED_WINDOWS,
    FLIPS,
    HASH_BITS,
    HASHES_PER_PHOTO,
    TILTS,
    WINDOWS,
    DuplicateIndex,
    DuplicateMatch,
    WindowScan,
    closest_distance,
    format_hashes,
    formatted_length,
    hamming_distance,
    level_crop_scale,
    parse_hash_texts,
    parse_hashes,
    perceptual_hash,
    photo_windows,
    tilted_frames,
)


def reencoded(image: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(encode(image, "JPEG", quality=quality))).convert("RGB")


def cropped(
    image: Image.Image, left: float, top: float, right: float, bottom: float
) -> Image.Image:
    width, height = image.size
    return image.crop(
        (
            round(left * width),
            round(top * height),
            round((1 - right) * width),
            round((1 - bottom) * height),
        )
    )


def brute_force(hashes: np.ndarray, query: int, max_distance: int) -> set[int]:
    distances = [bin(int(value) ^ query).count("1") for value in hashes]
    return {index for index, distance in enumerate(distances) if distance <= max_distance}


def random_hashes(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=count, dtype=np.uint64)


def flip_bits(value: int, bits: int, rng: np.random.Generator) -> int:
    for bit in rng.choice(HASH_BITS, size=bits, replace=False):
        value ^= 1 << int(bit)
    return value


# --- hashes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [(0, 0, 0), (0, 1, 1), (0b1011, 0b0110, 3), (0, 2**64 - 1, 64), (2**63, 0, 1)],
)
def test_hamming_distance_known_values(first: int, second: int, expected: int) -> None:
    assert hamming_distance(first, second) == expected


def test_hash_is_64_bits_and_deterministic() -> None:
    image = textured_image(400, 300)
    value = perceptual_hash(image)
    assert 0 <= value < 2**64
    assert perceptual_hash(image.copy()) == value
    assert perceptual_hash(image.convert("L")) == value


def test_uniform_image_hashes_without_error() -> None:
    assert 0 <= perceptual_hash(Image.new("RGB", (50, 50), (90, 90, 90))) < 2**64


@pytest.mark.parametrize(
    "transform",
    [
        lambda image: reencoded(image, 35),
        lambda image: image.resize((image.width // 3, image.height // 3), Image.Resampling.LANCZOS),
        lambda image: image.resize((image.width * 2, image.height * 2)),
        lambda image: Image.eval(image, lambda value: min(255, value + 25)),
    ],
    ids=["jpeg_q35", "downscaled_3x", "upscaled_2x", "brighter"],
)
def test_copies_hash_within_the_duplicate_distance(transform: object) -> None:
    original = textured_image(600, 450, seed=2)
    copy = transform(original)  # type: ignore[operator]
    assert hamming_distance(perceptual_hash(original), perceptual_hash(copy)) <= 4


def test_different_photos_hash_far_apart() -> None:
    hashes = [perceptual_hash(textured_image(400, 300, seed=seed)) for seed in range(8)]
    closest = min(hamming_distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :])
    assert closest > DUPLICATE_MAX_DISTANCE


FLIPPED_IMAGES = {
    "mirrored": Image.Transpose.FLIP_LEFT_RIGHT,
    "turned 90 degrees left": Image.Transpose.ROTATE_90,
    "turned 180 degrees": Image.Transpose.ROTATE_180,
    "turned 90 degrees right": Image.Transpose.ROTATE_270,
}


def test_flipped_windows_are_centred_windows_so_a_flip_maps_each_onto_itself() -> None:
    for flip, (left, top, right, bottom) in FLIPPED_WINDOWS:
        assert flip in FLIPS and (left, top, right, bottom) in WINDOWS
        assert left == pytest.approx(1 - right) and top == pytest.approx(1 - bottom)


def test_windows_start_with_the_whole_frame_then_the_flips_then_the_tilts() -> None:
    image = textured_image(400, 300)
    windows = photo_windows(image)
    assert len(windows) == HASHES_PER_PHOTO == len(WINDOWS) + len(FLIPPED_WINDOWS) + len(TILTS)
    assert windows[0] == perceptual_hash(image)
    assert set(FLIPS) == set(FLIPPED_IMAGES)
    flipped = windows[len(WINDOWS) : len(WINDOWS) + len(FLIPPED_WINDOWS)]
    tilted = windows[len(WINDOWS) + len(FLIPPED_WINDOWS) :]
    assert list(tilted) == [perceptual_hash(frame) for frame in tilted_frames(image.convert("L"))]
    for flipped_hash, (flip, box) in zip(flipped, FLIPPED_WINDOWS, strict=True):
        if box == (0.0, 0.0, 1.0, 1.0):
            # From the coefficients, the hash of the flipped image but for rounding: a coefficient
            # at the median can land on either side (0 or 2 bits in trials on several sizes).
            flipped_image = image.transpose(FLIPPED_IMAGES[flip])
            assert hamming_distance(flipped_hash, perceptual_hash(flipped_image)) <= 2, flip
        # An asymmetric photo's flips are other hashes, so each adds something to find.
        assert hamming_distance(windows[0], flipped_hash) > DUPLICATE_MAX_DISTANCE, flip


@pytest.mark.parametrize("crop", [(0, 0, 0, 0), (0.05, 0.05, 0.05, 0.05)], ids=["whole", "even_5"])
def test_mirrored_copy_matches_one_of_the_originals_windows(
    crop: tuple[float, float, float, float],
) -> None:
    """Flipped left to right, then re-encoded (and trimmed): a dodge of reverse image search."""
    original = textured_image(600, 450, seed=4)
    copy = reencoded(cropped(ImageOps.mirror(original), *crop), 80)
    copy_hash = perceptual_hash(copy)
    assert closest_distance(copy_hash, photo_windows(original)[: len(WINDOWS)]) > (
        DUPLICATE_MAX_DISTANCE
    )
    assert closest_distance(copy_hash, photo_windows(original)) <= DUPLICATE_MAX_DISTANCE


@pytest.mark.parametrize(
    ("width", "height", "degrees", "expected"),
    [
        (400, 300, 0.0, 1.0),
        (300, 300, 90.0, 1.0),  # a square turned a quarter is itself
        (300, 300, 45.0, 1 / np.sqrt(2)),  # the square inside a diamond
        (400, 300, 10.0, 1 / (np.cos(np.radians(10)) + 4 / 3 * np.sin(np.radians(10)))),
        (300, 400, -10.0, 1 / (np.cos(np.radians(10)) + 4 / 3 * np.sin(np.radians(10)))),
    ],
)
def test_level_crop_scale_known_values(
    width: int, height: int, degrees: float, expected: float
) -> None:
    assert level_crop_scale(width, height, degrees) == pytest.approx(expected)


def test_tilted_frames_hold_no_corner_from_outside_the_photo() -> None:
    """Turned on a white photo, a corner from outside the frame would show as black. (192 px
    wide: small enough that it is turned as it is, not reduced first.)"""
    white = Image.new("L", (192, 144), 255)
    frames = tilted_frames(white)
    assert len(frames) == len(TILTS)
    for frame, degrees in zip(frames, TILTS, strict=True):
        assert np.asarray(frame).min() >= 200, degrees
        # Trimmed no more than the turn needs, to the photo's shape.
        assert frame.width >= level_crop_scale(192, 144, degrees) * 192 - 2, degrees
        assert frame.width / frame.height == pytest.approx(192 / 144, rel=0.03), degrees


@pytest.mark.parametrize("degrees", [-12.0, -9.0, 5.0, 11.0])
def test_tilted_copy_matches_one_of_the_originals_windows(degrees: float) -> None:
    """Turned a little and trimmed level: a way to reuse another buyer's photo."""
    original = textured_image(600, 450, seed=4)
    scale = 0.97 * level_crop_scale(600, 450, degrees)
    margin = (1 - scale) / 2
    turned = original.rotate(degrees, resample=Image.Resampling.BICUBIC)
    copy_hash = perceptual_hash(reencoded(cropped(turned, margin, margin, margin, margin), 80))
    windows = photo_windows(original)
    assert closest_distance(copy_hash, windows[: -len(TILTS)]) > DUPLICATE_MAX_DISTANCE
    assert closest_distance(copy_hash, windows) <= DUPLICATE_MAX_DISTANCE


@pytest.mark.parametrize(
    "crop",
    [
        (0.05, 0.05, 0.05, 0.05),
        (0.1, 0.1, 0.1, 0.1),
        (0.15, 0.15, 0.15, 0.15),
        (0.1, 0, 0, 0),
        (0, 0, 0, 0.1),
    ],
    ids=["even_5", "even_10", "even_15", "left_10", "bottom_10"],
)
def test_cropped_copy_matches_one_of_the_originals_windows(
    crop: tuple[float, float, float, float],
) -> None:
    original = textured_image(600, 450, seed=4)
    copy = reencoded(cropped(original, *crop), 80)
    copy_hash = perceptual_hash(copy)
    assert closest_distance(copy_hash, photo_windows(original)) <= DUPLICATE_MAX_DISTANCE


@pytest.mark.parametrize(
    "flip", ["turned 90 degrees left", "turned 180 degrees", "turned 90 degrees right"]
)
def test_turned_copy_matches_one_of_the_originals_windows(flip: str) -> None:
    """A photo whose EXIF orientation was lost on the way arrives turned."""
    original = textured_image(600, 450, seed=4)
    turned = original.transpose(FLIPPED_IMAGES[flip])
    copy = reencoded(turned.resize((turned.width // 2, turned.height // 2)), 80)
    copy_hash = perceptual_hash(copy)
    assert closest_distance(copy_hash, photo_windows(original)[: len(WINDOWS)]) > (
        DUPLICATE_MAX_DISTANCE
    )
    assert closest_distance(copy_hash, photo_windows(original)) <= DUPLICATE_MAX_DISTANCE


def test_closest_distance_of_nothing_is_the_maximum() -> None:
    assert closest_distance(123, ()) == HASH_BITS


# --- index ------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_distance", [0, 3, 4, 8, 11, 13])
def test_index_agrees_with_a_brute_force_scan(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    stored = random_hashes(5000, seed=1)
    index = DuplicateIndex()
    index.add_many([int(value) for value in stored], [f"ref{i}" for i in range(len(stored))])
    for _ in range(40):
        base = int(stored[rng.integers(len(stored))])
        query = flip_bits(base, int(rng.integers(0, max_distance + 3)), rng)
        found = {int(match.ref[3:]) for match in index.query(query, max_distance)}
        assert found == brute_force(stored, query, max_distance)


def test_entries_added_one_by_one_are_found_in_segments_and_in_the_tail() -> None:
    # 10,000 single additions: two flushed tails merged into a sorted segment, plus a tail.
    stored = random_hashes(10_000, seed=2)
    index = DuplicateIndex()
    for number, value in enumerate(stored):
        index.add(int(value), f"ref{number}")
    assert len(index) == 10_000
    rng = np.random.default_rng(7)
    for number in [*rng.choice(10_000, size=30, replace=False), 9_999]:
        query = flip_bits(int(stored[number]), 5, rng)
        matches = index.query(query, 6)
        assert DuplicateMatch(f"ref{number}", 5) in matches


def test_matches_are_nearest_first_and_one_per_ref() -> None:
    index = DuplicateIndex()
    index.add(0b0000, "claim-a/photo-1")
    index.add(0b0111, "claim-a/photo-1")  # a second window of the same photo, farther away
    index.add(0b0011, "claim-b/photo-2")
    index.add(2**64 - 1, "claim-c/photo-3")
    assert index.query(0b0001, 4) == [
        DuplicateMatch("claim-a/photo-1", 1),
        DuplicateMatch("claim-b/photo-2", 1),
    ]


def test_add_photo_stores_every_window_under_one_ref() -> None:
    index = DuplicateIndex()
    original = textured_image(600, 450, seed=5)
    index.add_photo(photo_windows(original), "claim-1/photo-1")
    assert len(index) == HASHES_PER_PHOTO
    copy = cropped(original, 0.1, 0.1, 0.1, 0.1)
    assert [match.ref for match in index.query(perceptual_hash(copy))] == ["claim-1/photo-1"]


def test_add_photo_texts_stores_what_add_photo_stores_photo_by_photo() -> None:
    photos = [
        (photo_windows(textured_image(600, 450, seed=seed)), f"claim-{seed}/photo")
        for seed in (5, 6)
    ]
    one_by_one, from_text, empty_text = DuplicateIndex(), DuplicateIndex(), DuplicateIndex()
    for windows, ref in photos:
        one_by_one.add_photo(windows, ref)
    from_text.add_photo_texts((ref, format_hashes(windows)) for windows, ref in photos)
    empty_text.add_photo_texts([])
    assert len(from_text) == len(one_by_one) == 2 * HASHES_PER_PHOTO
    assert len(empty_text) == 0
    for windows, ref in photos:
        assert ref in from_text
        for window in windows:
            assert from_text.query(window) == one_by_one.query(window)
            assert from_text.query(window)[0].ref == ref


def test_empty_index_finds_nothing() -> None:
    index = DuplicateIndex()
    assert len(index) == 0
    assert index.query(12345, 10) == []


@pytest.mark.parametrize("max_distance", [-1, 64])
def test_distance_out_of_range_is_refused(max_distance: int) -> None:
    with pytest.raises(ValueError, match="max_distance"):
        DuplicateIndex().query(0, max_distance)


def test_add_many_needs_one_ref_per_hash() -> None:
    with pytest.raises(ValueError, match="one ref per hash"):
        DuplicateIndex().add_many([1, 2], ["only-one"])


def test_bulk_load_takes_a_numpy_array_and_mixes_with_single_additions() -> None:
    stored = random_hashes(6000, seed=3)
    index = DuplicateIndex()
    index.add(int(stored[0]) ^ 1, "single")
    index.add_many(stored, [f"bulk{i}" for i in range(len(stored))])
    assert len(index) == 6001
    assert [m.ref for m in index.query(int(stored[0]), 1)] == ["bulk0", "single"]


@pytest.mark.parametrize(
    ("texts", "hashes", "counts"),
    [
        ([], [], []),
        ([""], [], [0]),
        (["0000000000000001"], [1], [1]),
        (["ffffffffffffffff 0000000000000010", "00000000000000aB"], [2**64 - 1, 16, 171], [2, 1]),
        (["8000000000000000", "", "0123456789abcdef"], [2**63, 0x0123456789ABCDEF], [1, 0, 1]),
    ],
)
def test_parse_hash_texts_known_values(
    texts: list[str], hashes: list[int], counts: list[int]
) -> None:
    parsed, per_text = parse_hash_texts(texts)
    assert parsed.dtype == np.uint64 and [int(value) for value in parsed] == hashes
    assert per_text.tolist() == counts
    assert [int(value) for value in parsed] == [h for text in texts for h in parse_hashes(text)]


@pytest.mark.parametrize(
    "text",
    [
        "123",
        "000000000000000g",
        "0000000000000001  0000000000000002",
        " 0000000000000001",
        "00000000000000010",
        "0000000000000001,0000000000000002",
        "00000000000000\t0",
        "000000000000000\n0000000000000001",
    ],
)
def test_parse_hash_texts_refuses_what_format_hashes_never_writes(text: str) -> None:
    with pytest.raises(ValueError, match="16-digit hex"):
        parse_hash_texts(["0000000000000001", text])


@pytest.mark.parametrize("max_distance", [0, 4, 8, 13])
def test_window_scan_answers_as_the_index(max_distance: int) -> None:
    """The look-up among uploads still being recorded scans instead of indexing: same matches,
    same order, one per photo, for queries near a stored window and far from all."""
    rng = np.random.default_rng(max_distance + 100)
    windows = random_hashes(600 * HASHES_PER_PHOTO, seed=7).reshape(600, HASHES_PER_PHOTO)
    photos = [(f"claim-{i % 50}/photo-{i}", [int(h) for h in row]) for i, row in enumerate(windows)]
    index = DuplicateIndex()
    for ref, hashes in photos:
        index.add_photo(hashes, ref)
    scan = WindowScan((ref, format_hashes(hashes)) for ref, hashes in photos)
    for _ in range(30):
        base = int(windows[rng.integers(len(windows)), rng.integers(HASHES_PER_PHOTO)])
        query = flip_bits(base, int(rng.integers(0, max_distance + 3)), rng)
        assert scan.query(query, max_distance) == index.query(query, max_distance)
    assert WindowScan([]).query(12345) == []
    with pytest.raises(ValueError, match="max_distance"):
        scan.query(0, HASH_BITS)


@pytest.mark.parametrize("count", [1, 2, 17])
def test_formatted_length_is_the_length_format_hashes_writes(count: int) -> None:
    assert formatted_length(count) == len(format_hashes([2**64 - 1] * count))
