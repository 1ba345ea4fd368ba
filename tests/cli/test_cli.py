"""``remediator`` as a user runs it: a subprocess in a scratch directory, exit codes and output."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiohttp
import pytest

import remediator
from remediator.core import auditing
from tests import daemon_fixtures
from tests.daemon_fixtures import cli

REPO = Path(__file__).resolve().parents[2]
FIRING = resources.files("remediator").joinpath("examples", "storedown-firing.json")


def test_version() -> None:
    done = cli("--version", cwd=REPO, check_rc=0)
    assert done.stdout.strip() == f"remediator {remediator.__version__}"


def test_validate_accepts_the_shipped_playbooks(tmp_path: Path) -> None:
    done = cli("validate", REPO / "playbooks", cwd=tmp_path, check_rc=0)
    assert "OK" in done.stdout
    assert done.stderr == ""


BROKEN = {
    "alpha.yaml": """\
name: alpha
trigger:
  matchers:
    - alertname="Alpha"
    - severity=~"(critical"
target: "store-{{ alert.labels.store_id"
steps:
  - name: first
    action: lgo
    params:
      message: hi
  - name: second
    action: log
    params:
      message: hi
      levle: warning
""",
    "beta.yaml": """\
name: twin
trigger:
  matchers:
    - alertname="Beta"
target: "beta"
steps:
  - name: only
    action: log
    params:
      message: hi
""",
    "gamma.yaml": """\
# The same name as beta.yaml's playbook, two lines down.

name: twin
trigger:
  matchers:
    - alertname="Gamma"
target: "gamma"
steps:
  - name: only
    action: log
    params:
      message: hi
""",
    "delta.yaml": """\
name: delta
target: "delta"
description: one: two
steps: []
""",
}


def line_of(text: str, marker: str) -> int:
    (number,) = [i for i, line in enumerate(text.splitlines(), 1) if marker in line]
    return number


def test_validate_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name, text in BROKEN.items():
        (broken / name).write_text(text, encoding="utf-8")
    alpha = BROKEN["alpha.yaml"]
    expected = [
        (
            f"broken/alpha.yaml:{line_of(alpha, '(critical')}: trigger.matchers[1]: ",
            "bad matcher",
        ),
        (f"broken/alpha.yaml:{line_of(alpha, 'target:')}: target: ", "bad template"),
        (
            f"broken/alpha.yaml:{line_of(alpha, 'action: lgo')}: steps[0].action: ",
            "unknown action 'lgo' (did you mean 'log'?)",
        ),
        (
            f"broken/alpha.yaml:{line_of(alpha, 'levle')}: steps[1].params.levle: ",
            "(did you mean 'level'?)",
        ),
        (
            f"broken/gamma.yaml:{line_of(BROKEN['gamma.yaml'], 'name: twin')}: name: ",
            "duplicate playbook name 'twin' (also in broken/beta.yaml:1)",
        ),
        (
            f"broken/delta.yaml:{line_of(BROKEN['delta.yaml'], 'one: two')}: ",
            "invalid YAML",
        ),
    ]

    done = cli("validate", "broken", cwd=tmp_path)

    assert done.returncode == 1
    assert done.stdout == ""
    reported = done.stderr.splitlines()
    assert len(reported) == len(expected), done.stderr
    for prefix, message in expected:
        assert any(r.startswith(prefix) and message in r for r in reported), (prefix, reported)


def test_simulate_describes_what_would_run(tmp_path: Path) -> None:
    shutil.copytree(REPO / "playbooks", tmp_path / "playbooks")
    alert = tmp_path / "firing.json"
    alert.write_text(FIRING.read_text("utf-8"), encoding="utf-8")

    text = cli("simulate", "--alert", alert, "--playbooks", "playbooks", cwd=tmp_path, check_rc=0)
    as_json = cli(
        "simulate", "--alert", alert, "--playbooks", "playbooks", "--json", cwd=tmp_path, check_rc=0
    )

    assert "store-down" in text.stdout
    assert "store-s1" in text.stdout
    report = json.loads(as_json.stdout)
    (simulated,) = report["alerts"]
    assert simulated["fingerprint"] == "46924153d5d81b9f"
    assert "alert_not_run" not in {d["kind"] for d in simulated["decisions"]}
    assert [(d["playbook"], d["target"]) for d in simulated["decisions"]] == [
        ("store-down", "store-s1")
    ]
    chosen = [m for m in simulated["matched"] if m["would_run"]]
    assert [(m["playbook"], m["target"]) for m in chosen] == [("store-down", "store-s1")]
    assert not (tmp_path / "remediator.sqlite").exists(), "simulate must not write state"


def test_serve_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    shutil.copytree(REPO / "playbooks", tmp_path / "playbooks")

    done = cli("serve", "--listen", "127.0.0.1:0", "--state", "state.sqlite", cwd=tmp_path)

    assert done.returncode != 0
    assert "REMEDIATOR_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state.sqlite").exists()


async def test_serve_insecure_no_auth_starts_and_warns(tmp_path: Path) -> None:
    shutil.copytree(REPO / "playbooks", tmp_path / "playbooks")
    firing = json.loads(FIRING.read_text("utf-8"))

    async with (
        daemon_fixtures.run_daemon(
            "--listen", "127.0.0.1:0", "--state", "state.sqlite", "--insecure-no-auth", cwd=tmp_path
        ) as daemon,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(f"{daemon.url}/webhook/alertmanager", json=firing) as response:
            assert response.status == 200
        async with session.get(f"{daemon.url}/api/v1/runs") as response:
            assert response.status == 200
        daemon.send(signal.SIGTERM)
        assert await daemon.exit_code() == 0

    warnings = [e for e in daemon.events if e["event"] == "webhook_auth_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "INSECURE" in warnings[0]["message"]
    started = daemon.events.index(warnings[0])
    listening = next(i for i, e in enumerate(daemon.events) if e["event"] == "daemon_listening")
    assert started < listening, "the warning must come before the daemon accepts anything"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditedState:
    path: Path
    records: int


async def _record_some_runs(directory: Path) -> None:
    (directory / "playbooks").mkdir()
    (directory / "playbooks" / "quick.yaml").write_text(
        daemon_fixtures.QUICK_PLAYBOOK, encoding="utf-8"
    )
    config = daemon_fixtures.write_config(directory)
    async with (
        daemon_fixtures.run_daemon("--config", config, cwd=directory) as daemon,
        aiohttp.ClientSession(headers=daemon.headers()) as session,
    ):
        for index in (0, 1, 2, 0):
            payload = daemon_fixtures.firing(index)
            async with session.post(f"{daemon.url}/webhook/alertmanager", json=payload) as r:
                assert r.status == 200
        runs = await daemon_fixtures.wait_all_finished(session, daemon)
        assert [r["status"] for r in runs] == ["succeeded"] * 3
        daemon.send(signal.SIGTERM)
        assert await daemon.exit_code() == 0


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> AuditedState:
    directory = tmp_path_factory.mktemp("audited")
    asyncio.run(_record_some_runs(directory))
    path = directory / "state.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (records,) = conn.execute("SELECT count(*) FROM audit").fetchone()
    return AuditedState(path=path, records=records)


@pytest.fixture
def state_copy(audited: AuditedState, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the audited state file, for tests that change it."""
    copy = tmp_path / "copy.sqlite"
    with (
        contextlib.closing(sqlite3.connect(audited.path)) as source,
        contextlib.closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    yield copy


def test_audit_table(audited: AuditedState, tmp_path: Path) -> None:
    done = cli("audit", "--state", audited.path, cwd=tmp_path, check_rc=0)

    header, *rows = done.stdout.splitlines()
    assert header.split() == [
        "SEQ",
        "TIME",
        "KIND",
        "ALERTNAME",
        "PLAYBOOK",
        "TARGET",
        "OUTCOME",
        "REASON",
    ]
    assert len(rows) == audited.records
    finished = [r for r in rows if " run_finished " in r]
    assert len(finished) == 3
    assert all("quick" in r and "succeeded" in r for r in finished)
    assert sum(" alert_duplicate " in r for r in rows) == 1


def test_audit_json_lines(audited: AuditedState, tmp_path: Path) -> None:
    done = cli("audit", "--state", audited.path, "--json", cwd=tmp_path, check_rc=0)

    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, audited.records + 1))
    assert records[0]["prev_hash"] == auditing.GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "playbooks_loaded"
    assert kinds[-1] == "daemon_stopped"
    assert kinds.count("run_finished") == 3


def test_audit_filters_and_pages(audited: AuditedState, tmp_path: Path) -> None:
    first = cli(
        "audit",
        "--state",
        audited.path,
        "--kind",
        "run_finished",
        "--limit",
        "2",
        "--json",
        cwd=tmp_path,
        check_rc=0,
    )
    (hint,) = first.stderr.splitlines()
    assert hint.startswith("more: --cursor ")
    rest = cli(
        "audit",
        "--state",
        audited.path,
        "--kind",
        "run_finished",
        "--json",
        "--cursor",
        hint.split()[-1],
        cwd=tmp_path,
        check_rc=0,
    )

    records = [json.loads(line) for line in (first.stdout + rest.stdout).splitlines()]
    assert [r["kind"] for r in records] == ["run_finished"] * 3
    assert {r["target"] for r in records} == {"item-i0", "item-i1", "item-i2"}
    assert rest.stderr == ""


def test_audit_verify_intact(audited: AuditedState, tmp_path: Path) -> None:
    done = cli("audit", "verify", "--state", audited.path, cwd=tmp_path, check_rc=0)
    assert f"intact: {audited.records} records" in done.stdout
    with contextlib.closing(sqlite3.connect(audited.path)) as conn:
        seq, digest = conn.execute(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert f"head: seq {seq} hash {digest}" in done.stdout


def test_audit_verify_names_the_tampered_record(state_copy: Path, tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(state_copy)) as conn:
        (seq,) = conn.execute(
            "SELECT seq FROM audit WHERE kind = 'run_finished' ORDER BY seq LIMIT 1"
        ).fetchone()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET outcome = 'failed' WHERE seq = ?", (seq,))
        conn.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        conn.execute("UPDATE audit SET details = ? WHERE seq = ?", ('{"duration": 86400.5}', seq))
        conn.commit()

    done = cli("audit", "verify", "--state", state_copy, cwd=tmp_path)

    assert done.returncode == 1
    assert f"BROKEN at record {seq}" in done.stdout
    assert f"({seq - 1} records before it are intact)" in done.stdout


def test_audit_verify_detects_a_deleted_record(state_copy: Path, tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(state_copy)) as conn:
        conn.executescript(
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;"
            " DELETE FROM audit WHERE seq = 3;"
        )

    done = cli("audit", "verify", "--state", state_copy, cwd=tmp_path)

    assert done.returncode == 1
    assert "BROKEN at record" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("audit", "--state", "missing.sqlite"), id="audit-missing"),
        pytest.param(("audit", "verify", "--state", "missing.sqlite"), id="verify-missing"),
        pytest.param(("audit", "--state", "not-a-database.sqlite"), id="audit-not-sqlite"),
    ],
)
def test_audit_on_an_unusable_state_file_says_so(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "not-a-database.sqlite").write_text("hello\n" * 100, encoding="utf-8")

    done = cli(*args, cwd=tmp_path)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("remediator: ")
    assert args[-1] in done.stderr
