"""The scoring engine and the micro-batcher on the tiny fixture model; then the shipped model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import textured_image
from onnx_fixtures import (
    RED_BIAS,
    RED_GAIN,
    TINY_CARD,
    TINY_EMBEDDING_DIM,
    TINY_MODEL_VERSION,
    tiny_model_proto,
    write_tiny_model,
)
from PIL import Image

from service.batching import BatcherClosed, MicroBatcher
from service.engine import (
    DEFAULT_MODEL_DIR,
    ModelCard,
    ModelLoadError,
    ScoringEngine,
)
from service.preprocess import batch_inputs


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> ScoringEngine:
    return ScoringEngine.load(tiny_dir)


def grey(side: int = 224) -> Image.Image:
    return Image.new("RGB", (side, side), (124, 116, 104))  # normalises to about zero


def red_corner() -> Image.Image:
    """A grey square with a pure red top-left 32x32 cell."""
    image = grey()
    image.paste((255, 0, 0), (0, 0, 32, 32))
    return image


def test_loads_the_card_and_names_the_version(engine: ScoringEngine):
    assert engine.model_version == TINY_MODEL_VERSION
    assert engine.card.embedding_dim == TINY_EMBEDDING_DIM
    assert engine.card.thresholds.damage_high == TINY_CARD["thresholds"]["damage_high"]
    assert engine.intra_op_threads == 1 and engine.allow_spinning is False


def test_damage_is_calibrated_with_the_card_temperature_and_bias(engine: ScoringEngine):
    temperature = TINY_CARD["calibration"]["damage"]["temperature"]
    bias = TINY_CARD["calibration"]["damage"]["bias"]
    (output,) = engine.infer([red_corner()])
    red = (1.0 - 0.485) / 0.229
    green, blue = (0.0 - 0.456) / 0.224, (0.0 - 0.406) / 0.225
    logit = RED_GAIN * (red - (green + blue) / 2) - RED_BIAS
    assert output.damage == pytest.approx(1 / (1 + np.exp(-(logit / temperature + bias))), rel=1e-4)


def test_heatmap_marks_the_damaged_cell(engine: ScoringEngine):
    (output,) = engine.infer([red_corner()])
    assert output.heatmap.shape == (7, 7)
    assert np.unravel_index(np.argmax(output.heatmap), (7, 7)) == (0, 0)
    assert output.heatmap[0, 0] > 0.99 and output.heatmap[3:, 3:].max() < 0.5
    assert ((output.heatmap >= 0) & (output.heatmap <= 1)).all()


def test_embeddings_are_unit_length_and_identify_the_picture(engine: ScoringEngine):
    first, same, other = engine.infer([textured_image(seed=1), textured_image(seed=1), grey()])
    assert np.linalg.norm(first.embedding) == pytest.approx(1.0, abs=1e-5)
    assert float(first.embedding @ same.embedding) == pytest.approx(1.0, abs=1e-5)
    assert float(first.embedding @ other.embedding) < 0.99


def test_batches_match_single_runs_and_keep_order(tiny_dir: Path):
    small_chunks = ScoringEngine.load(tiny_dir, max_run_batch=2)
    images = [textured_image(160, 120, seed=seed) for seed in range(5)]
    together = small_chunks.infer(images)
    alone = [small_chunks.infer([image])[0] for image in images]
    assert len(together) == 5
    for batched, single in zip(together, alone, strict=True):
        assert batched.damage == pytest.approx(single.damage, abs=1e-6)
        np.testing.assert_allclose(batched.embedding, single.embedding, atol=1e-6)
    assert small_chunks.infer([]) == []


def test_preprocessing_is_the_shared_one(engine: ScoringEngine):
    image = textured_image(300, 200, seed=3)
    np.testing.assert_array_equal(engine.preprocess([image]), batch_inputs([image]))


def test_threads_can_be_configured(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    assert ScoringEngine.load(tiny_dir, intra_op_threads=2).intra_op_threads == 2
    monkeypatch.setenv("TRIAGE_ORT_THREADS", "2")
    assert ScoringEngine.load(tiny_dir).intra_op_threads == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"calibration": {"damage": {"method": "temperature", "temperature": 0}}}, "temperature"),
        ({"thresholds": {**TINY_CARD["thresholds"], "damage_low": 0.9}}, "must not exceed"),
        ({"outputs": {"damage_logit": "x"}}, "damage_map"),
        ({"file": "absent.onnx"}, "absent.onnx"),
        ({"embedding_dim": 32}, "32"),
    ],
)
def test_bad_cards_are_refused_with_a_reason(tmp_path: Path, change: dict, message: str):
    write_tiny_model(tmp_path)
    card = json.loads((tmp_path / "model_card.json").read_text())
    card.update(change)
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=message):
        ScoringEngine.load(tmp_path)


def test_missing_model_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="no model card"):
        ScoringEngine.load(tmp_path / "nowhere")


def test_graph_without_an_output_is_refused(tmp_path: Path):
    import onnx

    write_tiny_model(tmp_path)
    model = tiny_model_proto()
    del model.graph.output[2]
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ModelLoadError, match="embedding"):
        ScoringEngine.load(tmp_path)


def test_card_keeps_extra_keys(tiny_dir: Path):
    card = ModelCard.read(tiny_dir)
    assert card.model_extra is not None and "limitations" in card.model_extra


def test_mismatch_calibration_follows_the_card(engine: ScoringEngine):
    # slope -12, intercept 6: similarity 0.5 is the even point, 1.0 (same item) is unlikely
    assert engine.card.mismatch_probability(0.5) == pytest.approx(0.5)
    assert engine.card.mismatch_probability(1.0) == pytest.approx(1 / (1 + np.exp(6)))


# --- micro-batcher ---------------------------------------------------------------------------


def test_batcher_returns_what_the_engine_returns(engine: ScoringEngine):
    images = [textured_image(200, 150, seed=seed) for seed in range(3)]
    with MicroBatcher(engine, max_batch=8, max_wait_ms=2) as batcher:
        assert batcher.model_version == engine.model_version
        results = batcher.infer(images)
        assert batcher.infer([]) == []
    for got, expected in zip(results, engine.infer(images), strict=True):
        assert got.damage == pytest.approx(expected.damage, abs=1e-6)


def test_concurrent_callers_share_runs_and_get_their_own_answers(engine: ScoringEngine):
    images = [textured_image(96, 96, seed=seed) for seed in range(12)]
    expected = [output.damage for output in engine.infer(images)]
    results: dict[int, float] = {}
    start = threading.Barrier(len(images))
    # A long wait makes coalescing certain without any timing assertion.
    with MicroBatcher(engine, max_batch=4, max_wait_ms=500) as batcher:

        def call(index: int) -> None:
            start.wait()
            results[index] = batcher.infer([images[index]])[0].damage

        threads = [threading.Thread(target=call, args=(index,)) for index in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runs = batcher.runs
    assert [results[index] for index in range(len(images))] == pytest.approx(expected, abs=1e-6)
    assert runs == 3  # 12 single-photo calls in batches of 4


def test_batcher_failure_reaches_every_caller(engine: ScoringEngine):
    class FailingEngine:
        card = engine.card
        model_version = engine.model_version
        preprocess = staticmethod(engine.preprocess)

        def run(self, inputs: np.ndarray) -> list:
            raise RuntimeError("model exploded")

    with (
        MicroBatcher(FailingEngine(), max_wait_ms=0) as batcher,  # type: ignore[arg-type]
        pytest.raises(RuntimeError, match="exploded"),
    ):
        batcher.infer([grey()])


def test_closed_batcher_refuses_work(engine: ScoringEngine):
    batcher = MicroBatcher(engine)
    batcher.close()
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.infer([grey()])


# --- the shipped model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> ScoringEngine:
    if not (DEFAULT_MODEL_DIR / "model_card.json").is_file():
        pytest.skip(f"the shipped model is not in {DEFAULT_MODEL_DIR}")
    return ScoringEngine.load()


def test_shipped_model_honours_the_contract(shipped: ScoringEngine):
    assert shipped.model_version == "evidence-lite0-1.3.1"
    outputs = shipped.infer([textured_image(seed=seed) for seed in range(3)])
    for output in outputs:
        assert 0.0 <= output.damage <= 1.0
        assert output.heatmap.shape == (7, 7)
        assert output.embedding.shape == (shipped.card.embedding_dim,)
        assert np.linalg.norm(output.embedding) == pytest.approx(1.0, abs=1e-4)
    same = shipped.infer([textured_image(seed=0)])[0]
    assert float(same.embedding @ outputs[0].embedding) == pytest.approx(1.0, abs=1e-4)
