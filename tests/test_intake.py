"""Safe intake: every bad input of design.md section 5 gets a clear rejection, never a crash."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pillow_heif
import pytest
from conftest import encode, textured_image
from PIL import Image, PngImagePlugin

from service.intake import (
    DEFAULT_LIMITS,
    IntakeLimits,
    PhotoRejected,
    display_copy,
    file_too_large,
    megabytes,
    open_photo,
    sha256_hex,
)

_ORIENTATION = 0x0112
_GPS_IFD = 0x8825


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height black pixels that compresses to a few hundred KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_with_orientation_and_gps(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    gps = exif.get_ifd(_GPS_IFD)
    gps[1] = "N"
    gps[2] = (51.0, 30.0, 12.5)
    return encode(textured_image(640, 480), "JPEG", quality=90, exif=exif.tobytes())


def heic_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=80)
    return buffer.getvalue()


def rejection(data: bytes, **kwargs: object) -> PhotoRejected:
    with pytest.raises(PhotoRejected) as caught:
        open_photo(data, **kwargs)
    error = caught.value
    assert error.message and error.tip, "every rejection must explain itself and say what to do"
    return error


# --- accepted formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP")],
)
def test_supported_formats_decode_to_oriented_rgb(fmt: str, expected: str) -> None:
    photo = open_photo(encode(textured_image(640, 480), fmt))
    assert photo.format == expected
    assert photo.original_size == (640, 480)
    assert photo.image.mode == "RGB"
    assert photo.image.size == (448, 336)


def test_heic_is_accepted_through_pillow_heif() -> None:
    source = textured_image(640, 480)
    photo = open_photo(heic_bytes(source))
    assert photo.format == "HEIF"
    assert photo.original_size == (640, 480)
    reference = np.asarray(source.resize(photo.image.size), dtype=np.float32)
    assert np.abs(np.asarray(photo.image, dtype=np.float32) - reference).mean() < 20


def test_photo_id_is_sha256_of_the_original_bytes(sharp_jpeg: bytes) -> None:
    import hashlib

    assert open_photo(sharp_jpeg).photo_id == hashlib.sha256(sharp_jpeg).hexdigest()
    assert sha256_hex(sharp_jpeg) == hashlib.sha256(sharp_jpeg).hexdigest()


def test_format_is_decided_by_content_not_by_what_the_caller_calls_it() -> None:
    # open_photo takes bytes only: a PNG named photo.jpg and sent as image/jpeg is still a PNG.
    photo = open_photo(encode(textured_image(64, 48), "PNG"))
    assert photo.format == "PNG"


# --- colour modes -----------------------------------------------------------------------------


def test_transparent_png_is_flattened_onto_white() -> None:
    rgba = np.array(textured_image(64, 48).convert("RGBA"))
    rgba[..., 3] = 0
    photo = open_photo(encode(Image.fromarray(rgba), "PNG"))
    assert photo.image.mode == "RGB"
    assert np.asarray(photo.image).min() == 255


def test_palette_png_with_transparency_is_flattened() -> None:
    palette = textured_image(64, 48).convert("P")
    photo = open_photo(encode(palette, "PNG", transparency=0))
    assert photo.image.mode == "RGB"


def test_cmyk_jpeg_keeps_its_colours() -> None:
    source = Image.new("RGB", (800, 600), (200, 40, 40))
    photo = open_photo(encode(source.convert("CMYK"), "JPEG", quality=95))
    red, green, blue = np.asarray(photo.image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 90 and blue < 90


def test_sixteen_bit_png_keeps_its_brightness() -> None:
    grey = np.asarray(textured_image(64, 48).convert("L"), dtype=np.uint16)
    dark16 = (grey * 257 // 4).astype(np.uint16)  # a dark 16-bit photo: a quarter of full scale
    photo = open_photo(encode(Image.fromarray(dark16), "PNG"))
    expected = dark16.astype(np.float64).mean() / 257
    assert np.asarray(photo.image, dtype=np.float64).mean() == pytest.approx(expected, abs=1.0)


# --- EXIF: orientation applied, GPS detected and never copied ---------------------------------


def test_exif_orientation_6_is_applied_and_gps_is_detected() -> None:
    photo = open_photo(jpeg_with_orientation_and_gps(6))
    assert photo.orientation == 6
    assert photo.has_gps
    assert photo.original_size == (480, 640)  # portrait once turned upright
    assert photo.image.size == (336, 448)


def test_orientation_6_turns_the_top_of_the_sensor_to_the_right() -> None:
    # A sensor image whose top row is white; orientation 6 means "rotate 90 degrees clockwise
    # to view", so the white band must end up on the right-hand side.
    sensor = np.zeros((480, 640, 3), dtype=np.uint8)
    sensor[:40] = 255
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    photo = open_photo(encode(Image.fromarray(sensor), "JPEG", quality=95, exif=exif.tobytes()))
    upright = np.asarray(photo.image.convert("L"), dtype=np.float32)
    assert upright[:, -10:].mean() > 200
    assert upright[:, :10].mean() < 50


def test_display_copy_is_oriented_and_carries_no_metadata() -> None:
    original = jpeg_with_orientation_and_gps(6)
    copy = Image.open(io.BytesIO(display_copy(original)))
    assert copy.format == "JPEG"
    assert copy.size == (480, 640)
    assert not copy.getexif()
    assert not copy.getexif().get_ifd(_GPS_IFD)
    assert not {"exif", "xmp", "icc_profile"} & set(copy.info)


NOTE = b"Owner: Jane Doe, lat 48.8584 lon 2.2945"


def png_with_text(key: str) -> bytes:
    text = PngImagePlugin.PngInfo()
    text.add_text(key, NOTE.decode())
    return encode(textured_image(320, 240), "PNG", pnginfo=text)


@pytest.mark.parametrize(
    "original",
    [encode(textured_image(320, 240), "JPEG", comment=NOTE), png_with_text("comment")],
    ids=["JPEG comment", "PNG text chunk"],
)
def test_display_copy_drops_free_text(original: bytes) -> None:
    assert "comment" in Image.open(io.BytesIO(original)).info  # it is in the upload
    copy = display_copy(original)
    assert "comment" not in Image.open(io.BytesIO(copy)).info
    assert b"Jane Doe" not in copy


def test_display_copy_of_a_large_photo_is_bounded() -> None:
    copy = Image.open(io.BytesIO(display_copy(encode(phone_sized(2400, 1800)), max_side=800)))
    assert max(copy.size) == 800


def test_heic_with_orientation_is_shown_upright() -> None:
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    buffer = io.BytesIO()
    textured_image(640, 480).save(buffer, format="HEIF", exif=exif.tobytes())
    photo = open_photo(buffer.getvalue())
    assert photo.original_size == (480, 640)
    assert photo.image.size == (336, 448)


def test_malformed_exif_does_not_make_a_photo_unusable() -> None:
    photo = open_photo(encode(textured_image(64, 48), "JPEG", exif=b"Exif\x00\x00garbage"))
    assert photo.orientation == 1
    assert not photo.has_gps


# --- reduced-size decoding --------------------------------------------------------------------


def phone_sized(width: int, height: int) -> Image.Image:
    """A large image made cheaply: a small texture blown up (its detail does not matter here)."""
    return textured_image(width // 8, height // 8).resize((width, height))


def test_large_jpeg_is_decoded_in_draft_mode_not_in_full() -> None:
    data = encode(phone_sized(4000, 3000), "JPEG", quality=85)
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (448, 336))
    assert image.size == (500, 375), "libjpeg should decode this photo at 1/8 scale"
    photo = open_photo(data)
    assert photo.original_size == (4000, 3000)
    assert photo.image.size == (448, 336)


def test_working_side_none_decodes_full_size() -> None:
    photo = open_photo(encode(textured_image(900, 600)), working_side=None)
    assert photo.image.size == (900, 600)


# --- bad input --------------------------------------------------------------------------------


def test_truncated_jpeg_is_corrupt(sharp_jpeg: bytes) -> None:
    assert rejection(sharp_jpeg[: len(sharp_jpeg) // 2]).code == "corrupt"


def test_jpeg_cut_inside_its_header_is_corrupt(sharp_jpeg: bytes) -> None:
    assert rejection(sharp_jpeg[:200]).code == "corrupt"


def test_png_bomb_is_refused_from_its_header() -> None:
    bomb = png_bomb(30_000, 30_000)
    assert len(bomb) < 2_000_000
    error = rejection(bomb)
    assert error.code == "too_many_pixels"
    assert "megapixels" in error.message


def test_bomb_under_pillows_guard_but_over_our_cap_is_refused() -> None:
    error = rejection(png_bomb(10_000, 7_000))
    assert error.code == "too_many_pixels"
    assert "10000x7000" in error.message


def test_pixel_cap_is_configurable() -> None:
    small_cap = IntakeLimits(max_pixels=100 * 100)
    assert rejection(encode(textured_image(200, 200), "PNG"), limits=small_cap).code == (
        "too_many_pixels"
    )


def test_byte_cap_is_checked_before_decoding() -> None:
    error = rejection(b"\xff\xd8\xff" + b"\x00" * 2000, limits=IntakeLimits(max_bytes=1000))
    assert error.code == "file_too_large"
    assert DEFAULT_LIMITS.max_bytes > 1000


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"hello, this is a text file somebody named photo.jpg\n", "not a photo"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b'\xef\xbb\xbf<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"%PDF-1.7\n", "PDF"),
    ],
)
def test_non_images_are_unsupported(data: bytes, named: str) -> None:
    error = rejection(data)
    assert error.code == "unsupported_format"
    assert named in error.message


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_unsupported_and_named(fmt: str) -> None:
    error = rejection(encode(textured_image(32, 32), fmt))
    assert error.code == "unsupported_format"
    assert fmt in error.message


def iso_bmff(major: bytes, *compatible: bytes) -> bytes:
    """The start of an ISO-BMFF file (HEIF, AVIF, MP4): its `ftyp` box, then a box of padding."""
    ftyp = b"ftyp" + major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + struct.pack(">I", 72) + b"free" + bytes(64)


@pytest.mark.parametrize(
    "data",
    [
        iso_bmff(b"avif", b"avif", b"mif1", b"miaf", b"MA1B"),  # as libavif (Pillow) writes it
        iso_bmff(b"avis", b"avis", b"msf1", b"miaf"),  # an AVIF image sequence
        # A codec-neutral major brand: sniffed as HEIF before, then "corrupt" (no AV1 decoder).
        iso_bmff(b"mif1", b"mif1", b"avif", b"miaf"),
    ],
    ids=["avif", "avis", "mif1-avif"],
)
def test_avif_is_refused_as_plainly_unsupported(data: bytes) -> None:
    error = rejection(data)
    assert error.code == "unsupported_format"
    assert error.message == (
        "This file is an AVIF image; AVIF is not supported. Send the photo as JPEG, PNG, WebP "
        "or HEIC."
    )
    assert "screenshot" not in error.tip and "animation" not in error.tip


@pytest.mark.parametrize(
    "data", [iso_bmff(b"isom", b"isom", b"mp41"), iso_bmff(b"qt  ", b"qt  ")], ids=["mp4", "mov"]
)
def test_other_iso_bmff_files_are_still_named_as_videos(data: bytes) -> None:
    error = rejection(data)
    assert error.code == "unsupported_format"
    assert "a video or an unsupported HEIF variant" in error.message


def test_empty_file_is_corrupt() -> None:
    error = rejection(b"")
    assert error.code == "corrupt"
    assert "empty" in error.message


def test_one_pixel_image_decodes_and_keeps_its_true_size() -> None:
    # Not an intake error: the quality checks call it too_small with a retake tip.
    photo = open_photo(encode(Image.new("RGB", (1, 1), (120, 90, 60)), "PNG"))
    assert photo.original_size == (1, 1)
    assert photo.image.size == (1, 1)


def test_png_with_a_broken_chunk_is_corrupt() -> None:
    data = bytearray(encode(textured_image(64, 48), "PNG"))
    data[60:80] = b"\x00" * 20  # inside the compressed pixel data
    assert rejection(bytes(data)).code == "corrupt"


def test_webp_riff_header_without_image_data_is_corrupt() -> None:
    assert rejection(b"RIFF\x10\x00\x00\x00WEBPVP8 garbage").code == "corrupt"


@pytest.mark.parametrize(
    ("count", "shown"),
    [(25 * 2**20, "25 MB"), (int(26.24 * 2**20), "26.2 MB"), (2**20 // 2, "0.5 MB"), (0, "0 MB")],
)
def test_megabytes_known_values(count: int, shown: str) -> None:
    assert megabytes(count) == shown


def test_the_byte_cap_is_named_as_its_configuration_says() -> None:
    """25 * 2**20 bytes is "25 MB" in every message (it read 26 MB here and 26.2 MB in the API)."""
    refusal = file_too_large(IntakeLimits(max_bytes=25 * 2**20), 30 * 2**20)
    assert refusal.message == "This file is 30 MB; the limit is 25 MB."


def test_a_file_just_over_the_byte_cap_does_not_read_as_the_cap_itself() -> None:
    """Sizes are shown to a tenth of a MB, so a file a few bytes over the cap read "This file is
    25 MB; the limit is 25 MB."; such a file is said to be larger than the limit."""
    limits = IntakeLimits(max_bytes=25 * 2**20)
    refusal = file_too_large(limits, limits.max_bytes + 1)
    assert refusal.message == "This file is larger than the 25 MB limit."
    assert rejection(b"\xff\xd8\xff" + b"\x00" * limits.max_bytes, limits=limits).message == (
        refusal.message
    )
