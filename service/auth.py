"""API keys: generation, hashing and role rules. Pure functions; storage lives in service.db.

Keys are 256-bit random tokens, so a single SHA-256 is the right hash (as for GitHub or Stripe
tokens): a slow password hash buys nothing against a search space of 2**256 and would make every
request pay for it. Only the hash and a short display prefix are stored; the key is shown once.
"""

from __future__ import annotations

import enum
import hashlib
import secrets

KEY_PREFIX = "trk_"
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 6


class Role(enum.StrEnum):
    buyer = "buyer"
    reviewer = "reviewer"
    admin = "admin"


def with_article(role: str) -> str:
    """'a buyer', 'an admin', 'a reviewer or admin': a role phrase with its indefinite article,
    for messages."""
    return f"{'an' if role[:1] in 'aeiou' else 'a'} {role}"


def generate_key() -> str:
    """A new API key: a recognisable prefix (secret scanners look for it) and 43 random chars."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key that is safe to show in listings and logs."""
    return key[:DISPLAY_PREFIX_LENGTH]


def looks_like_key(candidate: str) -> bool:
    """Cheap shape check, so obviously malformed headers never reach the database."""
    return candidate.startswith(KEY_PREFIX) and 20 <= len(candidate) <= 128


def parse_bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
