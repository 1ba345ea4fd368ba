"""Console logins: signed session cookies, CSRF tokens, and slowing down token guessing.

A session is a cookie holding (role, name, expiry, nonce) and an HMAC over them. The signing
key of each role is derived from that role's token, so every replica behind the Service
accepts the same cookies without sharing anything else, and rotating a token ends the
sessions it opened. The CSRF token of a form is another HMAC of the session's nonce: nothing
to store, and useless with any other session.

Logging out revokes the nonce in this process and clears the cookie; another replica accepts
the cookie until it expires (``console.session_ttl``), which is why it has one.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "remediator_session"
NAME = re.compile(r"^[A-Za-z0-9@._-]{1,48}$")
"""A login name, recorded in the audit log as ``console:<name>`` (the API's ``by``)."""
_KEY_CONTEXT = b"remediator console session v1"


class Role(enum.StrEnum):
    OPERATOR = "operator"
    """The API token: may read and change everything."""
    VIEWER = "viewer"
    """The viewer token: may only read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    role: Role
    name: str
    expires: float
    """Epoch seconds."""
    nonce: str
    csrf: str
    """The token every form of this session carries."""

    @property
    def may_control(self) -> bool:
        return self.role is Role.OPERATOR

    @property
    def actor(self) -> str:
        """Who did it, as the audit log records it."""
        return f"console:{self.name}"


class Keyring:
    """Recognises the tokens and signs and checks the sessions they open."""

    def __init__(self, *, operator_token: str | None, viewer_token: str | None) -> None:
        self.open_access = operator_token is None
        """Auth is disabled (``--insecure-no-auth``): everyone is an operator."""
        self._tokens: dict[Role, bytes] = {}
        self._keys: dict[Role, bytes] = {}
        if operator_token is None:
            # Nothing to derive from: sessions last as long as this process.
            self._keys[Role.OPERATOR] = secrets.token_bytes(32)
        else:
            self._add(Role.OPERATOR, operator_token)
            if viewer_token is not None and viewer_token != operator_token:
                self._add(Role.VIEWER, viewer_token)
        self._revoked: dict[str, float] = {}

    def _add(self, role: Role, token: str) -> None:
        self._tokens[role] = token.encode()
        self._keys[role] = hmac.new(token.encode(), _KEY_CONTEXT, hashlib.sha256).digest()

    def role_of(self, presented: str) -> Role | None:
        """The role ``presented`` opens; every token is compared, in constant time."""
        found = None
        for role, token in self._tokens.items():
            if hmac.compare_digest(presented.encode(), token):
                found = role
        return found

    def issue(self, role: Role, name: str, *, now: float, ttl: float) -> tuple[str, Session]:
        """The cookie value and the session it stands for."""
        payload = {"r": str(role), "n": name, "e": round(now + ttl, 3), "i": secrets.token_hex(16)}
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        cookie = f"{body}.{self._sign(role, body.encode())}"
        session = self.read(cookie, now=now)
        assert session is not None  # noqa: S101 - just signed
        return cookie, session

    def read(self, cookie: str, *, now: float) -> Session | None:
        """The session a cookie stands for; None when forged, expired, revoked or malformed."""
        body, _, signature = cookie.partition(".")
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            role = Role(payload["r"])
            name, expires, nonce = str(payload["n"]), float(payload["e"]), str(payload["i"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if role not in self._keys:
            return None
        if not hmac.compare_digest(signature, self._sign(role, body.encode())):
            return None
        if expires <= now or nonce in self._revoked:
            return None
        csrf = self._sign(role, f"csrf:{nonce}".encode())
        return Session(role=role, name=name, expires=expires, nonce=nonce, csrf=csrf)

    def revoke(self, session: Session, *, now: float) -> None:
        self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        self._revoked[session.nonce] = session.expires

    def seal_note(self, session: Session, text: str) -> str:
        """A message for the next page of this session only (post/redirect/get)."""
        body = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        return f"{body}.{self._sign(session.role, f'note:{session.nonce}:{body}'.encode())}"

    def open_note(self, session: Session, value: str) -> str | None:
        body, _, signature = value.partition(".")
        expected = self._sign(session.role, f"note:{session.nonce}:{body}".encode())
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        except (ValueError, binascii.Error):
            return None

    @staticmethod
    def csrf_matches(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, session.csrf)

    def _sign(self, role: Role, data: bytes) -> str:
        return hmac.new(self._keys[role], data, hashlib.sha256).hexdigest()


class LoginThrottle:
    """After ``free_failures`` wrong tokens in a row from one client, each further attempt must
    wait: 1 s, then twice as long after each failure, at most ``max_delay``.

    While a client waits, its attempts are refused without looking at the token, so guessing
    goes no faster than the delay allows. Clients are forgotten oldest first beyond
    ``max_clients``, which bounds the memory an attacker with many addresses can take.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        free_failures: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_clients: int = 10_000,
    ) -> None:
        self._clock = clock
        self._free = free_failures
        self._base = base_delay
        self._max = max_delay
        self._max_clients = max_clients
        self._clients: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        """client → (failures in a row, when the next attempt is allowed)."""

    def wait_for(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        entry = self._clients.get(client)
        if entry is None:
            return 0.0
        return max(0.0, entry[1] - self._clock())

    def failed(self, client: str) -> None:
        failures = self._clients.pop(client, (0, 0.0))[0] + 1
        delay = 0.0
        if failures > self._free:
            delay = min(self._max, self._base * 2.0 ** (failures - self._free - 1))
        self._clients[client] = (failures, self._clock() + delay)
        while len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
