"""Display copy and heatmap latency on a 4000x3000 JPEG: first GET, cached GET, 304, no cache.

    python bench/bench_photos.py [--photos 12] [--requests 60] [--heatmap-requests 60]

Two uvicorn servers side by side (bench_api.Server: fresh temporary data dir each, the shipped
model, keys made with the CLI), the same photos uploaded to both as evidence (distinct files: the
same 12 MP pixels with a different JPEG comment each), then, at concurrency 1 over real HTTP:

- shipped app, first GET of each photo: decode, re-encode, store the copy (fsync), send it;
- shipped app, cached GET: the copy read from the cache (its SHA-256 checked) and sent;
- shipped app, GET with If-None-Match of the current ETag: 304, no body;
- "no cache" app, GET: `uncached_app` below, the shipped app with `DisplayCache.get` always
  missing and `put` doing nothing, so every request decodes and re-encodes as before the cache.

The same four kinds for GET /v1/photos/{id}/heatmap.png (first GET: decode, render the overlay,
encode the PNG, store it; "no cache": `HeatmapCache` switched off the same way, so every request
renders as before its cache), with their own request count (--heatmap-requests).

Every GET, cached or not, first checks access and re-hashes the stored original (a damaged one
is withheld), so the script also times that part alone (read + SHA-256 of the original) to show
what it costs a cached GET. Requests of the kinds are interleaved, so that load from other
processes hits all alike. Prints p50 / p95 in milliseconds and the ratios. Run on purpose.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from bench_api import PHOTO_SIZE, Server, listing_jpeg, load_average, phone_jpeg, with_comment

if TYPE_CHECKING:
    from fastapi import FastAPI


def uncached_app() -> FastAPI:
    """The shipped app with the display cache switched off, for the baseline (uvicorn factory)."""
    from service.api import app as app_module
    from service.store import DisplayCache, HeatmapCache

    for cache in (DisplayCache, HeatmapCache):
        cache.get = lambda self, key: None  # type: ignore[method-assign]
        cache.put = lambda self, key, data: None  # type: ignore[method-assign]
    return app_module.create_app()


def prepare(server: Server, uploads: list[bytes]) -> tuple[httpx.Client, list[str], list[str]]:
    """Start the server; one listing, one claim, the uploads as its evidence; the photo URLs and
    the heatmap URLs."""
    admin, buyer = server.create_key("admin"), server.create_key("buyer")
    server.start()
    client = httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {buyer}"}, timeout=120
    )
    admin_headers = {"Authorization": f"Bearer {admin}"}
    listing = client.post("/v1/listings", json={"title": "Bench kettle"}, headers=admin_headers)
    listing.raise_for_status()
    listing_id = listing.json()["listing_id"]
    client.post(
        f"/v1/listings/{listing_id}/images",
        files=[("files", ("listing.jpg", listing_jpeg(), "image/jpeg"))],
        headers=admin_headers,
    ).raise_for_status()
    claim = client.post(
        "/v1/claims",
        json={
            "listing_id": listing_id,
            "order_ref": "bench-photos",
            "reason": "damaged",
            "resolution": "full_refund",
        },
        headers={"Idempotency-Key": "bench-photos"},
    )
    claim.raise_for_status()
    urls, heatmap_urls = [], []
    for data in uploads:
        response = client.post(
            f"/v1/claims/{claim.json()['claim_id']}/evidence",
            files=[("files", ("evidence.jpg", data, "image/jpeg"))],
        )
        response.raise_for_status()
        urls.append(response.json()["data"][0]["url"])
        heatmap_urls.append(response.json()["data"][0]["heatmap_url"])
    return client, urls, heatmap_urls


def timed(request: Callable[[], httpx.Response], expect: int, into: list[float]) -> httpx.Response:
    started = time.perf_counter()
    response = request()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != expect:
        raise RuntimeError(f"expected {expect}, got {response.status_code}: {response.text[:300]}")
    into.append(elapsed)
    return response


def original_check_ms(photo: bytes, folder: Path, runs: int) -> list[float]:
    """Read + SHA-256 of a stored original, as PhotoStore.get does on every GET."""
    path = folder / "original.jpg"
    path.write_bytes(photo)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        hashlib.sha256(path.read_bytes()).hexdigest()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_gets(
    cached_client: httpx.Client,
    cached_urls: list[str],
    plain_client: httpx.Client,
    plain_urls: list[str],
    requests: int,
    results: dict[str, list[float]],
) -> dict[str, bytes]:
    """One kind of GET (display copy or heatmap) on both servers, interleaved so that both see
    the same load: the first GET of each URL, then cached GETs, 304 revalidations and uncached
    GETs in turn. `results` holds its four series in that order; returns each URL's first body."""
    first, cached, revalidated, uncached = results.values()
    bodies = {}
    for index, url in enumerate(cached_urls):
        bodies[url] = timed(lambda url=url: cached_client.get(url), 200, first).content
        if len(uncached) < requests:
            timed(lambda i=index: plain_client.get(plain_urls[i]), 200, uncached)
    for index in range(requests):
        url = cached_urls[index % len(cached_urls)]
        response = timed(lambda url=url: cached_client.get(url), 200, cached)
        if response.content != bodies[url]:
            raise RuntimeError(f"the cached body of {url} differs from the first one")
        etag = response.headers["etag"]
        timed(
            lambda url=url, etag=etag: cached_client.get(url, headers={"If-None-Match": etag}),
            304,
            revalidated,
        )
        if len(uncached) < requests:
            plain_url = plain_urls[index % len(plain_urls)]
            timed(lambda url=plain_url: plain_client.get(url), 200, uncached)
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=12, help="distinct photos (first GETs)")
    parser.add_argument("--requests", type=int, default=60, help="cached / 304 / uncached GETs")
    parser.add_argument(
        "--heatmap-requests", type=int, default=60, help="heatmap cached / 304 / uncached GETs"
    )
    args = parser.parse_args()
    photo = phone_jpeg()
    print(f"photo: {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG, {len(photo) / 1e6:.1f} MB")
    print(f"cpus: {os.cpu_count()}, load average before: {load_average()}")
    # One more than measured: the last is each server's warm-up request (lazy imports).
    uploads = [with_comment(photo, f"bench photos {index}") for index in range(args.photos + 1)]
    cached_server = Server(
        Path(tempfile.mkdtemp(prefix="bench-photos-cached-")), "service.api.app:create_app"
    )
    plain_server = Server(
        Path(tempfile.mkdtemp(prefix="bench-photos-plain-")), "bench_photos:uncached_app"
    )
    results: dict[str, list[float]] = {
        "first GET (encode + store)": [],
        "cached GET": [],
        "If-None-Match -> 304": [],
        "no cache, every GET encodes": [],
    }
    heatmaps: dict[str, list[float]] = {
        "heatmap: first GET (render + store)": [],
        "heatmap: cached GET": [],
        "heatmap: If-None-Match -> 304": [],
        "heatmap: no cache, every GET renders": [],
    }
    try:
        cached_client, cached_urls, cached_heatmaps = prepare(cached_server, uploads)
        plain_client, plain_urls, plain_heatmaps = prepare(plain_server, uploads)
        timed(lambda: cached_client.get(cached_urls.pop()), 200, [])
        timed(lambda: plain_client.get(plain_urls.pop()), 200, [])
        timed(lambda: cached_client.get(cached_heatmaps.pop()), 200, [])
        timed(lambda: plain_client.get(plain_heatmaps.pop()), 200, [])
        copies = measure_gets(
            cached_client, cached_urls, plain_client, plain_urls, args.requests, results
        )
        pngs = measure_gets(
            cached_client,
            cached_heatmaps,
            plain_client,
            plain_heatmaps,
            args.heatmap_requests,
            heatmaps,
        )
        cached_client.close()
        plain_client.close()
        size_kb = len(copies[cached_urls[0]]) / 1024
        png_kb = len(pngs[cached_heatmaps[0]]) / 1024
        hashing = original_check_ms(photo, cached_server.data_dir, args.requests)
    finally:
        for server in (cached_server, plain_server):
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)
    print(f"load average after: {load_average()}")
    print(f"display copy: {size_kb:.0f} KiB, heatmap PNG: {png_kb:.0f} KiB\n")

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    print("| request | n | p50 ms | p95 ms | no-cache p50 / this p50 |")
    print("|---|---:|---:|---:|---:|")
    for group in (results, heatmaps):
        baseline = p(list(group.values())[-1], 50)
        for name, values in group.items():
            print(
                f"| {name} | {len(values)} | {p(values, 50):.1f} | {p(values, 95):.1f} "
                f"| {baseline / p(values, 50):.1f}x |"
            )
    print(
        f"\nof which the original's read + SHA-256 (in-process, {len(hashing)} runs): "
        f"p50 {p(hashing, 50):.1f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
