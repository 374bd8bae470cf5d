"""Measure onnxruntime settings for the scoring engine on this machine, and pick defaults.

    python bench/bench_engine.py [--model-dir DIR] [--seconds 1.5] [--batches 1,4,8,16]
        [--rounds 3] [--clients 8] [--batch-photos 120 --batch-engines local,ray]

For every combination of intra-op threads (1, 2), spinning (on, off) and the other core idle or
busy (a busy-loop process), it runs the model on batches of 1/4/8/16 synthetic photos for a fixed
time and prints images per second, the median latency of one run, and the ratio to the baseline
(1 thread, no spinning, idle) measured in the same run. A second table compares concurrent
single-photo requests with and without the micro-batcher; a third (optional) times `triage batch`
on real grocery photos with the local and Ray engines. Results go into docs/engine.md by hand.

"Idle" means no extra load from this script: on a shared machine other processes may still run,
so the load average is printed with each table.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from service.batch import BatchJob
from service.batching import MicroBatcher
from service.engine import DEFAULT_MODEL_DIR, ScoringEngine
from service.policy import PolicyConfig


def _spin_forever() -> None:
    while True:
        pass


@contextmanager
def other_core_busy(busy: bool) -> Iterator[None]:
    if not busy:
        yield
        return
    process = multiprocessing.Process(target=_spin_forever, daemon=True)
    process.start()
    time.sleep(0.2)  # let it reach the scheduler before measuring
    try:
        yield
    finally:
        process.terminate()
        process.join()


def synthetic_photos(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, size=(336, 448, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def measure(engine: ScoringEngine, inputs: np.ndarray, seconds: float) -> tuple[float, float]:
    """(images per second, median milliseconds per run) over `seconds` of back-to-back runs."""
    engine.run(inputs)  # warm-up: first run allocates
    durations = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < 3:
        start = time.perf_counter()
        engine.run(inputs)
        durations.append(time.perf_counter() - start)
    return len(inputs) * len(durations) / sum(durations), statistics.median(durations) * 1e3


def settings_table(model_dir: Path, batches: list[int], seconds: float, rounds: int) -> None:
    """Median over `rounds` interleaved rounds, so drift in the machine's load hits every cell."""
    photos = synthetic_photos(max(batches))
    engines = {
        (threads, spinning): ScoringEngine.load(
            model_dir,
            intra_op_threads=threads,
            allow_spinning=spinning,
            max_run_batch=max(batches),
        )
        for threads in (1, 2)
        for spinning in (False, True)
    }
    inputs = {batch: engines[(1, False)].preprocess(photos[:batch]) for batch in batches}
    print(f"load average at start: {os.getloadavg()}")
    samples: dict[tuple[bool, int, bool, int], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for busy in (False, True):
            with other_core_busy(busy):
                for (threads, spinning), engine in engines.items():
                    for batch in batches:
                        key = (busy, threads, spinning, batch)
                        samples.setdefault(key, []).append(measure(engine, inputs[batch], seconds))
    print(f"load average at end: {os.getloadavg()}; medians of {rounds} rounds")
    header = ("threads", "spin", "other core", "batch", "img/s", "ms/run", "vs base")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (busy, threads, spinning, batch), values in samples.items():
        rate = statistics.median(rate for rate, _ in values)
        median_ms = statistics.median(ms for _, ms in values)
        base = statistics.median(rate for rate, _ in samples[(False, 1, False, batch)])
        cells = (
            threads,
            "on" if spinning else "off",
            "busy" if busy else "idle",
            batch,
            f"{rate:.1f}",
            f"{median_ms:.1f}",
            f"{rate / base:.2f}x",
        )
        print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


def throughput(
    infer: Callable[[Sequence[Image.Image]], object],
    photo: list[Image.Image],
    seconds: float,
    clients: int,
) -> float:
    """Photos per second when `clients` threads call `infer` back to back for `seconds`."""
    infer(photo)
    done = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            infer(photo)
            with lock:
                done += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    return done / (time.perf_counter() - start)


def concurrency_table(model_dir: Path, seconds: float, clients: int) -> None:
    """Throughput of `clients` threads each preprocessing and scoring one photo at a time."""
    print(
        f"\n{clients} concurrent single-photo clients (preprocessing included), {seconds:.1f}s each"
    )
    print("| threads | path | img/s | vs 1 thread direct |")
    print("|---|---|---|---|")
    photo = synthetic_photos(1)
    baseline = None
    for threads in (1, 2):
        engine = ScoringEngine.load(model_dir, intra_op_threads=threads)
        for use_batcher in (False, True):
            batcher = MicroBatcher(engine) if use_batcher else None
            infer = batcher.infer if batcher else engine.infer
            rate = throughput(infer, photo, seconds, clients)
            baseline = baseline or rate
            path = (
                f"MicroBatcher({batcher.max_batch}, {batcher.max_wait_s * 1e3:.0f} ms)"
                if batcher
                else "engine.infer"
            )
            if batcher:
                path += f", {rate * seconds / max(1, batcher.runs):.1f} photos/run"
                batcher.close()
            print(f"| {threads} | {path} | {rate:.1f} | {rate / baseline:.2f}x |", flush=True)


def batch_table(model_dir: Path, data_dir: Path, photos: int, engines: list[str]) -> None:
    """`triage batch` throughput on real grocery photos (each compared with its product's
    catalog image), local engine first as the baseline, then Ray if asked for."""
    manifest_rows = list(csv.DictReader((data_dir / "manifest.csv").open()))
    listing_of = {row["product"]: row["path"] for row in manifest_rows if row["role"] == "listing"}
    chosen = [row for row in manifest_rows if row["role"] != "listing"][::7][:photos]
    print(f"\n`triage batch` on {len(chosen)} grocery photos; load {os.getloadavg()}")
    print("| engine | rows/s | wall s | vs local |")
    print("|---|---|---|---|")
    engine = ScoringEngine.load(model_dir)
    baseline = None
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.csv"
        with manifest.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["claim_id", "photo", "listing_images", "reason"])
            for index, row in enumerate(chosen):
                writer.writerow(
                    [f"c{index // 3}", row["path"], listing_of[row["product"]], "wrong_item"]
                )
        for kind in engines:
            start = time.perf_counter()
            BatchJob(
                manifest,
                images_root=data_dir,
                out=Path(folder) / f"{kind}.parquet",
                engine=engine,
                policy=PolicyConfig(),
                engine_kind=kind,  # type: ignore[arg-type]
            ).run()
            wall = time.perf_counter() - start
            rate = len(chosen) / wall
            baseline = baseline or rate
            print(f"| {kind} | {rate:.1f} | {wall:.1f} | {rate / baseline:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-settings", action="store_true")
    parser.add_argument("--skip-concurrency", action="store_true")
    parser.add_argument("--batch-photos", type=int, default=0, help="0: skip the batch table")
    parser.add_argument(
        "--batch-engines", default="local", help="local and/or ray, comma-separated"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/grocery"
    )
    args = parser.parse_args()
    batches = [int(value) for value in args.batches.split(",")]
    if not args.skip_settings:
        settings_table(args.model_dir, batches, args.seconds, args.rounds)
    if not args.skip_concurrency:
        concurrency_table(args.model_dir, args.seconds * 2, args.clients)
    if args.batch_photos:
        batch_table(args.model_dir, args.data_dir, args.batch_photos, args.batch_engines.split(","))


if __name__ == "__main__":
    main()
