"""``python -m remediator demo --ha`` as a person runs it: three replicas on a real PostgreSQL,
the owner of the run SIGKILLed, another replica taking the run over; its output is read for
each stage, in order, and the exit status must be 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from remediator.simulation import postgresql

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not postgresql.available(), reason="PostgreSQL is not installed"),
]

DEMO_TIMEOUT = 120.0
"""The demo takes about 20 s here, PostgreSQL's initdb included (its own bound is 2 minutes)."""

STAGES = (
    r"START    replica r1: http://127\.0\.0\.1:\d+",
    r"START    replica r3: ",
    r"BREAK    fault app_down injected into store s1",
    r"RUN      playbook store-restart-ha started on store-s1 \(run (?P<run>\w+)\);"
    r" owner (?P<owner>r\d)",
    r"STEP       restart_db \(k8s\.rollout_restart\): succeeded on (?P=owner)",
    r"KILL     SIGKILL to replica (?P=owner) \(pid \d+\), which owns the run",
    # Killed in the pause after restart_db (a loaded machine may see it only after wait_db).
    r"TAKEOVER run_taken_over: (?P<heir>r\d) took run (?P=run) from (?P=owner) .*step in flight:"
    r" none; done before: restart_db",
    r"TAKEOVER run_resumed: the playbook says resume; continues at (wait_db|restart_app)",
    r"STEP       restart_app \(k8s\.rollout_restart\): succeeded on (?P=heir)",
    r"RUN      succeeded",
    r"HEALTHY  store s1: serving, every part ready",
    r"StatefulSet s1-db patched 1x, Deployment s1-app patched 1x",
    r"audit log intact: \d+ records",
    r"run (?P=run): succeeded; killed (?P=owner), taken over by (?P=heir) \(run_resumed\);"
    r" escalations to oncall: 1",
)
"""In causal order, as one pattern over the whole output."""


def test_demo_ha_kills_the_owner_and_another_replica_finishes_the_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "remediator", "demo", "--ha"],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    story = re.search(r"[\s\S]*?".join(f"(?:{stage})" for stage in STAGES), output)
    assert story is not None, output
    assert story["heir"] != story["owner"]
    # The on-call message arrived, naming the run and the dead replica.
    oncall = [line for line in output.splitlines() if "ONCALL" in line]
    assert len(oncall) == 1, output
    assert story["run"] in oncall[0] and f"from replica {story['owner']}" in oncall[0]
    # Nothing but the story on stdout: the daemons and the platform log to files.
    assert "[info" not in done.stdout, done.stdout
