"""pyproject.toml lists its packages by hand (so that the shipped model can travel in the wheel as
service/shipped_models/): these checks keep that list and the model's package data in step with
the tree, without building a wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from service.engine import CARD_FILE, DEFAULT_MODEL_DIR, SHIPPED_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]


def _setuptools_config() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_in_the_tree_is_listed() -> None:
    # What setuptools' namespace discovery would find (every folder, code or data), without
    # needing setuptools, which a Python 3.12 venv no longer carries.
    found = {
        ".".join(folder.relative_to(REPO_ROOT).parts)
        for top in ("service", "training")
        for folder in [REPO_ROOT / top, *(REPO_ROOT / top).rglob("*")]
        if folder.is_dir() and "__pycache__" not in folder.parts
    }
    listed = set(_setuptools_config()["packages"])
    assert listed - {"service.shipped_models"} == found


def test_the_wheel_carries_the_model_the_service_defaults_to() -> None:
    config = _setuptools_config()
    models_dir = REPO_ROOT / config["package-dir"]["service.shipped_models"]
    patterns = config["package-data"]["service.shipped_models"]
    assert sorted(patterns) == sorted(
        [f"{SHIPPED_MODEL}/model.onnx", f"{SHIPPED_MODEL}/{CARD_FILE}"]
    )
    for pattern in patterns:
        assert (models_dir / pattern).is_file(), pattern
    # In a checkout the default is the folder the wheel copies.
    assert models_dir / SHIPPED_MODEL == DEFAULT_MODEL_DIR


def test_the_cli_runs_as_a_module() -> None:
    """`python -m service.cli` is `triage` where the console script is not on PATH."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: triage keys" in result.stdout
