"""Masking secrets before anything is logged, audited or shown, and bounding long texts.

Two complementary nets: values under secret-looking keys are masked whatever they contain, and
known secret strings (from the config) are masked wherever they occur, since an action may echo
a token inside an error body or a URL. Neither is perfect alone; callers pass both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from typing import Any

MASK = "***"
ELLIPSIS = "…"
MIN_SECRET_LENGTH = 4
"""Shorter known secrets are ignored: masking every "abc" would shred ordinary text."""

# Substrings, after lower-casing and folding "-" to "_", so `X-Auth-Token`, `db_password`,
# `clientSecret` and `Set-Cookie` are all caught. False positives only cost readability.
_SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "credential",
    "private_key",
    "access_key",
    "cookie",
)
_KEY_WORDS = r"password|passwd|secret|token|api[_-]?key|credentials?|private[_-]key|cookie"
_HEADER = re.compile(r"(?im)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)([^\r\n\"']+)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_PAIR = re.compile(
    rf"(?i)\b([\w.-]*(?:{_KEY_WORDS})[\w.-]*[\"']?\s*[:=]\s*[\"']?)([^\s\"'&,;]+)",
)
# https://user:pass@host — the password part only.
_URL_USERINFO = re.compile(r"(://[^/\s:@]+:)([^/\s@]+)(@)")


# Keys that name or count secrets rather than hold one: `secret_name`, `tls_secrets`,
# `secrets_missing`. Masking them hid which Secret a diagnosis was about.
_REFERENCE_KEY = re.compile(r"secrets|(^|_)(name|names|ref|missing)$|^missing_")


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    # Cached: a daemon sees the same few dozen keys (params, outputs) on every run.
    folded = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower().replace("-", "_")
    if _REFERENCE_KEY.search(folded):
        return False
    return any(part in folded for part in _SECRET_KEY_PARTS)


def redact(value: Any, *, secrets: Collection[str] = ()) -> Any:
    """A deep copy of ``value`` with secret-keyed values and known secrets masked.

    Mappings become dicts, lists stay lists, tuples stay tuples; other values are kept as-is.
    """
    return _redact(value, _secrets_pattern(secrets))


def redact_text(text: str, *, secrets: Collection[str] = ()) -> str:
    """Mask known secrets, ``Authorization:`` values, bearer tokens and ``password=…`` pairs."""
    pattern = _secrets_pattern(secrets)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _HEADER.sub(rf"\g<1>{MASK}", text)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    text = _PAIR.sub(rf"\g<1>{MASK}", text)
    return _URL_USERINFO.sub(rf"\g<1>{MASK}\g<3>", text)


def truncate(text: str, limit: int = 256) -> str:
    """``text`` cut to at most ``limit`` characters, the last one an ellipsis if it was cut."""
    if limit < 1:
        raise ValueError(f"limit must be positive, not {limit}")
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _redact(value: Any, pattern: re.Pattern[str] | None) -> Any:
    if isinstance(value, str):
        return pattern.sub(MASK, value) if pattern is not None else value
    if isinstance(value, Mapping):
        return {
            key: MASK
            if isinstance(key, str) and is_secret_key(key) and _holds_value(item)
            else _redact(item, pattern)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item, pattern) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item, pattern) for item in value)
    return value


def _holds_value(item: Any) -> bool:
    """A flag under a secret-sounding key (``token_valid: true``) reveals nothing; a number
    may be a PIN, so it is masked."""
    return not isinstance(item, bool) and item is not None


def _secrets_pattern(secrets: Collection[str]) -> re.Pattern[str] | None:
    return _pattern_of(frozenset(secrets)) if secrets else None


@functools.lru_cache(maxsize=64)
def _pattern_of(secrets: frozenset[str]) -> re.Pattern[str] | None:
    # Cached: callers pass the daemon's same few tokens on every redaction, twice per step.
    # Longest first, so a secret that contains another is masked whole, not in pieces.
    usable = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    if not usable:
        return None
    return re.compile("|".join(re.escape(s) for s in usable))
