"""The loop's alert rules: the shipped ones with seconds for minutes, still valid for promtool."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from remediator.simulation import closedloop

pytestmark = pytest.mark.e2e


def test_the_rules_are_the_shipped_ones_with_durations_in_seconds(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH; run .ci/setup", pytrace=False)
    source = closedloop.find_directory("alerts") / closedloop.RULES_FILE
    before = hashlib.sha256(source.read_bytes()).hexdigest()

    rules = closedloop.write_rules(source, tmp_path / "rules.yml", hold="1s", phase_threshold=2.5)

    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shipped = {
        r["alert"]: r for g in yaml.safe_load(source.read_text())["groups"] for r in g["rules"]
    }
    short = {r["alert"]: r for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert set(short) == set(shipped)
    assert {name: rule.get("for") for name, rule in short.items()} == {
        name: "1s" if "for" in rule else None for name, rule in shipped.items()
    }
    for name in ("StoreProvisioningStuck", "StoreDeletionStuck"):
        assert short[name]["expr"] == shipped[name]["expr"].replace("> 600", "> 2.5")
    unchanged = set(shipped) - {"StoreProvisioningStuck", "StoreDeletionStuck"}
    assert all(short[name]["expr"] == shipped[name]["expr"] for name in unchanged)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
