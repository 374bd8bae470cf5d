"""API key generation, hashing and header parsing (pure functions)."""

from __future__ import annotations

import pytest

from service import auth


def test_generated_keys_are_unique_prefixed_and_long() -> None:
    keys = {auth.generate_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(key.startswith(auth.KEY_PREFIX) and len(key) >= 40 for key in keys)
    assert all(auth.looks_like_key(key) for key in keys)


def test_hash_is_stable_and_does_not_contain_the_key() -> None:
    key = auth.generate_key()
    assert auth.hash_key(key) == auth.hash_key(key)
    assert key not in auth.hash_key(key)
    assert auth.hash_key(key + "x") != auth.hash_key(key)


def test_display_prefix_reveals_only_the_start() -> None:
    key = auth.generate_key()
    prefix = auth.display_prefix(key)
    assert key.startswith(prefix)
    assert len(prefix) == auth.DISPLAY_PREFIX_LENGTH < len(key) // 3


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer trk_abc", "trk_abc"),
        ("bearer   trk_abc  ", "trk_abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer ", None),
        ("trk_abc", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_bearer(header: str | None, token: str | None) -> None:
    assert auth.parse_bearer(header) == token


@pytest.mark.parametrize(
    ("candidate", "ok"),
    [("trk_" + "a" * 43, True), ("sk_" + "a" * 43, False), ("trk_short", False), ("", False)],
)
def test_looks_like_key(candidate: str, ok: bool) -> None:
    assert auth.looks_like_key(candidate) is ok


def test_roles_are_the_three_of_the_design() -> None:
    assert {role.value for role in auth.Role} == {"buyer", "reviewer", "admin"}


@pytest.mark.parametrize(
    ("role", "phrase"),
    [("admin", "an admin"), ("buyer", "a buyer"), ("admin or reviewer", "an admin or reviewer")],
)
def test_roles_take_the_right_article(role: str, phrase: str) -> None:
    assert auth.with_article(role) == phrase
