"""The operator review API over runs that really went through intake and the executor."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from remediator import running
from remediator.config import AuthSettings, Settings
from remediator.core import reporting
from remediator.core.errors import ConfigError
from remediator.web import intake
from tests.web.conftest import (
    API_TOKEN,
    WEBHOOK_TOKEN,
    Client,
    Engine,
    MakeEngine,
    alert,
    auth,
    webhook,
)

PAIRS = 6
"""StoreDown deliveries of two alerts each: two runs share a created_at, as in a real group."""
FAILING = 5
SPACING = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    playbook: str
    target: str
    alertname: str
    outcome: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Populated:
    client: Client
    engine: Engine
    runs: Mapping[str, Run]
    start: float


@pytest.fixture
async def populated(make_engine: MakeEngine, aiohttp_client: AiohttpClient) -> Populated:
    engine = await make_engine()
    client: Client = await aiohttp_client(intake.make_app(engine.services))
    start = engine.clock.now
    created: dict[str, Run] = {}

    async def deliver(*alerts: dict[str, Any], playbook: str, outcome: str) -> None:
        async with client.post(
            intake.WEBHOOK_PATH, json=webhook(*alerts), headers=auth()
        ) as response:
            assert response.status == 200
            run_ids = (await response.json())["runs"]
        assert len(run_ids) == len(alerts)
        await engine.settle()
        for run_id, sent in zip(run_ids, alerts, strict=True):
            labels = sent["labels"]
            target = (
                f"store-{labels['store_id']}" if "store_id" in labels else f"pod-{labels['pod']}"
            )
            created[run_id] = Run(
                playbook=playbook,
                target=target,
                alertname=labels["alertname"],
                outcome=outcome,
                created_at=engine.clock.now,
            )

    for pair in range(PAIRS):
        engine.clock.now = start + SPACING * pair
        stores = (2 * pair, 2 * pair + 1)
        await deliver(
            *(alert("StoreDown", fingerprint=f"{0xA000 + s:x}", store_id=f"s{s}") for s in stores),
            playbook="store-down",
            outcome="succeeded",
        )
    for pod in range(FAILING):
        engine.clock.now = start + SPACING * (PAIRS + pod)
        await deliver(
            alert("PodCrash", fingerprint=f"{0xB000 + pod:x}", pod=f"p{pod}"),
            playbook="pod-crash",
            outcome="failed",
        )
    return Populated(client=client, engine=engine, runs=created, start=start)


async def get(client: Client, path: str, token: str = API_TOKEN, **query: str) -> Any:
    async with client.get(path, params=query, headers=auth(token)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def walk(client: Client, path: str, **query: str) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following next_cursor to the end."""
    pages = []
    cursor: str | None = None
    while True:
        page = await get(client, path, **query, **({"cursor": cursor} if cursor else {}))
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"


def created(item: Mapping[str, Any]) -> float:
    return reporting.parse_timestamp(item["created_at"])


async def test_run_pages_cover_every_run_exactly_once_newest_first(populated: Populated) -> None:
    pages = await walk(populated.client, "/api/v1/runs", limit="5")

    assert [len(p) for p in pages] == [5, 5, 5, 2]
    items = [item for page in pages for item in page]
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(populated.runs)
    times = [created(item) for item in items]
    assert times == sorted(times, reverse=True)
    for item in items:
        expected = populated.runs[item["id"]]
        assert (item["playbook"], item["target"], item["status"]) == (
            expected.playbook,
            expected.target,
            expected.outcome,
        )


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        pytest.param({"playbook": "pod-crash"}, lambda r: r.playbook == "pod-crash", id="playbook"),
        pytest.param({"target": "store-s3"}, lambda r: r.target == "store-s3", id="target"),
        pytest.param({"outcome": "failed"}, lambda r: r.outcome == "failed", id="outcome-failed"),
        pytest.param(
            {"outcome": "succeeded"}, lambda r: r.outcome == "succeeded", id="outcome-succeeded"
        ),
        pytest.param({"alertname": "StoreDown"}, lambda r: r.alertname == "StoreDown", id="alert"),
        pytest.param(
            {"playbook": "store-down", "outcome": "failed"}, lambda r: False, id="nothing-matches"
        ),
    ],
)
async def test_run_filters(populated: Populated, query: dict[str, str], wanted: Any) -> None:
    pages = await walk(populated.client, "/api/v1/runs", limit="4", **query)

    ids = [item["id"] for page in pages for item in page]
    assert len(ids) == len(set(ids))
    assert set(ids) == {run_id for run_id, run in populated.runs.items() if wanted(run)}


async def test_run_time_window_includes_since_and_excludes_until(populated: Populated) -> None:
    since = populated.start + 2 * SPACING
    until = populated.start + 4 * SPACING
    pages = await walk(
        populated.client,
        "/api/v1/runs",
        since=reporting.timestamp(since) or "",
        until=str(until),
    )

    ids = {item["id"] for page in pages for item in page}
    expected = {i for i, r in populated.runs.items() if since <= r.created_at < until}
    assert len(expected) == 4
    assert ids == expected


async def test_run_detail_has_steps_and_audit(populated: Populated) -> None:
    run_id = next(i for i, r in populated.runs.items() if r.target == "store-s0")

    detail = await get(populated.client, f"/api/v1/runs/{run_id}")

    assert detail["id"] == run_id
    assert detail["status"] == "succeeded"
    assert detail["alert"]["labels"]["store_id"] == "s0"
    assert [(s["name"], s["action"], s["outcome"]) for s in detail["steps"]] == [
        ("record", "log", "succeeded")
    ]
    assert detail["steps"][0]["params"]["message"] == "store s0 is down"
    kinds = [a["kind"] for a in detail["audit"]]
    assert kinds[0] == "run_queued"
    assert kinds[-1] == "run_finished"
    assert {"run_started", "step_finished"} <= set(kinds)
    assert {a["run_id"] for a in detail["audit"]} == {run_id}
    assert [a["seq"] for a in detail["audit"]] == sorted(a["seq"] for a in detail["audit"])


async def test_failed_run_detail_says_why(populated: Populated) -> None:
    run_id = next(i for i, r in populated.runs.items() if r.target == "pod-p0")

    detail = await get(populated.client, f"/api/v1/runs/{run_id}")

    assert detail["status"] == "failed"
    assert "allowed_hosts" in detail["error"]
    assert [(s["name"], s["outcome"]) for s in detail["steps"]] == [("restart", "failed")]
    finished = [a for a in detail["audit"] if a["kind"] == "run_finished"]
    assert [a["outcome"] for a in finished] == ["failed"]


async def test_unknown_run_is_404(populated: Populated) -> None:
    async with populated.client.get(f"/api/v1/runs/{'0' * 32}", headers=auth(API_TOKEN)) as r:
        assert r.status == 404
        assert (await r.json())["error"] == "not_found"


async def test_malformed_run_id_is_400(populated: Populated) -> None:
    async with populated.client.get("/api/v1/runs/not-a-run", headers=auth(API_TOKEN)) as r:
        assert r.status == 400
        assert (await r.json())["field"] == "run_id"


async def test_audit_pages_cover_the_whole_chain_in_order(populated: Populated) -> None:
    pages = await walk(populated.client, "/api/v1/audit", limit="7")

    seqs = [item["seq"] for page in pages for item in page]
    assert seqs == list(range(1, populated.engine.rows("audit") + 1))
    assert all(len(page) == 7 for page in pages[:-1])
    items = [item for page in pages for item in page]
    for before, after in itertools.pairwise(items):
        assert after["prev_hash"] == before["hash"]


async def test_audit_filters_with_pagination(populated: Populated) -> None:
    pages = await walk(
        populated.client, "/api/v1/audit", kind="run_finished", playbook="pod-crash", limit="2"
    )

    items = [item for page in pages for item in page]
    assert len(pages) == 3
    assert len(items) == FAILING
    assert {item["kind"] for item in items} == {"run_finished"}
    assert {item["outcome"] for item in items} == {"failed"}
    assert {item["run_id"] for item in items} == {
        i for i, r in populated.runs.items() if r.playbook == "pod-crash"
    }


@pytest.mark.parametrize(
    ("query", "count"),
    [
        pytest.param({"kind": "run_queued"}, PAIRS * 2 + FAILING, id="kind"),
        pytest.param({"kind": "run_finished", "outcome": "succeeded"}, PAIRS * 2, id="outcome"),
        pytest.param({"kind": "alert_received", "alertname": "PodCrash"}, FAILING, id="alertname"),
        pytest.param({"target": "store-s5"}, 4, id="target"),
    ],
)
async def test_audit_filters(populated: Populated, query: dict[str, str], count: int) -> None:
    pages = await walk(populated.client, "/api/v1/audit", **query)

    items = [item for page in pages for item in page]
    assert len(items) == count
    for item in items:
        for name, value in query.items():
            assert item[name] == value


async def test_audit_time_window(populated: Populated) -> None:
    since = populated.start + PAIRS * SPACING
    until = since + 2 * SPACING

    pages = await walk(
        populated.client, "/api/v1/audit", since=str(since), until=reporting.timestamp(until) or ""
    )

    items = [item for page in pages for item in page]
    # Two PodCrash deliveries and their runs, nothing from the StoreDown pairs before them.
    assert {item["alertname"] for item in items} == {"PodCrash"}
    assert sum(item["kind"] == "alert_received" for item in items) == 2
    assert all(since <= reporting.parse_timestamp(item["time"]) < until for item in items)


@pytest.mark.parametrize("path", ["/api/v1/runs", "/api/v1/audit"])
@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param({"since": "yesterday"}, "since", id="since"),
        pytest.param({"until": "2024-13-45T00:00:00Z"}, "until", id="until"),
        pytest.param({"limit": "0"}, "limit", id="limit-zero"),
        pytest.param({"limit": "1001"}, "limit", id="limit-too-big"),
        pytest.param({"limit": "ten"}, "limit", id="limit-not-int"),
        pytest.param({"playbook": ""}, "playbook", id="empty-playbook"),
        pytest.param({"sort": "asc"}, "sort", id="unknown-param"),
        pytest.param({"cursor": "not-a-cursor!"}, "cursor", id="bad-cursor"),
    ],
)
async def test_bad_query_is_400_naming_the_param(
    populated: Populated, path: str, query: dict[str, str], field: str
) -> None:
    async with populated.client.get(path, params=query, headers=auth(API_TOKEN)) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == "bad_query"
    assert body["field"] == field


@pytest.mark.parametrize("path", ["/api/v1/runs", "/api/v1/audit", f"/api/v1/runs/{'0' * 32}"])
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param(auth("wrong"), id="wrong-token"),
        pytest.param(auth(WEBHOOK_TOKEN), id="webhook-token"),
    ],
)
async def test_api_needs_its_own_token(
    client: Client, engine: Engine, path: str, headers: dict[str, str]
) -> None:
    async with client.get(path, headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    async with client.get(path, headers=auth(API_TOKEN)) as response:
        assert response.status in (200, 404)


async def test_api_token_does_not_open_the_webhook(client: Client, engine: Engine) -> None:
    async with client.post(
        intake.WEBHOOK_PATH, json=webhook(), headers=auth(API_TOKEN)
    ) as response:
        assert response.status == 401
    assert engine.rows("audit") == 0


def write(path: Path, text: str) -> str:
    path.write_text(f"{text}\n", encoding="utf-8")
    return str(path)


def test_api_token_falls_back_to_the_webhook_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REMEDIATOR_TOKEN", raising=False)
    monkeypatch.delenv("REMEDIATOR_API_TOKEN", raising=False)
    token_file = write(tmp_path / "token", WEBHOOK_TOKEN)
    api_file = write(tmp_path / "api-token", API_TOKEN)

    shared = running.resolve_tokens(Settings(auth=AuthSettings(token_file=token_file)))
    separate = running.resolve_tokens(
        Settings(auth=AuthSettings(token_file=token_file, api_token_file=api_file))
    )
    monkeypatch.setenv("REMEDIATOR_API_TOKEN", API_TOKEN)
    from_env = running.resolve_tokens(Settings(auth=AuthSettings(token_file=token_file)))

    assert (shared.webhook, shared.api) == (WEBHOOK_TOKEN, WEBHOOK_TOKEN)
    assert (separate.webhook, separate.api) == (WEBHOOK_TOKEN, API_TOKEN)
    assert (from_env.webhook, from_env.api) == (WEBHOOK_TOKEN, API_TOKEN)
    assert set(separate.secrets) == {WEBHOOK_TOKEN, API_TOKEN}


def test_no_webhook_token_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REMEDIATOR_TOKEN", raising=False)
    monkeypatch.setenv("REMEDIATOR_API_TOKEN", API_TOKEN)

    with pytest.raises(ConfigError) as raised:
        running.resolve_tokens(Settings())

    assert "REMEDIATOR_TOKEN" in str(raised.value)
    insecure = running.resolve_tokens(Settings(auth=AuthSettings(insecure_no_auth=True)))
    assert (insecure.webhook, insecure.api) == (None, None)
