"""Content-addressed photo store: one file per SHA-256, written atomically, verified on read.

The original bytes are evidence, so they are kept byte-for-byte and a file is never rewritten:
writing the same content twice is a no-op. A write goes to a temporary file in the same folder,
is fsynced, then renamed into place (rename is atomic on POSIX), and the folder is fsynced so the
new name survives a crash. Reads re-hash the bytes, so silent corruption on disk is reported
instead of being shown to a reviewer as evidence.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_PHOTO_ID = re.compile(r"^[0-9a-f]{64}$")


class PhotoNotFound(KeyError):
    pass


class PhotoCorrupted(RuntimeError):
    """The stored bytes no longer hash to their id."""


def is_photo_id(candidate: str) -> bool:
    return bool(_PHOTO_ID.match(candidate))


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
        """Store `data` and return its photo id (the SHA-256 hex of the bytes)."""
        photo_id = hashlib.sha256(data).hexdigest()
        target = self.path_for(photo_id)
        if target.is_file():
            return photo_id
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)
        return photo_id

    def get(self, photo_id: str) -> bytes:
        """The original bytes; raises PhotoNotFound or PhotoCorrupted."""
        try:
            data = self.path_for(photo_id).read_bytes()
        except FileNotFoundError:
            raise PhotoNotFound(photo_id) from None
        if hashlib.sha256(data).hexdigest() != photo_id:
            raise PhotoCorrupted(f"stored photo {photo_id} does not match its hash")
        return data


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
