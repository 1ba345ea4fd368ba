"""Kube action fixtures: the emulator on a real 127.0.0.1 socket, a real `KubeClient` on it.

Between the two sits a recording middleware (`ApiLog`): tests read what was requested (to
prove that a refused step sent nothing, or that ``dryRun=All`` went out) and make chosen
requests fail, hang or race with a change, which the emulator alone cannot do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from remediator.adapters import kubernetes
from remediator.config import Settings
from remediator.engine.actions.registry import ActionContext, Resources
from remediator.simulation import kubeapi, serving

SECRET = "s3cr3t-known-value"
"""A known secret value (as from the config): masked wherever it shows up."""
KUBECTL = shutil.which("kubectl")
requires_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str


@dataclasses.dataclass(slots=True)
class _Rule:
    method: str
    path_part: str
    status: int | None = None
    body: str = ""
    hang: bool = False
    before: Callable[[], None] | None = None
    times: int = 1


class ApiLog:
    """Every request the client made, and faults to inject into the next matching ones."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._rules: list[_Rule] = []
        self._arrived: list[tuple[str, str, asyncio.Event]] = []

    def fail(self, method: str, path_part: str, status: int, *, body: str = "") -> None:
        """The next ``method`` request whose path contains ``path_part`` gets ``status``."""
        self._rules.append(_Rule(method, path_part, status=status, body=body))

    def hang(self, method: str, path_part: str) -> None:
        """The next matching request never gets an answer (until the client gives up)."""
        self._rules.append(_Rule(method, path_part, hang=True))

    def before(self, method: str, path_part: str, change: Callable[[], None]) -> None:
        """Run ``change`` just before the next matching request reaches the emulator."""
        self._rules.append(_Rule(method, path_part, before=change))

    def arrival(self, method: str, path_part: str) -> asyncio.Event:
        """Set once a matching request has been answered."""
        event = asyncio.Event()
        self._arrived.append((method, path_part, event))
        return event

    def calls(self, method: str | None = None, path_part: str = "") -> list[Seen]:
        return [
            s for s in self.seen if (method is None or s.method == method) and path_part in s.path
        ]

    def writes(self) -> list[Seen]:
        return [s for s in self.seen if s.method != "GET"]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        query: dict[str, list[str]] = {}
        for key, value in request.query.items():
            query.setdefault(key, []).append(value)
        self.seen.append(Seen(request.method, request.path, query, request.content_type))
        rule = self._take(request)
        if rule is not None and rule.hang:
            await asyncio.Event().wait()  # cancelled when the client disconnects
        if rule is not None and rule.status is not None:
            body = rule.body or f"injected {rule.status}"
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": body,
                    "reason": "Injected",
                    "code": rule.status,
                },
                status=rule.status,
            )
        if rule is not None and rule.before is not None:
            rule.before()
        try:
            return await handler(request)
        finally:
            for method, part, event in self._arrived:
                if request.method == method and part in request.path:
                    event.set()

    def _take(self, request: web.Request) -> _Rule | None:
        for rule in self._rules:
            if rule.method == request.method and rule.path_part in request.path:
                self._rules.remove(rule)
                return rule
        return None


@pytest.fixture
def emulator() -> kubeapi.KubeEmulator:
    return kubeapi.KubeEmulator()


@pytest.fixture
def api_log() -> ApiLog:
    return ApiLog()


@contextlib.asynccontextmanager
async def serve_recorded(emulator: kubeapi.KubeEmulator, api_log: ApiLog) -> AsyncIterator[str]:
    """Like `kubeapi.serve`, with the recording middleware in front of the emulator's own."""
    app = kubeapi.make_app(emulator)
    app.middlewares.insert(0, api_log.middleware)
    async with serving.serve_app(app) as url:
        yield url


@pytest.fixture
async def kube_url(emulator: kubeapi.KubeEmulator, api_log: ApiLog) -> AsyncIterator[str]:
    async with serve_recorded(emulator, api_log) as url:
        yield url


@pytest.fixture
async def kube(kube_url: str) -> AsyncIterator[kubernetes.KubeClient]:
    async with kubernetes.KubeClient.from_url(kube_url, timeout=2.0) as client:
        yield client


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def resources(
    kube: kubernetes.KubeClient, http_session: aiohttp.ClientSession, settings: Settings
) -> Resources:
    return Resources(settings=settings, http=http_session, kube=kube, secrets=(SECRET,))


def make_context(
    resources: Resources, *, dry_run: bool = False, timeout: float = 10.0
) -> ActionContext:
    """What the executor hands an action; the deadline is ``timeout`` seconds away."""
    return ActionContext(
        resources=resources,
        dry_run=dry_run,
        run_id="run-kube",
        playbook="kube-test",
        target="store-a",
        deadline=asyncio.get_running_loop().time() + timeout,
        log=structlog.get_logger("tests.kube"),
    )


@pytest.fixture
async def context(resources: Resources) -> ActionContext:
    return make_context(resources)


@pytest.fixture
async def dry_context(resources: Resources) -> ActionContext:
    return make_context(resources, dry_run=True)


OUT_OF_SCOPE = ["kube-system", "../x", "a" * 300]
"""Namespaces (or names) no action may send anywhere."""


@contextlib.contextmanager
def nothing_sent(emulator: kubeapi.KubeEmulator, api_log: ApiLog) -> Iterator[None]:
    """Asserts that the block made no API request and changed nothing."""
    version, before = emulator.resource_version, len(api_log.seen)
    yield
    assert api_log.seen[before:] == []
    assert emulator.resource_version == version


# --- the real kubectl ---------------------------------------------------------------------------


class KubectlError(Exception):
    pass


Kubectl = Callable[..., Awaitable[str]]


@pytest.fixture
async def kubectl(kube_url: str, tmp_path: Path) -> Kubectl:
    """``kubectl`` against the emulator, with a private HOME and kubeconfig."""
    kubeconfig = kubeapi.write_kubeconfig(tmp_path / "kubeconfig", kube_url)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    env["HOME"] = str(tmp_path)

    async def run(*args: str, ok: bool = True) -> str:
        assert KUBECTL is not None
        process = await asyncio.create_subprocess_exec(
            KUBECTL,
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={tmp_path / 'cache'}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
        if (process.returncode == 0) != ok:
            raise KubectlError(f"kubectl {' '.join(args)}: rc={process.returncode}: {err.decode()}")
        return out.decode() if ok else err.decode()

    return run


def jsonable(value: Any) -> Any:
    """Round-trips through JSON, as the audit store does; fails on anything not JSON-safe."""
    return json.loads(json.dumps(value, allow_nan=False))
