"""API benchmark: buyer photo check and evidence upload with a 4000x3000 JPEG, over real HTTP.

    python bench/bench_api.py                      # full run (about 5 minutes on 2 cores)
    python bench/bench_api.py --quick              # a smoke run while developing

What it does, all on 127.0.0.1 with a bounded number of requests:
1. writes a 4000x3000 phone-sized JPEG (synthesised; nothing downloaded);
2. starts two uvicorn servers side by side, each with a fresh temporary data dir: the app as
   shipped ("optimised": DCT-scaled JPEG decode, micro-batched model runs) and `naive_app` below
   (full 12 MP decode, one model run per photo); then, level by level and one server at a time:
   - POST /v1/evidence/check and POST /v1/claims/{id}/evidence (one photo per request, one claim
     per request so each upload is scored as new evidence) at concurrency 1, 8 and 32:
     p50 / p99 latency, photos per second, the server's peak RSS (VmHWM);
   - (optimised server only) a soak of --soak requests to /v1/evidence/check at concurrency 8,
     with the server's RSS sampled every --soak-every requests, to show memory stays flat;
3. prints the tables, the ratios optimised/naive, and the targets reached or not.

The client is httpx.AsyncClient; every request is timed from send to full response.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from fastapi import FastAPI

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PHOTO_SIZE = (4000, 3000)
CONCURRENCIES = (1, 8, 32)

# Targets from issue 4 item 8, for this 2-core machine.
TARGET_CHECK_P50_MS_AT_1 = 60.0
TARGET_SCORED_PHOTOS_PER_S_AT_8 = 25.0
# "Flat": after warm-up, RSS may not grow by more than this over the soak.
SOAK_MAX_GROWTH_MB = 30.0


@dataclass
class Measurement:
    endpoint: str
    concurrency: int
    latencies_ms: list[float]
    wall_s: float
    errors: int
    peak_rss_mb: float

    @property
    def photos_per_s(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))


@dataclass
class ServerRun:
    name: str
    measurements: list[Measurement] = field(default_factory=list)
    soak_rss_mb: list[tuple[int, float]] = field(default_factory=list)


# --- inputs -------------------------------------------------------------------------------


def phone_jpeg(size: tuple[int, int] = PHOTO_SIZE, seed: int = 7) -> bytes:
    """A 12 MP photo with smooth shading and sharp-edged shapes, like a phone shot of an item.

    Drawn at a quarter of the size and scaled up, then given fine noise, so it costs seconds of
    numpy rather than minutes; the encoder still sees 12 MP of detail to compress.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    small_w, small_h = width // 4, height // 4
    y, x = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    base = np.stack(
        [
            128 + 60 * np.sin(x / 37),
            118 + 50 * np.cos(y / 29),
            110 + 40 * np.sin((x + y) / 53),
        ],
        axis=-1,
    )
    for _ in range(25):
        cx, cy = rng.integers(0, small_w), rng.integers(0, small_h)
        radius = rng.integers(small_h // 30, small_h // 6)
        base[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = rng.integers(20, 235, size=3)
    small = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    full = np.asarray(small.resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
    full = full + rng.integers(-6, 7, size=full.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(full, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def listing_jpeg() -> bytes:
    """A small catalogue-style image, different from the evidence photo."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(
        buffer, "JPEG", quality=85
    )
    return buffer.getvalue()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same pixels with a JPEG comment segment after SOI: a distinct file (and photo id)."""
    payload = text.encode("ascii")
    segment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


# --- the naive baseline ---


def naive_app() -> FastAPI:
    """The shipped app with its two speed-ups switched off, for the baseline (uvicorn factory).

    - full decode: Pillow's JPEG `draft` (libjpeg's DCT scaling, which intake uses to decode a
      12 MP photo at 1/8 size) becomes a no-op, so every photo is decoded at its full 12 MP and
      then shrunk to the working size by intake's own thumbnail step: the naive path of
      bench/bench_check.py, inside the real app;
    - no batching: the micro-batcher is built with max_batch=1, so each photo is its own model run.
    Everything else (routes, storage, checks, model) is the shipped code. The service has no
    setting for either, so the switches are made here, in the benchmark's server process only.
    """
    from PIL import JpegImagePlugin

    from service.api import app as app_module
    from service.api import runtime as runtime_module
    from service.batching import MicroBatcher

    JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None
    runtime_module.MicroBatcher = functools.partial(MicroBatcher, max_batch=1, max_wait_ms=0)
    return app_module.create_app()


# The `triage` CLI, whether or not its console script is on PATH.
CLI = (sys.executable, "-c", "from service.cli import app; app()")
OPTIMISED_APP = "service.api.app:create_app"
NAIVE_APP = "bench_api:naive_app"


# --- server process -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of a process from /proc (VmRSS now, VmHWM the peak so far), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field_name} not found for pid {pid}")


class Server:
    """uvicorn in a child process with its own temporary data dir; keys made through the CLI."""

    def __init__(self, data_dir: Path, app: str) -> None:
        self.data_dir = data_dir
        self.app = app
        self.port = free_port()
        self.env = {**os.environ, "TRIAGE_DATA_DIR": str(data_dir)}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def create_key(self, role: str) -> str:
        output = subprocess.run(
            [*CLI, "keys", "create", "--role", role],
            env=self.env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        return output.strip().splitlines()[-1].strip()

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--factory",
                "--app-dir",
                str(Path(__file__).parent),
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not become ready within 120 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- load ---------------------------------------------------------------------------------


async def run_load(
    request: Callable[[int], Awaitable[httpx.Response]],
    *,
    total: int,
    concurrency: int,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[float], float, int]:
    """`total` requests from `concurrency` workers; returns latencies (ms), wall time, errors."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    done = 0

    async def worker() -> None:
        nonlocal next_index, errors, done
        while next_index < total:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            response = await request(index)
            elapsed = (time.perf_counter() - started) * 1000
            if response.is_success:
                latencies.append(elapsed)
            else:
                errors += 1
                if errors <= 3:
                    print(f"  ! {response.status_code}: {response.text[:200]}", file=sys.stderr)
            done += 1
            if on_done is not None:
                on_done(done)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


def requests_for(concurrency: int, quick: bool) -> int:
    """Enough requests for a stable p99 without letting one level dominate the run."""
    if quick:
        return max(8, 2 * concurrency)
    return {1: 60, 8: 160, 32: 192}.get(concurrency, 8 * concurrency)


@dataclass
class Target:
    """A started server, its HTTP client and the listing its requests refer to."""

    run: ServerRun
    server: Server
    client: httpx.AsyncClient
    buyer_headers: dict[str, str]
    listing_id: str


async def prepare(name: str, server: Server, client: httpx.AsyncClient) -> Target:
    admin, buyer = server.create_key("admin"), server.create_key("buyer")
    server.start()
    admin_headers = {"Authorization": f"Bearer {admin}"}
    listing = await client.post(
        "/v1/listings", json={"title": "Bench kettle"}, headers=admin_headers
    )
    listing.raise_for_status()
    listing_id = listing.json()["listing_id"]
    images = await client.post(
        f"/v1/listings/{listing_id}/images",
        files=[("files", ("listing.jpg", listing_jpeg(), "image/jpeg"))],
        headers=admin_headers,
    )
    images.raise_for_status()
    return Target(ServerRun(name), server, client, {"Authorization": f"Bearer {buyer}"}, listing_id)


def checker(target: Target, photo: bytes) -> Callable[[int], Awaitable[httpx.Response]]:
    async def check(index: int) -> httpx.Response:
        return await target.client.post(
            "/v1/evidence/check",
            files={"file": ("photo.jpg", photo, "image/jpeg")},
            data={"listing_id": target.listing_id},
            headers=target.buyer_headers,
        )

    return check


async def uploader(
    target: Target, photo: bytes, *, total: int, tag: str
) -> Callable[[int], Awaitable[httpx.Response]]:
    """One new claim per upload, created here (untimed); each upload a distinct file."""
    claim_ids = []
    for index in range(total):
        created = await target.client.post(
            "/v1/claims",
            json={
                "listing_id": target.listing_id,
                "order_ref": f"bench-{tag}-{index}",
                "reason": "damaged",
                "resolution": "full_refund",
            },
            headers={**target.buyer_headers, "Idempotency-Key": f"bench-{tag}-{index}"},
        )
        created.raise_for_status()
        claim_ids.append(created.json()["claim_id"])
    # Same pixels, distinct bytes: nothing is answered from the content-addressed store.
    uploads = [with_comment(photo, f"bench {tag} {index}") for index in range(total)]

    async def upload(index: int) -> httpx.Response:
        return await target.client.post(
            f"/v1/claims/{claim_ids[index]}/evidence",
            files=[("files", ("evidence.jpg", uploads[index], "image/jpeg"))],
            headers=target.buyer_headers,
        )

    return upload


async def measure(
    target: Target,
    endpoint: str,
    request: Callable[[int], Awaitable[httpx.Response]],
    *,
    total: int,
    concurrency: int,
) -> None:
    latencies, wall, errors = await run_load(request, total=total, concurrency=concurrency)
    peak = rss_mb(target.server.pid, "VmHWM")
    target.run.measurements.append(
        Measurement(endpoint, concurrency, latencies, wall, errors, peak)
    )
    print(f"  {target.run.name} {endpoint} c={concurrency}: {total} requests in {wall:.1f} s")


async def soak_run(target: Target, photo: bytes, *, total: int, every: int) -> None:
    pid = target.server.pid
    target.run.soak_rss_mb.append((0, rss_mb(pid)))

    def sample(done: int) -> None:
        if done % every == 0:
            target.run.soak_rss_mb.append((done, rss_mb(pid)))

    check = checker(target, photo)
    _, wall, errors = await run_load(check, total=total, concurrency=8, on_done=sample)
    print(f"  {target.run.name} soak: {total} checks in {wall:.0f} s, {errors} errors")


async def bench(
    servers: list[tuple[str, Server]], photo: bytes, *, quick: bool, soak: int, soak_every: int
) -> list[ServerRun]:
    """Both servers run side by side and are measured in turn, level by level, so that load
    from other processes, which drifts over minutes on a shared machine, hits both alike; the one
    not being measured sits idle."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    targets = []
    async with AsyncExitStack() as stack:
        for name, server in servers:
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=120.0)
            )
            targets.append(await prepare(name, server, client))
        for target in targets:  # first requests pay for lazy imports and the first model run
            for index in range(3):
                (await checker(target, photo)(index)).raise_for_status()
        for concurrency in CONCURRENCIES:
            for target in targets:
                total = requests_for(concurrency, quick)
                await measure(
                    target, "check", checker(target, photo), total=total, concurrency=concurrency
                )
        for concurrency in CONCURRENCIES:
            for target in targets:
                total = requests_for(concurrency, quick)
                upload = await uploader(target, photo, total=total, tag=str(concurrency))
                await measure(target, "upload", upload, total=total, concurrency=concurrency)
        if soak:
            await soak_run(targets[0], photo, total=soak, every=soak_every)
    return [target.run for target in targets]


# --- report -------------------------------------------------------------------------------


def table(runs: list[ServerRun]) -> str:
    lines = [
        "| server | endpoint | concurrency | requests | errors | p50 ms | p99 ms | photos/s "
        "| peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for m in run.measurements:
            lines.append(
                f"| {run.name} | {m.endpoint} | {m.concurrency} | {len(m.latencies_ms)} "
                f"| {m.errors} | {m.percentile(50):.0f} | {m.percentile(99):.0f} "
                f"| {m.photos_per_s:.1f} | {m.peak_rss_mb:.0f} |"
            )
    return "\n".join(lines)


def find(run: ServerRun, endpoint: str, concurrency: int) -> Measurement:
    return next(
        m for m in run.measurements if m.endpoint == endpoint and m.concurrency == concurrency
    )


def ratios(optimised: ServerRun, naive: ServerRun) -> str:
    lines = [
        "| endpoint | concurrency | p50 naive/optimised | photos/s optimised/naive |",
        "|---|---:|---:|---:|",
    ]
    for m in optimised.measurements:
        base = find(naive, m.endpoint, m.concurrency)
        lines.append(
            f"| {m.endpoint} | {m.concurrency} "
            f"| {base.percentile(50) / m.percentile(50):.2f}x "
            f"| {m.photos_per_s / base.photos_per_s:.2f}x |"
        )
    return "\n".join(lines)


def soak_report(run: ServerRun) -> tuple[str, bool]:
    series = run.soak_rss_mb
    text = "requests done -> server RSS MiB: " + ", ".join(
        f"{done}: {mb:.0f}" for done, mb in series
    )
    # The first samples include warm-up growth (allocator arenas, caches filling); judge the rest.
    settled = series[len(series) // 5 :] or series
    growth = max(mb for _, mb in settled) - settled[0][1]
    flat = growth <= SOAK_MAX_GROWTH_MB
    return (
        f"{text}\ngrowth after warm-up: {growth:+.1f} MiB ({'flat' if flat else 'GROWING'})",
        flat,
    )


def targets(run: ServerRun) -> list[tuple[str, bool]]:
    check_p50 = find(run, "check", 1).percentile(50)
    scored = find(run, "upload", 8).photos_per_s
    return [
        (
            f"check p50 at concurrency 1: {check_p50:.0f} ms (target <= "
            f"{TARGET_CHECK_P50_MS_AT_1:.0f} ms)",
            check_p50 <= TARGET_CHECK_P50_MS_AT_1,
        ),
        (
            f"photos scored per second at concurrency 8 (evidence upload): {scored:.1f} "
            f"(target >= {TARGET_SCORED_PHOTOS_PER_S_AT_8:.0f})",
            scored >= TARGET_SCORED_PHOTOS_PER_S_AT_8,
        ),
    ]


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests, short soak")
    parser.add_argument("--soak", type=int, default=5000, help="soak requests (0: no soak)")
    parser.add_argument("--soak-every", type=int, default=500, help="RSS sample interval")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    soak = min(args.soak, 200) if args.quick else args.soak
    soak_every = min(args.soak_every, 50) if args.quick else args.soak_every
    photo = phone_jpeg()
    print(f"photo: {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG, {len(photo) / 1e6:.1f} MB")
    # The machine may be shared: the load before and after says how far to trust the figures.
    print(f"cpus: {os.cpu_count()}, load average before: {load_average()}")
    configurations = [("optimised", OPTIMISED_APP)]
    if not args.no_naive:
        configurations.append(("naive", NAIVE_APP))
    servers = [
        (name, Server(Path(tempfile.mkdtemp(prefix=f"bench-api-{name}-")), app))
        for name, app in configurations
    ]
    try:
        runs = asyncio.run(
            bench(servers, photo, quick=args.quick, soak=soak, soak_every=soak_every)
        )
    finally:
        for _, server in servers:
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)

    print(f"load average after: {load_average()}")
    print()
    print(table(runs))
    if len(runs) == 2:
        print()
        print(ratios(runs[0], runs[1]))
    reached = True
    if runs[0].soak_rss_mb:
        print()
        text, flat = soak_report(runs[0])
        print(text)
        reached &= flat
    print()
    for line, ok in targets(runs[0]):
        print(f"{'reached' if ok else 'NOT reached'}: {line}")
        reached &= ok
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
