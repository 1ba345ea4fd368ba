"""Reading playbook files from disk; the parsing and validation are the core's."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from remediator.core import validation
from remediator.core.actions import ActionCatalog
from remediator.core.errors import PlaybookError, Problem
from remediator.core.playbooks import PlaybookSet
from remediator.core.safety import SafetyPolicy

PLAYBOOK_SUFFIXES = (".yaml", ".yml")


def playbook_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every playbook file under ``paths`` (files as given, directories non-recursively)."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(
                sorted(p for p in entry.iterdir() if p.suffix in PLAYBOOK_SUFFIXES and p.is_file())
            )
        else:
            found.append(entry)
    return found


def read_files(paths: Sequence[str | Path]) -> tuple[dict[str, str], str]:
    """File name → text, and a digest of all of it; unreadable files raise PlaybookError."""
    files: dict[str, str] = {}
    problems: list[Problem] = []
    digest = hashlib.sha256()
    for path in playbook_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(source=str(path), path="", message=f"cannot read: {e}"))
            continue
        files[str(path)] = text
        digest.update(str(path).encode() + b"\0" + text.encode() + b"\0")
    if problems:
        raise PlaybookError(problems)
    return files, digest.hexdigest()


def load_playbooks(
    paths: Sequence[str | Path],
    catalog: ActionCatalog,
    *,
    defaults: SafetyPolicy = validation.DEFAULT_POLICY,
) -> PlaybookSet:
    files, digest = read_files(paths)
    return validation.load_set(files, catalog, digest=digest, defaults=defaults)


def snapshot(paths: Sequence[str | Path]) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: names, sizes and mtimes; a real reload compares digests."""
    entries = []
    for path in playbook_files(paths):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)
