"""docs/playbooks.md's tutorial works as written: its files, its commands, their output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.daemon_fixtures import cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "playbooks.md"
STEP = re.compile(
    r"<!-- tutorial-(?P<kind>file|append|run)(?:: (?P<path>\S+))? -->\n```\w+\n(?P<body>.*?)```",
    re.DOTALL,
)
DURATION = re.compile(r"\(\d+\.\d+s\)")


def test_the_tutorial_goes_from_an_empty_directory_to_a_green_test(tmp_path: Path) -> None:
    steps = list(STEP.finditer(DOCS.read_text(encoding="utf-8")))
    assert [s["kind"] for s in steps].count("run") == 4

    for step in steps:
        if step["kind"] in ("file", "append"):
            target = tmp_path / step["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            before = target.read_text() if step["kind"] == "append" else ""
            target.write_text(before + ("\n" if before else "") + step["body"])
            continue
        command, *shown = step["body"].rstrip("\n").split("\n")
        args = shlex.split(command.removeprefix("$ "))
        assert args[0] == "remediator"
        done = cli(*args[1:], cwd=tmp_path)
        got = DURATION.sub("(…)", done.stdout).rstrip("\n").split("\n")
        assert got == [DURATION.sub("(…)", line) for line in shown], done.stderr
        assert done.returncode == (1 if any(line.startswith("FAIL") for line in shown) else 0)
