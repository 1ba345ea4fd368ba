"""The provisioner twin over real HTTP: its API, auth, hooks, recording and injected faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from remediator.simulation import provisioner

TOKEN = "twin-token-0b7e41"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def twin() -> provisioner.ProvisionerTwin:
    return provisioner.ProvisionerTwin(token=TOKEN, clock=lambda: 1_795_000_000.0)


@pytest.fixture
async def url(twin: provisioner.ProvisionerTwin) -> AsyncIterator[str]:
    async with provisioner.serve(twin) as base:
        yield base


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


class Api:
    """Requests to the twin, answering (status, JSON body)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: str | None = None,
        headers: dict[str, str] | None = None,
        time_limit: float = 5.0,
    ) -> tuple[int, Any]:
        async with self.session.request(
            method,
            self.base + path,
            json=json,
            data=data,
            headers=AUTH if headers is None else headers,
            timeout=aiohttp.ClientTimeout(total=time_limit),
        ) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()


@pytest.fixture
def api(session: aiohttp.ClientSession, url: str) -> Api:
    return Api(session, url)


# --- the API ------------------------------------------------------------------------------------


async def test_a_created_store_is_provisioning_and_listed(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    status, created = await api("POST", "/api/v1/stores", json={"id": "s1"})

    assert status == 201
    assert created == {
        "id": "s1",
        "status": "provisioning",
        "namespace": "store-s1",
        "url": "http://s1.127.0.0.1.nip.io",
        "created_at": "2026-11-18T11:06:40Z",
    }
    assert await api("GET", "/api/v1/stores/s1") == (200, created)
    assert await api("GET", "/api/v1/stores") == (200, {"items": [created]})
    assert twin.stores["s1"].status == "provisioning"


async def test_create_without_an_id_picks_a_free_one(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1")

    status, created = await api("POST", "/api/v1/stores")

    assert (status, created["id"]) == (201, "s2")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"id": "s1"}, 409, "conflict"),
        ({"id": "Bad_Id"}, 400, "invalid_request"),
        ({"id": "s2", "plan": "gold"}, 400, "invalid_request"),
        (["s2"], 400, "invalid_request"),
    ],
    ids=["duplicate", "bad-id", "unknown-field", "not-an-object"],
)
async def test_create_refuses_bad_requests(
    twin: provisioner.ProvisionerTwin, api: Api, body: Any, status: int, error: str
) -> None:
    twin.add_store("s1")

    answer = await api("POST", "/api/v1/stores", json=body)

    assert (answer[0], answer[1]["error"]) == (status, error)
    assert set(twin.stores) == {"s1"}


async def test_patch_sets_the_status(twin: provisioner.ProvisionerTwin, api: Api) -> None:
    twin.add_store("s1", status="provisioning")

    status, body = await api("PATCH", "/api/v1/stores/s1", json={"status": "running"})

    assert (status, body["status"]) == (200, "running")
    assert twin.stores["s1"].status == "running"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"status": "paused"}}, 400),
        ({"json": {"status": "running", "url": "x"}}, 400),
        ({"data": "status=running"}, 400),
        ({"json": {"status": "running"}, "path": "/api/v1/stores/s9"}, 404),
    ],
    ids=["unknown-status", "extra-field", "not-json", "absent"],
)
async def test_patch_refuses_bad_requests(
    twin: provisioner.ProvisionerTwin, api: Api, kwargs: dict[str, Any], status: int
) -> None:
    twin.add_store("s1", status="failed")
    path = kwargs.pop("path", "/api/v1/stores/s1")

    answer = await api("PATCH", path, **kwargs)

    assert answer[0] == status
    assert set(answer[1]) == {"error", "message"}
    assert twin.stores["s1"].status == "failed"


async def test_get_of_an_absent_store_is_a_json_404(api: Api) -> None:
    assert await api("GET", "/api/v1/stores/s9") == (
        404,
        {"error": "not_found", "message": "store 's9' not found"},
    )


async def test_delete_runs_the_hook_while_deleting_then_removes_the_store(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1")
    seen: list[tuple[str, bool]] = []

    async def on_delete(store: provisioner.Store) -> None:
        seen.append((store.status, store.id in twin.stores))

    twin.on_delete = on_delete

    status, body = await api("DELETE", "/api/v1/stores/s1")

    assert (status, body["status"]) == (200, "deleting")
    assert seen == [("deleting", True)]
    assert "s1" not in twin.stores
    assert (await api("DELETE", "/api/v1/stores/s1"))[0] == 404


async def test_a_failing_delete_hook_leaves_the_store_deleting(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1")

    async def on_delete(store: provisioner.Store) -> None:
        raise RuntimeError("namespace stuck on a finalizer")

    twin.on_delete = on_delete

    status, body = await api("DELETE", "/api/v1/stores/s1")

    assert (status, body["error"]) == (500, "internal")
    assert twin.stores["s1"].status == "deleting"


async def test_reprovision_runs_the_hook_before_answering(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1", status="failed")

    async def on_reprovision(store: provisioner.Store) -> None:
        assert store.status == "provisioning"
        twin.set_status(store.id, "running")  # as a controller does once the namespace is ready

    twin.on_reprovision = on_reprovision

    status, body = await api("POST", "/api/v1/stores/s1/reprovision")

    assert (status, body["status"]) == (202, "running")


async def test_a_failing_reprovision_hook_marks_the_store_failed(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1", status="running")

    async def on_reprovision(store: provisioner.Store) -> None:
        raise RuntimeError("helm install failed")

    twin.on_reprovision = on_reprovision

    assert (await api("POST", "/api/v1/stores/s1/reprovision"))[0] == 500
    assert twin.stores["s1"].status == "failed"


async def test_create_runs_its_hook(twin: provisioner.ProvisionerTwin, api: Api) -> None:
    created: list[str] = []

    async def on_create(store: provisioner.Store) -> None:
        created.append(store.id)

    twin.on_create = on_create

    await api("POST", "/api/v1/stores", json={"id": "s7"})

    assert created == ["s7"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/v1/stores/s9/reprovision", 404),
        ("POST", "/api/v1/stores/gone/reprovision", 409),
        ("GET", "/api/v2/stores", 404),
        ("PUT", "/api/v1/stores/s1", 405),
    ],
    ids=["reprovision-absent", "reprovision-deleting", "unknown-path", "wrong-method"],
)
async def test_other_errors_are_json_too(
    twin: provisioner.ProvisionerTwin, api: Api, method: str, path: str, status: int
) -> None:
    twin.add_store("s1")
    twin.add_store("gone", status="deleting")

    answer = await api(method, path)

    assert answer[0] == status
    assert set(answer[1]) == {"error", "message"}


# --- auth and recording -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}],
    ids=["none", "wrong-token", "not-bearer"],
)
async def test_requests_without_the_token_are_refused(
    twin: provisioner.ProvisionerTwin, api: Api, headers: dict[str, str]
) -> None:
    twin.add_store("s1")

    status, body = await api("DELETE", "/api/v1/stores/s1", headers=headers)

    assert (status, body["error"]) == (401, "unauthorized")
    assert "s1" in twin.stores
    (seen,) = twin.requests
    assert seen.authorized is False


async def test_every_request_is_recorded_without_its_headers(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1")

    await api("GET", "/api/v1/stores/s1")
    await api("PATCH", "/api/v1/stores/s1", json={"status": "failed"})
    await api("PATCH", "/api/v1/stores/s1", data="not json")

    assert [(r.method, r.path, r.body, r.authorized) for r in twin.requests] == [
        ("GET", "/api/v1/stores/s1", None, True),
        ("PATCH", "/api/v1/stores/s1", {"status": "failed"}, True),
        ("PATCH", "/api/v1/stores/s1", "not json", True),
    ]
    assert TOKEN not in repr(twin.requests)
    assert len(twin.requests_for("PATCH", "/api/v1/stores/s1")) == 2


def test_seeding_checks_the_id() -> None:
    twin = provisioner.ProvisionerTwin(token=TOKEN)

    with pytest.raises(ValueError, match="DNS-1123"):
        twin.add_store("../etc")


# --- injected faults ----------------------------------------------------------------------------


async def test_fail_next_answers_the_next_requests_with_the_status(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1")
    twin.fail_next(2)
    twin.fail_next(1, status=500)

    statuses = [(await api("GET", "/api/v1/stores/s1"))[0] for _ in range(4)]

    assert statuses == [503, 503, 500, 200]
    assert len(twin.requests) == 4


async def test_an_injected_failure_changes_nothing(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1")
    twin.fail_next(1)

    assert (await api("DELETE", "/api/v1/stores/s1"))[0] == 503
    assert "s1" in twin.stores


async def test_delay_holds_answers_until_turned_off(
    twin: provisioner.ProvisionerTwin, api: Api
) -> None:
    twin.add_store("s1")
    twin.delay(30)

    with pytest.raises(TimeoutError):
        await api("GET", "/api/v1/stores/s1", time_limit=0.05)
    twin.delay(0)

    assert (await api("GET", "/api/v1/stores/s1"))[0] == 200
    assert len(twin.requests) == 2


async def test_serve_binds_the_given_host_and_a_free_port(
    twin: provisioner.ProvisionerTwin,
) -> None:
    async with provisioner.serve(twin) as first, provisioner.serve(twin) as second:
        assert first.startswith("http://127.0.0.1:")
        assert first != second
