"""Opaque page cursors: the keyset position of the last row, as URL-safe base64 JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from service.api.problems import ProblemError


def encode_cursor(*values: Any) -> str:
    payload = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _bad_cursor() -> ProblemError:
    return ProblemError(
        400, "invalid_cursor", "Invalid cursor", "Pass back the next_cursor of a previous page."
    )


def decode_cursor(cursor: str, *, shape: tuple[type, ...]) -> tuple[Any, ...]:
    """Values of the cursor, checked against `shape` (int, str or datetime per position)."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise _bad_cursor() from None
    if not isinstance(raw, list) or len(raw) != len(shape):
        raise _bad_cursor()
    values: list[Any] = []
    for value, kind in zip(raw, shape, strict=True):
        if kind is datetime:
            try:
                parsed = datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise _bad_cursor() from None
            if parsed.tzinfo is None:
                raise _bad_cursor()
            values.append(parsed)
        elif isinstance(value, kind) and not isinstance(value, bool):
            values.append(value)
        else:
            raise _bad_cursor()
    return tuple(values)
