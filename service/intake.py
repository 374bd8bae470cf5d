"""Safe photo intake: identify by content, enforce limits before decoding, orient, shrink early.

Every photo a stranger uploads passes through here first, in the API, the CLI and the batch job.
The rules:
- the format is decided from the file's own bytes (magic numbers), never its name or Content-Type;
- the byte cap and the pixel cap are checked before any pixel is decoded, so a decompression bomb
  is refused from its header alone;
- large JPEGs are decoded at a reduced scale (libjpeg's DCT scaling through Pillow's draft mode):
  the quality checks and the model need at most `working_side` pixels, never 12 megapixels;
- EXIF orientation is applied, so what the model sees is what the buyer saw;
- the photo id is the SHA-256 of the original bytes, which are kept byte-for-byte as evidence;
  copies shown to people are re-encoded without any metadata (GPS above all).

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pillow_heif
from PIL import Image, UnidentifiedImageError

from service.framing import Framed, framed
from service.memory_budget import MemoryBudget

pillow_heif.register_heif_opener()

# Pillow's own bomb guard is a global that other code may change; our caps are explicit limits
# checked on the header below, so Pillow's warning is only noise here.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF")
# Peak bytes a decode holds per decoded pixel: the decoder's RGBA buffer, and the RGBA copy and
# white background that transparency is flattened with (a 64 MP RGBA PNG peaked at 832 MB of
# process memory, 13 bytes a pixel; session 11). An estimate for the budget below, on the safe side
# for RGB, whose decodes hold less.
DECODE_PEAK_BYTES_PER_PIXEL = 12
# What the decodes in flight may hold together (service.memory_budget): one 64 MP decode at a time
# beside any number of phone photos decoded at reduced size (a 12 MP JPEG's 1000x750 draft: 9 MB).
DECODE_MEMORY = MemoryBudget(1 << 30)
_EXIF_GPS_IFD = 0x8825
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the photo upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HEVC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
_HEIF_BRANDS = _HEVC_BRANDS | {b"mif1", b"msf1"}  # the last two: any HEIF codec
_AVIF_BRANDS = {b"avif", b"avis"}  # AV1 still image, image sequence


@dataclass(frozen=True)
class IntakeLimits:
    """Caps applied to every upload. Defaults suit phone photos (up to ~50 MP, ~25 MB)."""

    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 64_000_000


DEFAULT_LIMITS = IntakeLimits()


class PhotoRejected(ValueError):
    """A photo that cannot be used at all. `code` is one of the design's issue codes."""

    def __init__(self, code: str, message: str, tip: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.tip = tip


@dataclass(frozen=True)
class Photo:
    """A decoded photo, ready for the quality checks and the model.

    `image` is RGB, EXIF-oriented and no larger than the requested working side; `original_size`
    is the full (oriented) size the camera wrote, which is what size-dependent checks must use.
    """

    photo_id: str
    format: str
    byte_size: int
    original_size: tuple[int, int]
    image: Image.Image
    has_gps: bool
    orientation: int

    @cached_property
    def framing(self) -> Framed:
        """`image` without flat padding bands around it, and that picture's greyscale analysis
        copy (service.framing): what the model scores and the quality checks measure. Found
        once per photo."""
        return framed(self.image)

    @property
    def picture(self) -> Image.Image:
        return self.framing.picture


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_format(head: bytes) -> str | None:
    """The supported format that these leading bytes announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return None if _is_avif(head) else "HEIF"
    return None


def _is_avif(head: bytes) -> bool:
    """Whether an ISO-BMFF `ftyp` box (its brands within `head`) announces AVIF: by its major
    brand, or by a compatible AVIF brand next to a codec-neutral major brand (mif1) and no HEVC
    brand. pillow-heif decodes HEVC only, so such a file is refused, not found corrupt."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return False
    box_end = min(int.from_bytes(head[:4], "big"), len(head))
    # Major brand at 8, minor version at 12, compatible brands from 16 to the box's end.
    brands = {head[8:12]} | {head[start : start + 4] for start in range(16, box_end - 3, 4)}
    return head[8:12] in _AVIF_BRANDS or (bool(brands & _AVIF_BRANDS) and not brands & _HEVC_BRANDS)


def _describe_unsupported(head: bytes) -> str:
    """A buyer-readable name for a file we refuse, so the message says what it was."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 BOM or blank lines before a tag
    known = (
        (b"GIF8", "a GIF"),
        (b"BM", "a BMP"),
        (b"II*\x00", "a TIFF"),
        (b"MM\x00*", "a TIFF"),
        (b"%PDF", "a PDF document"),
        (b"<svg", "an SVG drawing"),
        (b"<?xml", "an XML/SVG document"),
    )
    for magic, name in known:
        if stripped.startswith(magic):
            return name
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "a video or an unsupported HEIF variant"
    return "not a photo we can read"


def _reject_unsupported(head: bytes) -> PhotoRejected:
    if _is_avif(head):
        # Not "a video or an unsupported HEIF variant" with a tip about screenshots: an AVIF is
        # an ordinary photo (some phones and browsers save them) in a format we do not read.
        return PhotoRejected(
            "unsupported_format",
            "This file is an AVIF image; AVIF is not supported. Send the photo as JPEG, PNG, "
            "WebP or HEIC.",
            "Share or export the photo from your gallery or photo app as JPEG (most offer it), "
            "or set the camera to save JPEG or HEIC.",
        )
    return PhotoRejected(
        "unsupported_format",
        f"This file is {_describe_unsupported(head)}. We accept JPEG, PNG, WebP and HEIC photos.",
        "Upload the photo straight from your camera or gallery (JPEG or HEIC), not a screenshot "
        "of a document or an animation.",
    )


def _reject_corrupt(detail: str) -> PhotoRejected:
    return PhotoRejected(
        "corrupt",
        f"This photo could not be read: {detail}.",
        "The file may have been cut short while uploading. Take or export the photo again and "
        "upload the new file.",
    )


def megabytes(count: int) -> str:
    """A byte count as buyers read it, in MB of 2**20 bytes (the 25 MB default is 25 * 2**20),
    with one decimal where it has one: every message about sizes says the same number."""
    return f"{count / 2**20:.1f}".removesuffix(".0") + " MB"


def file_too_large(limits: IntakeLimits, size: int | None = None) -> PhotoRejected:
    """The refusal of a file over the byte cap; `size` when it is known (an upload stopped
    while it streamed is only known to be larger) and when it reads larger than the cap (a file
    a few bytes over 25 MB reads "25 MB" to a tenth of a MB too)."""
    limit = megabytes(limits.max_bytes)
    shown = None if size is None else megabytes(size)
    return PhotoRejected(
        "file_too_large",
        f"This file is {shown}; the limit is {limit}."
        if shown is not None and shown != limit
        else f"This file is larger than the {limit} limit.",
        "Upload the photo at your camera's normal size, or share it as a smaller copy.",
    )


def _check_bytes(data: bytes, limits: IntakeLimits) -> str:
    if not data:
        raise _reject_corrupt("the file is empty")
    if len(data) > limits.max_bytes:
        raise file_too_large(limits, len(data))
    image_format = sniff_format(data[:32])
    if image_format is None:
        raise _reject_unsupported(data[:32])
    return image_format


def _reject_too_many_pixels(claimed: str, limits: IntakeLimits) -> PhotoRejected:
    return PhotoRejected(
        "too_many_pixels",
        f"This image claims {claimed}, more than the "
        f"{limits.max_pixels / 1e6:.0f} megapixels we accept.",
        "Upload an ordinary camera photo; panoramas and generated images this large are not "
        "accepted.",
    )


def _check_pixels(size: tuple[int, int], limits: IntakeLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise _reject_corrupt("it reports no pixels")
    if width * height > limits.max_pixels:
        raise _reject_too_many_pixels(f"{width}x{height} pixels", limits)


def _read_orientation_and_gps(image: Image.Image) -> tuple[int, bool]:
    try:
        exif = image.getexif()
        orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
        has_gps = bool(exif.get_ifd(_EXIF_GPS_IFD))
    except Exception:  # malformed EXIF must not make a readable photo unusable
        return 1, False
    return (orientation if 1 <= orientation <= 8 else 1), has_gps


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels; transparency is flattened onto white, as a viewer would show it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale PNG: scale 0..65535 down to 0..255. A plain convert would clip every
        # value above 255 to white, and stretching the contrast would hide a too-dark photo.
        scaled = np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _decode(data: bytes, limits: IntakeLimits, target_side: int | None) -> Photo:
    image_format = _check_bytes(data, limits)
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError:
        # Pillow's own guard (about 179 MP) can fire inside open(), before our cap is consulted;
        # it is still a bomb refused from the header alone, so it gets the same answer.
        raise _reject_too_many_pixels("hundreds of megapixels", limits) from None
    except UnidentifiedImageError:
        raise _reject_corrupt(f"its {image_format} header is damaged") from None
    except Exception as error:  # any other decoder complaint about the header
        raise _reject_corrupt(f"its {image_format} header is damaged ({error})") from None
    # No `with`: closing would discard the decoded pixels, and a BytesIO needs no closing.
    _check_pixels(image.size, limits)
    width, height = image.size
    if target_side is not None and image_format == "JPEG" and max(width, height) > target_side:
        # Ask libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) that still covers the target
        # on the long side; this is where a 12 MP photo stops costing a full decode.
        scale = target_side / max(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    # The size after the draft: what is decoded, not what the header announces.
    decoded_pixels = image.size[0] * image.size[1]
    with DECODE_MEMORY.hold(decoded_pixels * DECODE_PEAK_BYTES_PER_PIXEL):
        try:
            image.load()
        except Exception as error:
            raise _reject_corrupt(f"the image data is incomplete or damaged ({error})") from None
        # EXIF is read only after the checked load: for PNG, getexif() decodes the whole image
        # to find an eXIf chunk after the pixels, and a decoding error there must not be
        # swallowed.
        orientation, has_gps = _read_orientation_and_gps(image)
        decoded = _to_rgb(image)
        del image  # the decoder's buffer, before the copies below are made
        if orientation != 1:
            decoded = decoded.transpose(_ORIENTATION_TRANSPOSE[orientation])
        if target_side is not None and max(decoded.size) > target_side:
            decoded.thumbnail(
                (target_side, target_side), Image.Resampling.BILINEAR, reducing_gap=2.0
            )
    original_size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return Photo(
        photo_id=sha256_hex(data),
        format=image_format,
        byte_size=len(data),
        original_size=original_size,
        image=decoded,
        has_gps=has_gps,
        orientation=orientation,
    )


def open_photo(
    data: bytes, *, limits: IntakeLimits = DEFAULT_LIMITS, working_side: int = 448
) -> Photo:
    """Validate and decode an uploaded photo; raises PhotoRejected with a buyer-facing reason."""
    return _decode(data, limits, working_side)


# The display copy's format: bump it with any change to what `display_copy` produces (size,
# quality, encoder options), so that cached copies and their ETags are replaced, not served on.
DISPLAY_COPY_VERSION = 2  # 2: free-text comments no longer carried over


def display_copy(
    data: bytes, *, limits: IntakeLimits = DEFAULT_LIMITS, max_side: int = 1600, quality: int = 85
) -> bytes:
    """A JPEG copy for people to look at: oriented, at most `max_side`, and with no metadata.

    The decoded image's `info` is emptied first: Pillow writes a JPEG comment (COM segment) it
    finds there back into the copy, and a comment can hold a name or a location as well as EXIF
    can. With it empty, Pillow writes no EXIF, XMP, ICC or comment block, so nothing from the
    original (GPS, camera serial, timestamps, free text) can leave in the copy.
    """
    image = _decode(data, limits, max_side).image
    image.info = {}
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
