"""Model input preprocessing, shared by training, export checks and serving.

Training imports these functions so that the pixels the model learned from and the pixels it is
served can never drift apart. Pure functions: PIL image in, numpy array out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class InputSpec:
    """How a photo becomes the model's input tensor. Saved into the model card and replayed."""

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Letterbox rather than centre-crop: damage at the edge of a photo must stay in view,
    # and squashing would distort the shapes the embedding compares against the listing.
    resize: str = "letterbox"
    pad_value: int = 124  # ~ImageNet mean grey, so padding normalises to about zero


DEFAULT_INPUT_SPEC = InputSpec()


def letterbox(image: Image.Image, spec: InputSpec = DEFAULT_INPUT_SPEC) -> Image.Image:
    """Fit `image` inside a size x size square, keeping its aspect ratio, padding with grey."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    scale = spec.size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = rgb.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = Image.new("RGB", (spec.size, spec.size), (spec.pad_value,) * 3)
    canvas.paste(resized, ((spec.size - new_size[0]) // 2, (spec.size - new_size[1]) // 2))
    return canvas


def normalise(square: Image.Image, spec: InputSpec = DEFAULT_INPUT_SPEC) -> np.ndarray:
    """RGB uint8 image -> float32 CHW array normalised with the spec's mean and std."""
    array = np.asarray(square, dtype=np.float32) * (1.0 / 255.0)
    array = (array - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(
        spec.std, dtype=np.float32
    )
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def model_input(image: Image.Image, spec: InputSpec = DEFAULT_INPUT_SPEC) -> np.ndarray:
    """The model's input for one photo: float32 array of shape (3, size, size)."""
    return normalise(letterbox(image, spec), spec)


def batch_inputs(images: list[Image.Image], spec: InputSpec = DEFAULT_INPUT_SPEC) -> np.ndarray:
    """Stack several photos into one (N, 3, size, size) batch."""
    return (
        np.stack([model_input(image, spec) for image in images])
        if images
        else np.zeros((0, 3, spec.size, spec.size), dtype=np.float32)
    )
