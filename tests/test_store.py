"""Content-addressed photo store: ids are hashes, writes are atomic and idempotent, reads verify."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.store import DisplayCache, PhotoCorrupted, PhotoNotFound, PhotoStore, is_photo_id


def test_put_returns_sha256_and_get_returns_the_same_bytes(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path)
    data = b"\xff\xd8\xff original evidence bytes"
    photo_id = store.put(data)
    assert photo_id == hashlib.sha256(data).hexdigest()
    assert store.get(photo_id) == data
    assert store.contains(photo_id)


def test_put_is_idempotent_and_never_rewrites(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path)
    photo_id = store.put(b"same")
    path = store.path_for(photo_id)
    first_inode = path.stat().st_ino
    assert store.put(b"same") == photo_id
    assert path.stat().st_ino == first_inode


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path)
    for index in range(5):
        store.put(f"photo {index}".encode())
    leftovers = [path for path in tmp_path.rglob(".incoming-*")]
    assert leftovers == []
    assert len([path for path in tmp_path.rglob("*") if path.is_file()]) == 5


def test_files_are_fanned_out_by_hash_prefix(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path)
    photo_id = store.put(b"fan out")
    assert store.path_for(photo_id).relative_to(tmp_path).parts == (
        photo_id[:2],
        photo_id[2:4],
        photo_id,
    )


def test_corruption_on_disk_is_detected(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path)
    photo_id = store.put(b"pristine")
    store.path_for(photo_id).write_bytes(b"tampered")
    with pytest.raises(PhotoCorrupted):
        store.get(photo_id)


def test_uploading_the_same_bytes_again_repairs_a_damaged_copy(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path)
    photo_id = store.put(b"pristine")
    store.path_for(photo_id).write_bytes(b"pris")  # truncated on disk
    assert store.put(b"pristine") == photo_id
    assert store.get(photo_id) == b"pristine"


@pytest.mark.parametrize(
    "photo_id",
    ["0" * 64, "../" + "0" * 61, "A" * 64, "not-a-hash", ""],
)
def test_missing_or_malformed_ids_are_not_found(tmp_path: Path, photo_id: str) -> None:
    store = PhotoStore(tmp_path)
    with pytest.raises(PhotoNotFound):
        store.get(photo_id)
    assert not store.contains(photo_id)


@pytest.mark.parametrize(
    ("candidate", "valid"),
    [("a" * 64, True), ("0123456789abcdef" * 4, True), ("a" * 63, False), ("g" * 64, False)],
)
def test_is_photo_id(candidate: str, valid: bool) -> None:
    assert is_photo_id(candidate) is valid


def test_older_cache_versions_are_removed_and_newer_ones_kept(tmp_path: Path) -> None:
    older, newer = (DisplayCache(tmp_path, version=version) for version in (1, 3))
    older.put("ab" * 32, b"made by older code")
    newer.put("ab" * 32, b"made by newer code")
    (tmp_path / "notes").mkdir()  # not a version folder
    current = DisplayCache(tmp_path, version=2)
    current.put("ab" * 32, b"made by this code")
    assert current.remove_older_versions() == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes", "v2", "v3"]
    assert current.get("ab" * 32) == b"made by this code"
    assert newer.get("ab" * 32) == b"made by newer code"
