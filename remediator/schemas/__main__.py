"""``python -m remediator.schemas [--check]``: regenerate the files derived from the registry."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from remediator import schemas
from remediator.engine.actions import registry
from remediator.simulation import faults


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m remediator.schemas",
        description="Write the playbook and scenario JSON Schemas and the action reference of"
        " the docs.",
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is out of date"
    )
    parser.add_argument(
        "--docs", type=Path, default=schemas.DOCS_FILE, help="the playbook reference page"
    )
    args = parser.parse_args(argv)
    actions = registry.builtin()
    wanted = {
        schemas.SCHEMA_FILE: schemas.render_schema(actions),
        schemas.SCENARIO_SCHEMA_FILE: schemas.render_scenario_schema(sorted(faults.FAULTS)),
    }
    if args.docs.exists():
        catalogue = [
            schemas.FaultDoc(name=f.name, platform=f.platform, description=f.description, fix=f.fix)
            for f in faults.FAULTS.values()
        ]
        text = schemas.update_docs(args.docs.read_text(encoding="utf-8"), actions)
        wanted[args.docs] = schemas.update_fault_docs(text, catalogue)
    else:
        print(f"{args.docs}: not found, its action reference is left alone", file=sys.stderr)
    stale = [
        path
        for path, text in wanted.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"{path}: out of date; run python -m remediator.schemas", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
