"""Console sessions and the login throttle on their own: signing, expiry, revocation, CSRF and
notices bound to one session, and the growing wait after wrong tokens (time passed in)."""

from __future__ import annotations

import pytest

from remediator.web.console import sessions
from remediator.web.console.sessions import Keyring, LoginThrottle, Role

NOW = 1_800_000_000.0


def keyring(operator: str = "operator-token-1", viewer: str | None = "viewer-token-1") -> Keyring:
    return Keyring(operator_token=operator, viewer_token=viewer)


def test_each_token_opens_its_role_and_nothing_else_does() -> None:
    ring = keyring()

    assert ring.role_of("operator-token-1") is Role.OPERATOR
    assert ring.role_of("viewer-token-1") is Role.VIEWER
    assert ring.role_of("operator-token-") is None
    assert ring.role_of("") is None
    assert keyring(viewer=None).role_of("viewer-token-1") is None


def test_a_session_lasts_until_its_expiry() -> None:
    ring = keyring()
    cookie, session = ring.issue(Role.VIEWER, "carol", now=NOW, ttl=60)

    assert ring.read(cookie, now=NOW + 59) == session
    assert (session.role, session.name, session.may_control) == (Role.VIEWER, "carol", False)
    assert ring.read(cookie, now=NOW + 60) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c + "0",
        lambda c: c.replace(".", ".0", 1),
        lambda c: "x" + c,
        lambda c: c.split(".")[0],
        lambda c: "",
    ],
    ids=["signature-longer", "signature-changed", "body-changed", "unsigned", "empty"],
)
def test_a_mangled_cookie_is_refused(mangle: object) -> None:
    ring = keyring()
    cookie, _ = ring.issue(Role.OPERATOR, "alice", now=NOW, ttl=60)

    assert callable(mangle)
    assert ring.read(mangle(cookie), now=NOW) is None


def test_rotating_a_token_ends_the_sessions_it_opened() -> None:
    cookie, _ = keyring().issue(Role.OPERATOR, "alice", now=NOW, ttl=60)
    viewer_cookie, _ = keyring().issue(Role.VIEWER, "carol", now=NOW, ttl=60)

    rotated = keyring(operator="operator-token-2")
    assert rotated.read(cookie, now=NOW) is None
    assert rotated.read(viewer_cookie, now=NOW) is not None
    # Another replica with the same tokens accepts the same cookie.
    assert keyring().read(cookie, now=NOW) is not None


def test_a_revoked_session_is_refused_and_others_are_not() -> None:
    ring = keyring()
    cookie, session = ring.issue(Role.OPERATOR, "alice", now=NOW, ttl=60)
    other, _ = ring.issue(Role.OPERATOR, "alice", now=NOW, ttl=60)

    ring.revoke(session, now=NOW)

    assert ring.read(cookie, now=NOW) is None
    assert ring.read(other, now=NOW) is not None


def test_csrf_tokens_and_notices_belong_to_one_session() -> None:
    ring = keyring()
    _, first = ring.issue(Role.OPERATOR, "alice", now=NOW, ttl=60)
    _, second = ring.issue(Role.OPERATOR, "alice", now=NOW, ttl=60)
    note = ring.seal_note(first, "ok:Remediation paused")

    assert Keyring.csrf_matches(first, first.csrf)
    assert not Keyring.csrf_matches(first, second.csrf)
    assert not Keyring.csrf_matches(first, None)
    assert ring.open_note(first, note) == "ok:Remediation paused"
    assert ring.open_note(second, note) is None
    assert ring.open_note(first, note.replace(".", "x.", 1)) is None


def test_without_tokens_sessions_are_signed_with_a_key_of_this_process() -> None:
    ring = Keyring(operator_token=None, viewer_token=None)
    cookie, _ = ring.issue(Role.OPERATOR, "anonymous", now=NOW, ttl=60)

    assert ring.open_access
    assert ring.role_of("") is None
    assert ring.read(cookie, now=NOW) is not None
    assert Keyring(operator_token=None, viewer_token=None).read(cookie, now=NOW) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_make_the_client_wait_longer_and_longer() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock, free_failures=3, base_delay=1.0, max_delay=8.0)
    waits = []
    for _ in range(8):
        throttle.failed("10.0.0.1")
        waits.append(throttle.wait_for("10.0.0.1"))
        clock.now += waits[-1]

    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]
    assert throttle.wait_for("10.0.0.2") == 0


def test_a_success_forgets_the_failures_and_old_clients_are_dropped() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock, free_failures=0, max_clients=2)
    throttle.failed("a")
    throttle.succeeded("a")
    for client in ("b", "c", "d"):
        throttle.failed(client)

    assert throttle.wait_for("a") == 0
    assert throttle.wait_for("b") == 0  # forgotten: the oldest beyond max_clients
    assert throttle.wait_for("d") == 1


def test_login_names_are_bounded_and_plain() -> None:
    assert sessions.NAME.match("alice.smith@example")
    assert not sessions.NAME.match("alice smith")
    assert not sessions.NAME.match("a" * 49)
    assert not sessions.NAME.match("<b>")
