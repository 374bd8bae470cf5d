"""Check latency on a 12-megapixel phone JPEG: the service's path against the naive one.

    python bench/bench_check.py [--runs 30]

Both paths run the same checks (service.checks.check_photo) on the same 4000x3000 JPEG, which
carries EXIF orientation 6 like a phone photo held upright, alternating run by run so that any
load from other processes hits both alike:
- service: open_photo (header checks, libjpeg DCT-scaled draft decode at 1/8, orient, shrink);
- naive: full decode of all 12 MP, exif_transpose, resize to 448 px, then the same checks.
Prints p50, p95 and mean in milliseconds and the naive/service ratio. Run on purpose, not in CI.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from service.checks import check_photo
from service.intake import Photo, open_photo, sha256_hex

WIDTH, HEIGHT = 4000, 3000
WORKING_SIDE = 448


def phone_like_jpeg(seed: int = 0) -> bytes:
    """A 4000x3000 JPEG with a phone's detail level (smooth shapes, texture and sensor noise)
    so the decoder does realistic work; real photos decode at about the same speed per pixel."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    texture = (20 * np.sin(x / 7.0) * np.cos(y / 11.0)).astype(np.float32)[..., None]
    noisy = base.astype(np.float32) + texture + rng.normal(0, 4, base.shape).astype(np.float32)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def naive_open(data: bytes) -> Photo:
    """What one would write without thinking about cost: decode everything, then shrink."""
    image = Image.open(io.BytesIO(data))
    image.load()
    original = ImageOps.exif_transpose(image).convert("RGB")
    working = original.copy()
    working.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BILINEAR)
    return Photo(
        photo_id=sha256_hex(data),
        format="JPEG",
        byte_size=len(data),
        original_size=original.size,
        image=working,
        has_gps=False,
        orientation=6,
    )


def timed(path: Callable[[bytes], Photo], data: bytes) -> tuple[float, list[str]]:
    start = time.perf_counter()
    issues = check_photo(path(data))
    return (time.perf_counter() - start) * 1000.0, [issue.code for issue in issues]


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    data = phone_like_jpeg()
    paths = {"service (draft decode)": open_photo, "naive (full decode, resize)": naive_open}
    findings = {name: timed(path, data)[1] for name, path in paths.items()}  # warm-up
    if len(set(map(tuple, findings.values()))) != 1:
        print(f"note: the two paths disagree on findings: {findings}")
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.runs):
        for name, path in paths.items():
            times[name].append(timed(path, data)[0])
    service, naive = times["service (draft decode)"], times["naive (full decode, resize)"]
    print(
        f"check latency, {WIDTH}x{HEIGHT} JPEG ({len(data) / 1e6:.1f} MB), {args.runs} runs, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'path':30s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s}")
    for name, values in times.items():
        print(
            f"{name:30s} {percentile(values, 50):8.1f} {percentile(values, 95):8.1f} "
            f"{statistics.fmean(values):8.1f}"
        )
    print(
        f"{'ratio naive / service':30s} {percentile(naive, 50) / percentile(service, 50):8.1f}x "
        f"{percentile(naive, 95) / percentile(service, 95):7.1f}x "
        f"{statistics.fmean(naive) / statistics.fmean(service):7.1f}x"
    )
    print(f"findings on this photo: {findings['service (draft decode)'] or 'none'}")


if __name__ == "__main__":
    main()
