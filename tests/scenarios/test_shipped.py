"""``remediator test`` as CI runs it, through the real CLI: every scenario of the shipped
playbooks passes, one line each, and every branch of every tested playbook is taken."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.daemon_fixtures import cli

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "playbooks" / "tests"


def test_the_shipped_scenarios_pass_and_cover_every_branch() -> None:
    files = sorted(TESTS.glob("*.yaml"))
    names = [
        (path, scenario["name"])
        for path in files
        for scenario in yaml.safe_load(path.read_text(encoding="utf-8"))["scenarios"]
    ]

    done = cli("test", "--coverage", "playbooks/tests", cwd=REPO)

    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    lines = done.stdout.splitlines()
    results = [line for line in lines if line.startswith(("ok ", "FAIL "))]
    assert len(results) == len(names)
    for line, (path, name) in zip(results, names, strict=True):
        assert line.startswith(f"ok   playbooks/tests/{path.name}:"), line
        assert f" {name} (" in line
    assert f"{len(names)} passed, 0 failed" in lines
    coverage = [line for line in lines if line.startswith("coverage ")]
    tested = sorted(yaml.safe_load(p.read_text(encoding="utf-8"))["playbook"] for p in files)
    assert [line.split(":")[0].removeprefix("coverage ") for line in coverage] == tested
    assert all("branches not taken: all covered;" in line for line in coverage), coverage


def test_every_shipped_playbook_has_its_scenario_file() -> None:
    playbooks = sorted(p.stem for p in (REPO / "playbooks").glob("*.yaml"))
    tested = sorted(p.stem for p in TESTS.glob("*.yaml"))

    assert tested == playbooks
    for path in TESTS.glob("*.yaml"):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["playbook"] == path.stem
