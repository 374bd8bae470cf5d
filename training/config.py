"""The training recipe as one dataclass: saved into every checkpoint and into the model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


@dataclass
class TrainConfig:
    name: str = "evidence-lite0"
    version: str = "1.3.1"
    seed: int = 17
    data_root: str = str(DEFAULT_DATA_ROOT)
    run_dir: str = str(REPO_ROOT / "runs" / "evidence-lite0-1.3.1")
    models_dir: str = str(REPO_ROOT / "models")
    # Model
    embedding_dim: int = 256
    split_block: int = 8  # blocks [0, split) frozen and cached; [split, 16) + head conv fine-tuned
    fine_tune: bool = True  # False = the baseline: same heads on the frozen ImageNet trunk
    # Data: fractions of grocery products / package source_ids held out for validation and test
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    photo_variants: int = 2  # cached augmentations per grocery phone photo (damaged half the time)
    catalog_variants: int = 24  # cached augmentations per catalog image
    package_variants: int = 2  # per package photo; odd variants of intact ones get synth damage
    max_photos_per_product: int = 0  # 0 = all; small values for tiny test recipes
    max_packages: int = 0  # 0 = all
    damage_probability: float = 0.5
    extra_manifests: list[str] = field(default_factory=list)  # user-labelled photo manifests
    # Optimisation (a fixed number of steps so the wall clock is predictable)
    steps: int = 400
    products_per_batch: int = 12
    photos_per_product: int = 4
    packages_per_batch: int = 32
    head_lr: float = 1e-3
    trunk_lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 40
    embedding_temperature: float = 0.05
    hard_negative_margin: float = 0.2
    map_loss_weight: float = 1.0
    embedding_loss_weight: float = 1.0
    # Weight of `same_product_loss`. Without it, the higher trunk rate sharpens the embedding
    # but loses the damage score on real damage never trained on (docs/model.md, "Session 6").
    same_product_weight: float = 1.0
    checkpoint_every: int = 100
    threads: int = 2
    device: str = "cpu"  # "cuda" trains on a GPU (same recipe; the figures differ by float noise)
    render_workers: int = 1  # processes that render samples for the caches (>1 feeds a GPU)
    # Evaluation
    eval_limit: int = 0  # 0 = all held-out images; small values for tests and quick looks
    tiles_intact_limit: int = 200

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @property
    def model_dir(self) -> Path:
        return Path(self.models_dir) / f"{self.name}-{self.version}"
