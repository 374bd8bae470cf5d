"""`triage demo`: generated listings and claims that show every lane of the queue.

Everything is synthesised here (no data is downloaded or read from ../shared): each listing is a
product drawn from simple shapes with a label and texture; claim photos re-photograph it from a
slightly different angle and light, then add the case's defect:

- damaged: cracks, a dent shadow and a stain drawn onto the product;
- mismatched: a photo of another listing's product;
- blurry and dark: the product photo blurred or underexposed (quality findings);
- reused: a photo already used in another claim, or the seller's own listing photo;
- clean: an intact product (a damage claim the evidence does not support).

The claims are stored through the same functions the API routes use, so the demo exercises
intake, the quality checks, the model, the duplicate index and the triage policy for real.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from service.api import schemas
from service.api.routes.claims import escalate, open_claim
from service.api.routes.evidence import store_evidence
from service.api.routes.listings import store_listing_images
from service.api.runtime import Runtime
from service.api.uploads import MultipartBody, UploadedFile
from service.auth import Role
from service.config import Settings
from service.db import crud
from service.db.models import ApiKey
from service.db.session import transaction

PHOTO_SIZE = (800, 600)
PRODUCTS = (
    ("demo-mug", "Ceramic mug, cobalt blue", "home", (40, 70, 170), "mug"),
    ("demo-kettle", "Electric kettle, brushed steel", "kitchen", (170, 175, 180), "kettle"),
    ("demo-lamp", "Desk lamp, mustard yellow", "home", (215, 170, 40), "lamp"),
    ("demo-shoebox", "Running shoes (boxed), orange", "sport", (225, 110, 35), "box"),
    ("demo-bottle", "Insulated bottle, forest green", "outdoor", (35, 110, 60), "bottle"),
    ("demo-speaker", "Bluetooth speaker, charcoal", "electronics", (55, 55, 60), "speaker"),
    ("demo-vase", "Glass vase, teal", "home", (30, 140, 150), "vase"),
    ("demo-toaster", "Two-slice toaster, cream", "kitchen", (230, 220, 190), "box"),
)
# (case, claim reason, resolution, escalated, days since opened)
CASES = (
    ("damaged", "damaged", "full_refund", True, 12),
    ("clean", "damaged", "partial_refund", False, 3),
    ("mismatched", "wrong_item", "replacement", True, 9),
    ("blurry", "defective", "full_refund", False, 6),
    ("reused", "damaged", "full_refund", True, 1),
)


class StoreNotEmpty(RuntimeError):
    """The demo only fills an empty store, so it never mixes with real claims."""


@dataclass(frozen=True)
class DemoResult:
    listings: int
    claims: int
    photos: int
    reviewer_key: str
    buyer_key: str
    admin_key: str


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _background(rng: np.random.Generator, *, plain: bool) -> Image.Image:
    """A studio sweep for listing shots; for buyers, a table with grain and clutter."""
    width, height = PHOTO_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if plain:
        base = 235 - 0.03 * y
        surface = np.stack([base, base, base], axis=-1)
    else:
        angle = rng.uniform(0, np.pi)
        along = x * np.cos(angle) + y * np.sin(angle)
        grain = 18 * np.sin(along / rng.uniform(6, 14)) + 10 * np.sin(along / rng.uniform(40, 90))
        tone = rng.uniform(110, 190)
        tint = rng.uniform(-25, 25, size=3)
        surface = np.stack([tone + grain + tint[c] for c in range(3)], axis=-1)
    surface += rng.normal(0, 4, surface.shape)
    image = Image.fromarray(np.clip(surface, 0, 255).astype(np.uint8))
    if not plain:
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 7))):  # other things on the table
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(30, 140), rng.uniform(30, 140)
            colour = tuple(int(v) for v in rng.integers(30, 230, size=3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
    return image


def product_photo(
    product: int, *, seed: int, listing: bool = False, damaged: bool = False
) -> Image.Image:
    """The product on a table. Listing shots are centred on a plain sweep; buyers' shots vary
    in framing, light and surroundings, and `damaged` ones show damage on the product."""
    _, _, _, colour, shape = PRODUCTS[product]
    rng = np.random.default_rng(seed)
    image = _background(rng, plain=listing)
    draw = ImageDraw.Draw(image)
    width, height = PHOTO_SIZE
    scale = 1.0 if listing else rng.uniform(0.7, 1.05)
    cx = width / 2 + (0 if listing else rng.uniform(-170, 170))
    cy = height / 2 + (0 if listing else rng.uniform(-70, 70))
    w, h = 260 * scale, 300 * scale
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    shade = tuple(max(0, c - 45) for c in colour)
    if shape in ("mug", "kettle"):
        draw.rounded_rectangle(box, radius=40 * scale, fill=colour, outline=shade, width=6)
        draw.ellipse(
            (box[2] - 20, cy - 70 * scale, box[2] + 90 * scale, cy + 70 * scale),
            outline=colour,
            width=int(26 * scale),
        )
    elif shape in ("bottle", "vase"):
        draw.rounded_rectangle(
            (cx - w / 3, box[1] + 60 * scale, cx + w / 3, box[3]), radius=50, fill=colour
        )
        draw.rectangle((cx - w / 8, box[1], cx + w / 8, box[1] + 70 * scale), fill=shade)
    elif shape == "lamp":
        draw.polygon(
            [(cx - w / 2, cy), (cx + w / 2, cy), (cx + w / 4, box[1]), (cx - w / 4, box[1])],
            fill=colour,
        )
        draw.rectangle((cx - 12, cy, cx + 12, box[3] - 30), fill=shade)
        draw.ellipse((cx - w / 3, box[3] - 50, cx + w / 3, box[3]), fill=shade)
    elif shape == "speaker":
        draw.rounded_rectangle(box, radius=30, fill=colour)
        for row in range(6):
            for col in range(5):
                x = box[0] + 40 * scale + col * 45 * scale
                y = box[1] + 50 * scale + row * 40 * scale
                draw.ellipse((x, y, x + 18 * scale, y + 18 * scale), fill=(95, 95, 100))
    else:  # box
        draw.rectangle(box, fill=colour, outline=shade, width=8)
        draw.rectangle((box[0], cy - 25 * scale, box[2], cy + 25 * scale), fill=shade)
    # A printed label gives the product texture that a camera would resolve.
    label = (cx - w / 4, cy + 30 * scale, cx + w / 4, cy + 90 * scale)
    draw.rectangle(label, fill=(245, 245, 240))
    for line in range(4):
        y = label[1] + 10 + line * 12
        draw.line(
            (label[0] + 10, y, label[2] - 10 - 20 * (line % 2), y), fill=(30, 30, 30), width=4
        )
    if damaged:
        image = add_damage(image, centre=(cx, cy), scale=scale, seed=seed)
    if not listing:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
        image = image.rotate(
            rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=(180, 175, 165)
        )
    return image


def add_damage(
    image: Image.Image, *, centre: tuple[float, float], scale: float, seed: int
) -> Image.Image:
    """Cracks, a dent and a stain on the product standing at `centre`."""
    rng = np.random.default_rng(seed)
    damaged = image.copy()
    draw = ImageDraw.Draw(damaged)
    cx, cy = centre
    for _ in range(3):
        x, y = cx + rng.uniform(-80, 80) * scale, cy + rng.uniform(-130, 0) * scale
        points = [(x, y)]
        for _ in range(8):
            x += rng.uniform(-24, 24) * scale
            y += rng.uniform(6, 22) * scale
            points.append((x, y))
        draw.line(points, fill=(25, 20, 15), width=int(rng.integers(3, 7)))
    dx, dy = cx + rng.uniform(-40, 40) * scale, cy + rng.uniform(-90, -30) * scale
    draw.ellipse(
        (dx - 60 * scale, dy - 35 * scale, dx + 60 * scale, dy + 35 * scale), fill=(60, 50, 45)
    )
    stain = Image.new("L", damaged.size, 0)
    ImageDraw.Draw(stain).ellipse(
        (dx - 20 * scale, dy + 40 * scale, dx + 100 * scale, dy + 120 * scale), fill=150
    )
    brown = Image.new("RGB", damaged.size, (110, 70, 30))
    damaged.paste(brown, mask=stain.filter(ImageFilter.GaussianBlur(12)))
    return damaged


def _evidence_for(case: str, product: int, seed: int, photos: dict[str, bytes]) -> list[bytes]:
    """The photo files a buyer uploads for one demo case."""
    if case == "damaged":
        return [
            _jpeg(product_photo(product, seed=seed + offset, damaged=True)) for offset in (0, 1)
        ]
    if case == "clean":
        return [_jpeg(product_photo(product, seed=seed))]
    if case == "mismatched":
        other = (product + 3) % len(PRODUCTS)
        return [_jpeg(product_photo(other, seed=seed)), _jpeg(product_photo(other, seed=seed + 1))]
    if case == "blurry":
        photo = product_photo(product, seed=seed, damaged=True)
        return [_jpeg(photo.filter(ImageFilter.GaussianBlur(9)))]
    if case == "dark":
        photo = product_photo(product, seed=seed, damaged=True)
        return [_jpeg(ImageEnhance.Brightness(photo).enhance(0.22))]
    # reused: every other listing reuses the first damaged claim's photo, the rest send the
    # seller's own listing photo back as "evidence".
    if product % 2 == 0 and "first_damaged" in photos:
        return [photos["first_damaged"]]
    return [photos[f"listing-{product}"]]


def _files(data: list[bytes], stem: str) -> MultipartBody:
    return MultipartBody(
        files=[
            UploadedFile("files", f"{stem}-{index}.jpg", item) for index, item in enumerate(data, 1)
        ]
    )


def populate(settings: Settings) -> DemoResult:
    """Fill an empty store with the demo; raises StoreNotEmpty if it holds claims already."""
    runtime = Runtime.start(settings)
    try:
        return _populate(runtime)
    finally:
        runtime.close()


def _populate(runtime: Runtime) -> DemoResult:
    now = crud.utcnow()
    with transaction(runtime.sessions) as session:
        if crud.count_claims(session):
            raise StoreNotEmpty(
                f"{runtime.settings.data_dir} already holds claims; the demo fills an empty "
                "store only (point TRIAGE_DATA_DIR at a new folder)."
            )
        plain = {
            "admin": crud.create_api_key(session, role=Role.admin, name="demo admin", now=now),
            "reviewer": crud.create_api_key(
                session, role=Role.reviewer, name="demo reviewer", now=now
            ),
            "buyer": crud.create_api_key(session, role=Role.buyer, name="demo buyer", now=now),
        }
        buyers = [
            crud.create_api_key(session, role=Role.buyer, name=f"demo buyer {n}", now=now)
            for n in range(2, 5)
        ]
    with runtime.sessions() as session:
        keys: dict[str, ApiKey] = {}
        for name, key in [*plain.items(), *((f"buyer{n}", key) for n, key in enumerate(buyers))]:
            row = crud.find_active_key(session, key=key)
            assert row is not None  # created just above
            keys[name] = row
    photos: dict[str, bytes] = {}
    for index, (listing_id, title, category, _, _) in enumerate(PRODUCTS):
        with transaction(runtime.sessions) as session:
            crud.create_listing(
                session, listing_id=listing_id, title=title, category=category, now=now
            )
        listing_photo = _jpeg(product_photo(index, seed=1000 + index, listing=True), quality=92)
        photos[f"listing-{index}"] = listing_photo
        store_listing_images(runtime, keys["admin"], listing_id, _files([listing_photo], "listing"))
    claims = scored = 0
    buyer_names = ["buyer", "buyer0", "buyer1", "buyer2"]
    for index, (listing_id, title, _, _, _) in enumerate(PRODUCTS):
        cases = (*CASES, ("dark", "damaged", "full_refund", False, 14)) if index % 3 == 0 else CASES
        for number, (case, reason, resolution, escalated, days_ago) in enumerate(cases):
            owner = keys[buyer_names[(index + number) % len(buyer_names)]]
            body = schemas.ClaimCreate(
                listing_id=listing_id,
                order_ref=f"DEMO-{index:02d}{number:02d}",
                reason=reason,  # type: ignore[arg-type]  # literals from CASES
                resolution=resolution,  # type: ignore[arg-type]
                description=f"Demo: {case} case for {title.lower()}.",
                amount=Decimal("24.90") + index,
                currency="EUR",
                opened_at=now - timedelta(days=days_ago, hours=index),
            )
            with transaction(runtime.sessions) as session:
                claim = open_claim(
                    session,
                    body=body,
                    key=owner,
                    idempotency_key=f"demo-{index}-{number}",
                    policy=runtime.policy,
                    now=now,
                )
                claim_id = claim.claim_id
            evidence = _evidence_for(case, index, seed=100 * index + 10 * number, photos=photos)
            if case == "damaged" and "first_damaged" not in photos:
                photos["first_damaged"] = evidence[0]
            scored += store_evidence(runtime, owner, claim_id, _files(evidence, case)).count
            if escalated:
                with transaction(runtime.sessions) as session:
                    claim = crud.get_claim(session, claim_id=claim_id)
                    assert claim is not None
                    escalate(session, claim, key=owner, policy=runtime.policy, now=crud.utcnow())
            claims += 1
    return DemoResult(
        listings=len(PRODUCTS),
        claims=claims,
        photos=scored,
        reviewer_key=plain["reviewer"],
        buyer_key=plain["buyer"],
        admin_key=plain["admin"],
    )
