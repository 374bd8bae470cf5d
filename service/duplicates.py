"""Near-duplicate photos: perceptual hashes and an index that finds near copies fast.

`perceptual_hash` is a 64-bit DCT hash (pHash): the signs of the lowest 8x8 frequencies of a
32x32 greyscale thumbnail against their median. Re-encoding, resizing and mild colour changes
leave those frequencies almost untouched, so copies land within a few bits of each other while
different photos sit near 32 bits apart. pHash alone does not survive cropping (5% off each side
already moves it about 12 bits), so a stored photo is indexed under several windows
(`photo_windows`): the whole frame, centred crops keeping 90, 80 and 70% of each side, the frame
without 10% of one edge, and without 10% of two adjacent edges. A copy cropped from it then
hashes, whole, like one of those windows, and a lookup needs only the upload's whole-frame hash
(querying with windows of the upload too would multiply the chances of a false match). It is
also indexed under its mirror image and quarter turns (`FLIPPED_WINDOWS`), computed from the
same DCT coefficients, so a flipped or turned copy is found by the same lookup, and under its
whole frame tilted a few degrees either way (`TILTS`), so a copy turned a little and trimmed
level is found too.

`DuplicateIndex` answers "which stored hashes are within `max_distance` bits of this one?" with
multi-index hashing (Norouzi et al., 2012): the 64 bits are cut into three chunks of 21-22 bits,
and by the pigeonhole principle any hash within distance d of the query agrees with it to within
floor(d / 3) bits on at least one chunk. Each chunk has a table (hashes sorted by that chunk), so
a query probes a few hundred buckets by binary search instead of scanning every hash. New
hashes go into log-structured segments (merged like a binary counter), so adding stays cheap
and a query visits only a handful of segments.

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_BITS = 64
_HASH_SIDE = 32
_LOW_FREQUENCIES = 8
# The index's chunks: (shift, width) in bits. Multi-index hashing works best with chunks about
# log2(N) bits wide; 21-22 bits suit an index of a few hundred thousand to tens of millions of
# hashes (a million photos is 12 million window hashes), leaving a few entries per bucket.
_CHUNKS: tuple[tuple[int, int], ...] = ((0, 21), (21, 21), (42, 22))
# Segments smaller than this are scanned directly: cheaper than probing hundreds of buckets.
_SCAN_BELOW = 4096
# Windows a stored photo is indexed under: (left, top, right, bottom) as fractions of the frame.
# Centred crops cover copies trimmed evenly on all sides (up to ~15%), one- and two-sided ones
# copies trimmed unevenly; docs/quality.md has the recall per kind of crop that chose them. More
# windows catch more uneven crops but cost memory: at a million photos each window is ~28 MB.
WINDOWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 1.0, 1.0),
    (0.05, 0.05, 0.95, 0.95),
    (0.10, 0.10, 0.90, 0.90),
    (0.15, 0.15, 0.85, 0.85),
    (0.10, 0.0, 1.0, 1.0),
    (0.0, 0.0, 0.90, 1.0),
    (0.0, 0.10, 1.0, 1.0),
    (0.0, 0.0, 1.0, 0.90),
    (0.10, 0.10, 1.0, 1.0),
    (0.0, 0.0, 0.90, 0.90),
    (0.10, 0.0, 1.0, 0.90),
    (0.0, 0.10, 0.90, 1.0),
)
# Flipping or turning a frame only moves its DCT coefficients and changes their signs, so the
# hashes of a window's mirror image and quarter turns come from the window's own coefficients at
# no cost. Rows of the 8x8 coefficients are vertical frequencies, columns horizontal ones, and
# reversing a sequence multiplies its k-th coefficient by (-1)^k.
_ODD_NEGATED = (-1.0) ** np.arange(_LOW_FREQUENCIES)
FLIPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mirrored": lambda low: low * _ODD_NEGATED[None, :],
    "turned 90 degrees left": lambda low: low.T * _ODD_NEGATED[:, None],
    "turned 180 degrees": lambda low: low * _ODD_NEGATED[:, None] * _ODD_NEGATED[None, :],
    "turned 90 degrees right": lambda low: low.T * _ODD_NEGATED[None, :],
}
# Besides its windows, a photo is indexed under these flips of two of them, so a copy flipped
# left to right (a common way to dodge a reverse image search) or turned (a photo whose EXIF
# orientation was lost on the way) is found by the same whole-frame look-up. The mirror image
# also under its centred 90%, which finds mirrored copies trimmed a little (docs/quality.md §3
# has the recall each gives). Each window is centred, so it maps onto itself when flipped.
FLIPPED_WINDOWS: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("mirrored", (0.0, 0.0, 1.0, 1.0)),
    ("mirrored", (0.05, 0.05, 0.95, 0.95)),
    ("turned 90 degrees left", (0.0, 0.0, 1.0, 1.0)),
    ("turned 180 degrees", (0.0, 0.0, 1.0, 1.0)),
    ("turned 90 degrees right", (0.0, 0.0, 1.0, 1.0)),
)
# A copy turned by a few degrees and trimmed to a level frame (the usual way to reuse someone
# else's photo past a whole-frame hash) moves the hash by 8 bits at 5 degrees and is lost by 7.
# So a photo is also stored under its whole frame turned by these angles (degrees, counter-
# clockwise), each trimmed to the largest level frame of its shape (`level_crop_scale`); a copy
# turned by up to about 15 degrees either way lands within a few degrees of one of them.
TILTS: tuple[float, ...] = (-12.0, -6.0, 6.0, 12.0)
# Turned on a copy reduced by a whole factor to 128-255 pixels on its long side (4-8 pixels a
# thumbnail cell): the hash only sees a 32x32 thumbnail of it, and turning more pixels costs time
# for nothing (at 192: the same recall, 0.6 ms more a 448-px upload; bench_duplicates.py).
_TILT_WORKING_SIDE = 128
HASHES_PER_PHOTO = len(WINDOWS) + len(FLIPPED_WINDOWS) + len(TILTS)
# Largest Hamming distance that still counts as "the same photo", chosen in docs/quality.md from
# the distances between re-encoded / resized / cropped copies and between different photos.
DUPLICATE_MAX_DISTANCE = 8

_POPCOUNT_16 = np.array([bin(value).count("1") for value in range(1 << 16)], dtype=np.uint8)


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II basis for 32 samples; rows are frequencies."""
    n = _HASH_SIDE
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float64)


def _low_frequencies(image: Image.Image) -> np.ndarray:
    """The 8x8 lowest DCT coefficients of the image's 32x32 greyscale thumbnail (box filter);
    rows are vertical frequencies, columns horizontal ones."""
    thumbnail = image.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(thumbnail, dtype=np.float64)
    basis = _dct_matrix()
    return (basis @ pixels @ basis.T)[:_LOW_FREQUENCIES, :_LOW_FREQUENCIES]


def _hash_of(low: np.ndarray) -> int:
    flat = low.ravel()
    # The DC term is the mean brightness: it carries no layout and is left out of the median.
    bits = flat > np.median(flat[1:])
    return int(sum(1 << index for index, bit in enumerate(bits) if bit))


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash of `image` (any mode, any size)."""
    return _hash_of(_low_frequencies(image))


def photo_windows(image: Image.Image) -> tuple[int, ...]:
    """What a photo is stored under: the hashes of every window in WINDOWS, whole frame first,
    then of every (flip, window) in FLIPPED_WINDOWS, then of the whole frame turned by each of
    TILTS (`tilted_frames`); HASHES_PER_PHOTO in all."""
    width, height = image.size
    grey = image.convert("L")
    lows = {
        box: _low_frequencies(
            grey.crop(
                (
                    round(box[0] * width),
                    round(box[1] * height),
                    round(box[2] * width),
                    round(box[3] * height),
                )
            )
        )
        for box in WINDOWS
    }
    return (
        tuple(_hash_of(lows[box]) for box in WINDOWS)
        + tuple(_hash_of(FLIPS[flip](lows[box])) for flip, box in FLIPPED_WINDOWS)
        + tuple(_hash_of(_low_frequencies(tilted)) for tilted in tilted_frames(grey))
    )


def level_crop_scale(width: int, height: int, degrees: float) -> float:
    """The largest centred frame of the same shape that lies inside a `width` x `height` frame
    turned by `degrees`, as a fraction of its sides."""
    angle = math.radians(abs(degrees))
    elongation = max(width / height, height / width)
    return 1.0 / (math.cos(angle) + elongation * math.sin(angle))


def tilted_frames(grey: Image.Image) -> list[Image.Image]:
    """`grey` turned by each of TILTS and trimmed to its largest level frame of the same shape."""
    working = grey.reduce(max(1, max(grey.size) // _TILT_WORKING_SIDE))
    frames = []
    for degrees in TILTS:
        turned = working.rotate(degrees, resample=Image.Resampling.BILINEAR)
        scale = level_crop_scale(working.width, working.height, degrees)
        margin_x = working.width * (1 - scale) / 2
        margin_y = working.height * (1 - scale) / 2
        frames.append(
            turned.crop(
                (
                    round(margin_x),
                    round(margin_y),
                    round(working.width - margin_x),
                    round(working.height - margin_y),
                )
            )
        )
    return frames


def format_hash(photo_hash: int) -> str:
    """A 64-bit hash as stored and shown (16 hex digits)."""
    return f"{photo_hash:016x}"


def format_hashes(hashes: Iterable[int]) -> str:
    """Several hashes (e.g. a photo's windows) as one text column: hex, space-separated."""
    return " ".join(format_hash(photo_hash) for photo_hash in hashes)


def formatted_length(count: int) -> int:
    """The length of `format_hashes`' text for `count` hashes: 16 hex digits each, one space
    between."""
    return 17 * count - 1


def parse_hashes(text: str) -> tuple[int, ...]:
    """The hashes `format_hashes` wrote (a single hash's hex parses too)."""
    return tuple(int(part, 16) for part in text.split())


def parse_hash_texts(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Many `format_hashes` texts at once: every hash as one uint64 array, in order, and how
    many hashes each text holds. One hex decode for all of them instead of an `int` per hash
    (1,000 photos of 12 hashes: 0.37 ms against 2.0 ms for `parse_hashes` on each)."""
    counts = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        # 16 hex digits per hash and one space between hashes, as format_hashes writes them:
        # the layout is checked here, the digits by fromhex below.
        count = (len(text) + 1) // 17
        if text and (len(text) % 17 != 16 or text.count(" ") != count - 1 or text[16::17].strip()):
            raise ValueError(f"not a list of 16-digit hex hashes: {text[:40]!r}")
        counts[row] = count
    try:
        data = bytes.fromhex(" ".join(texts))  # fromhex skips the spaces
    except ValueError:
        data = b""
    if len(data) != 8 * int(counts.sum()):  # a non-hex digit, or other whitespace in a hash
        raise ValueError("not a list of 16-digit hex hashes: a non-hex digit")
    return np.frombuffer(data, dtype=">u8").astype(np.uint64), counts


def evidence_ref(claim_id: str, photo_id: str) -> str:
    """The index reference of a claim photo; the claim id is recoverable from it."""
    return f"{claim_id}/{photo_id}"


def claim_of_ref(ref: str) -> str:
    """The claim of an `evidence_ref` (split at the last "/": photo ids are hex digests)."""
    return ref.rsplit("/", 1)[0]


def hamming_distance(first: int, second: int) -> int:
    return (first ^ second).bit_count()


def closest_distance(photo_hash: int, windows: Iterable[int]) -> int:
    """Distance from an upload's whole-frame hash to the nearest window of another photo."""
    return min((hamming_distance(photo_hash, window) for window in windows), default=HASH_BITS)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Bits set in each uint64, by 16-bit table look-ups (portable across numpy versions)."""
    total = np.zeros(values.shape, dtype=np.int64)
    for shift in range(0, HASH_BITS, 16):
        total += _POPCOUNT_16[(values >> np.uint64(shift)) & np.uint64(0xFFFF)]
    return total


def _probe_count(width: int, radius: int) -> int:
    return sum(math.comb(width, bits) for bits in range(radius + 1))


@lru_cache(maxsize=64)
def _flip_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit mask with at most `radius` bits set: the buckets to probe."""
    masks = [0]
    for bits in range(1, radius + 1):
        masks.extend(
            sum(1 << b for b in chosen) for chosen in itertools.combinations(range(width), bits)
        )
    return np.array(masks, dtype=np.int64)


def _chunk_values(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    return ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)


@dataclass(frozen=True)
class DuplicateMatch:
    ref: str
    distance: int


class _Segment:
    """An immutable run of hashes with, per chunk, the chunk values sorted and their order
    (unless it is small, or `indexed` is False: then a query scans it)."""

    def __init__(self, hashes: np.ndarray, ref_ids: np.ndarray, *, indexed: bool = True) -> None:
        self.hashes = hashes
        self.ref_ids = ref_ids
        self.tables: list[tuple[np.ndarray, np.ndarray]] = []
        if indexed and len(hashes) >= _SCAN_BELOW:
            for shift, width in _CHUNKS:
                values = _chunk_values(hashes, shift, width)
                order = np.argsort(values, kind="stable")
                self.tables.append((values[order], order.astype(np.int32)))

    def __len__(self) -> int:
        return len(self.hashes)

    def matches(self, query: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """(ref ids, distances) of the entries within `max_distance` bits of `query`."""
        radius = max_distance // len(_CHUNKS)
        probes = sum(_probe_count(width, radius) for _, width in _CHUNKS)
        if not self.tables or probes >= len(self.hashes):
            candidates = np.arange(len(self.hashes))
        else:
            candidates = self._candidates(query, radius)
        distances = _popcount(self.hashes[candidates] ^ np.uint64(query))
        close = distances <= max_distance
        return self.ref_ids[candidates[close]], distances[close]

    def _candidates(self, query: int, radius: int) -> np.ndarray:
        """Entries within `radius` bits of the query on at least one chunk."""
        found = []
        for (shift, width), (sorted_values, order) in zip(_CHUNKS, self.tables, strict=True):
            buckets = ((query >> shift) & ((1 << width) - 1)) ^ _flip_masks(width, radius)
            starts = np.searchsorted(sorted_values, buckets, side="left")
            lengths = np.searchsorted(sorted_values, buckets, side="right") - starts
            total = int(lengths.sum())
            if total:
                # Positions of every member of every probed bucket, without a Python loop.
                begin = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
                found.append(order[begin + np.arange(total)])
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _nearest_per_ref(
    found: Iterable[tuple[np.ndarray, np.ndarray]], refs: Sequence[str]
) -> list[DuplicateMatch]:
    """(ref ids, distances) from any number of segments -> one match per ref, its nearest,
    nearest first (ties by ref)."""
    nearest: dict[str, int] = {}
    for ref_ids, distances in found:
        for ref_id, distance in zip(ref_ids.tolist(), distances.tolist(), strict=True):
            ref = refs[ref_id]
            if distance < nearest.get(ref, HASH_BITS + 1):
                nearest[ref] = distance
    return [
        DuplicateMatch(ref, distance)
        for ref, distance in sorted(nearest.items(), key=lambda item: (item[1], item[0]))
    ]


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in 0..{HASH_BITS - 1}")


class WindowScan:
    """A fixed set of photos' window hashes, searched by a linear scan: for a one-off look-up
    among a few thousand photos (the uploads still being recorded), where sorting an index
    would cost more than the look-ups it speeds up. `query` answers as `DuplicateIndex.query`."""

    def __init__(self, photos: Iterable[tuple[str, str]]) -> None:
        """`photos`: (ref, `format_hashes` text of its windows)."""
        rows = list(photos)
        self._refs = [ref for ref, _ in rows]
        hashes, counts = parse_hash_texts([text for _, text in rows])
        ref_ids = np.repeat(np.arange(len(rows), dtype=np.int32), counts)
        self._segment = _Segment(hashes, ref_ids, indexed=False)

    def query(
        self, photo_hash: int, max_distance: int = DUPLICATE_MAX_DISTANCE
    ) -> list[DuplicateMatch]:
        _check_distance(max_distance)
        return _nearest_per_ref([self._segment.matches(photo_hash, max_distance)], self._refs)


def _concatenate(first: _Segment, second: _Segment) -> _Segment:
    return _Segment(
        np.concatenate([first.hashes, second.hashes]),
        np.concatenate([first.ref_ids, second.ref_ids]),
    )


class DuplicateIndex:
    """Hashes with a reference each (e.g. `evidence_ref`), searchable by Hamming distance.

    Additions collect in a short unsorted tail that queries scan directly; a full tail becomes
    a segment, and segments of similar size are merged, so there are O(log N) of them and each
    hash is re-sorted O(log N) times over its life. Not thread-safe: give each worker its own,
    or hold a lock around add and query.
    """

    def __init__(self) -> None:
        self._segments: list[_Segment] = []
        # Entries point at refs by number: a photo is stored under several windows, and a
        # Python string per hash would cost more than the hashes themselves.
        self._refs: list[str] = []
        self._ref_numbers: dict[str, int] = {}
        self._tail: list[int] = []
        self._tail_ref_ids: list[int] = []

    def __len__(self) -> int:
        """The number of stored hashes (a photo added with `add_photo` counts once per window)."""
        return sum(len(segment) for segment in self._segments) + len(self._tail)

    def __contains__(self, ref: object) -> bool:
        """Whether any hash is stored under `ref`."""
        return ref in self._ref_numbers

    def _ref_number(self, ref: str) -> int:
        number = self._ref_numbers.get(ref)
        if number is None:
            number = self._ref_numbers[ref] = len(self._refs)
            self._refs.append(ref)
        return number

    def add(self, photo_hash: int, ref: str) -> None:
        self._tail.append(photo_hash)
        self._tail_ref_ids.append(self._ref_number(ref))
        if len(self._tail) >= _SCAN_BELOW:
            self._flush_tail()

    def add_photo(self, windows: Iterable[int], ref: str) -> None:
        """Store every window hash of one photo (see `photo_windows`) under `ref`."""
        for window in windows:
            self.add(window, ref)

    def add_photo_texts(self, photos: Iterable[tuple[str, str]]) -> None:
        """Bulk `add_photo` from stored text: (ref, `format_hashes` of its windows) each, as
        the database keeps them (the start-up load: one hex decode, refs numbered once per photo
        rather than once per hash, one sort)."""
        rows = list(photos)
        hashes, counts = parse_hash_texts([text for _, text in rows])
        if len(hashes) == 0:
            return
        self._flush_tail()
        numbers = np.fromiter(
            (self._ref_number(ref) for ref, _ in rows), dtype=np.int32, count=len(rows)
        )
        self._push(_Segment(hashes, np.repeat(numbers, counts)))

    def add_many(self, hashes: Sequence[int] | np.ndarray, refs: Sequence[str]) -> None:
        """Bulk load of plain hashes, one ref per hash: one sort instead of many merges."""
        if len(hashes) != len(refs):
            raise ValueError("one ref per hash")
        self._flush_tail()
        ref_ids = np.fromiter(
            (self._ref_number(ref) for ref in refs), dtype=np.int32, count=len(refs)
        )
        self._push(_Segment(np.asarray(hashes, dtype=np.uint64), ref_ids))

    def _flush_tail(self) -> None:
        if self._tail:
            segment = _Segment(
                np.array(self._tail, dtype=np.uint64), np.array(self._tail_ref_ids, dtype=np.int32)
            )
            self._tail, self._tail_ref_ids = [], []
            self._push(segment)

    def _push(self, segment: _Segment) -> None:
        """Add a segment, merging while the newest is at least half the size of the one before
        it (a binary counter: segment sizes at least double going back in time)."""
        self._segments.append(segment)
        while len(self._segments) > 1 and 2 * len(self._segments[-1]) >= len(self._segments[-2]):
            newest = self._segments.pop()
            self._segments[-1] = _concatenate(self._segments[-1], newest)

    def query(
        self, photo_hash: int, max_distance: int = DUPLICATE_MAX_DISTANCE
    ) -> list[DuplicateMatch]:
        """Entries within `max_distance` bits, nearest first, one (the nearest) per ref."""
        _check_distance(max_distance)
        found = [segment.matches(photo_hash, max_distance) for segment in self._segments]
        if self._tail:
            tail = _Segment(
                np.array(self._tail, dtype=np.uint64), np.array(self._tail_ref_ids, dtype=np.int32)
            )
            found.append(tail.matches(photo_hash, max_distance))
        return _nearest_per_ref(found, self._refs)
