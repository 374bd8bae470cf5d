"""Content-addressed photo store: one file per SHA-256, written atomically, verified on read.

The original bytes are evidence, so they are kept byte-for-byte and a file is never rewritten:
writing the same content twice is a no-op. A write goes to a temporary file in the same folder,
is fsynced, then renamed into place (rename is atomic on POSIX), and the folder is fsynced so the
new name survives a crash. Reads re-hash the bytes, so silent corruption on disk is reported
instead of being shown to a reviewer as evidence.

`DisplayCache` keeps the display copy made from each original (see `service.intake.display_copy`)
so that it is encoded once, not on every request; `HeatmapCache` does the same for the heatmap
overlay PNGs. Both are a `SealedFileCache`: written the same way, and each file carries the
SHA-256 of its data, so a damaged cache file is noticed and made again. A heatmap's key starts
with its photo id, so the PNGs of a photo whose damage map was replaced can be found and deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_PHOTO_ID = re.compile(r"^[0-9a-f]{64}$")
_HEATMAP_KEY = re.compile(r"^[0-9a-f]{64}-[0-9a-f]{64}$")
logger = logging.getLogger("service.store")


class PhotoNotFound(KeyError):
    pass


class PhotoCorrupted(RuntimeError):
    """The stored bytes no longer hash to their id."""


def is_photo_id(candidate: str) -> bool:
    return bool(_PHOTO_ID.match(candidate))


def heatmap_cache_key(photo_id: str, digest: str) -> str:
    """`<photo_id>-<digest>`: the photo first, so its heatmaps share a folder and a name prefix."""
    return f"{photo_id}-{digest}"


def is_heatmap_key(candidate: str) -> bool:
    return bool(_HEATMAP_KEY.match(candidate))


def photo_of_heatmap_key(key: str) -> str:
    return key.partition("-")[0]


class PhotoStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, photo_id: str) -> Path:
        if not is_photo_id(photo_id):
            raise PhotoNotFound(photo_id)
        # Two levels of fan-out keep folders small with millions of photos.
        return self.root / photo_id[:2] / photo_id[2:4] / photo_id

    def contains(self, photo_id: str) -> bool:
        return is_photo_id(photo_id) and self.path_for(photo_id).is_file()

    def put(self, data: bytes) -> str:
        """Store `data` and return its photo id (the SHA-256 hex of the bytes). A stored copy
        that no longer matches its hash (damaged on disk) is replaced by these bytes, which do:
        uploading the same photo again repairs it."""
        photo_id = hashlib.sha256(data).hexdigest()
        target = self.path_for(photo_id)
        if target.is_file() and self._intact(photo_id):
            return photo_id
        write_atomically(target, data)
        return photo_id

    def _intact(self, photo_id: str) -> bool:
        try:
            self.get(photo_id)
        except (PhotoNotFound, PhotoCorrupted):
            return False
        return True

    def get(self, photo_id: str) -> bytes:
        """The original bytes; raises PhotoNotFound or PhotoCorrupted."""
        try:
            data = self.path_for(photo_id).read_bytes()
        except FileNotFoundError:
            raise PhotoNotFound(photo_id) from None
        if hashlib.sha256(data).hexdigest() != photo_id:
            raise PhotoCorrupted(f"stored photo {photo_id} does not match its hash")
        return data


class SealedFileCache:
    """Files made from stored data, by key, under `root/v<version>/ab/cd/<key><suffix>`.

    Written like the photo store (temporary file, fsync, rename); each file is the data followed
    by a trailer, the SHA-256 of the data and a marker, which image viewers ignore. `get` checks
    it, so a truncated or damaged file counts as missing and the caller makes and stores the data
    again. Bumping `version` starts an empty folder beside the old one, which
    `remove_older_versions` deletes. Keys must pass `is_key` (a photo id by default;
    `is_heatmap_key`, a photo id and a SHA-256 joined by `-`, for heatmaps) and their first four
    digits pick the fan-out folders; any other key raises PhotoNotFound, so it never reaches a
    path.
    """

    def __init__(
        self,
        root: Path,
        *,
        version: int,
        suffix: str,
        kind: str,
        is_key: Callable[[str], bool] = is_photo_id,
    ) -> None:
        self.version = version
        self.suffix = suffix
        self.kind = kind
        self.is_key = is_key
        self.root = root / f"v{version}"
        self.root.mkdir(parents=True, exist_ok=True)

    def remove_older_versions(self) -> int:
        """Delete the folders of lower versions beside this one (their files were made by older
        code: a display copy of version 1 may still carry a comment of the original); returns
        how many. Higher versions are left to the newer processes that use them."""
        removed = 0
        for folder in self.root.parent.iterdir():
            version = folder.name.removeprefix("v")
            if folder.is_dir() and version.isdigit() and int(version) < self.version:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def path_for(self, key: str) -> Path:
        if not self.is_key(key):
            raise PhotoNotFound(key)
        return self.root / key[:2] / key[2:4] / f"{key}{self.suffix}"

    def get(self, key: str) -> bytes | None:
        """The cached data, or None when there is none or its file is damaged."""
        path = self.path_for(key)
        try:
            stored = path.read_bytes()
        except FileNotFoundError:
            return None
        data = _unseal(stored)
        if data is None:
            logger.warning(f"damaged {self.kind} ignored", extra={"cache_key": key})
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any file there (atomically)."""
        write_atomically(self.path_for(key), _seal(data))

    def discard(self, key: str) -> bool:
        """Delete the file under `key`; whether there was one. A reader that already opened it
        still reads it whole (POSIX unlink); a later one misses and makes the data again."""
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            return False
        return True


class DisplayCache(SealedFileCache):
    """Display copies by photo id, under `root/v<version>/ab/cd/<photo_id>.jpg`.

    An original never changes, so neither does its copy until the display format does: bumping
    `version` (service.intake.DISPLAY_COPY_VERSION) starts an empty folder beside the old one.
    Hashing a copy of a few hundred kB costs well under a millisecond; decoding the JPEG to check
    it would cost more and still miss damage inside the compressed data.
    """

    def __init__(self, root: Path, *, version: int) -> None:
        super().__init__(root, version=version, suffix=".jpg", kind="display copy")


@dataclass(frozen=True)
class HeatmapFiles:
    """A listing of the heatmap cache: the keys of its PNGs, sorted, and its strays, the PNGs
    whose names are no key (the layout before keys began with the photo id, `<digest>.png`),
    which nothing can serve or clean up any more."""

    keys: list[str]
    strays: list[Path]


class HeatmapCache(SealedFileCache):
    """Heatmap overlay PNGs under `root/v<version>/ab/cd/<photo_id>-<digest>.png` (ab/cd from
    the photo id), where the digest is the SHA-256 of everything that determines the PNG's bytes
    (see `service.api.runtime.heatmap_key`: photo id, stored damage map, format version), so a
    new damage map for the same photo (another claim, a rescore) gets its own file instead of a
    stale one, and `keys_of` finds every PNG of a photo with one folder listing."""

    def __init__(self, root: Path, *, version: int) -> None:
        super().__init__(
            root, version=version, suffix=".png", kind="heatmap", is_key=is_heatmap_key
        )

    def keys_of(self, photo_id: str) -> list[str]:
        """The keys of this photo's cached PNGs."""
        if not is_photo_id(photo_id):
            raise PhotoNotFound(photo_id)
        folder = self.root / photo_id[:2] / photo_id[2:4]
        return self._keys(folder.glob(f"{photo_id}-*{self.suffix}"))

    def files(self) -> HeatmapFiles:
        """Every cached PNG, from one listing of the whole cache (thousands of folders, so the
        start-up sweep lists it once for both of its uses); temporary files of writes in
        progress are neither keys nor strays."""
        keys: list[str] = []
        strays: list[Path] = []
        for path in self.root.glob(f"*/*/*{self.suffix}"):
            name = path.name.removesuffix(self.suffix)
            if self.is_key(name):
                keys.append(name)
            else:
                strays.append(path)
        return HeatmapFiles(keys=sorted(keys), strays=sorted(strays))

    @staticmethod
    def discard_strays(strays: Sequence[Path]) -> int:
        """Delete these stray PNGs (`HeatmapFiles.strays`); returns how many."""
        for path in strays:
            path.unlink(missing_ok=True)
        return len(strays)

    def _keys(self, paths: Iterator[Path]) -> list[str]:
        names = (path.name.removesuffix(self.suffix) for path in paths)
        return sorted(name for name in names if self.is_key(name))


_SEAL_MARK = b"TRIAGE-DISPLAY-SHA256"
_SEAL_SIZE = hashlib.sha256().digest_size + len(_SEAL_MARK)


def _seal(data: bytes) -> bytes:
    return data + hashlib.sha256(data).digest() + _SEAL_MARK


def _unseal(stored: bytes) -> bytes | None:
    """The data `_seal` was given, or None if `stored` is not exactly what it wrote."""
    if len(stored) <= _SEAL_SIZE or not stored.endswith(_SEAL_MARK):
        return None
    data, digest = stored[:-_SEAL_SIZE], stored[-_SEAL_SIZE : -len(_SEAL_MARK)]
    return data if hashlib.sha256(data).digest() == digest else None


def write_atomically(target: Path, data: bytes, *, mode: int | None = None) -> None:
    """Temporary file in the target's folder, fsync, rename into place, fsync the folder: a
    reader sees the old file or the whole new one, and the new name survives a crash. `mode`
    sets the file's permissions (mkstemp makes it readable by its owner only)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
