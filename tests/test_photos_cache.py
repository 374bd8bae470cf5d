"""Display copies and heatmap PNGs are made once and then served from disk, with an ETag and 304
answers; the access checks and the answer for a damaged original are what they were without the
cache. A heatmap is keyed by its photo AND the stored damage map, and the PNG of a map that is no
longer stored is deleted (when the new one is rendered, and at start-up)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_server import ApiServer
from PIL import Image
from sqlalchemy import update
from test_api import assert_problem, files, new_claim, new_listing, plain_jpeg, red_patch_jpeg

from service.api.routes import photos as photos_route
from service.api.routes.photos import display_etag, etag_matches, heatmap_etag
from service.api.runtime import HEATMAP_FORMAT_VERSION, Runtime, heatmap_key, scored_whole_frame
from service.db.models import ClaimPhoto
from service.db.session import make_engine, make_session_factory, transaction
from service.intake import DISPLAY_COPY_VERSION, display_copy
from service.store import (
    DisplayCache,
    HeatmapCache,
    PhotoNotFound,
    PhotoStore,
    heatmap_cache_key,
    is_heatmap_key,
    photo_of_heatmap_key,
)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts display copies made by the route (the server runs in this process)."""
    made: list[str] = []

    def counting_display_copy(data: bytes) -> bytes:
        made.append("copy")
        return display_copy(data)

    monkeypatch.setattr(photos_route, "display_copy", counting_display_copy)
    yield made


@pytest.fixture
def heatmap_renders(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts heatmap PNGs rendered by the route (the server runs in this process)."""
    made: list[str] = []
    render = Runtime.render_heatmap

    def counting_render(
        self: Runtime, original: bytes, damage_map: list[list[float]], *, model_version: str
    ) -> bytes:
        made.append("heatmap")
        return render(self, original, damage_map, model_version=model_version)

    monkeypatch.setattr(Runtime, "render_heatmap", counting_render)
    yield made


def heatmap_cache_of(server: ApiServer) -> HeatmapCache:
    return HeatmapCache(server.settings.heatmap_dir, version=HEATMAP_FORMAT_VERSION)


def set_damage_map(
    server: ApiServer,
    photo_id: str,
    damage_map: list[list[float]],
    *,
    claim_id: str | None = None,
) -> None:
    """Replace the stored damage map of every evidence row of this photo, or only of its row in
    `claim_id` (as a re-assessment with another model would: a rescore)."""
    rows = [ClaimPhoto.photo_id == photo_id]
    if claim_id is not None:
        rows.append(ClaimPhoto.claim_id == claim_id)
    engine = make_engine(server.settings.resolved_database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            session.execute(update(ClaimPhoto).where(*rows).values(damage_map=damage_map))
    finally:
        engine.dispose()


def key_of(response_etag: str) -> str:
    """The heatmap cache key a heatmap ETag names."""
    return response_etag.strip('"').removeprefix("heatmap-")


UNIFORM_MAP = [[0.9] * 7 for _ in range(7)]


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


@pytest.mark.parametrize(
    ("url_field", "counted_renders", "seed", "older_etag"),
    [
        pytest.param("url", "renders", 210, '"older-version"', id="display copy"),
        pytest.param("heatmap_url", "heatmap_renders", 310, '"heatmap-older"', id="heatmap"),
    ],
)
def test_if_none_match_gets_304_without_the_image(
    api_server: ApiServer,
    request: pytest.FixtureRequest,
    url_field: str,
    counted_renders: str,
    seed: int,
    older_etag: str,
) -> None:
    made = request.getfixturevalue(counted_renders)
    url = upload_evidence(api_server, seed=seed)[url_field]
    with api_server.client(api_server.keys["buyer"]) as buyer:
        etag = buyer.get(url).headers["etag"]
        for header in (etag, f"W/{etag}", f'"something-else", {etag}', "*"):
            response = buyer.get(url, headers={"If-None-Match": header})
            assert response.status_code == 304, header
            assert response.content == b""
            assert response.headers["etag"] == etag
            assert "private" in response.headers["cache-control"]
        stale = buyer.get(url, headers={"If-None-Match": older_etag})
    assert stale.status_code == 200 and stale.headers["etag"] == etag
    assert len(made) == 1


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


# --- heatmaps -------------------------------------------------------------------------------------


def test_second_heatmap_get_is_served_from_the_cache(
    api_server: ApiServer, heatmap_renders: list[str]
) -> None:
    photo = upload_evidence(api_server, seed=300)
    cache = heatmap_cache_of(api_server)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        first = buyer.get(photo["heatmap_url"])
        assert first.status_code == 200 and len(heatmap_renders) == 1
        second = buyer.get(photo["heatmap_url"])
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        third = reviewer.get(photo["heatmap_url"])
    assert len(heatmap_renders) == 1
    assert second.status_code == third.status_code == 200
    assert first.content == second.content == third.content
    assert second.content.startswith(b"\x89PNG")
    assert second.headers["content-type"] == "image/png"
    etag = second.headers["etag"]
    assert etag == first.headers["etag"] == third.headers["etag"]
    assert etag.startswith('"heatmap-') and not etag.startswith("W/")
    cache_key = key_of(etag)
    assert cache.path_for(cache_key).is_file() and cache.get(cache_key) == first.content
    assert second.headers["cache-control"] == first.headers["cache-control"]


def test_a_new_damage_map_gives_a_new_heatmap_and_etag(
    api_server: ApiServer, heatmap_renders: list[str]
) -> None:
    photo = upload_evidence(api_server, seed=320)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        before = buyer.get(photo["heatmap_url"])
        assert before.status_code == 200 and len(heatmap_renders) == 1
        # The URL's content can change, so browsers must revalidate rather than keep it a day.
        assert before.headers["cache-control"] == "private, no-cache"
        # Same photo, another damage map (a model upgrade re-assessed it): no stale PNG.
        set_damage_map(api_server, photo["photo_id"], [[0.9] * 7 for _ in range(7)])
        after = buyer.get(photo["heatmap_url"])
        assert after.status_code == 200 and len(heatmap_renders) == 2
        assert after.headers["etag"] != before.headers["etag"]
        assert after.content != before.content
        # The old ETag no longer earns a 304; the new one does, and the new PNG is cached.
        old = buyer.get(photo["heatmap_url"], headers={"If-None-Match": before.headers["etag"]})
        assert old.status_code == 200 and old.content == after.content
        new = buyer.get(photo["heatmap_url"], headers={"If-None-Match": after.headers["etag"]})
        assert new.status_code == 304
    assert len(heatmap_renders) == 2


def test_a_rescore_deletes_the_old_heatmap_png_and_serves_the_new_one(
    api_server: ApiServer, heatmap_renders: list[str]
) -> None:
    photo = upload_evidence(api_server, seed=370)
    cache = heatmap_cache_of(api_server)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        before = buyer.get(photo["heatmap_url"])
        old_path = cache.path_for(key_of(before.headers["etag"]))
        assert before.status_code == 200 and old_path.is_file()
        set_damage_map(api_server, photo["photo_id"], UNIFORM_MAP)
        after = buyer.get(photo["heatmap_url"])
        assert after.status_code == 200 and after.content != before.content
        new_key = key_of(after.headers["etag"])
        assert not old_path.exists()
        assert cache.keys_of(photo["photo_id"]) == [new_key]
        assert cache.get(new_key) == after.content
        again = buyer.get(photo["heatmap_url"])
    assert again.content == after.content and again.headers["etag"] == after.headers["etag"]
    assert len(heatmap_renders) == 2  # the second GET of the new map is a cache hit


def test_a_png_rendered_from_a_map_that_a_rescore_replaced_meanwhile_is_not_left_behind(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request reads the old map, the rescore commits while it renders, and the request
    writes the old map's PNG after that: it must not stay on disk until a restart."""
    photo = upload_evidence(api_server, seed=375)
    cache = heatmap_cache_of(api_server)
    render = Runtime.render_heatmap

    def render_while_a_rescore_commits(
        self: Runtime, original: bytes, damage_map: list[list[float]], *, model_version: str
    ) -> bytes:
        png = render(self, original, damage_map, model_version=model_version)
        if damage_map != UNIFORM_MAP:
            set_damage_map(api_server, photo["photo_id"], UNIFORM_MAP)
        return png

    monkeypatch.setattr(Runtime, "render_heatmap", render_while_a_rescore_commits)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        raced = buyer.get(photo["heatmap_url"])
        # Served as read (the map was stored when the request read it), but not kept.
        assert raced.status_code == 200
        assert cache.keys_of(photo["photo_id"]) == []
        after = buyer.get(photo["heatmap_url"])
    assert after.status_code == 200 and after.content != raced.content
    assert cache.keys_of(photo["photo_id"]) == [key_of(after.headers["etag"])]


def test_a_photo_in_two_claims_keeps_the_heatmap_of_each_stored_map(
    api_server: ApiServer, heatmap_renders: list[str]
) -> None:
    """The owner of the older claim sees its map, a reviewer the newest claim's: both PNGs can
    be served, so rendering one must not delete the other (nor the two keep replacing each
    other)."""
    evidence = red_patch_jpeg(seed=381)
    listing_id = new_listing(api_server, plain_jpeg(seed=380))
    claim_ids = []
    for owner in ("buyer", "other_buyer"):
        claim_id = new_claim(api_server, listing_id, key=api_server.keys[owner])
        with api_server.client(api_server.keys[owner]) as client:
            uploaded = client.post(f"/v1/claims/{claim_id}/evidence", files=files(evidence))
        assert uploaded.status_code == 201, uploaded.text
        claim_ids.append(claim_id)
    photo = uploaded.json()["data"][0]
    set_damage_map(api_server, photo["photo_id"], UNIFORM_MAP, claim_id=claim_ids[0])
    cache = heatmap_cache_of(api_server)
    etags = set()
    for _ in range(2):
        for viewer in ("buyer", "reviewer"):
            with api_server.client(api_server.keys[viewer]) as client:
                response = client.get(photo["heatmap_url"])
            assert response.status_code == 200
            etags.add(response.headers["etag"])
    assert len(etags) == 2 and len(heatmap_renders) == 2
    assert cache.keys_of(photo["photo_id"]) == sorted(key_of(etag) for etag in etags)


def test_start_up_deletes_the_heatmaps_of_maps_no_longer_stored(
    api_server: ApiServer, heatmap_renders: list[str]
) -> None:
    photo = upload_evidence(api_server, seed=390)
    cache = heatmap_cache_of(api_server)
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        live = key_of(reviewer.get(photo["heatmap_url"]).headers["etag"])
    # Left behind as by a crash or a prune that failed: a replaced map of this
    # photo, and a photo that is no evidence anywhere.
    replaced = heatmap_key(photo["photo_id"], UNIFORM_MAP, 224)
    unknown = heatmap_key("0f" * 32, UNIFORM_MAP, 224)
    for key in (replaced, unknown):
        cache.put(key, b"\x89PNG left behind")
    # A PNG named by the digest alone, as heatmaps were stored before keys began with the photo.
    old_layout = cache.path_for(live).with_name("ab" * 32 + ".png")
    old_layout.write_bytes(b"\x89PNG old layout")
    in_progress = cache.path_for(live).with_name(".incoming-abc123")
    in_progress.write_bytes(b"a write in progress elsewhere")
    runtime = Runtime.start(api_server.settings)  # a restart
    try:
        assert not cache.path_for(replaced).exists() and not cache.path_for(unknown).exists()
        assert not old_layout.exists()
        assert cache.path_for(live).is_file() and in_progress.is_file()
        assert runtime.sweep_heatmaps() == 0  # nothing left to find
    finally:
        runtime.close()
        in_progress.unlink()


def test_heatmap_access_is_checked_before_anything_is_read(
    api_server: ApiServer, heatmap_renders: list[str]
) -> None:
    photo = upload_evidence(api_server, seed=330)
    with api_server.client(api_server.keys["other_buyer"]) as stranger:
        assert_problem(stranger.get(photo["heatmap_url"]), 404, "photo_not_found")
    assert heatmap_renders == []
    with api_server.client(api_server.keys["buyer"]) as owner:
        etag = owner.get(photo["heatmap_url"]).headers["etag"]
    with api_server.client(api_server.keys["other_buyer"]) as stranger:
        assert_problem(stranger.get(photo["heatmap_url"]), 404, "photo_not_found")
        # Knowing the ETag does not help: no 304 for a photo the caller may not see.
        refused = stranger.get(photo["heatmap_url"], headers={"If-None-Match": etag})
        assert_problem(refused, 404, "photo_not_found")
    with api_server.client() as anonymous:
        assert_problem(anonymous.get(photo["heatmap_url"]), 401, "missing_api_key")
    with api_server.client(api_server.keys["admin"]) as admin:
        assert_problem(admin.get(photo["heatmap_url"]), 403, "forbidden_role")
    assert len(heatmap_renders) == 1


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(
            lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], id="bit flip"
        ),
        pytest.param(lambda data: data[:-60], id="trailer cut"),
    ],
)
def test_a_damaged_heatmap_file_is_detected_and_rebuilt(
    api_server: ApiServer, heatmap_renders: list[str], damage
) -> None:
    photo = upload_evidence(api_server, seed=340)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        good = buyer.get(photo["heatmap_url"])
        made = len(heatmap_renders)  # 1, or 0 when an earlier case already cached it
        cache_key = key_of(good.headers["etag"])
        path = heatmap_cache_of(api_server).path_for(cache_key)
        intact = path.read_bytes()
        path.write_bytes(damage(intact))
        again = buyer.get(photo["heatmap_url"])
    assert again.status_code == 200 and again.content == good.content
    assert again.headers["etag"] == good.headers["etag"]
    assert len(heatmap_renders) == made + 1
    assert path.read_bytes() == intact


def test_a_damaged_original_withholds_the_heatmap_cached_or_not(
    api_server: ApiServer, heatmap_renders: list[str]
) -> None:
    cached = upload_evidence(api_server, seed=350)
    uncached = upload_evidence(api_server, seed=360)
    store = PhotoStore(api_server.settings.photos_dir)
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        etag = reviewer.get(cached["heatmap_url"]).headers["etag"]
        for photo in (cached, uncached):
            original = store.path_for(photo["photo_id"])
            pristine = original.read_bytes()
            original.write_bytes(pristine[:-1] + bytes([pristine[-1] ^ 1]))
            try:
                assert_problem(reviewer.get(photo["heatmap_url"]), 500, "photo_corrupted")
                conditional = reviewer.get(photo["heatmap_url"], headers={"If-None-Match": etag})
                assert_problem(conditional, 500, "photo_corrupted")
            finally:
                original.write_bytes(pristine)
            original.unlink()
            assert_problem(reviewer.get(photo["heatmap_url"]), 404, "photo_not_found")
            original.write_bytes(pristine)
    assert len(heatmap_renders) == 1


def test_heatmap_key_covers_what_determines_the_png(tmp_path: Path) -> None:
    photo_id, other = "ab" * 32, "cd" * 32
    damage_map = [[0.1, 0.2], [0.3, 0.4]]
    key = heatmap_key(photo_id, damage_map, 224)
    assert key == heatmap_key(photo_id, [[0.1, 0.2], [0.3, 0.4]], 224)
    assert is_heatmap_key(key) and photo_of_heatmap_key(key) == photo_id
    assert (
        len(
            {
                key,
                heatmap_key(other, damage_map, 224),
                heatmap_key(photo_id, [[0.1, 0.2], [0.3, 0.5]], 224),
                heatmap_key(photo_id, damage_map, 256),
            }
        )
        == 4
    )
    assert heatmap_etag(key) == f'"heatmap-{key}"'
    cache = HeatmapCache(tmp_path, version=1)
    assert cache.get(key) is None
    cache.put(key, b"\x89PNG one")
    assert cache.get(key) == b"\x89PNG one"
    assert cache.path_for(key).relative_to(tmp_path).parts == (
        "v1",
        key[:2],
        key[2:4],
        f"{key}.png",
    )
    with pytest.raises(PhotoNotFound):
        cache.path_for("../" + key[3:])


def test_heatmap_cache_lists_a_photos_pngs_and_discards_them(tmp_path: Path) -> None:
    photo, other = "ab" * 32, "ab" + "cd" * 31  # the same ab/ fan-out folder
    keys = [heatmap_cache_key(photo, digit * 64) for digit in "12"]
    cache = HeatmapCache(tmp_path, version=1)
    for key in [*keys, heatmap_cache_key(other, "3" * 64)]:
        cache.put(key, b"\x89PNG")
    folder = cache.path_for(keys[0]).parent
    (folder / ".incoming-x1y2z3").write_bytes(b"a write in progress")
    stray = folder / f"{photo}.png"
    stray.write_bytes(b"not a heatmap key")
    assert cache.keys_of(photo) == keys
    assert cache.keys_of("ef" * 32) == []
    files = cache.files()
    assert files.keys == sorted([*keys, heatmap_cache_key(other, "3" * 64)])
    assert files.strays == [stray]
    assert cache.discard_strays(files.strays) == 1
    assert not stray.exists() and cache.files().keys == files.keys
    assert cache.discard(keys[0]) is True
    assert cache.discard(keys[0]) is False  # already gone: fine
    assert cache.keys_of(photo) == [keys[1]]
    with pytest.raises(PhotoNotFound):
        cache.keys_of("../" + photo[3:])


@pytest.mark.parametrize(
    ("candidate", "valid"),
    [
        ("ab" * 32 + "-" + "cd" * 32, True),
        ("ab" * 32, False),  # a photo id alone (the layout before keys named their photo)
        ("ab" * 32 + "-" + "cd" * 31, False),
        ("AB" * 32 + "-" + "cd" * 32, False),
        ("ab" * 32 + "_" + "cd" * 32, False),
        ("../" + "ab" * 31 + "-" + "cd" * 32, False),
    ],
)
def test_heatmap_key_format(candidate: str, valid: bool) -> None:
    assert is_heatmap_key(candidate) is valid


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


@pytest.mark.parametrize(
    ("model_version", "whole_frame"),
    [
        ("evidence-lite0-1.3.0", True),  # scored the frame: its maps are drawn on the frame
        ("evidence-lite0-1.3.0-site", True),  # recalibrated, same release
        ("evidence-lite0-1.2.0", True),
        ("evidence-lite0-1.3.1", False),
        ("evidence-lite0-1.3.1-site", False),
        ("evidence-lite0-1.10.0", False),
        ("tiny-0.1.0", False),  # another model: taken to score the picture
        ("evidence-lite0-dev", False),
    ],
)
def test_which_stored_maps_were_made_on_the_whole_frame(model_version: str, whole_frame: bool):
    assert scored_whole_frame(model_version) is whole_frame


def test_a_padded_photos_heatmap_is_drawn_where_its_model_saw_it(api_server: ApiServer) -> None:
    """Maps of the current model were made on the picture (padding cut off); maps an earlier
    release stored were made on the whole frame, and are drawn there."""
    screenshot = Image.new("RGB", (400, 866), (255, 255, 255))
    screenshot.paste(Image.open(io.BytesIO(red_patch_jpeg(seed=380))).resize((400, 300)), (0, 283))
    buffer = io.BytesIO()
    screenshot.save(buffer, format="PNG")
    claim_id = new_claim(api_server, new_listing(api_server, plain_jpeg(seed=381)))
    with api_server.client(api_server.keys["buyer"]) as buyer:
        stored = buyer.post(f"/v1/claims/{claim_id}/evidence", files=files(buffer.getvalue()))
        assert stored.status_code == 201, stored.text
        photo_id = stored.json()["data"][0]["photo_id"]
        now = buyer.get(f"/v1/photos/{photo_id}/heatmap.png")
        engine = make_engine(api_server.settings.resolved_database_url)
        try:
            with transaction(make_session_factory(engine)) as session:
                session.execute(
                    update(ClaimPhoto)
                    .where(ClaimPhoto.photo_id == photo_id)
                    .values(model_version="evidence-lite0-1.3.0", damage_map=[[0.5] * 7] * 7)
                )
        finally:
            engine.dispose()
        before = buyer.get(f"/v1/photos/{photo_id}/heatmap.png")
    working_frame = (207, 448)  # the screenshot at intake's working size
    assert Image.open(io.BytesIO(before.content)).size == working_frame
    width, height = Image.open(io.BytesIO(now.content)).size
    assert width == 207 and height < 448 / 2  # the picture alone
