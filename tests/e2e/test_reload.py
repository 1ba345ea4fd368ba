"""Playbook sets on a running daemon: refused at start when invalid, reloaded on SIGHUP, and the
last good set kept (and the refusal audited) when a reload is invalid."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import daemon_fixtures
from tests.daemon_fixtures import cli, firing, run_daemon, write_config

pytestmark = pytest.mark.e2e

BUDGET = 20.0

SECOND_PLAYBOOK = (
    """\
name: second
trigger:
  matchers:
    - alertname="Second"
target: "other-{{ alert.labels.item }}"
steps:
  - name: note
    action: log
    params:
      message: "second {{ alert.labels.item }}"
"""
    + daemon_fixtures.UNLIMITED_SAFETY
)


def setup_directory(tmp_path: Path) -> Path:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "quick.yaml").write_text(daemon_fixtures.QUICK_PLAYBOOK)
    return write_config(tmp_path)


async def audit_kinds(session: aiohttp.ClientSession, url: str, kind: str) -> list[Any]:
    headers = {"Authorization": f"Bearer {daemon_fixtures.API_TOKEN}"}
    async with session.get(f"{url}/api/v1/audit", params={"kind": kind}, headers=headers) as r:
        assert r.status == 200
        return list((await r.json())["items"])


async def wait_for_audit(session: aiohttp.ClientSession, url: str, kind: str, count: int) -> Any:
    # The daemon is another process: its audit log, polled with a deadline, is what says so.
    async with asyncio.timeout(BUDGET):
        while True:
            items = await audit_kinds(session, url, kind)
            if len(items) >= count:
                return items
            await asyncio.sleep(0.05)


async def post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {daemon_fixtures.TOKEN}"}
    async with session.post(f"{url}/webhook/alertmanager", json=payload, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def test_the_daemon_refuses_to_start_on_an_invalid_playbook_set(tmp_path: Path) -> None:
    config = setup_directory(tmp_path)
    (tmp_path / "playbooks" / "broken.yaml").write_text(
        "name: broken\ntrigger: {matchers: ['alertname=\"X\"']}\ntarget: t\n"
        "steps:\n  - name: s\n    action: no.such_action\n"
    )

    done = cli("serve", "--config", config, cwd=tmp_path)

    assert done.returncode == 1
    assert "broken.yaml:6: steps[0].action: unknown action 'no.such_action'" in done.stderr
    assert not (tmp_path / "state.sqlite").exists()


async def test_sighup_reloads_and_an_invalid_change_keeps_the_last_good_set(
    tmp_path: Path,
) -> None:
    config = setup_directory(tmp_path)
    async with (
        run_daemon("--config", config, cwd=tmp_path) as daemon,
        aiohttp.ClientSession() as session,
    ):
        before = await post(session, daemon.url, firing(1, alertname="Second"))
        assert before["runs"] == []

        (tmp_path / "playbooks" / "second.yaml").write_text(SECOND_PLAYBOOK)
        daemon.send(signal.SIGHUP)
        loaded = await wait_for_audit(session, daemon.url, "playbooks_loaded", 2)
        assert loaded[-1]["reason"] == "sighup"
        assert loaded[-1]["details"]["playbooks"] == ["quick", "second"]
        after = await post(session, daemon.url, firing(2, alertname="Second"))
        assert len(after["runs"]) == 1

        (tmp_path / "playbooks" / "second.yaml").write_text(
            SECOND_PLAYBOOK.replace("action: log", "action: lgo")
        )
        daemon.send(signal.SIGHUP)
        (failed,) = await wait_for_audit(session, daemon.url, "playbooks_reload_failed", 1)
        assert failed["details"]["kept"] == ["quick", "second"]
        assert any("unknown action 'lgo'" in p for p in failed["details"]["problems"])
        still = await post(session, daemon.url, firing(3, alertname="Second"))
        assert len(still["runs"]) == 1

        # The chain's head is published, so a copy kept elsewhere can expose a truncated log.
        newest = (await audit_kinds(session, daemon.url, "alert_received"))[-1]["seq"]
        async with asyncio.timeout(BUDGET):
            while True:
                async with session.get(f"{daemon.url}/metrics") as response:
                    exposition = await response.text()
                head = next(
                    float(line.split()[1])
                    for line in exposition.splitlines()
                    if line.startswith("remediator_audit_head_seq ")
                )
                if head >= newest:
                    break
                await asyncio.sleep(0.05)

        daemon.send(signal.SIGTERM)
        assert await daemon.exit_code() == 0
