from __future__ import annotations

from typing import Any

import pytest

from remediator.core import redaction


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "db_password",
        "db-password",
        "passwd",
        "client_secret",
        "clientSecret",
        "token",
        "access_token",
        "X-Auth-Token",
        "Authorization",
        "proxy-authorization",
        "api_key",
        "API-Key",
        "apikey",
        "credentials",
        "private_key",
        "private-key",
        "Cookie",
        "Set-Cookie",
    ],
)
def test_secret_keys(key: str) -> None:
    assert redaction.is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["name", "replicas", "namespace", "url", "author", "key", "pass"], ids=str
)
def test_ordinary_keys(key: str) -> None:
    assert not redaction.is_secret_key(key)


def test_redact_masks_secret_keys_deeply_without_touching_the_input() -> None:
    original: dict[str, Any] = {
        "url": "http://shop/api",
        "headers": {"Authorization": "Bearer abc", "Accept": "json"},
        "auth": [{"user": "bob", "password": "hunter2"}],
        "credentials": {"user": "bob", "key": "k"},
        "retries": 3,
        "pair": ("x", {"api_key": 42}),
        "none": None,
    }
    assert redaction.redact(original) == {
        "url": "http://shop/api",
        "headers": {"Authorization": "***", "Accept": "json"},
        "auth": [{"user": "bob", "password": "***"}],
        "credentials": "***",
        "retries": 3,
        "pair": ("x", {"api_key": "***"}),
        "none": None,
    }
    assert original["headers"]["Authorization"] == "Bearer abc"
    assert original["auth"][0]["password"] == "hunter2"


def test_redact_masks_known_secrets_inside_any_string() -> None:
    value = {
        "url": "https://api/x?key=s3cr3t-value",
        "args": ["--auth", "s3cr3t-value", "abc"],
        "note": "abc is too short to be masked",
        "nested": {"text": "prefix s3cr3t-value-longer suffix"},
    }
    assert redaction.redact(value, secrets=["s3cr3t-value", "s3cr3t-value-longer", "abc"]) == {
        "url": "https://api/x?key=***",
        "args": ["--auth", "***", "abc"],
        "note": "abc is too short to be masked",
        "nested": {"text": "prefix *** suffix"},
    }


def test_each_call_masks_the_secrets_it_was_given() -> None:
    # Patterns are cached by their set of secrets: one set's pattern never serves another.
    text = "first-secret and second-secret"
    first, second = ["first-secret"], ("second-secret",)
    assert redaction.redact(text, secrets=first) == "*** and second-secret"
    assert redaction.redact(text, secrets=second) == "first-secret and ***"
    assert redaction.redact(text, secrets={*first, *second}) == "*** and ***"
    assert redaction.redact(text, secrets=[]) == text
    assert redaction.redact_text(text, secrets=first) == "*** and second-secret"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("text", "text"), (5, 5), (None, None), (["a"], ["a"]), ((), ())],
    ids=["string", "int", "none", "list", "tuple"],
)
def test_redact_without_secrets_copies(value: Any, expected: Any) -> None:
    assert redaction.redact(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def", "Authorization: ***"),
        ("authorization=Basic dXNlcjpwYXNz\nnext line", "authorization=***\nnext line"),
        ('{"Authorization": "Bearer x"}', '{"Authorization": "***"}'),
        ("sent bearer eyJhbGciOi.x-y_z to api", "sent bearer *** to api"),
        ("password=hunter2&user=bob", "password=***&user=bob"),
        ("db_password: hunter2 ok", "db_password: *** ok"),
        ('{"token": "t0k3n", "n": 1}', '{"token": "***", "n": 1}'),
        ("api-key=xyz; other=1", "api-key=***; other=1"),
        ("https://bob:hunter2@db.example/x", "https://bob:***@db.example/x"),
        ("nothing to see here", "nothing to see here"),
        ("the token expired", "the token expired"),
    ],
    ids=[
        "authorization-header",
        "authorization-pair-keeps-next-line",
        "authorization-json",
        "bearer",
        "query-password",
        "yaml-pair",
        "json-pair",
        "api-key-pair",
        "url-userinfo",
        "plain",
        "word-without-value",
    ],
)
def test_redact_text_patterns(text: str, expected: str) -> None:
    assert redaction.redact_text(text) == expected


def test_redact_text_masks_known_secrets() -> None:
    body = "upstream said: invalid key sk-live-1234 for shop"
    assert redaction.redact_text(body, secrets=("sk-live-1234",)) == (
        "upstream said: invalid key *** for shop"
    )


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 256, "short"),
        ("x" * 256, 256, "x" * 256),
        ("x" * 257, 256, "x" * 255 + "…"),
        ("abcdef", 4, "abc…"),
        ("abcdef", 1, "…"),
    ],
    ids=["short", "exactly-limit", "one-over", "small-limit", "limit-one"],
)
def test_truncate(text: str, limit: int, expected: str) -> None:
    assert redaction.truncate(text, limit) == expected
    assert len(redaction.truncate(text, limit)) <= limit


def test_truncate_default_limit() -> None:
    assert len(redaction.truncate("y" * 1000)) == 256


def test_truncate_rejects_a_useless_limit() -> None:
    with pytest.raises(ValueError, match="limit must be positive"):
        redaction.truncate("text", 0)


@pytest.mark.parametrize(
    "key",
    ["secret_name", "secretName", "tls_secrets", "secrets_missing", "missing_secrets"],
    ids=str,
)
def test_keys_that_name_secrets_are_not_masked(key: str) -> None:
    # A diagnosis saying which Secret is missing must stay readable in the audit log.
    assert redaction.redact({key: "store-s1-db-credentials"}) == {key: "store-s1-db-credentials"}


def test_a_flag_under_a_secret_sounding_key_stays_but_a_number_is_masked() -> None:
    assert redaction.redact({"token_valid": True, "password": None, "pin_token": 1234}) == {
        "token_valid": True,
        "password": None,
        "pin_token": "***",
    }
