"""The Dockerfile, checked without a Docker engine.

Statically: stages, the non-root numeric user, entrypoint and command as the manifests expect,
no editable or dev install, and a build context holding what the wheel needs. Dynamically: the
image's own install steps, run here: build the wheel from exactly what the Dockerfile copies,
install it with ``--no-index`` into a fresh venv, and run the console script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import remediator
from tests.deploy import manifests

REPO = manifests.REPO
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UID = 10001


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    parsed = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        parsed.append((keyword.upper(), args.strip()))
    return parsed


def stages() -> list[Stage]:
    args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions():
        if keyword == "ARG" and not found:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            found.append(
                Stage(base=base, name=parts[2] if len(parts) == 3 and parts[1] == "AS" else None)
            )
        else:
            assert found, f"{keyword} before FROM"
            found[-1].instructions.append((keyword, rest))
    return found


def test_multi_stage_build_on_python_311_slim() -> None:
    builder, runtime = stages()
    assert builder.name == "builder"
    assert runtime.base.startswith("python:3.11-slim")
    assert builder.base == runtime.base
    assert any("pip wheel" in run for run in builder.all("RUN"))
    assert not runtime.all("COPY"), "the runtime stage takes only the builder's wheels"


def test_runtime_installs_wheels_only() -> None:
    runtime = stages()[-1]
    (install,) = runtime.all("RUN")
    assert "--mount=type=bind,from=builder" in install
    assert "--no-index" in install
    assert re.search(r"pip install [^&]*\bremediator\b", install)


def test_no_editable_or_dev_install() -> None:
    text = " ".join(args for _, args in instructions())
    assert not re.search(r"pip install[^&]*(\s-e\s|--editable)", text)
    assert "[dev]" not in text
    assert "requirements-dev" not in text


def test_runs_as_the_numeric_non_root_user_the_manifests_expect() -> None:
    runtime = stages()[-1]
    (user,) = runtime.all("USER")
    assert user == f"{UID}:{UID}"
    assert f"--uid {UID}" in runtime.all("RUN")[0]
    deployment = manifests.find(manifests.kustomize_docs(), "Deployment")
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsUser"] == security["runAsGroup"] == UID
    (chart_deployment,) = manifests.template_docs("deployment.yaml")
    assert chart_deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID


def test_entrypoint_and_command() -> None:
    runtime = stages()[-1]
    assert [json.loads(e) for e in runtime.all("ENTRYPOINT")] == [["remediator"]]
    (command,) = [json.loads(c) for c in runtime.all("CMD")]
    assert command == ["serve", "--config", "/etc/remediator/config.yaml"]
    deployment = manifests.find(manifests.kustomize_docs(), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == command
    assert runtime.all("EXPOSE") == [str(container["ports"][0]["containerPort"])]
    assert not runtime.all("HEALTHCHECK"), "Kubernetes probes /healthz and /readyz instead"


# The build context


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exclude?, regex) in order; the last matching rule wins."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        rules.append((not negated, re.compile(regex + "(?:/.*)?")))
    return rules


def in_context(path: str) -> bool:
    included = True
    for exclude, regex in ignore_rules():
        if regex.fullmatch(path):
            included = not exclude
    return included


def copied_sources() -> list[str]:
    sources = []
    for arguments in stages()[0].all("COPY"):
        *paths, _destination = arguments.split()
        sources += [p for p in paths if not p.startswith("--")]
    return sources


def test_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    sources = copied_sources()
    assert sources == ["pyproject.toml", "README.md", "remediator"]
    for source in sources:
        assert (REPO / source).exists()
        assert in_context(source)
    assert in_context("remediator/cli.py")
    assert in_context("remediator/schemas/playbook.schema.json")
    for left_out in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/deploy/test_dockerfile.py",
        "remediator/__pycache__/cli.cpython-311.pyc",
        "remediator.sqlite",
        "remediator.egg-info/PKG-INFO",
        "helm-charts/remediator/Chart.yaml",
    ):
        assert not in_context(left_out), left_out


# The install steps, run here


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` over a copy of exactly what the builder stage copies."""
    root = tmp_path_factory.mktemp("image")
    source = root / "src"
    source.mkdir()
    for name in copied_sources():
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(
                origin,
                source / name,
                ignore=lambda directory, names: [
                    n for n in names if not in_context(str((Path(directory) / n).relative_to(REPO)))
                ],
            )
        else:
            shutil.copy2(origin, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", root / "wheels", source],
        capture_output=True,
        text=True,
        check=False,
        timeout=50,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (root / "wheels").glob("remediator-*.whl")
    return built


# Together about 12 s, and the isolated build fetches setuptools from the package index.
@pytest.mark.e2e
def test_wheel_holds_the_package_data_and_no_tests(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    assert "remediator/py.typed" in names
    assert "remediator/schemas/playbook.schema.json" in names
    assert any(n.startswith("remediator/examples/") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    runtime = sorted(r for r in requires if "extra ==" not in r)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert runtime == sorted(pyproject["project"]["dependencies"])
    assert all('extra == "dev"' in r for r in requires if r not in runtime)


@pytest.mark.e2e
def test_installed_wheel_runs(wheel: Path, tmp_path: Path) -> None:
    """The runtime stage's install, with this environment's dependencies standing in for the
    builder's dependency wheels (no index is needed, as in the image)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=30)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    )
    # Appended after the venv's own site-packages, so the wheel's package wins; a path from a
    # .pth file gets no .pth processing itself, so the project's editable finder stays off.
    (site_packages / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-index",
            "--no-deps",
            wheel,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=50,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            env=env,
            timeout=30,
        )

    version = run(venv / "bin" / "remediator", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"remediator {remediator.__version__}"
    where = run(python, "-c", "import remediator; print(remediator.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site_packages), where.stdout + where.stderr
    validated = run(venv / "bin" / "remediator", "validate", REPO / "playbooks")
    assert validated.returncode == 0, validated.stdout + validated.stderr
