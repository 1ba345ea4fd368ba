"""Where the simulation finds the repository's files (playbooks/, alerts/, deploy/).

The simulation runs what the repository ships: the playbooks, the alert rules, and the RBAC of
the deployment manifests. From a checkout (an editable install) they are next to the package,
so they match the code; otherwise they are looked for in the current directory.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_REPOSITORY = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (an editable install)."""


class MissingDirectoryError(FileNotFoundError):
    """The repository directory the simulation needs is nowhere to be found."""


def find_directory(name: str) -> Path:
    """``name`` (e.g. ``playbooks``) next to the package, else in the current directory."""
    for base in (PACKAGE_REPOSITORY, Path.cwd()):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise MissingDirectoryError(
        f"no {name}/ directory in {PACKAGE_REPOSITORY} or {Path.cwd()};"
        " run from the repository root"
    )
