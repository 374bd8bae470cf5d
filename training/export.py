"""ONNX export (fp32, dynamic batch), static INT8 QDQ quantisation, and the speed comparison."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from training.model import OUTPUT_NAMES, EvidenceNet

INPUT_NAME = "image"
OPSET = 17


def export_onnx(model: EvidenceNet, path: Path, image_size: int = 224) -> Path:
    """Trace the model to ONNX with a dynamic batch axis (TorchScript exporter, opset 17)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(2, 3, image_size, image_size)
    dynamic_batch = {0: "batch"}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: dynamic_batch, **{name: dynamic_batch for name in OUTPUT_NAMES}},
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )
    return path


def onnx_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
    outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.astype(np.float32)})
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))


class _BatchReader(CalibrationDataReader):
    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(
    fp32_path: Path, int8_path: Path, calibration_batches: Sequence[np.ndarray]
) -> Path:
    """Static QDQ INT8 (per-channel weights, MinMax activations) from real calibration photos."""
    prepared = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(int8_path),
        _BatchReader(calibration_batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)
    return int8_path


def _timed_runs(session: ort.InferenceSession, batch: np.ndarray, repeats: int) -> Iterator[float]:
    run_onnx(session, batch)  # warm-up: first run allocates
    for _ in range(repeats):
        start = time.perf_counter()
        run_onnx(session, batch)
        yield time.perf_counter() - start


def latency_ms(path: Path, batch: np.ndarray, repeats: int = 10, threads: int = 2) -> float:
    """Median wall-clock milliseconds per image for one batch, on `threads` CPU threads."""
    session = onnx_session(path, threads)
    return float(np.median(list(_timed_runs(session, batch, repeats)))) * 1000.0 / len(batch)
