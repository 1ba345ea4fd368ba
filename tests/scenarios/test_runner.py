"""The scenario runner itself, on the shipped playbooks: a good scenario passes, a wrong one
fails with a readable diff, a bad file is refused with every problem located, and the
coverage gate fails on a branch no scenario takes."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from remediator.simulation import scenarios

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"


def run(tmp_path: Path, text: str, *, coverage: bool = False) -> tuple[int, str, str]:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = scenarios.main(
        [path],
        playbooks_dir=PLAYBOOKS,
        config_path=None,
        coverage=coverage,
        time_scale=0.01,
        out=out,
        err=err,
    )
    return code, out.getvalue(), err.getvalue().replace(str(path), "scenario.yaml")


GOOD = """
    playbook: store-database-down
    scenarios:
      - name: a database that is not ready is restarted
        platform:
          stores: [s7]
          faults: [{ fault: db_down, store: s7 }]
        alerts:
          - { alert: StoreDatabaseDown, store: s7 }
        expect:
          runs:
            - { target: store-s7, branch: restart_database, outcome: succeeded }
          writes: [k8s PATCH statefulsets store-s7/s7-db]
          platform: { healthy: [s7] }
"""


def test_a_scenario_that_holds_passes(tmp_path: Path) -> None:
    code, out, err = run(tmp_path, GOOD)

    assert (code, err) == (0, "")
    first, summary = out.splitlines()
    assert first.startswith(f"ok   {tmp_path / 'scenario.yaml'}:3 a database that is not ready")
    assert summary == "1 passed, 0 failed"


def test_a_wrong_scenario_fails_with_what_was_expected_and_what_happened(tmp_path: Path) -> None:
    # The database is down, not the app: store-down finds nothing in the namespace that
    # explains an outage, and since the store still answers, it only verifies.
    code, out, err = run(
        tmp_path,
        """
        playbook: store-down
        scenarios:
          - name: the app is restarted
            platform:
              stores: [s1]
              faults: [{ fault: db_down, store: s1 }]
            alerts:
              - { alert: StoreDown, store: s1 }
            expect:
              runs:
                - { branch: restart_app, steps: { restart_app: succeeded }, outcome: succeeded }
              writes: [k8s PATCH deployments store-s1/s1-app]
              notifications: ["restarted"]
              platform: { healthy: [s1] }
        """,
    )

    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0].startswith("FAIL ")
    assert [line.strip() for line in lines[1:]] == [
        "runs[0].branch: expected restart_app, got escalate_unknown",
        "runs[0].steps.restart_app: expected succeeded, got skipped",
        "got runs[0]: store-down on store-s1 branch escalate_unknown, succeeded",
        "steps: diagnose succeeded, decide succeeded, confirm_namespace skipped, reprovision "
        "skipped, restart_app skipped, wait_app skipped, confirm_database skipped, "
        "delete_certificate skipped, delete_tls_keypair skipped, confirm_still_down succeeded",
        "writes: expected (-) and got (+) differ:",
        "- k8s PATCH deployments store-s1/s1-app",
        "(got none)",
        "notifications: expected 1, got 0",
        "platform.healthy: store s1 is unhealthy (statefulset s1-db not ready; "
        "service s1-db has no ready endpoints)",
        "0 passed, 1 failed",
    ]


def test_a_bad_scenario_file_is_refused_with_every_problem_located(tmp_path: Path) -> None:
    code, out, err = run(
        tmp_path,
        """
        playbook: store-down
        scenarios:
          - name: typos
            platform:
              stores: [s1]
              faults:
                - { fault: app_down }
                - { fault: ingress_controller_down, store: s1 }
            alerts:
              - { alert: StoreDown, store: s1 }
            expect:
              runs:
                - branch: restart_ap
                  steps: { restrat_app: succeeded }
        """,
    )

    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "scenario.yaml:7: scenarios[0].platform.faults[0]: fault 'app_down' needs a store",
        "scenario.yaml:8: scenarios[0].platform.faults[1].store: a platform fault takes no store",
        "scenario.yaml:13: scenarios[0].expect.runs[0].branch: playbook 'store-down' has no "
        "branch 'restart_ap' (did you mean 'restart_app'?)",
        "scenario.yaml:14: scenarios[0].expect.runs[0].steps.restrat_app: playbook 'store-down' "
        "has no step 'restrat_app' (did you mean 'restart_app'?)",
    ]


def test_structure_is_checked_against_the_schema_first(tmp_path: Path) -> None:
    code, out, err = run(
        tmp_path,
        """
        playbook: store-dwn
        scenarios:
          - name: structure
            platform: { stores: [S1], faults: [{ fault: app_dwn, store: s1 }] }
            alerts: []
            expect: { write: [] }
        """,
    )

    assert (code, out) == (2, "")
    problems = err.splitlines()
    assert problems[0].startswith(
        "scenario.yaml:4: scenarios[0].platform.faults[0].fault: 'app_dwn' is not one of "
        "['app_crashloop_db_ready', 'app_down',"
    )
    assert problems[1] == (
        "scenario.yaml:4: scenarios[0].platform.stores[0]: 'S1' does not match "
        "'^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$'"
    )
    assert problems[2:] == [
        "scenario.yaml:5: scenarios[0].alerts: [] should be non-empty",
        "scenario.yaml:6: scenarios[0].expect.write: unknown key (did you mean 'writes'?)",
    ]


def test_an_unknown_playbook_is_named(tmp_path: Path) -> None:
    code, _, err = run(tmp_path, GOOD.replace("store-database-down", "store-databse-down"))

    assert code == 2
    assert err.splitlines() == [
        "scenario.yaml:1: playbook: no playbook 'store-databse-down' "
        "(did you mean 'store-database-down'?)"
    ]


def test_coverage_fails_on_a_branch_no_scenario_takes(tmp_path: Path) -> None:
    code, out, err = run(tmp_path, GOOD, coverage=True)

    assert (code, err) == (1, "")
    assert out.splitlines()[-1] == (
        "coverage store-database-down: branches not taken: escalate_credentials, "
        "escalate_storage, restart_app, recovered; steps not run: confirm_login, "
        "confirm_storage, restart_app, wait_app, app_ready, escalate"
    )


def test_a_scenario_that_cannot_be_played_fails_and_says_why(tmp_path: Path) -> None:
    code, out, err = run(
        tmp_path,
        GOOD.replace(
            "faults: [{ fault: db_down, store: s7 }]", "faults: [{ fault: db_down, store: s8 }]"
        ),
    )

    assert (code, err) == (1, "")
    assert out.splitlines()[1].strip() == (
        "could not play: fault db_down: store 's8' has no active namespace store-s8"
    )
