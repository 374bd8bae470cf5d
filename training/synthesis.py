"""Damage synthesis on real photos: each kind draws its damage and returns the pixel mask of it.

Pure numpy/PIL functions: (RGB uint8 array, numpy Generator) in, (damaged array, float mask) out.
Every kind varies scale, position, orientation and contrast, so the model cannot key on one look.
Damage is placed on the object where a foreground can be told from a plain background (catalog
images, package mock-ups); on cluttered phone photos it is placed around the centre, where the
product is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Array = np.ndarray


@dataclass(frozen=True)
class Placement:
    centre: tuple[float, float]  # (x, y) in pixels
    size: float  # characteristic extent in pixels
    contrast: float  # 0..1, how strongly the damage shows
    foreground: Array | None  # bool HxW, or None when the whole photo is the object


def foreground_mask(image: Array, threshold: float = 28.0) -> Array | None:
    """Pixels that differ from the border colour, when the border is a plain background."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    if border.std(axis=0).mean() > 18.0:  # cluttered border: no plain background to separate
        return None
    distance = np.linalg.norm(image.astype(np.float32) - np.median(border, axis=0), axis=2)
    mask = ndimage.binary_opening(distance > threshold, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    fraction = mask.mean()
    return mask if 0.08 < fraction < 0.97 else None


def choose_placement(image: Array, rng: np.random.Generator) -> Placement:
    height, width = image.shape[:2]
    foreground = foreground_mask(image)
    if foreground is not None:
        ys, xs = np.nonzero(ndimage.binary_erosion(foreground, iterations=4) | foreground)
        pick = rng.integers(len(xs))
        centre = (float(xs[pick]), float(ys[pick]))
        extent = np.sqrt(foreground.mean() * height * width)
    else:
        centre = (
            float(np.clip(rng.normal(0.5, 0.17), 0.1, 0.9) * width),
            float(np.clip(rng.normal(0.5, 0.17), 0.1, 0.9) * height),
        )
        extent = 0.7 * min(height, width)
    size = float(rng.uniform(0.12, 0.55) * extent)
    return Placement(centre, max(size, 8.0), float(rng.uniform(0.45, 1.0)), foreground)


def _canvas(shape: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    return canvas, ImageDraw.Draw(canvas)


def _as_float(canvas: Image.Image) -> Array:
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _line_width(image: Array, rng: np.random.Generator, low: float, high: float) -> int:
    return max(1, round(rng.uniform(low, high) * max(image.shape[:2]) / 350.0))


def _random_walk(
    start: tuple[float, float],
    length: float,
    heading: float,
    rng: np.random.Generator,
    wiggle: float = 0.35,
) -> list[tuple[float, float]]:
    points = [start]
    steps = max(4, int(length / 6))
    step = length / steps
    x, y = start
    for _ in range(steps):
        heading += rng.normal(0.0, wiggle)
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        points.append((x, y))
    return points


def _blend(image: Array, mask: Array, colour: Array | float, alpha: float) -> Array:
    """Alpha-blend a colour (or a per-pixel image) into `image` where `mask` is set."""
    weight = (mask * alpha)[..., None]
    return image * (1.0 - weight) + np.asarray(colour, dtype=np.float32) * weight


def _shade(image: Array, factor: Array) -> Array:
    return image * factor[..., None]


def _contrasting(image: Array, region: Array, rng: np.random.Generator) -> float:
    """A grey level that shows against the surface under `region`: dark marks on light
    surfaces, pale ones (exposed flesh, bare cardboard, light-catching edges) on dark ones."""
    luminance = float(image[region > 0.3].mean()) if (region > 0.3).any() else 128.0
    return float(rng.uniform(0, 50)) if luminance > 115 else float(rng.uniform(200, 255))


# Smallest mean change (grey levels) inside a damage's mask for it to count as visible; fainter
# draws are redrawn, so that a "damaged" label always has something to see.
MIN_VISIBLE_CHANGE = 14.0


def crack(image: Array, place: Placement, rng: np.random.Generator) -> tuple[Array, Array]:
    canvas, draw = _canvas(image.shape[:2])
    width = _line_width(image, rng, 1.5, 3.5)
    heading = rng.uniform(0, 2 * np.pi)
    trunk = _random_walk(place.centre, place.size * rng.uniform(1.0, 2.0), heading, rng)
    draw.line(trunk, fill=255, width=width)
    for _ in range(rng.integers(0, 4)):
        origin = trunk[rng.integers(len(trunk))]
        branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)
        branch = _random_walk(origin, place.size * rng.uniform(0.2, 0.7), branch_heading, rng)
        draw.line(branch, fill=255, width=max(1, width - 1))
    line = _as_float(canvas)
    fissure = _contrasting(image, line, rng)
    out = _blend(image, ndimage.gaussian_filter(line, 0.6), fissure, 0.6 + 0.4 * place.contrast)
    # A lit edge beside the dark fissure: cracks catch light on one side.
    highlight = np.roll(line, shift=(1, 1), axis=(0, 1)) * (1 - line)
    out = _blend(out, highlight, 255.0, 0.35 * place.contrast)
    return out, ndimage.binary_dilation(line > 0.3, iterations=2).astype(np.float32)


def scratches(image: Array, place: Placement, rng: np.random.Generator) -> tuple[Array, Array]:
    canvas, draw = _canvas(image.shape[:2])
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    for _ in range(rng.integers(1, 7)):
        offset = normal * rng.normal(0, place.size * 0.25)
        offset = offset + direction * rng.normal(0, place.size * 0.2)
        half = direction * place.size * rng.uniform(0.4, 1.3)
        centre = np.asarray(place.centre) + offset
        jitter = rng.normal(0, 1.5, size=(2,))
        draw.line(
            [tuple(centre - half), tuple(centre + jitter), tuple(centre + half)],
            fill=int(rng.uniform(170, 255)),
            width=_line_width(image, rng, 1.0, 2.5),
        )
    lines = _as_float(canvas)
    colour = _contrasting(image, lines, rng)  # scuffed pale on dark finishes, gouged dark on light
    out = _blend(image, ndimage.gaussian_filter(lines, 0.5), colour, 0.55 + 0.45 * place.contrast)
    return out, ndimage.binary_dilation(lines > 0.2, iterations=2).astype(np.float32)


def _gaussian_bump(
    shape: tuple[int, int], centre: tuple[float, float], sigma: tuple[float, float], angle: float
) -> tuple[Array, Array, Array]:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dx, dy = xs - centre[0], ys - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    bump = np.exp(-0.5 * ((u / sigma[0]) ** 2 + (v / sigma[1]) ** 2))
    return bump, dx, dy


def _warp(image: Array, shift_x: Array, shift_y: Array) -> Array:
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float32)
    coordinates = [ys + shift_y, xs + shift_x]
    return np.stack(
        [
            ndimage.map_coordinates(image[..., c], coordinates, order=1, mode="reflect")
            for c in range(3)
        ],
        axis=-1,
    )


def dent(image: Array, place: Placement, rng: np.random.Generator) -> tuple[Array, Array]:
    """A pushed-in area: pixels pulled towards the centre, shaded as if lit from one side."""
    sigma = place.size * 0.35
    bump, dx, dy = _gaussian_bump(
        image.shape[:2], place.centre, (sigma, sigma * rng.uniform(0.5, 1.0)), rng.uniform(0, np.pi)
    )
    strength = rng.uniform(0.25, 0.5)
    out = _warp(image, dx * strength * bump, dy * strength * bump)
    light = rng.uniform(0, 2 * np.pi)
    slope = (np.cos(light) * dx + np.sin(light) * dy) / sigma * bump
    hollow = 0.45 * place.contrast * bump  # the pushed-in floor is in shadow
    out = _shade(out, 1.0 + 1.3 * place.contrast * np.clip(slope, -0.8, 0.8) - hollow)
    return out, (bump > 0.3).astype(np.float32)


def crush(image: Array, place: Placement, rng: np.random.Generator) -> tuple[Array, Array]:
    """Crumpled area: a noisy warp plus creases, each dark on one side and lit on the other."""
    sigma = place.size * 0.5
    region, _, _ = _gaussian_bump(
        image.shape[:2], place.centre, (sigma, sigma * rng.uniform(0.5, 1.0)), rng.uniform(0, np.pi)
    )
    noise = rng.normal(0, 1, size=(2, *image.shape[:2])).astype(np.float32)
    smooth = [ndimage.gaussian_filter(n, sigma * 0.15) for n in noise]
    scale = place.size * 0.5 / max(float(np.abs(smooth[0]).max()), 1e-6)
    out = _warp(image, smooth[0] * scale * region * 0.3, smooth[1] * scale * region * 0.3)
    canvas, draw = _canvas(image.shape[:2])
    for _ in range(rng.integers(3, 9)):
        start = np.asarray(place.centre) + rng.normal(0, sigma * 0.5, size=2)
        path = _random_walk(
            tuple(start), sigma * rng.uniform(0.6, 1.6), rng.uniform(0, 2 * np.pi), rng, wiggle=0.2
        )
        draw.line(path, fill=255, width=_line_width(image, rng, 1.0, 3.0))
    creases = ndimage.gaussian_filter(_as_float(canvas), 1.2)
    gradient = np.gradient(creases, axis=1) * 6.0
    shading = 1.0 - 0.9 * place.contrast * creases + 0.6 * place.contrast * np.clip(gradient, -1, 1)
    out = _shade(out, 1.0 + (shading - 1.0) * np.minimum(region * 1.6, 1.0))
    return out, (region > 0.3).astype(np.float32)


def _jagged_polygon(
    centre: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    points: int = 18,
    roughness: float = 0.35,
) -> list[tuple[float, float]]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=points))
    radii = radius * np.clip(1.0 + rng.normal(0, roughness, size=points), 0.35, 1.8)
    stretch = rng.uniform(0.4, 1.0)
    rotation = rng.uniform(0, np.pi)
    u, v = radii * np.cos(angles), radii * np.sin(angles) * stretch
    xs = centre[0] + u * np.cos(rotation) - v * np.sin(rotation)
    ys = centre[1] + u * np.sin(rotation) + v * np.cos(rotation)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def tear(image: Array, place: Placement, rng: np.random.Generator) -> tuple[Array, Array]:
    """A ripped opening: dark hole or pale torn paper inside, a fibrous light rim around it."""
    canvas, draw = _canvas(image.shape[:2])
    draw.polygon(
        _jagged_polygon(place.centre, place.size * 0.45, rng, points=26, roughness=0.3), fill=255
    )
    hole = _as_float(canvas) > 0.5
    rim = ndimage.binary_dilation(hole, iterations=_line_width(image, rng, 2.0, 5.0)) & ~hole
    inside_colour = (
        rng.uniform(5, 50, size=3) if rng.random() < 0.5 else rng.uniform(170, 235, size=3)
    )
    texture = rng.normal(1.0, 0.08, size=image.shape[:2]).astype(np.float32)[..., None]
    interior = np.clip(inside_colour[None, None, :] * texture, 0, 255)
    out = _blend(image, hole.astype(np.float32), interior, 0.6 + 0.4 * place.contrast)
    fibres = ndimage.gaussian_filter(rim.astype(np.float32) * rng.uniform(0.5, 1.0, rim.shape), 0.7)
    out = _blend(out, fibres, 240.0, 0.5 + 0.4 * place.contrast)
    return out, ndimage.binary_dilation(hole | rim, iterations=1).astype(np.float32)


def stain(image: Array, place: Placement, rng: np.random.Generator) -> tuple[Array, Array]:
    """A blotch that tints what is under it, darker at its dried rim."""
    noise = ndimage.gaussian_filter(rng.normal(0, 1, size=image.shape[:2]), place.size * 0.12)
    region, _, _ = _gaussian_bump(
        image.shape[:2],
        place.centre,
        (place.size * 0.45, place.size * rng.uniform(0.25, 0.45)),
        rng.uniform(0, np.pi),
    )
    field = region + 0.6 * noise / max(float(np.abs(noise).max()), 1e-6)
    blob = field > 0.55
    if blob.sum() < 20:
        blob = region > 0.5
    softened = ndimage.gaussian_filter(blob.astype(np.float32), 1.5)
    rim = softened * (
        1.0
        - ndimage.gaussian_filter(
            ndimage.binary_erosion(blob, iterations=3).astype(np.float32), 1.5
        )
    )
    palette = np.array(
        [[110, 70, 30], [150, 120, 40], [60, 50, 40], [90, 30, 40], [40, 60, 30]], dtype=np.float32
    )
    colour = palette[rng.integers(len(palette))]
    if image[softened > 0.3].mean() < 115:  # on dark surfaces a dried stain shows pale
        colour = np.clip(colour + 120.0, 0, 255)
    # Half multiply, half paint: the stain tints and darkens but the texture under it shows.
    texture = image.mean(axis=2, keepdims=True) / 255.0
    tinted = 0.5 * image * (colour / 255.0)[None, None, :] + 0.5 * colour * (0.5 + texture)
    out = _blend(image, softened, tinted, 0.55 + 0.4 * place.contrast)
    out = _blend(out, rim, colour * 0.4, 0.4 * place.contrast)
    return out, (softened > 0.3).astype(np.float32)


def shattered_glass(
    image: Array, place: Placement, rng: np.random.Generator
) -> tuple[Array, Array]:
    """Radial cracks from an impact point joined by concentric fracture rings."""
    canvas, draw = _canvas(image.shape[:2])
    width = _line_width(image, rng, 0.8, 2.0)
    spokes = int(rng.integers(6, 16))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=spokes))
    lengths = place.size * rng.uniform(0.5, 1.2, size=spokes)
    walks = [
        _random_walk(place.centre, length, angle, rng, wiggle=0.12)
        for angle, length in zip(angles, lengths, strict=True)
    ]
    for walk in walks:
        draw.line(walk, fill=255, width=width)
    for ring in np.sort(rng.uniform(0.2, 0.9, size=rng.integers(1, 4))):
        ring_points = [walk[min(len(walk) - 1, int(ring * len(walk)))] for walk in walks]
        draw.line([*ring_points, ring_points[0]], fill=255, width=width)
    lines = _as_float(canvas)
    out = _blend(image, ndimage.gaussian_filter(lines, 0.5), 250.0, 0.55 + 0.45 * place.contrast)
    shadow = np.roll(lines, shift=(1, -1), axis=(0, 1)) * (1 - lines)
    out = _blend(out, shadow, 20.0, 0.5 * place.contrast)
    core, _, _ = _gaussian_bump(image.shape[:2], place.centre, (place.size * 0.06,) * 2, 0.0)
    out = _blend(out, core, 235.0, 0.7 * place.contrast)
    mask = ndimage.binary_dilation(lines > 0.3, iterations=2) | (core > 0.3)
    return out, mask.astype(np.float32)


def missing_part(image: Array, place: Placement, rng: np.random.Generator) -> tuple[Array, Array]:
    """A chunk broken off: background (or shadow) shows through a jagged gap at the outline."""
    centre = place.centre
    if place.foreground is not None:
        edge = place.foreground & ~ndimage.binary_erosion(place.foreground, iterations=2)
        ys, xs = np.nonzero(edge)
        if len(xs):
            pick = rng.integers(len(xs))
            centre = (float(xs[pick]), float(ys[pick]))
    canvas, draw = _canvas(image.shape[:2])
    outline = _jagged_polygon(centre, place.size * 0.5, rng, points=12, roughness=0.45)
    draw.polygon(outline, fill=255)
    chunk = _as_float(canvas) > 0.5
    if place.foreground is not None:
        chunk &= place.foreground
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        fill = np.median(border, axis=0).astype(np.float32)
    else:
        fill = rng.uniform(10, 60, size=3).astype(np.float32)  # a dark void inside the product
    out = _blend(image, chunk.astype(np.float32), fill, 1.0)
    edge_width = _line_width(image, rng, 1.5, 3.5)
    break_edge = ndimage.binary_dilation(chunk, iterations=edge_width) & ~chunk
    out = _blend(
        out,
        ndimage.gaussian_filter(break_edge.astype(np.float32), 0.8),
        float(rng.choice([30.0, 230.0])),
        0.4 + 0.5 * place.contrast,
    )
    return out, ndimage.binary_dilation(chunk, iterations=2).astype(np.float32)


DamageFn = Callable[[Array, Placement, np.random.Generator], tuple[Array, Array]]

DAMAGE_KINDS: dict[str, DamageFn] = {
    "crack": crack,
    "scratches": scratches,
    "dent": dent,
    "crush": crush,
    "tear": tear,
    "stain": stain,
    "shattered_glass": shattered_glass,
    "missing_part": missing_part,
}


def synthesise_damage(
    image: Image.Image,
    rng: np.random.Generator,
    kinds: tuple[str, ...] | None = None,
    max_damages: int = 2,
) -> tuple[Image.Image, Array, list[str]]:
    """Draw one or more damages on a photo. Returns the damaged photo, its mask (HxW, 0/1) and
    the kinds drawn. A damage that ended up invisible (empty mask) is drawn again elsewhere."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = np.zeros(pixels.shape[:2], dtype=np.float32)
    names = list(kinds or DAMAGE_KINDS)
    drawn: list[str] = []
    count = 1 + int(rng.random() < 0.25) * (max_damages - 1)
    attempts = 0
    while len(drawn) < count and attempts < 4 * count:
        attempts += 1
        kind = names[rng.integers(len(names))]
        place = choose_placement(pixels.astype(np.uint8), rng)
        damaged, kind_mask = DAMAGE_KINDS[kind](pixels, place, rng)
        if place.foreground is not None and kind != "missing_part":
            # Damage belongs on the product, not on the studio background around it.
            damaged = np.where(place.foreground[..., None], damaged, pixels)
            kind_mask = kind_mask * place.foreground
        if kind_mask.sum() < 12:
            continue
        change = np.abs(damaged - pixels).sum(axis=2)[kind_mask > 0].mean()
        if change < MIN_VISIBLE_CHANGE:
            continue
        pixels, mask = damaged, np.maximum(mask, kind_mask)
        drawn.append(kind)
    result = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return result, mask, drawn
