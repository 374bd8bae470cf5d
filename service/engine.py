"""The ONNX scoring engine: one onnxruntime session per process, calibrated outputs.

The engine knows the model only through its card (models/<name>-<version>/model_card.json, see
docs/CONTRACTS.md): the input spec it replays through service.preprocess, the calibration it
applies to the raw outputs, and the thresholds the assessment and the policy read. No threshold or
calibration constant lives in this code.

Session settings were chosen by measurement (bench/bench_engine.py, figures in docs/engine.md):
on the 2-core target machine one intra-op thread without spinning is the default. Two threads are
1.7x faster only while the other core is idle (run A: 258 vs 146 img/s at batch 8); with the other
core busy they fall to 0.41-0.65x of one idle thread, with spinning to 0.30x, and on the loaded
shared machine (run C) one thread beat two in every column. A server's other core is never idle
(uvicorn, intake decoding, the quality checks), and concurrent callers still use both cores since
each `run` with one intra-op thread computes on its caller's thread. TRIAGE_ORT_THREADS overrides.

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.preprocess import InputSpec, batch_inputs

CARD_FILE = "model_card.json"
SHIPPED_MODEL = "evidence-lite0-1.3.1"
# A checkout (or an editable install) has the shipped model in models/ beside service/; a wheel
# (pip install ., the Docker image) carries the same folder as service/shipped_models/ (see
# pyproject.toml).
_CHECKOUT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / SHIPPED_MODEL
_PACKAGED_MODEL_DIR = Path(__file__).resolve().parent / "shipped_models" / SHIPPED_MODEL
DEFAULT_MODEL_DIR = (
    _PACKAGED_MODEL_DIR if (_PACKAGED_MODEL_DIR / CARD_FILE).is_file() else _CHECKOUT_MODEL_DIR
)
OUTPUT_NAMES = ("damage_logit", "damage_map", "embedding")
# Chosen by bench/bench_engine.py on the 2-core machine (docs/engine.md).
DEFAULT_INTRA_OP_THREADS = 1
DEFAULT_ALLOW_SPINNING = False
# With one thread, throughput per image is flat across batch sizes (146-154 img/s for 1 to 16 in
# run A), so larger runs would only add memory and latency: longer inputs run in chunks of this.
DEFAULT_MAX_RUN_BATCH = 16


class ModelLoadError(RuntimeError):
    """The model folder is missing, its card is invalid, or the graph breaks the contract."""


class CardInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = "image"
    size: int = Field(gt=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["letterbox"] = "letterbox"
    pad_value: int = Field(ge=0, le=255)

    def spec(self) -> InputSpec:
        return InputSpec(
            size=self.size,
            mean=self.mean,
            std=self.std,
            resize=self.resize,
            pad_value=self.pad_value,
        )


class DamageCalibration(BaseModel):
    model_config = ConfigDict(extra="allow")

    method: Literal["temperature"]
    temperature: float = Field(gt=0)
    bias: float = 0.0  # p = sigmoid(logit / temperature + bias); cards before 1.1.0 have none


class MismatchCalibration(BaseModel):
    model_config = ConfigDict(extra="allow")

    method: Literal["logistic"]
    slope: float
    intercept: float


class Calibration(BaseModel):
    model_config = ConfigDict(extra="allow")

    damage: DamageCalibration
    mismatch: MismatchCalibration


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="allow")

    damage_high: float = Field(ge=0, le=1)
    damage_low: float = Field(ge=0, le=1)
    mismatch_high: float = Field(ge=0, le=1)
    mismatch_low: float = Field(ge=0, le=1)
    listing_reuse_similarity: float = Field(ge=-1, le=1)

    @model_validator(mode="after")
    def _low_below_high(self) -> Thresholds:
        if self.damage_low > self.damage_high or self.mismatch_low > self.mismatch_high:
            raise ValueError("each *_low threshold must not exceed its *_high threshold")
        return self


class ModelCard(BaseModel):
    """model_card.json, validated. Unknown keys (metrics, data, limitations...) are kept."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    file: str = "model.onnx"
    input: CardInput
    outputs: dict[str, str]
    embedding_dim: int = Field(gt=0)
    calibration: Calibration
    thresholds: Thresholds

    @model_validator(mode="after")
    def _names_every_output(self) -> ModelCard:
        missing = [name for name in OUTPUT_NAMES if name not in self.outputs]
        if missing:
            raise ValueError(f"outputs lacks {', '.join(missing)}")
        return self

    @property
    def model_version(self) -> str:
        return f"{self.name}-{self.version}"

    @classmethod
    def read(cls, model_dir: Path) -> ModelCard:
        path = Path(model_dir) / CARD_FILE
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ModelLoadError(f"no model card at {path}") from None
        except ValueError as error:
            raise ModelLoadError(f"invalid model card {path}: {error}") from None

    def damage_probability(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated damage probability: sigmoid(logit / T + bias)."""
        damage = self.calibration.damage
        return _sigmoid(np.asarray(logits, dtype=np.float64) / damage.temperature + damage.bias)

    def mismatch_probability(self, best_similarity: float) -> float:
        """Calibrated probability that a photo is not the listed item, from its best cosine."""
        mismatch = self.calibration.mismatch
        return float(_sigmoid(np.float64(mismatch.slope * best_similarity + mismatch.intercept)))


def _sigmoid(values: np.ndarray) -> np.ndarray:
    # Split by sign so that large logits never overflow exp().
    values = np.asarray(values, dtype=np.float64)
    positive = values >= 0
    exp_neg = np.exp(-np.abs(values))
    return np.where(positive, 1.0 / (1.0 + exp_neg), exp_neg / (1.0 + exp_neg))


@dataclass(frozen=True)
class ModelOutput:
    """What the model says about one photo, calibrated.

    `damage` is a probability; `heatmap` is a (7, 7) float32 grid of per-cell damage probabilities
    over the letterboxed model input; `embedding` is an L2-normalised float32 vector.
    """

    damage: float
    heatmap: np.ndarray
    embedding: np.ndarray


def session_options(intra_op_threads: int, allow_spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # One model, one sequential graph: inter-op parallelism would only add threads to a 2-core box.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spinning = "1" if allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options


def _threads_from_env() -> int | None:
    value = os.environ.get("TRIAGE_ORT_THREADS", "").strip()
    return int(value) if value else None


class ScoringEngine:
    """Runs the model on photos. Thread-safe: onnxruntime's `run` may be called concurrently."""

    def __init__(
        self,
        session: ort.InferenceSession,
        card: ModelCard,
        *,
        model_dir: Path,
        intra_op_threads: int,
        allow_spinning: bool,
        max_run_batch: int = DEFAULT_MAX_RUN_BATCH,
    ) -> None:
        self._session = session
        self._card = card
        self._spec = card.input.spec()
        self.model_dir = model_dir
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.max_run_batch = max_run_batch

    @classmethod
    def load(
        cls,
        model_dir: Path | str = DEFAULT_MODEL_DIR,
        *,
        intra_op_threads: int | None = None,
        allow_spinning: bool | None = None,
        max_run_batch: int = DEFAULT_MAX_RUN_BATCH,
    ) -> ScoringEngine:
        """Open the model that `model_dir`'s card names, check it against the contract.

        `intra_op_threads` defaults to $TRIAGE_ORT_THREADS, else the measured default (1).
        """
        model_dir = Path(model_dir)
        card = ModelCard.read(model_dir)
        model_path = model_dir / card.file
        if not model_path.is_file():
            raise ModelLoadError(f"the card names {card.file}, which is not in {model_dir}")
        threads = intra_op_threads or _threads_from_env() or DEFAULT_INTRA_OP_THREADS
        spinning = DEFAULT_ALLOW_SPINNING if allow_spinning is None else allow_spinning
        try:
            session = ort.InferenceSession(
                str(model_path),
                sess_options=session_options(threads, spinning),
                providers=["CPUExecutionProvider"],
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"onnxruntime cannot load {model_path}: {error}") from None
        _check_contract(session, card, model_path)
        return cls(
            session,
            card,
            model_dir=model_dir,
            intra_op_threads=threads,
            allow_spinning=spinning,
            max_run_batch=max_run_batch,
        )

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def model_version(self) -> str:
        return self._card.model_version

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The (N, 3, size, size) input for these images, exactly as the model was trained."""
        return batch_inputs(list(images), self._spec)

    def run(self, inputs: np.ndarray) -> list[ModelOutput]:
        """Run preprocessed inputs, in chunks of `max_run_batch`, and calibrate the outputs."""
        outputs: list[ModelOutput] = []
        for start in range(0, len(inputs), self.max_run_batch):
            chunk = np.ascontiguousarray(inputs[start : start + self.max_run_batch])
            logits, maps, embeddings = self._session.run(
                list(OUTPUT_NAMES), {self._card.input.name: chunk}
            )
            damages = self._card.damage_probability(logits)
            heatmaps = _sigmoid(maps).astype(np.float32)
            # The contract says the embedding is L2-normalised already; renormalising is cheap
            # and keeps cosine == dot product even for a model exported without the final norm.
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            embeddings = (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
            outputs.extend(
                ModelOutput(damage=float(damage), heatmap=heatmap, embedding=embedding)
                for damage, heatmap, embedding in zip(damages, heatmaps, embeddings, strict=True)
            )
        return outputs

    def infer(self, images: Sequence[Image.Image]) -> list[ModelOutput]:
        """Calibrated damage, heatmap and embedding for each image, in order."""
        if not images:
            return []
        return self.run(self.preprocess(images))


def _check_contract(session: ort.InferenceSession, card: ModelCard, model_path: Path) -> None:
    inputs = {node.name: node for node in session.get_inputs()}
    outputs = {node.name: node for node in session.get_outputs()}
    problems = []
    image = inputs.get(card.input.name)
    if image is None:
        problems.append(f"no input named {card.input.name!r}")
    elif [dim for dim in image.shape[1:]] != [3, card.input.size, card.input.size]:
        problems.append(f"input {image.name} has shape {image.shape}")
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        problems.append(f"missing outputs {missing}")
    elif (dim := outputs["embedding"].shape[-1]) != card.embedding_dim and isinstance(dim, int):
        problems.append(f"embedding has {dim} dimensions, the card says {card.embedding_dim}")
    if problems:
        raise ModelLoadError(f"{model_path} breaks the model contract: {'; '.join(problems)}")


def cosine_similarities(embedding: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Cosine similarity of one L2-normalised embedding with each row of `others`."""
    if len(others) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.clip(others @ embedding, -1.0, 1.0)
