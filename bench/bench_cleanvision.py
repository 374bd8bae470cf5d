"""Our quality checks against cleanvision on the same 1,000 images: speed and agreement.

    python bench/bench_cleanvision.py --data ../shared/data [--count 1000]
        [--venv /tmp/cleanvision-venv]

cleanvision is AGPL-licensed, so it never enters this project's environment: it runs in a
throwaway virtual environment of its own (created and filled with `pip install cleanvision` on
first use, in a temporary folder unless --venv names one), in a subprocess that reads the image
folder and prints JSON. Nothing here imports it.

The 1,000 images are grocery phone photos, each written as a JPEG after one degradation from
training/quality_thresholds.py (clean, blurred, darkened, brightened...), so both tools see the
same files with a known share of problems. Both run single-process (cleanvision with n_jobs=1).
Agreement is reported for blurry / dark / light (cleanvision) against blurry / too_dark /
overexposed (ours), as the share of images where both say the same and as Cohen's kappa, plus
each tool's recall on the degradation labels. Run on purpose, not in CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np
from PIL import Image

from service.intake import open_photo
from service.quality import quality_issues
from training.quality_thresholds import VARIANTS, read_grocery_photos

PAIRS = (("blurry", "blurry"), ("dark", "too_dark"), ("light", "overexposed"))
# The labelled kinds of degradation both tools claim to detect, plus their negatives.
_USED_VARIANTS = [
    variant for variant in VARIANTS if variant.code in (None, "blurry", "too_dark", "overexposed")
]

CLEANVISION_RUNNER = """
import json, sys, time
from cleanvision import Imagelab
folder = sys.argv[1]
lab = Imagelab(data_path=folder)
start = time.perf_counter()
lab.find_issues({"blurry": {}, "dark": {}, "light": {}}, n_jobs=1, verbose=False)
seconds = time.perf_counter() - start
issues = lab.issues
flags = {
    str(path).rsplit("/", 1)[-1]: {
        kind: bool(issues.loc[path, f"is_{kind}_issue"]) for kind in ("blurry", "dark", "light")
    }
    for path in issues.index
}
print(json.dumps({"seconds": seconds, "flags": flags}))
"""


def cleanvision_python(venv_dir: Path) -> Path:
    """The interpreter of a virtual environment holding cleanvision, made on first use."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        print(f"creating a throwaway venv for cleanvision in {venv_dir} ...", file=sys.stderr)
        venv.create(venv_dir, with_pip=True)
    probe = subprocess.run([python, "-c", "import cleanvision"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "-q", "cleanvision"], check=True)
    return python


def write_images(data_dir: Path, folder: Path, count: int, seed: int) -> dict[str, str | None]:
    """`count` degraded grocery photos as JPEG files; returns file name -> label code."""
    rng = np.random.default_rng(seed)
    photos = [path for paths in read_grocery_photos(data_dir).values() for path in paths]
    chosen = rng.choice(len(photos), size=count, replace=False)
    labels: dict[str, str | None] = {}
    for number, index in enumerate(chosen):
        variant = _USED_VARIANTS[number % len(_USED_VARIANTS)]
        image = variant.transform(Image.open(photos[index]).convert("RGB"), rng)
        name = f"{number:04d}.jpg"
        image.save(folder / name, format="JPEG", quality=88)
        labels[name] = variant.code
    return labels


def run_ours(folder: Path, names: list[str]) -> tuple[float, dict[str, set[str]]]:
    start = time.perf_counter()
    found = {
        name: {issue.code for issue in quality_issues(open_photo((folder / name).read_bytes()))}
        for name in names
    }
    return time.perf_counter() - start, found


def run_cleanvision(python: Path, folder: Path) -> tuple[float, dict[str, dict[str, bool]]]:
    start = time.perf_counter()
    result = subprocess.run(
        [python, "-c", CLEANVISION_RUNNER, str(folder)], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"cleanvision: find_issues {payload['seconds']:.1f} s, with its start-up {wall:.1f} s",
        file=sys.stderr,
    )
    return payload["seconds"], payload["flags"]


def cohen_kappa(first: np.ndarray, second: np.ndarray) -> float:
    observed = float((first == second).mean())
    expected = float(first.mean() * second.mean() + (1 - first.mean()) * (1 - second.mean()))
    return (observed - expected) / (1 - expected) if expected < 1 else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", type=Path, default=None, help="cleanvision's own venv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cleanvision-") as scratch:
        scratch_dir = Path(scratch)
        python = cleanvision_python(args.venv or scratch_dir / "venv")
        folder = scratch_dir / "images"
        folder.mkdir()
        labels = write_images(args.data, folder, args.count, args.seed)
        names = sorted(labels)
        ours_seconds, ours = run_ours(folder, names)
        theirs_seconds, theirs = run_cleanvision(python, folder)
    print(f"{args.count} degraded grocery photos (348x348 JPEG), single process each")
    print(f"{'tool':24s} {'seconds':>8s} {'ms / image':>11s}")
    per_image = 1000 * ours_seconds / args.count
    print(f"{'ours (quality_issues)':24s} {ours_seconds:8.2f} {per_image:11.2f}")
    print(
        f"{'cleanvision (3 checks)':24s} {theirs_seconds:8.2f} "
        f"{1000 * theirs_seconds / args.count:11.2f}"
    )
    print(f"speed ratio cleanvision / ours: {theirs_seconds / ours_seconds:.1f}x")
    print()
    print(
        f"{'cleanvision vs ours':26s} {'agree':>6s} {'kappa':>6s} {'both':>5s} {'only cv':>8s} "
        f"{'only ours':>9s} {'cv recall':>10s} {'our recall':>11s} {'labelled':>9s}"
    )
    for theirs_kind, our_code in PAIRS:
        cv = np.array([theirs[name][theirs_kind] for name in names])
        us = np.array([our_code in ours[name] for name in names])
        positive = np.array([labels[name] == our_code for name in names])
        print(
            f"{theirs_kind + ' / ' + our_code:26s} {(cv == us).mean():6.1%} "
            f"{cohen_kappa(cv, us):6.2f} {int((cv & us).sum()):5d} {int((cv & ~us).sum()):8d} "
            f"{int((~cv & us).sum()):9d} {cv[positive].mean():10.1%} {us[positive].mean():11.1%} "
            f"{int(positive.sum()):9d}"
        )


if __name__ == "__main__":
    main()
