"""The closed loop, assembled in one place for ``remediator demo`` and the end-to-end tests::

    from remediator.simulation import closedloop

    async with closedloop.run(workdir=path) as loop:
        loop.platform.inject("app_down", "s1")           # the store answers 503
        record = await loop.wait_audit("run_finished", playbook="store-down")

`run` starts, all on 127.0.0.1 and in this order:

1. the simulated store platform (`remediator.simulation.platform`) and the on-call receiver
   remediator escalates to (`standins.EscalationReceiver`);
2. a real Alertmanager, routing every alert to remediator's webhook with the bearer token,
   and a real Prometheus, scraping remediator's ``/metrics`` (job ``remediator``,
   ``honor_labels``) and evaluating ``alerts/stores.rules.yml`` with its durations shortened
   to seconds (`write_rules`), sending to that Alertmanager;
3. remediator itself (`running.Daemon`, in this process) on the repository's playbooks, with
   the platform's config fragment, Prometheus' URL, the token and the receiver.

Prometheus and Alertmanager need remediator's address before it runs, and remediator needs
Prometheus' URL, so remediator's port is chosen first. Without the binaries (or with
``LoopSettings.monitoring`` off) neither runs: the caller posts the alerts (`post_alert`, shaped
as Alertmanager's), and remediator's ``prometheus.url`` is a `standins.MetricsQuery` answering
the playbooks' store_up queries from remediator's own metrics.

Everything started is stopped on the way out, whatever the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from remediator import config, running
from remediator.adapters import prometheus
from remediator.simulation import controllers, monitoring, platform, repository, standins

T = TypeVar("T")

PACKAGE_REPOSITORY = repository.PACKAGE_REPOSITORY
"""The checkout this package runs from (an editable install), holding playbooks/ and alerts/."""
RULES_FILE = "stores.rules.yml"
LOOP_DELAYS = controllers.ControllerSettings(
    rollout_delay=0.1, job_delay=0.0, certificate_delay=0.1, volume_delay=0.05
)
"""Controllers about as fast as the tests' own. A restarted workload is ready well before the
next poll of remediator's ``k8s.wait_rollout`` (2 s), and a recreated init Job completes at
once (store-provisioning-stuck verifies right after deleting the failed one), so the first
verification round can hold instead of the next one, 15 s later."""
START_TIMEOUT = 20.0
POLL_INTERVAL = 0.1
"""Seconds between reads while waiting: nothing here can push a change to the waiter."""


class ClosedLoopError(Exception):
    """A part did not start, remediator exited, or a wait ran out of time."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoopSettings:
    stores: tuple[str, ...] = ("s1", "s2", "s3")
    """Store ids, healthy at the start."""
    monitoring: bool = True
    """Run Prometheus and Alertmanager; off, the loop runs without them (see the module)."""
    alert_hold: str = "2s"
    """Every rule's ``for:`` (2m and 5m in the shipped rules)."""
    phase_threshold: float = 2.0
    """Seconds in provisioning/deleting before the Stuck alerts fire (600 in the rules)."""
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    group_wait: str = "1s"
    group_interval: str = "1s"
    probe_interval: float = 0.25
    """remediator's ``stores.probe.interval``: how soon a broken or fixed store shows."""
    delays: controllers.ControllerSettings = LOOP_DELAYS
    playbooks: Path | None = None
    """The playbook directory; None: ``playbooks/`` of the repository (`find_directory`)."""
    rules: Path | None = None
    """The rules to shorten; None: ``alerts/stores.rules.yml`` of the repository."""
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Merged last into remediator's config mapping (as in the YAML file)."""


def find_directory(name: str) -> Path:
    """``playbooks`` or ``alerts``: next to the package when it runs from a checkout (so the
    playbooks match the code), else in the current directory."""
    try:
        return repository.find_directory(name)
    except repository.MissingDirectoryError as e:
        raise ClosedLoopError(str(e)) from None


_PHASE_THRESHOLD = re.compile(r"(>\s*)600\b")


def write_rules(source: Path, destination: Path, *, hold: str, phase_threshold: float) -> Path:
    """``source`` with every ``for:`` set to ``hold`` and the 10-minute thresholds of the
    phase-duration alerts (``> 600``) set to ``phase_threshold`` seconds; the shipped rules
    are left as they are."""
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    for group in raw["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = hold
            expr = str(rule.get("expr", ""))
            if "store_phase_duration_seconds" in expr and "alert" in rule:
                rule["expr"] = _PHASE_THRESHOLD.sub(rf"\g<1>{phase_threshold:g}", expr)
    header = f"# Generated from {source} with `for: {hold}` and phase thresholds of "
    header += f"{phase_threshold:g}s, for the closed-loop demo and tests. Do not edit.\n"
    destination.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return destination


def read_rule_labels(path: Path) -> dict[str, dict[str, str]]:
    """Alert name → the static labels its rule adds."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {
        str(rule["alert"]): {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
        for group in raw["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, mappings merged key by key (lists and values replaced)."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def daemon_config(
    *,
    sim: platform.SimulatedPlatform,
    settings: LoopSettings,
    workdir: Path,
    port: int,
    token_file: Path,
    playbooks: Path,
    prometheus_url: str,
    oncall_url: str,
) -> config.Settings:
    """remediator's settings in the loop: the platform's fragment, then the loop's parts and
    timings (probes, phases and the provisioner read within a second), then the overrides."""
    probe_interval = settings.probe_interval
    loop_config = {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"token_file": str(token_file)},
        "playbooks": {"directory": str(playbooks), "watch_interval": 60},
        "state": {"path": str(workdir / "remediator.sqlite")},
        "engine": {"grace_period": 5},
        "prometheus": {"url": prometheus_url, "timeout": 5},
        "kubernetes": {"timeout": 5},
        "provisioner": {"timeout": 5, "retries": 2},
        "notify": {"targets": {"oncall": {"url": oncall_url}}},
        "safety": {"escalation_target": "oncall", "status_interval": 1},
        "stores": {
            "refresh_interval": 0.5,
            "check_interval": 1,
            "provisioner_interval": 0.5,
            "stuck_after": settings.phase_threshold,
            "probe": {"interval": probe_interval, "timeout": 2},
        },
    }
    raw = merged(merged(sim.remediator_config(), loop_config), settings.overrides)
    return config.from_mapping(raw, source="<closed loop>")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def write_secret(path: Path, value: str) -> Path:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(value + "\n", encoding="utf-8")
    return path


class ClosedLoop:
    """A running loop; made by :func:`run`. The ``wait_*`` methods poll under a deadline and
    fail at once, naming the cause, if remediator has exited."""

    def __init__(
        self,
        *,
        settings: LoopSettings,
        workdir: Path,
        sim: platform.SimulatedPlatform,
        daemon: running.Daemon,
        daemon_task: asyncio.Task[int],
        http: aiohttp.ClientSession,
        token: str,
        receiver: standins.EscalationReceiver,
        rules: Path,
        rule_labels: Mapping[str, Mapping[str, str]],
        prometheus_url: str,
        alertmanager_url: str | None,
        metrics_query: standins.MetricsQuery | None,
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.platform = sim
        self.daemon = daemon
        self.daemon_task = daemon_task
        self.http = http
        self.token = token
        self.receiver = receiver
        self.rules = rules
        """The shortened rules Prometheus evaluates (also written without monitoring)."""
        self.rule_labels = rule_labels
        """Alert name → the static labels its rule adds (``severity``…)."""
        self.prometheus_url = prometheus_url
        """Prometheus, or without monitoring the `standins.MetricsQuery` remediator asks."""
        self.alertmanager_url = alertmanager_url
        self.metrics_query = metrics_query
        self.prometheus = prometheus.PrometheusClient(http, prometheus_url, timeout=5)
        self._auth = {"Authorization": f"Bearer {token}"}

    @property
    def monitoring(self) -> bool:
        """Real Prometheus and Alertmanager are part of the loop."""
        return self.alertmanager_url is not None

    @property
    def url(self) -> str:
        return self.daemon.url

    # --- remediator's API ---------------------------------------------------------------------

    async def api(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params, headers=self._auth) as r:
            if r.status != 200:
                raise ClosedLoopError(f"GET {path}: HTTP {r.status}: {await r.text()}")
            return await r.json()

    async def runs(self, **filters: str) -> list[dict[str, Any]]:
        page = await self.api("/api/v1/runs", limit="500", **filters)
        items: list[dict[str, Any]] = page["items"]
        return items

    async def run_detail(self, run_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = await self.api(f"/api/v1/runs/{run_id}")
        return detail

    async def audit(self, *, after: int = 0, **filters: str) -> list[dict[str, Any]]:
        """Every audit record matching ``filters`` (the API's), oldest first, past seq ``after``."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {**filters, "limit": "500", **({"cursor": cursor} if cursor else {})}
            page = await self.api("/api/v1/audit", **params)
            found.extend(item for item in page["items"] if item["seq"] > after)
            cursor = page["next_cursor"]
            if not cursor:
                return found

    async def post_alert(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST a webhook body as Alertmanager does; remediator's answer."""
        url = f"{self.url}/webhook/alertmanager"
        async with self.http.post(url, json=payload, headers=self._auth) as r:
            if r.status != 200:
                raise ClosedLoopError(f"POST webhook: HTTP {r.status}: {await r.text()}")
            answer: dict[str, Any] = await r.json()
            return answer

    def alert_labels(self, alertname: str, store_id: str) -> dict[str, str]:
        """The labels the rule ``alertname`` gives a store's alert."""
        static = self.rule_labels.get(alertname)
        if static is None:
            raise ClosedLoopError(f"no rule {alertname} in {self.rules}")
        namespace = f"store-{store_id}"
        return {"alertname": alertname, "namespace": namespace, "store_id": store_id, **static}

    # --- metrics and alerts ---------------------------------------------------------------------

    async def exported_store_up(self) -> dict[str, float]:
        """store id → ``store_up`` on remediator's own ``/metrics`` (no Prometheus involved)."""
        query = standins.MetricsQuery(self.http, f"{self.url}/metrics")
        return await query.store_up()

    async def store_up(self, store_id: str) -> float | None:
        """``max(store_up{store_id=…})`` through the query API remediator uses."""
        result = await self.prometheus.query(f'max(store_up{{store_id="{store_id}"}})')
        return result.scalar()

    async def prometheus_alerts(self, alertname: str | None = None) -> list[dict[str, Any]]:
        """Prometheus' pending and firing alerts (none without monitoring)."""
        if not self.monitoring:
            return []
        async with self.http.get(f"{self.prometheus_url}/api/v1/alerts") as r:
            r.raise_for_status()
            alerts: list[dict[str, Any]] = (await r.json())["data"]["alerts"]
        return [a for a in alerts if alertname is None or a["labels"]["alertname"] == alertname]

    async def alertmanager_alerts(self, alertname: str | None = None) -> list[dict[str, Any]]:
        """Alertmanager's active alerts (none without monitoring)."""
        if self.alertmanager_url is None:
            return []
        params = {"active": "true", "silenced": "false", "inhibited": "false"}
        async with self.http.get(f"{self.alertmanager_url}/api/v2/alerts", params=params) as r:
            r.raise_for_status()
            alerts: list[dict[str, Any]] = await r.json()
        return [a for a in alerts if alertname is None or a["labels"]["alertname"] == alertname]

    # --- waiting --------------------------------------------------------------------------------

    def check_daemon(self) -> None:
        """Raise if remediator has exited (it must run for as long as the loop does)."""
        if self.daemon_task.done():
            error = self.daemon_task.exception() if not self.daemon_task.cancelled() else None
            outcome = f"failed: {error!r}" if error else "exited"
            raise ClosedLoopError(f"remediator {outcome}; its log says why")

    async def wait_for(
        self,
        probe: Callable[[], Awaitable[T | None]],
        *,
        timeout: float,  # noqa: ASYNC109 - the error names what did not happen
        what: str,
    ) -> T:
        """The first non-None result of ``probe()``, polled every `POLL_INTERVAL`."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.check_daemon()
                    found = await probe()
                    if found is not None:
                        return found
                    await asyncio.sleep(POLL_INTERVAL)
        except TimeoutError:
            raise ClosedLoopError(f"{what}: not within {timeout:g}s") from None

    async def wait_audit(
        self,
        kind: str,
        *,
        timeout: float = 20.0,  # noqa: ASYNC109 - the error names what did not happen
        after: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda record: True,
        **filters: str,
    ) -> dict[str, Any]:
        """The first audit record of ``kind`` past seq ``after`` matching ``filters`` (the
        API's) and ``where``."""

        async def probe() -> dict[str, Any] | None:
            records = await self.audit(after=after, kind=kind, **filters)
            return next((record for record in records if where(record)), None)

        described = ", ".join(f"{k}={v}" for k, v in filters.items())
        return await self.wait_for(probe, timeout=timeout, what=f"audit {kind} ({described})")

    async def wait_run(
        self,
        run_id: str,
        *,
        timeout: float = 40.0,  # noqa: ASYNC109 - the error names what did not happen
    ) -> dict[str, Any]:
        """The run's detail (steps, audit) once it has finished."""

        async def probe() -> dict[str, Any] | None:
            detail = await self.run_detail(run_id)
            return detail if detail["finished_at"] else None

        return await self.wait_for(probe, timeout=timeout, what=f"run {run_id} finished")

    async def wait_scraped(
        self,
        *,
        timeout: float = 20.0,  # noqa: ASYNC109 - the error names what did not happen
    ) -> None:
        """Until every store is up as the query API sees it (Prometheus' first scrape lands
        5-6 s after its start)."""

        async def probe() -> bool | None:
            for store_id in self.platform.store_ids:
                with contextlib.suppress(prometheus.PrometheusError):
                    if await self.store_up(store_id) == 1:
                        continue
                return None
            return True

        await self.wait_for(probe, timeout=timeout, what=f"every store up in {self.prometheus_url}")


@contextlib.asynccontextmanager
async def _running_daemon(
    settings: config.Settings,
) -> AsyncIterator[tuple[running.Daemon, asyncio.Task[int]]]:
    daemon = running.Daemon(settings=settings)
    task = asyncio.get_running_loop().create_task(daemon.run(), name="remediator")
    ready = asyncio.get_running_loop().create_task(daemon.ready.wait())
    try:
        first = asyncio.FIRST_COMPLETED
        await asyncio.wait({task, ready}, timeout=START_TIMEOUT, return_when=first)
        if not daemon.ready.is_set():
            if task.done():
                error = task.exception()
                raise ClosedLoopError(f"remediator did not start: {error or 'it exited'}")
            raise ClosedLoopError(f"remediator did not start within {START_TIMEOUT:g}s")
        yield daemon, task
    finally:
        ready.cancel()
        daemon.stopping.set()
        try:
            async with asyncio.timeout(settings.engine.grace_period + 10):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def run(
    *,
    workdir: str | Path,
    settings: LoopSettings | None = None,
    on_escalation: Callable[[str, dict[str, Any]], None] | None = None,
) -> contextlib.AbstractAsyncContextManager[ClosedLoop]:
    """Start the loop with its files (configs, state, logs of the binaries) in ``workdir``;
    ``on_escalation(target, body)`` sees each message remediator sends to on-call."""
    return _running(Path(workdir).resolve(), settings or LoopSettings(), on_escalation)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Files:
    playbooks: Path
    rules: Path
    rule_labels: Mapping[str, Mapping[str, str]]
    token: str
    token_file: Path


def _prepare(workdir: Path, settings: LoopSettings) -> _Files:
    workdir.mkdir(parents=True, exist_ok=True)
    source_rules = settings.rules or find_directory("alerts") / RULES_FILE
    rules = write_rules(
        source_rules,
        workdir / RULES_FILE,
        hold=settings.alert_hold,
        phase_threshold=settings.phase_threshold,
    )
    token = secrets.token_urlsafe(24)
    return _Files(
        playbooks=settings.playbooks or find_directory("playbooks"),
        rules=rules,
        rule_labels=read_rule_labels(rules),
        token=token,
        token_file=write_secret(workdir / "webhook-token", token),
    )


@contextlib.asynccontextmanager
async def _running(
    workdir: Path,
    settings: LoopSettings,
    on_escalation: Callable[[str, dict[str, Any]], None] | None,
) -> AsyncIterator[ClosedLoop]:
    files = await asyncio.to_thread(_prepare, workdir, settings)
    port = _free_port()
    daemon_url = f"http://127.0.0.1:{port}"
    platform_settings = platform.PlatformSettings(delays=settings.delays)

    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        )
        sim = await stack.enter_async_context(
            platform.run(
                stores=settings.stores, workdir=workdir / "platform", settings=platform_settings
            )
        )
        receiver = await stack.enter_async_context(standins.serve_receiver(on_escalation))
        metrics_query: standins.MetricsQuery | None = None
        alertmanager_url: str | None = None
        if settings.monitoring:
            alertmanager = await stack.enter_async_context(
                monitoring.run_alertmanager(
                    monitoring.AlertmanagerSpec(
                        webhook_url=f"{daemon_url}/webhook/alertmanager",
                        bearer_token=files.token,
                        group_wait=settings.group_wait,
                        group_interval=settings.group_interval,
                        send_resolved=True,
                    ),
                    workdir=workdir / "alertmanager",
                )
            )
            alertmanager_url = alertmanager.url
            scrape = monitoring.ScrapeTarget(
                job="remediator",
                address=f"127.0.0.1:{port}",
                interval=settings.scrape_interval,
                honor_labels=True,
            )
            server = await stack.enter_async_context(
                monitoring.run_prometheus(
                    monitoring.PrometheusSpec(
                        scrape_targets=[scrape],
                        rule_files=[files.rules],
                        evaluation_interval=settings.evaluation_interval,
                        alertmanager_url=alertmanager.url,
                    ),
                    workdir=workdir / "prometheus",
                )
            )
            prometheus_url = server.url
        else:
            prometheus_url, stand_in = await stack.enter_async_context(
                standins.serve_metrics_query(http)
            )
            stand_in.metrics_url = f"{daemon_url}/metrics"
            metrics_query = stand_in
        daemon_settings = daemon_config(
            sim=sim,
            settings=settings,
            workdir=workdir,
            port=port,
            token_file=files.token_file,
            playbooks=files.playbooks,
            prometheus_url=prometheus_url,
            oncall_url=receiver.target_url("oncall"),
        )
        daemon, daemon_task = await stack.enter_async_context(_running_daemon(daemon_settings))
        yield ClosedLoop(
            settings=settings,
            workdir=workdir,
            sim=sim,
            daemon=daemon,
            daemon_task=daemon_task,
            http=http,
            token=files.token,
            receiver=receiver,
            rules=files.rules,
            rule_labels=files.rule_labels,
            prometheus_url=prometheus_url,
            alertmanager_url=alertmanager_url,
            metrics_query=metrics_query,
        )
