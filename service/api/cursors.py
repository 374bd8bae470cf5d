"""Opaque page cursors: the keyset position of the last row, as URL-safe base64 JSON.

They are not signed: a cursor only says where a page starts, and the route applies the caller's
scope (a buyer's own claims) whatever it says. A hand-made one is still checked, so that a value
no database column can hold is a 400, not a failure in the query.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from service.api.problems import ProblemError
from service.api.schemas import CONTROL_CHARACTER

# Positions hold a priority, an INTEGER column (32 bits on PostgreSQL).
_INT32 = range(-(2**31), 2**31)


def encode_cursor(*values: Any) -> str:
    payload = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _bad_cursor() -> ProblemError:
    return ProblemError(
        400, "invalid_cursor", "Invalid cursor", "Pass back the next_cursor of a previous page."
    )


def _plain(value: Any, kind: type) -> bool:
    """Whether `value` is a `kind` (int or str) that a column of that kind can hold."""
    if not isinstance(value, kind) or isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value in _INT32
    return not (isinstance(value, str) and CONTROL_CHARACTER.search(value))


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
                parsed.astimezone(UTC)  # stored in UTC: one it cannot express is no position
            except (TypeError, ValueError, OverflowError):
                raise _bad_cursor() from None
            if parsed.tzinfo is None:
                raise _bad_cursor()
            values.append(parsed)
        elif _plain(value, kind):
            values.append(value)
        else:
            raise _bad_cursor()
    return tuple(values)
