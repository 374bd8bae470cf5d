"""notebooks/evaluation.ipynb runs headless on a small subset and writes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebooks" / "evaluation.ipynb"


@pytest.mark.shared_data
def test_evaluation_notebook_executes_on_a_small_subset(shared_data: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    before = {
        path: path.stat().st_mtime
        for path in shared_data.rglob("*")
        if path.is_file() and path.suffix in (".csv", ".md", ".txt")
    }
    environment = {"TRIAGE_EVAL_LIMIT": "6"}
    previous = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        client = nbclient.NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert images >= 4  # contact sheet, ROC/PR, reliability diagram, heatmap overlays
    after = {path: path.stat().st_mtime for path in before}
    assert before == after  # nothing in ../shared changed
