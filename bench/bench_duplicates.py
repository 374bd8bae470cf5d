"""Near-duplicate detection: recall on copies, false positives on real photos, lookup speed.

    python bench/bench_duplicates.py --data ../shared/data [--photos-per-product 8]
        [--sizes 1000,10000,100000,1000000] [--pending 100,1000,5000] [--skip-accuracy]
        [--skip-speed]

Accuracy (grocery phone photos, ../shared/data): every sampled photo is stored in an index under
its windows (service.duplicates.photo_windows); its copies (re-encoded, resized, cropped) are
looked up with their whole-frame hash, as an upload would be. Recall is the share of copies that
find their original within each distance; the false-positive rate is the share of genuine,
different photos whose lookup finds any other photo (split into photos of the same product,
which look alike, and of other products). Each photo is looked up in an index holding every
other sampled photo.

Speed: lookup time of one query against indexes of N stored photos (N x 8 window hashes,
uniformly random, the best case for bucket sizes), with a vectorised numpy linear scan measured
in the same run as the baseline. Run on purpose, not in CI.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from service.duplicates import (
    DUPLICATE_MAX_DISTANCE,
    HASHES_PER_PHOTO,
    DuplicateIndex,
    DuplicateMatch,
    WindowScan,
    format_hashes,
    parse_hashes,
    perceptual_hash,
    photo_windows,
)
from training.quality_thresholds import read_grocery_photos

DISTANCES = (4, 6, 8, 10, 12)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(left: float, top: float, right: float, bottom: float) -> Callable[..., Image.Image]:
    def apply(image: Image.Image, _rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        box = (left * width, top * height, (1 - right) * width, (1 - bottom) * height)
        return _jpeg(image.crop(tuple(round(v) for v in box)), 85)

    return apply


def _tilted(degrees: float) -> Callable[..., Image.Image]:
    """Turned by `degrees` and trimmed to a level frame of the same shape, a little inside the
    largest one (as a copy trimmed by hand would be)."""

    def apply(image: Image.Image, _rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        angle = math.radians(abs(degrees))
        largest = 1.0 / (math.cos(angle) + max(width / height, height / width) * math.sin(angle))
        margin = (1.0 - 0.98 * largest) / 2
        turned = image.rotate(degrees, resample=Image.Resampling.BICUBIC)
        return _crop(margin, margin, margin, margin)(turned, _rng)

    return apply


def _random_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _crop(*rng.uniform(0.0, 0.10, size=4))(image, rng)


TRANSFORMS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "re-encoded q40": lambda image, _rng: _jpeg(image, 40),
    "resized 50%": lambda image, _rng: _jpeg(
        image.resize((image.width // 2, image.height // 2)), 85
    ),
    "upscaled 200%": lambda image, _rng: _jpeg(
        image.resize((image.width * 2, image.height * 2)), 85
    ),
    "screenshot (75%, q70)": lambda image, _rng: _jpeg(
        image.resize((image.width * 3 // 4, image.height * 3 // 4)), 70
    ),
    "brightened +20": lambda image, _rng: _jpeg(Image.eval(image, lambda v: min(255, v + 20)), 85),
    "cropped 5% each side": _crop(0.05, 0.05, 0.05, 0.05),
    "cropped 10% each side": _crop(0.10, 0.10, 0.10, 0.10),
    "cropped 15% each side": _crop(0.15, 0.15, 0.15, 0.15),
    "cropped 10% left": _crop(0.10, 0.0, 0.0, 0.0),
    "cropped 10% bottom": _crop(0.0, 0.0, 0.0, 0.10),
    "random crop 0-10% per side": _random_crop,
    "cropped 20% each side": _crop(0.20, 0.20, 0.20, 0.20),
    # Flipped left to right: a common way to dodge a reverse image search.
    "mirrored": lambda image, _rng: _jpeg(ImageOps.mirror(image), 85),
    "mirrored, resized 50%": lambda image, _rng: _jpeg(
        ImageOps.mirror(image).resize((image.width // 2, image.height // 2)), 85
    ),
    "mirrored, cropped 5% each side": lambda image, rng: _crop(0.05, 0.05, 0.05, 0.05)(
        ImageOps.mirror(image), rng
    ),
    # Turned: what a photo whose EXIF orientation was lost on the way looks like.
    "turned 90 degrees right": lambda image, _rng: _jpeg(
        image.transpose(Image.Transpose.ROTATE_270), 85
    ),
    "turned 180 degrees, resized 50%": lambda image, _rng: _jpeg(
        image.transpose(Image.Transpose.ROTATE_180).resize((image.width // 2, image.height // 2)),
        85,
    ),
    # Tilted and trimmed level: a way to reuse another buyer's photo past a whole-frame hash.
    "tilted 3 degrees": _tilted(3),
    "tilted 5 degrees": _tilted(5),
    "tilted -10 degrees": _tilted(-10),
    "tilted 15 degrees": _tilted(15),
    "tilted -20 degrees": _tilted(-20),
}


def accuracy(data_dir: Path, photos_per_product: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    by_product = read_grocery_photos(data_dir)
    sample = [
        (product, path)
        for product in sorted(by_product)
        for path in rng.choice(
            by_product[product], min(photos_per_product, len(by_product[product])), replace=False
        )
    ]
    images = [Image.open(path).convert("RGB") for _, path in sample]
    index = DuplicateIndex()
    for number, image in enumerate(images):
        index.add_photo(photo_windows(image), str(number))
    largest = max(DISTANCES)
    print(
        f"duplicate accuracy: {len(images)} grocery photos of {len(by_product)} products, "
        f"indexed under {HASHES_PER_PHOTO} hashes each; shipped max distance "
        f"{DUPLICATE_MAX_DISTANCE}"
    )
    header = " ".join(f"{'d<=' + str(d):>7s}" for d in DISTANCES)
    print(f"{'recall: copy finds its original':34s} {header}")
    for name, transform in TRANSFORMS.items():
        found_at = []
        for number, image in enumerate(images):
            copy_hash = perceptual_hash(transform(image, rng))
            distance = next(
                (m.distance for m in index.query(copy_hash, largest) if m.ref == str(number)),
                largest + 1,
            )
            found_at.append(distance)
        found = np.array(found_at)
        print(f"{name:34s} " + " ".join(f"{(found <= d).mean():7.1%}" for d in DISTANCES))
    products = [product for product, _ in sample]
    same_product_hits = {d: 0 for d in DISTANCES}
    other_product_hits = {d: 0 for d in DISTANCES}
    any_hits = {d: 0 for d in DISTANCES}
    for number, image in enumerate(images):
        matches = [m for m in index.query(perceptual_hash(image), largest) if m.ref != str(number)]
        for d in DISTANCES:
            close = [m for m in matches if m.distance <= d]
            any_hits[d] += bool(close)
            same_product_hits[d] += any(products[int(m.ref)] == products[number] for m in close)
            other_product_hits[d] += any(products[int(m.ref)] != products[number] for m in close)
    count = len(images)
    print(f"{'false positives: genuine photo':34s} {header}")
    for label, hits in (
        ("flagged against any other photo", any_hits),
        ("  ... a photo of the same product", same_product_hits),
        ("  ... a photo of another product", other_product_hits),
    ):
        print(f"{label:34s} " + " ".join(f"{hits[d] / count:7.2%}" for d in DISTANCES))
    print(f"(each genuine photo is looked up against the other {count - 1} photos)")


def _numpy_scan(hashes: np.ndarray, query: int, max_distance: int) -> np.ndarray:
    """The baseline: XOR every stored hash and count bits (unpackbits on the 8 bytes)."""
    xored = (hashes ^ np.uint64(query)).view(np.uint8).reshape(-1, 8)
    return np.flatnonzero(np.unpackbits(xored, axis=1).sum(axis=1) <= max_distance)


def speed(sizes: list[int], queries: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    windows = HASHES_PER_PHOTO
    print(
        f"lookup time, one query, max distance {DUPLICATE_MAX_DISTANCE}, {windows} hashes per "
        "stored photo (uniform random hashes), median and p95 over "
        f"{queries} queries"
    )
    print(
        f"{'stored photos':>14s} {'hashes':>10s} {'build s':>8s} {'index p50 ms':>13s} "
        f"{'index p95 ms':>13s} {'numpy scan p50 ms':>18s} {'speed-up':>9s}"
    )
    for size in sizes:
        hashes = rng.integers(0, 2**64, size=size * windows, dtype=np.uint64)
        names = [str(number) for number in range(size)]
        refs = [name for name in names for _ in range(windows)]
        start = time.perf_counter()
        index = DuplicateIndex()
        index.add_many(hashes, refs)
        build = time.perf_counter() - start
        targets = rng.integers(0, len(hashes), size=queries)
        probes = []
        for target in targets:
            flips = rng.choice(
                64, size=int(rng.integers(0, DUPLICATE_MAX_DISTANCE + 1)), replace=False
            )
            probes.append(int(hashes[target]) ^ sum(1 << int(bit) for bit in flips))
        index_times, scan_times = [], []
        for probe in probes:
            start = time.perf_counter()
            found = index.query(probe, DUPLICATE_MAX_DISTANCE)
            index_times.append((time.perf_counter() - start) * 1000)
            if len(scan_times) < 20:  # the scan is slow at a million; 20 runs give its median
                start = time.perf_counter()
                scanned = _numpy_scan(hashes, probe, DUPLICATE_MAX_DISTANCE)
                scan_times.append((time.perf_counter() - start) * 1000)
                if {refs[i] for i in scanned} != {m.ref for m in found}:
                    raise AssertionError("index and linear scan disagree")
        index_p50 = float(np.median(index_times))
        scan_p50 = float(np.median(scan_times))
        print(
            f"{size:14,d} {len(hashes):10,d} {build:8.2f} {index_p50:13.3f} "
            f"{np.percentile(index_times, 95):13.3f} {scan_p50:18.2f} {scan_p50 / index_p50:8.0f}x"
        )
        del index, hashes, refs


def _look_up_with_index(
    rows: list[tuple[str, str]], queries: list[int]
) -> list[list[DuplicateMatch]]:
    """The path before session 9: every text parsed hash by hash, one bulk `add_many`."""
    hashes: list[int] = []
    refs: list[str] = []
    for ref, text in rows:
        windows = parse_hashes(text)
        hashes.extend(windows)
        refs.extend([ref] * len(windows))
    index = DuplicateIndex()
    index.add_many(hashes, refs)
    return [index.query(query) for query in queries]


def _look_up_with_scan(
    rows: list[tuple[str, str]], queries: list[int]
) -> list[list[DuplicateMatch]]:
    scan = WindowScan(rows)
    return [scan.query(query) for query in queries]


def pending_lookup(sizes: list[int], repeats: int, seed: int) -> None:
    """What an upload pays to look its photos up among the uploads still being recorded
    (`Runtime.register_pending_evidence`): the rows' texts parsed, then one query per photo of
    the upload. Baseline, in the same run: each text parsed hash by hash into a DuplicateIndex,
    as before session 9."""
    rng = np.random.default_rng(seed)
    photos_in_upload = 2
    print(
        f"pending look-up: N registered photos x {HASHES_PER_PHOTO} hashes, an upload of "
        f"{photos_in_upload} photos; median over {repeats} runs"
    )
    print(f"{'pending photos':>15s} {'index ms':>9s} {'scan ms':>8s} {'speed-up':>9s}")
    for size in sizes:
        windows = rng.integers(0, 2**64, size=(size, HASHES_PER_PHOTO), dtype=np.uint64)
        rows = [
            (f"clm_{i}/{i:064x}", format_hashes(int(h) for h in row))
            for i, row in enumerate(windows)
        ]
        queries = [int(windows[rng.integers(size), 0]) ^ 0b101 for _ in range(photos_in_upload)]

        if _look_up_with_index(rows, queries) != _look_up_with_scan(rows, queries):
            raise AssertionError("index and scan disagree")
        times = {}
        for name, look_up in (("index", _look_up_with_index), ("scan", _look_up_with_scan)):
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                look_up(rows, queries)
                runs.append((time.perf_counter() - start) * 1000)
            times[name] = float(np.median(runs))
        print(
            f"{size:15,d} {times['index']:9.2f} {times['scan']:8.2f} "
            f"{times['index'] / times['scan']:8.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--photos-per-product", type=int, default=8)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--pending", default="100,1000,5000", help="pending photos to look among")
    args = parser.parse_args()
    if not args.skip_accuracy:
        accuracy(args.data, args.photos_per_product, args.seed)
        print()
    if not args.skip_speed:
        speed([int(size) for size in args.sizes.split(",")], args.queries, args.seed)
        print()
        pending_lookup([int(size) for size in args.pending.split(",")], 30, args.seed)


if __name__ == "__main__":
    main()
