"""Display copies are made once and then served from disk, with an ETag and 304 answers; the
access checks and the answer for a damaged original are what they were without the cache."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_server import ApiServer
from PIL import Image
from test_api import assert_problem, files, new_claim, new_listing, plain_jpeg, red_patch_jpeg

from service.api.routes import photos as photos_route
from service.api.routes.photos import display_etag, etag_matches
from service.intake import DISPLAY_COPY_VERSION, display_copy
from service.store import DisplayCache, PhotoStore


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts display copies made by the route (the server runs in this process)."""
    made: list[str] = []

    def counting_display_copy(data: bytes) -> bytes:
        made.append("copy")
        return display_copy(data)

    monkeypatch.setattr(photos_route, "display_copy", counting_display_copy)
    yield made


def cache_of(server: ApiServer) -> DisplayCache:
    return DisplayCache(server.settings.display_dir, version=DISPLAY_COPY_VERSION)


def upload_evidence(server: ApiServer, seed: int) -> dict:
    claim_id = new_claim(server, new_listing(server, plain_jpeg(seed=seed)))
    with server.client(server.keys["buyer"]) as buyer:
        response = buyer.post(
            f"/v1/claims/{claim_id}/evidence", files=files(red_patch_jpeg(seed=seed + 1))
        )
    assert response.status_code == 201, response.text
    return response.json()["data"][0]


def test_second_get_is_served_from_the_cache(api_server: ApiServer, renders: list[str]) -> None:
    photo = upload_evidence(api_server, seed=200)
    path = cache_of(api_server).path_for(photo["photo_id"])
    assert not path.exists()
    with api_server.client(api_server.keys["buyer"]) as buyer:
        first = buyer.get(photo["url"])
        assert first.status_code == 200 and len(renders) == 1 and path.is_file()
        second = buyer.get(photo["url"])
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        third = reviewer.get(photo["url"])
    assert len(renders) == 1
    assert second.status_code == third.status_code == 200
    assert first.content == second.content == third.content
    assert second.headers["content-type"] == "image/jpeg"
    assert second.headers["etag"] == display_etag(photo["photo_id"], DISPLAY_COPY_VERSION)
    assert second.headers["cache-control"] == first.headers["cache-control"]
    decoded = Image.open(io.BytesIO(second.content))
    assert decoded.format == "JPEG" and not decoded.getexif()


def test_if_none_match_gets_304_without_the_image(
    api_server: ApiServer, renders: list[str]
) -> None:
    photo = upload_evidence(api_server, seed=210)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        etag = buyer.get(photo["url"]).headers["etag"]
        for header in (etag, f"W/{etag}", f'"something-else", {etag}', "*"):
            response = buyer.get(photo["url"], headers={"If-None-Match": header})
            assert response.status_code == 304, header
            assert response.content == b""
            assert response.headers["etag"] == etag
            assert "private" in response.headers["cache-control"]
        stale = buyer.get(photo["url"], headers={"If-None-Match": '"older-version"'})
    assert stale.status_code == 200 and stale.headers["etag"] == etag
    assert len(renders) == 1


def test_access_is_checked_before_anything_is_read(
    api_server: ApiServer, renders: list[str]
) -> None:
    photo = upload_evidence(api_server, seed=220)
    path = cache_of(api_server).path_for(photo["photo_id"])
    etag = display_etag(photo["photo_id"], DISPLAY_COPY_VERSION)
    with api_server.client(api_server.keys["other_buyer"]) as stranger:
        assert_problem(stranger.get(photo["url"]), 404, "photo_not_found")
        # Knowing the ETag does not help: no 304 for a photo the caller may not see.
        refused = stranger.get(photo["url"], headers={"If-None-Match": etag})
        assert_problem(refused, 404, "photo_not_found")
    assert renders == [] and not path.exists()
    with api_server.client(api_server.keys["buyer"]) as owner:
        assert owner.get(photo["url"]).status_code == 200
    with api_server.client(api_server.keys["other_buyer"]) as stranger:
        assert_problem(stranger.get(photo["url"]), 404, "photo_not_found")
        assert_problem(stranger.get(photo["url"], headers={"If-None-Match": etag}), 404)
    with api_server.client() as anonymous:
        assert_problem(anonymous.get(photo["url"]), 401, "missing_api_key")
    with api_server.client(api_server.keys["admin"]) as admin:
        assert_problem(admin.get(photo["url"]), 403, "forbidden_role")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(
            lambda data: data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:], id="bit flip"
        ),
        pytest.param(lambda data: data[:-60], id="trailer cut"),
    ],
)
def test_a_damaged_cache_file_is_detected_and_rebuilt(
    api_server: ApiServer, renders: list[str], damage
) -> None:
    photo = upload_evidence(api_server, seed=230)
    path = cache_of(api_server).path_for(photo["photo_id"])
    with api_server.client(api_server.keys["buyer"]) as buyer:
        good = buyer.get(photo["url"]).content
        made = len(renders)  # 1, or 0 when an earlier case already cached this same photo
        intact = path.read_bytes()
        path.write_bytes(damage(intact))
        again = buyer.get(photo["url"])
    assert again.status_code == 200 and again.content == good
    assert len(renders) == made + 1
    assert path.read_bytes() == intact
    assert cache_of(api_server).get(photo["photo_id"]) == good


def test_a_damaged_original_is_withheld_cached_or_not(
    api_server: ApiServer, renders: list[str]
) -> None:
    cached = upload_evidence(api_server, seed=240)
    uncached = upload_evidence(api_server, seed=250)
    store = PhotoStore(api_server.settings.photos_dir)
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        assert reviewer.get(cached["url"]).status_code == 200
        for photo in (cached, uncached):
            etag = display_etag(photo["photo_id"], DISPLAY_COPY_VERSION)
            original = store.path_for(photo["photo_id"])
            pristine = original.read_bytes()
            original.write_bytes(pristine[:-1] + bytes([pristine[-1] ^ 1]))
            try:
                assert_problem(reviewer.get(photo["url"]), 500, "photo_corrupted")
                conditional = reviewer.get(photo["url"], headers={"If-None-Match": etag})
                assert_problem(conditional, 500, "photo_corrupted")
            finally:
                original.write_bytes(pristine)
            original.unlink()
            assert_problem(reviewer.get(photo["url"]), 404, "photo_not_found")
            original.write_bytes(pristine)
    assert not cache_of(api_server).path_for(uncached["photo_id"]).exists()
    assert len(renders) == 1


# --- the cache and the ETag on their own ---------------------------------------------------------


def test_cache_round_trip_and_versions_are_separate(tmp_path: Path) -> None:
    photo_id = "ab" * 32
    first = DisplayCache(tmp_path, version=1)
    assert first.get(photo_id) is None
    first.put(photo_id, b"\xff\xd8 copy one \xff\xd9")
    assert first.get(photo_id) == b"\xff\xd8 copy one \xff\xd9"
    assert first.path_for(photo_id).relative_to(tmp_path).parts == (
        "v1",
        photo_id[:2],
        photo_id[2:4],
        f"{photo_id}.jpg",
    )
    second = DisplayCache(tmp_path, version=2)
    assert second.get(photo_id) is None  # a new display format starts empty
    first.put(photo_id, b"\xff\xd8 copy two \xff\xd9")  # replaces the file
    assert first.get(photo_id) == b"\xff\xd8 copy two \xff\xd9"
    assert not list(tmp_path.rglob(".incoming-*"))
    assert display_etag(photo_id, 1) != display_etag(photo_id, 2)
    assert display_etag(photo_id, 1) == f'"{photo_id}-display-v1"'  # strong: no W/


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"a"', True),
        ('W/"a"', True),
        ('"b", "a"', True),
        ('"b",W/"a"', True),
        (" * ", True),
        ('"b"', False),
        ('"ab"', False),
        ("a", False),
        ("", False),
    ],
)
def test_if_none_match_parsing(header: str, matches: bool) -> None:
    assert etag_matches(header, '"a"') is matches
