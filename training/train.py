"""Training: cache the frozen trunk prefix once, then train the heads (and the later blocks).

In the style of torchvision's classification references: `train_one_epoch`, `evaluate` and
`main(config)`. An "epoch" here is a fixed chunk of optimiser steps (`checkpoint_every`) over
freshly sampled batches, after which a checkpoint (with the config inside) is written, so a run
can be stopped and resumed and always ends after `steps` steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.config import TrainConfig
from training.data import Splits, make_splits
from training.evaluate import quick_figures
from training.model import EvidenceNet
from training.samples import (
    KIND_CATALOG,
    KIND_PACKAGE,
    KIND_PHOTO,
    Rendered,
    Sample,
    heldout_samples,
    render,
    training_samples,
)

CACHE_BATCH = 32
# NHWC activations: the CPU convolution kernels run this network's prefix ~1.45x and a
# fine-tuning step ~1.5x faster in it (measured on the 2-core machine). The same operations,
# summed in another order: a run differs from an NCHW one by float noise, grown over the steps.
CHANNELS_LAST = torch.channels_last


@dataclass
class PrefixCache:
    """Frozen-prefix features of rendered samples, with their labels (all tensors, row-aligned)."""

    features: torch.Tensor  # (N, C, 14, 14) float16
    damage: torch.Tensor  # (N,)
    map_target: torch.Tensor  # (N, 7, 7)
    has_map: torch.Tensor  # (N,) bool
    product: torch.Tensor  # (N,) long, -1 when not a grocery/user product
    kind: list[str]
    kinds_drawn: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.kind)

    def to(self, device: torch.device | str) -> PrefixCache:
        return PrefixCache(
            features=self.features.to(device),
            damage=self.damage.to(device),
            map_target=self.map_target.to(device),
            has_map=self.has_map.to(device),
            product=self.product.to(device),
            kind=self.kind,
            kinds_drawn=self.kinds_drawn,
        )


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def rendered_batches(samples: list[Sample], workers: int) -> Iterator[list[Rendered]]:
    """`render` over the samples in order, CACHE_BATCH at a time; in `workers` processes when
    there is more than one (rendering is pure Python and NumPy: it is what keeps a GPU waiting)."""
    if workers <= 1:
        for start in range(0, len(samples), CACHE_BATCH):
            yield [render(sample) for sample in samples[start : start + CACHE_BATCH]]
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        batch: list[Rendered] = []
        for item in pool.imap(render, samples, chunksize=8):
            batch.append(item)
            if len(batch) == CACHE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


@torch.no_grad()
def build_prefix_cache(
    model: EvidenceNet, samples: list[Sample], description: str, workers: int = 1
) -> PrefixCache:
    model.eval()
    device = model_device(model)
    features, damage, targets, has_map, kinds_drawn = [], [], [], [], []
    batches = rendered_batches(samples, workers)
    total = math.ceil(len(samples) / CACHE_BATCH)
    for rendered in tqdm(batches, total=total, desc=description, unit="batch"):
        images = torch.from_numpy(np.stack([item.image for item in rendered])).to(device)
        features.append(model.prefix(images.contiguous(memory_format=CHANNELS_LAST)).half().cpu())
        damage.extend(item.damage for item in rendered)
        targets.extend(item.map_target for item in rendered)
        has_map.extend(item.has_map for item in rendered)
        kinds_drawn.extend(item.kinds for item in rendered)
    return PrefixCache(
        features=torch.cat(features),
        damage=torch.tensor(damage, dtype=torch.float32),
        map_target=torch.from_numpy(np.stack(targets)),
        has_map=torch.tensor(has_map),
        product=torch.tensor([sample.product for sample in samples], dtype=torch.long),
        kind=[sample.kind for sample in samples],
        kinds_drawn=kinds_drawn,
    )


def model_device(model: EvidenceNet) -> torch.device:
    return next(model.parameters()).device


def save_atomically(value: Any, path: Path) -> Path:
    """`torch.save` to a temporary file beside `path`, then renamed over it: a run stopped while
    saving (Ctrl-C, a kill) leaves the previous checkpoint or cache whole, never a truncated one
    that the next run would fail to load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(value, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def cached(path: Path, build: Any) -> PrefixCache:
    """Load a prefix cache from `path`, or build and save it (cache files are keyed by content)."""
    if path.exists():
        return PrefixCache(**torch.load(path, weights_only=False))
    cache = build()
    save_atomically(cache.__dict__, path)
    return cache


# How photos are turned into renderings, beyond the samples themselves: bump it when that changes,
# so caches of the old renderings are not read. 2 (session 10): photos cut to their picture.
RENDER_VERSION = 2


def cache_key(samples: list[Sample], split_block: int) -> str:
    text = json.dumps(
        [
            [str(s.path), s.kind, s.product, s.synthesise, s.real_damage, s.augment, s.seed]
            for s in samples
        ]
        + [split_block, RENDER_VERSION]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class BatchSampler:
    """Batches for both tasks at once. Grocery products come in pairs of the same coarse class
    where possible (two juices, two apples): their catalog images are each other's hard
    negatives in the contrastive loss."""

    def __init__(self, cache: PrefixCache, coarse_class: list[str], config: TrainConfig) -> None:
        self.config = config
        kinds = np.array(cache.kind)
        products = cache.product.cpu().numpy()
        self.photo_rows = defaultdict(list)
        self.catalog_rows = defaultdict(list)
        for row, (kind, product) in enumerate(zip(kinds, products, strict=True)):
            if kind == KIND_PHOTO and product >= 0:
                self.photo_rows[int(product)].append(row)
            elif kind == KIND_CATALOG and product >= 0:
                self.catalog_rows[int(product)].append(row)
        self.products = sorted(set(self.photo_rows) & set(self.catalog_rows))
        self.package_rows = np.flatnonzero(kinds == KIND_PACKAGE)
        by_class = defaultdict(list)
        for product in self.products:
            by_class[coarse_class[product]].append(product)
        self.class_groups = [group for group in by_class.values() if len(group) > 1]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of (phone photos, one catalog image per product, package photos)."""
        wanted = min(self.config.products_per_batch, len(self.products))
        chosen: list[int] = []
        while self.class_groups and len(chosen) < wanted // 2:
            group = self.class_groups[rng.integers(len(self.class_groups))]
            chosen.extend(int(p) for p in rng.choice(group, size=2, replace=False))
            chosen = list(dict.fromkeys(chosen))
        remaining = [p for p in self.products if p not in chosen]
        extra = rng.choice(remaining, size=max(0, wanted - len(chosen)), replace=False)
        chosen = (chosen + [int(p) for p in extra])[:wanted]
        photos = np.array(
            [rng.choice(self.photo_rows[p], size=self.config.photos_per_product) for p in chosen]
        ).reshape(-1)
        catalogs = np.array([rng.choice(self.catalog_rows[p]) for p in chosen])
        packages = (
            rng.choice(self.package_rows, size=self.config.packages_per_batch)
            if len(self.package_rows)
            else np.zeros(0, dtype=int)
        )
        return photos, catalogs, packages


def damage_losses(
    damage_logit: torch.Tensor, damage_map: torch.Tensor, cache: PrefixCache, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = cache.damage[rows]
    image_loss = F.binary_cross_entropy_with_logits(damage_logit, labels)
    has_map = cache.has_map[rows]
    map_losses = []
    if has_map.any():
        map_losses.append(
            F.binary_cross_entropy_with_logits(damage_map[has_map], cache.map_target[rows][has_map])
        )
    weak = ~has_map
    if weak.any():
        # A real damaged photo without a mask: somewhere on the map there must be damage.
        peak = damage_map[weak].flatten(1).amax(dim=1)
        map_losses.append(F.binary_cross_entropy_with_logits(peak, labels[weak]))
    return image_loss, torch.stack(map_losses).mean()


def embedding_loss(
    photo_embeddings: torch.Tensor,
    catalog_embeddings: torch.Tensor,
    photo_owner: torch.Tensor,
    same_class: torch.Tensor,
    temperature: float,
    margin: float,
) -> torch.Tensor:
    """InfoNCE of each phone photo against the batch's catalog images, plus a margin on the
    hardest catalog image of another product in the same coarse class."""
    similarity = photo_embeddings @ catalog_embeddings.T
    contrastive = F.cross_entropy(similarity / temperature, photo_owner)
    positive = similarity.gather(1, photo_owner[:, None]).squeeze(1)
    hard_pool = same_class[photo_owner].clone()
    hard_pool[torch.arange(len(photo_owner), device=photo_owner.device), photo_owner] = False
    hardest = similarity.masked_fill(~hard_pool, -2.0).amax(dim=1)
    has_hard = hard_pool.any(dim=1)
    triplet = F.relu(margin + hardest - positive)[has_hard]
    return contrastive + (triplet.mean() if len(triplet) else similarity.new_zeros(()))


def same_product_loss(
    embeddings: torch.Tensor, owner: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Supervised contrastive loss over phone photos and catalog images together: every other
    view of the same product is a positive, every view of another product a negative.

    `embedding_loss` only pulls a photo towards its catalog image; this term also pulls the
    photos of one product together and the catalog views too, which keeps the embedding about
    the product rather than about the damage the batch happens to carry."""
    similarity = embeddings @ embeddings.T / temperature
    eye = torch.eye(len(owner), dtype=torch.bool, device=owner.device)
    similarity = similarity.masked_fill(eye, float("-inf"))
    positive = (owner[:, None] == owner[None]) & ~eye
    log_probability = similarity.log_softmax(dim=1).masked_fill(~positive, 0.0)
    has_positive = positive.any(dim=1)
    per_anchor = -log_probability.sum(dim=1)[has_positive] / positive.sum(dim=1)[has_positive]
    return per_anchor.mean()


def train_one_epoch(
    model: EvidenceNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cache: PrefixCache,
    sampler: BatchSampler,
    coarse_class: list[str],
    rng: np.random.Generator,
    config: TrainConfig,
    first_step: int,
    last_step: int,
) -> dict[str, float]:
    model.train()
    totals: dict[str, float] = defaultdict(float)
    progress = tqdm(
        range(first_step, last_step), desc=f"steps {first_step}-{last_step}", unit="step"
    )
    for _ in progress:
        photos, catalogs, packages = sampler.sample(rng)
        rows = torch.from_numpy(np.concatenate([photos, catalogs, packages]))
        damage_logit, damage_map, embedding = model.forward_from_prefix(
            cache.features[rows].float().contiguous(memory_format=CHANNELS_LAST)
        )
        image_loss, map_loss = damage_losses(damage_logit, damage_map, cache, rows)
        owners = cache.product[torch.from_numpy(catalogs)]
        photo_owner = (
            (cache.product[torch.from_numpy(photos)][:, None] == owners[None]).float().argmax(dim=1)
        )
        classes = [coarse_class[int(p)] for p in owners]
        same_class = torch.tensor(
            [[a == b for b in classes] for a in classes], device=embedding.device
        )
        match_loss = embedding_loss(
            embedding[: len(photos)],
            embedding[len(photos) : len(photos) + len(catalogs)],
            photo_owner,
            same_class,
            config.embedding_temperature,
            config.hard_negative_margin,
        )
        if config.same_product_weight:
            views = len(photos) + len(catalogs)
            view_owner = cache.product[rows[:views]].to(embedding.device)
            match_loss = match_loss + config.same_product_weight * same_product_loss(
                embedding[:views], view_owner, config.embedding_temperature
            )
        loss = (
            image_loss
            + config.map_loss_weight * map_loss
            + config.embedding_loss_weight * match_loss
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for name, value in (
            ("loss", loss),
            ("damage", image_loss),
            ("map", map_loss),
            ("match", match_loss),
        ):
            totals[name] += value.item()
        progress.set_postfix(loss=f"{loss.item():.3f}", match=f"{match_loss.item():.3f}")
    return {name: value / max(1, last_step - first_step) for name, value in totals.items()}


@torch.no_grad()
def predict_cache(model: EvidenceNet, cache: PrefixCache, batch: int = 64) -> dict[str, np.ndarray]:
    model.eval()
    device = model_device(model)
    outputs: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, len(cache), batch):
        logits, maps, embeddings = model.forward_from_prefix(
            cache.features[start : start + batch]
            .to(device)
            .float()
            .contiguous(memory_format=CHANNELS_LAST)
        )
        outputs["damage_logit"].append(logits.cpu().numpy())
        outputs["damage_map"].append(maps.cpu().numpy())
        outputs["embedding"].append(embeddings.cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def evaluate(
    model: EvidenceNet, cache: PrefixCache, samples: list[Sample], splits: Splits
) -> dict[str, float]:
    """Quick held-out figures: damage AUROC (synthetic on unseen products, real packages) and
    mismatch AUROC (own listing against a same-class listing)."""
    return quick_figures(samples, cache.damage.cpu().numpy(), predict_cache(model, cache), splits)


def make_optimizer(
    model: EvidenceNet, config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model.freeze_trunk(fine_tune_suffix=config.fine_tune)
    head_parameters = [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith(("suffix_blocks", "head_conv"))
    ]
    groups = [{"params": head_parameters, "lr": config.head_lr}]
    trunk_parameters = [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and name.startswith(("suffix_blocks", "head_conv"))
    ]
    if trunk_parameters:
        groups.append({"params": trunk_parameters, "lr": config.trunk_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def new_model(config: TrainConfig) -> EvidenceNet:
    """The network a training run starts from, on the run's device, in NHWC."""
    model = EvidenceNet(embedding_dim=config.embedding_dim, split_block=config.split_block)
    return model.to(config.device, memory_format=CHANNELS_LAST)


def coarse_classes(products: list[str], splits: Splits) -> list[str]:
    """The coarse class of each training product, for the batch sampler's same-class pairs; a
    user's product without a listing is a class of its own."""
    listing_class = {listing.product: listing.coarse_class for listing in splits.listings}
    return [listing_class.get(product, product) for product in products]


def checkpoint_path(config: TrainConfig) -> Path:
    if not config.fine_tune:
        return Path(config.run_dir) / "baseline.pt"
    return Path(config.run_dir) / "model.pt"


def load_model(path: Path) -> tuple[EvidenceNet, TrainConfig, dict[str, Any]]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(state["config"])
    model = EvidenceNet(
        embedding_dim=config.embedding_dim, split_block=config.split_block, pretrained=False
    )
    model.load_state_dict(state["model"])
    return model.eval(), config, state


def data_caches(
    config: TrainConfig, model: EvidenceNet, splits: Splits, split: str
) -> tuple[PrefixCache, list[Sample]]:
    """The prefix cache of a split ('train' or a held-out one), built once per content."""
    if split == "train":
        samples, _ = training_samples(config, splits)
    else:
        samples = heldout_samples(config, splits, split)
    key = cache_key(samples, config.split_block)
    path = Path(config.run_dir).parent / "cache" / f"{split}-{key}.pt"

    def build() -> PrefixCache:
        return build_prefix_cache(model, samples, f"cache {split}", workers=config.render_workers)

    return cached(path, build), samples


# Fields that may change between a checkpoint and its resumption, or between training and the
# stages after it: where things are, how long to go on, how often to save, what the release is
# called (Session 10 trained under the label 1.3.0 and released the weights as 1.3.1) and how many
# tiles the evaluation scores. Anything else would silently mix two recipes in one model.
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "checkpoint_every",
        "threads",
        "device",
        "render_workers",
        "eval_limit",
        "run_dir",
        "models_dir",
        "data_root",
        "name",
        "version",
        "tiles_intact_limit",
    }
)


def recipe_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    return [
        name
        for name, value in saved.to_dict().items()
        if name not in RESUMABLE_CHANGES and current.to_dict()[name] != value
    ]


def check_same_recipe(
    path: Path,
    saved: TrainConfig,
    current: TrainConfig,
    advice: str = "resume it with that config, or use --no-resume or another --run-dir",
) -> None:
    """Refuse, naming each field, to go on from a checkpoint of another recipe."""
    differences = recipe_differences(saved, current)
    if differences:
        fields = "; ".join(
            f"{name}={getattr(saved, name)!r} there, {getattr(current, name)!r} now"
            for name in differences
        )
        raise SystemExit(f"{path} was trained with another config ({fields}); {advice}")


def trained(config: TrainConfig) -> tuple[EvidenceNet, dict[str, Any]]:
    """The finished checkpoint of `config` (the fine-tuned model, or with fine_tune=False the
    baseline) for the stages after training. Refused when it was trained with another recipe:
    their splits, samples and the card must be those of the recipe the weights came from."""
    path = checkpoint_path(config)
    command = "python -m training train" + ("" if config.fine_tune else " --baseline")
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `{command}` first, with the same options")
    model, saved, state = load_model(path)
    check_same_recipe(path, saved, config, "run every stage with the options it was trained with")
    if state["step"] < config.steps:  # an interrupted run: do not export or ship it half-trained
        raise SystemExit(
            f"{path} stopped at step {state['step']} of {config.steps}: run `{command}` "
            "with the same options to finish it first"
        )
    return model, state


def main(config: TrainConfig, resume: bool = True) -> Path:
    """Train one model (the fine-tuned one, or the frozen-trunk baseline) to `config.steps`."""
    path = checkpoint_path(config)
    state = (
        torch.load(path, map_location="cpu", weights_only=False)
        if resume and path.exists()
        else None
    )
    if state is not None:  # before the caches: a refused resume should not build them first
        check_same_recipe(path, TrainConfig.from_dict(state["config"]), config)
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    splits = make_splits(
        Path(config.data_root), config.val_fraction, config.test_fraction, config.seed
    )
    model = new_model(config)
    train_cache, _ = data_caches(config, model, splits, "train")
    train_cache = train_cache.to(config.device)
    val_cache, val_samples = data_caches(config, model, splits, "val")
    _, products = training_samples(config, splits)
    coarse_class = coarse_classes(products, splits)
    sampler = BatchSampler(train_cache, coarse_class, config)
    optimizer, scheduler = make_optimizer(model, config)
    rng = np.random.default_rng(config.seed)
    step, history, elapsed = 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, history, elapsed = state["step"], state["history"], state["train_seconds"]
        print(f"resumed {path} at step {step}")
    while step < config.steps:
        started = time.perf_counter()
        last = min(config.steps, step + config.checkpoint_every)
        losses = train_one_epoch(
            model, optimizer, scheduler, train_cache, sampler, coarse_class, rng, config, step, last
        )
        step = last
        figures = evaluate(model, val_cache, val_samples, splits)
        elapsed += time.perf_counter() - started
        history.append({"step": step, **losses, **{f"val_{k}": v for k, v in figures.items()}})
        print(json.dumps(history[-1]))
        save_atomically(
            {
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "history": history,
                "train_seconds": elapsed,
            },
            path,
        )
    return path
