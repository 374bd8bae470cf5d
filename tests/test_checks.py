"""The whole buyer-side check: quality findings plus listing-photo reuse and cross-claim reuse."""

from __future__ import annotations

import threading

from conftest import encode, textured_image
from PIL import Image, ImageFilter, ImageOps

from service.checks import (
    DUPLICATE_ACROSS_CLAIMS,
    LISTING_PHOTO_REUSE,
    check_photo,
    inspect_photo,
    listing_windows,
    matches_listing,
)
from service.duplicates import (
    DUPLICATE_MAX_DISTANCE,
    DuplicateIndex,
    level_crop_scale,
    photo_windows,
)
from service.intake import Photo, open_photo


def jpeg_photo(image: Image.Image, quality: int = 90) -> Photo:
    return open_photo(encode(image, "JPEG", quality=quality))


def codes(photo: Photo, **kwargs: object) -> list[str]:
    return [issue.code for issue in check_photo(photo, **kwargs)]


def tilted(image: Image.Image, degrees: float) -> Image.Image:
    """Turned by `degrees` and trimmed to a level frame inside the turned one."""
    turned = image.rotate(degrees, resample=Image.Resampling.BICUBIC)
    return trimmed(turned, (1 - 0.97 * level_crop_scale(*image.size, degrees)) / 2)


def trimmed(image: Image.Image, fraction: float) -> Image.Image:
    margin_x, margin_y = round(image.width * fraction), round(image.height * fraction)
    return image.crop((margin_x, margin_y, image.width - margin_x, image.height - margin_y))


def test_a_good_photo_has_no_findings() -> None:
    assert check_photo(jpeg_photo(textured_image(800, 600))) == []


def test_quality_findings_come_through() -> None:
    blurred = textured_image(800, 600).filter(ImageFilter.GaussianBlur(8))
    assert codes(jpeg_photo(blurred)) == ["blurry"]


def test_listing_photo_reused_resized_and_cropped_is_a_blocker() -> None:
    listing_image = textured_image(600, 600, seed=11)
    listing = jpeg_photo(listing_image)
    upload = jpeg_photo(trimmed(listing_image, 0.08).resize((900, 760)), quality=70)
    issues = check_photo(upload, listing_photos=[listing])
    assert LISTING_PHOTO_REUSE in issues
    assert LISTING_PHOTO_REUSE.severity == "blocker"


def test_a_mirrored_listing_photo_is_listing_reuse_too() -> None:
    listing_image = textured_image(600, 600, seed=13)
    upload = jpeg_photo(ImageOps.mirror(listing_image).resize((800, 800)), quality=70)
    assert LISTING_PHOTO_REUSE in check_photo(upload, listing_photos=[jpeg_photo(listing_image)])


def test_a_tilted_listing_photo_is_listing_reuse_too() -> None:
    listing_image = textured_image(800, 600, seed=14)
    upload = jpeg_photo(tilted(listing_image, -9), quality=70)
    assert LISTING_PHOTO_REUSE in check_photo(upload, listing_photos=[jpeg_photo(listing_image)])


def test_listing_windows_are_the_photos_windows_computed_once() -> None:
    listing = jpeg_photo(textured_image(500, 400, seed=23))
    first = listing_windows(listing)
    assert first == photo_windows(listing.image)
    assert listing_windows(listing) is first  # the second call is answered from the cache


def test_own_photo_of_a_different_item_is_not_listing_reuse() -> None:
    listing = jpeg_photo(textured_image(600, 600, seed=11))
    upload = jpeg_photo(textured_image(800, 600, seed=12))
    assert not matches_listing(upload, [listing], DUPLICATE_MAX_DISTANCE)
    assert "listing_photo_reuse" not in codes(upload, listing_photos=[listing])


def test_photo_used_in_another_claim_is_found_and_named() -> None:
    earlier = textured_image(800, 600, seed=21)
    index = DuplicateIndex()
    index.add_photo(photo_windows(jpeg_photo(earlier).image), "claim-1/photo-a")
    index.add_photo(
        photo_windows(jpeg_photo(textured_image(800, 600, seed=22)).image), "claim-2/photo-b"
    )
    upload = jpeg_photo(trimmed(earlier, 0.1), quality=60)
    assert DUPLICATE_ACROSS_CLAIMS in check_photo(upload, duplicate_index=index)
    findings = inspect_photo(upload, duplicate_index=index)
    assert [match.ref for match in findings.duplicates] == ["claim-1/photo-a"]
    assert list(findings.issues) == check_photo(upload, duplicate_index=index)


def test_a_mirrored_photo_from_another_claim_is_found() -> None:
    earlier = textured_image(800, 600, seed=24)
    index = DuplicateIndex()
    index.add_photo(photo_windows(jpeg_photo(earlier).image), "claim-4/photo-c")
    upload = jpeg_photo(trimmed(ImageOps.mirror(earlier), 0.05), quality=70)
    findings = inspect_photo(upload, duplicate_index=index)
    assert DUPLICATE_ACROSS_CLAIMS in findings.issues
    assert [match.ref for match in findings.duplicates] == ["claim-4/photo-c"]


def test_a_tilted_photo_from_another_claim_is_found() -> None:
    earlier = textured_image(800, 600, seed=25)
    index = DuplicateIndex()
    index.add_photo(photo_windows(jpeg_photo(earlier).image), "claim-5/photo-d")
    upload = jpeg_photo(tilted(earlier, 11), quality=70)
    findings = inspect_photo(upload, duplicate_index=index)
    assert DUPLICATE_ACROSS_CLAIMS in findings.issues
    assert [match.ref for match in findings.duplicates] == ["claim-5/photo-d"]


def test_the_claims_own_photos_are_excluded() -> None:
    image = textured_image(800, 600, seed=31)
    index = DuplicateIndex()
    index.add_photo(photo_windows(jpeg_photo(image).image), "claim-9/photo-x")
    upload = jpeg_photo(image, quality=75)
    assert "duplicate_across_claims" not in codes(
        upload, duplicate_index=index, exclude_refs={"claim-9/photo-x"}
    )
    assert "duplicate_across_claims" in codes(upload, duplicate_index=index)


def test_a_uniform_frame_is_not_called_a_duplicate_of_another_uniform_frame() -> None:
    wall = Image.new("RGB", (800, 600), (180, 175, 170))
    index = DuplicateIndex()
    index.add_photo(photo_windows(wall), "claim-3/photo-wall")
    listing = jpeg_photo(wall)
    assert codes(jpeg_photo(wall), duplicate_index=index, listing_photos=[listing]) == [
        "low_detail"
    ]
    assert inspect_photo(jpeg_photo(wall), duplicate_index=index).duplicates == ()


def test_the_index_lock_is_held_only_for_the_look_up() -> None:
    held_during_look_up: list[bool] = []

    class WatchedIndex(DuplicateIndex):
        def query(self, photo_hash: int, max_distance: int = DUPLICATE_MAX_DISTANCE):
            held_during_look_up.append(lock.locked())
            return super().query(photo_hash, max_distance)

    lock = threading.Lock()
    index = WatchedIndex()
    image = textured_image(800, 600, seed=51)
    index.add_photo(photo_windows(image), "claim-5/photo-1")
    findings = inspect_photo(jpeg_photo(image), duplicate_index=index, duplicate_lock=lock)
    assert [match.ref for match in findings.duplicates] == ["claim-5/photo-1"]
    assert held_during_look_up == [True] and not lock.locked()


def test_findings_keep_their_order_quality_first() -> None:
    listing_image = textured_image(600, 600, seed=41)
    small_copy = listing_image.resize((200, 200))
    index = DuplicateIndex()
    index.add_photo(photo_windows(listing_image), "claim-4/photo-1")
    found = codes(
        jpeg_photo(small_copy), listing_photos=[jpeg_photo(listing_image)], duplicate_index=index
    )
    assert found == ["too_small", "listing_photo_reuse", "duplicate_across_claims"]
