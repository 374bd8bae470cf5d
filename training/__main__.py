"""`python -m training {train,export,calibrate,evaluate,release,run,recalibrate}`: the recipe of
the shipped model, and a refit of its calibration from reviewer labels.

`run` does everything in order and is resumable: finished stages are picked up from the run
directory (checkpoints, caches), an interrupted training run continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_type_hints

from training.config import TrainConfig

# A few seconds' recipe for tests and smoke checks: the same code path, tiny data and steps.
TINY_RECIPE = {
    "max_photos_per_product": 1,
    "catalog_variants": 2,
    "photo_variants": 2,
    "package_variants": 2,
    "max_packages": 6,
    "steps": 4,
    "checkpoint_every": 2,
    "products_per_batch": 4,
    "photos_per_product": 1,
    "packages_per_batch": 4,
    "eval_limit": 6,
    "tiles_intact_limit": 3,
    "warmup_steps": 1,
    # Released under its own label: a seconds-long model must never pass for the release it was
    # made beside (it would land in models/<name>-<version>-tiny, never over the shipped folder).
    "version": f"{TrainConfig().version}-tiny",
}


def _parse_value(text: str, kind: Any) -> Any:
    if kind is bool:
        return text.lower() in ("1", "true", "yes")
    if kind in (int, float, str):
        return kind(text)
    return json.loads(text)


def build_config(arguments: argparse.Namespace) -> TrainConfig:
    values = TrainConfig().to_dict()
    if arguments.tiny:
        values.update(TINY_RECIPE)
    hints = get_type_hints(TrainConfig)
    for assignment in arguments.set or []:
        key, _, text = assignment.partition("=")
        if key not in values:
            raise SystemExit(f"unknown config key {key!r}; known: {', '.join(sorted(values))}")
        try:
            values[key] = _parse_value(text, hints[key])
        except ValueError:
            kind = getattr(hints[key], "__name__", hints[key])
            raise SystemExit(f"--set {assignment}: not a valid {kind} value") from None
    for key in ("data_root", "run_dir", "models_dir", "steps"):
        if getattr(arguments, key, None) is not None:
            values[key] = getattr(arguments, key)
    if arguments.extra_manifest:
        values["extra_manifests"] = list(arguments.extra_manifest)
    return TrainConfig.from_dict(values)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    for name, help_text in (
        (
            "train",
            "train the fine-tuned model (or, with --baseline, the frozen-trunk baseline)",
        ),
        ("export", "ONNX export, parity check, INT8 study: the file that will ship"),
        (
            "calibrate",
            "fit damage temperature and bias, mismatch logistic and thresholds on "
            "validation, through the file that will ship",
        ),
        ("evaluate", "held-out test figures for the shipped file and the baseline"),
        ("release", "models/<name>-<version>/: the shipped file and its model card"),
        ("run", "all of the above, in order (resumable)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--tiny", action="store_true", help="a seconds-long test recipe")
        command.add_argument("--data-root", help="the shared data folder (default ../shared/data)")
        command.add_argument("--run-dir", help="checkpoints, caches and reports")
        command.add_argument("--models-dir", help="where models/<name>-<version>/ is written")
        command.add_argument("--steps", type=int, help="optimiser steps")
        command.add_argument(
            "--extra-manifest",
            action="append",
            help="a user's labelled photos (CSV/JSONL), repeatable",
        )
        command.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="override any TrainConfig field"
        )
        command.add_argument(
            "--no-resume",
            action="store_true",
            help="start training from scratch even if a checkpoint exists",
        )
        if name == "train":
            command.add_argument(
                "--baseline",
                action="store_true",
                help="train the heads only, on the frozen ImageNet trunk",
            )
    recalibrate = commands.add_parser(
        "recalibrate",
        help="refit a released model's calibration and thresholds from reviewer labels "
        "(`triage labels export`), without retraining; writes a new model folder",
    )
    recalibrate.add_argument("--model-dir", required=True, help="the released model folder")
    recalibrate.add_argument(
        "--labels", required=True, help="labelled photos (CSV/JSONL, the export's format)"
    )
    recalibrate.add_argument("--out", required=True, help="the new model folder")
    recalibrate.add_argument("--version", required=True, help="the new card's version")
    return root


def check_inputs(config: TrainConfig) -> None:
    """The data root and every user manifest, checked before anything is rendered or trained."""
    from training.data import check_labelled_photos

    if not (Path(config.data_root) / "grocery" / "manifest.csv").is_file():
        raise SystemExit(f"{config.data_root}: no grocery/manifest.csv; is it the shared data?")
    for manifest in config.extra_manifests:
        try:
            check_labelled_photos(Path(manifest))
        except (OSError, ValueError) as error:
            raise SystemExit(f"extra manifest {manifest}: {error}") from None


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parser().parse_args(argv)
    if arguments.command == "recalibrate":
        from training.recalibrate import recalibrate

        try:
            written = recalibrate(
                Path(arguments.model_dir),
                Path(arguments.labels),
                Path(arguments.out),
                arguments.version,
            )
        except (OSError, ValueError) as error:  # a missing model or labels file, a bad row
            raise SystemExit(f"recalibrate: {error}") from None
        print(f"recalibrated model written to {written}")
        return
    config = build_config(arguments)
    if arguments.command != "release":  # release reads the run directory only
        check_inputs(config)
    # Imported here so that `--help` answers without loading torch.
    from training import pipeline, train

    started = time.perf_counter()
    resume = not arguments.no_resume
    if arguments.command in ("train", "run"):
        baseline = dataclasses.replace(config, fine_tune=False)
        if arguments.command == "train":
            variants = [baseline] if arguments.baseline else [config]
        else:
            variants = [config, baseline]
        for variant in variants:
            train.main(variant, resume=resume)
    if arguments.command in ("export", "run"):
        pipeline.export(config)
    if arguments.command in ("calibrate", "run"):
        pipeline.calibrate(config)
    if arguments.command in ("evaluate", "run"):
        pipeline.evaluate(config)
    if arguments.command in ("release", "run"):
        print(f"model written to {pipeline.release(config)}")
    print(f"{arguments.command} took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
