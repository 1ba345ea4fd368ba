"""Settings: one frozen dataclass per concern, every field defaulted and documented.

Loaded from a YAML file (``deploy/config.example.yaml`` is the commented reference) and then
overridden by CLI flags. Unknown keys and wrong types are errors that name the field, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from remediator.core import durations, safety, scope, stores
from remediator.core.errors import ConfigError, Problem


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    host: str = "127.0.0.1"
    """Listen address. Use 0.0.0.0 only inside a pod, behind a NetworkPolicy."""
    port: int = 9095
    max_body_bytes: int = 1024 * 1024
    """Webhook bodies above this are refused with 413 before being read in full."""
    retry_after: int = 5
    """Seconds suggested to Alertmanager in Retry-After when the queue is full."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSettings:
    token_file: str | None = None
    """File holding the bearer token Alertmanager sends (``http_config.authorization``)."""
    token_env: str = "REMEDIATOR_TOKEN"  # noqa: S105 - a variable name, not a secret
    """Environment variable read when ``token_file`` is not set."""
    api_token_file: str | None = None
    """Token for the operator API (/api/v1); falls back to the webhook token when unset."""
    api_token_env: str = "REMEDIATOR_API_TOKEN"  # noqa: S105 - a variable name
    viewer_token_file: str | None = None
    """Token that may only read the console (/ui); unset: no viewer logins."""
    viewer_token_env: str = "REMEDIATOR_VIEWER_TOKEN"  # noqa: S105 - a variable name
    insecure_no_auth: bool = False
    """Accept unauthenticated requests. For local experiments only; logged loudly."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybookSettings:
    directory: str = "playbooks"
    match: Literal["first", "all"] = "first"
    """``first``: only the highest-priority matching playbook runs; ``all``: every match runs."""
    watch_interval: float = 2.0
    """Seconds between checks of the directory for changed files (hot reload)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSettings:
    path: str = "remediator.sqlite"
    """Where dedupe keys, runs, step results and the audit log live: a SQLite file (one
    replica), or a ``postgresql://user@host:port/database`` URL (several replicas)."""
    password_file: str | None = None
    """PostgreSQL: file holding the password (a URL with a password in it is refused)."""
    password_env: str = "REMEDIATOR_STATE_PASSWORD"  # noqa: S105 - a variable name
    """PostgreSQL: environment variable read when ``password_file`` is not set."""
    pool_size: int = 4
    """PostgreSQL: connections (and worker threads) per replica."""
    query_timeout: float = 5.0
    """PostgreSQL: seconds any statement, or the wait for a connection or a lock, may take."""
    connect_timeout: float = 5.0
    """PostgreSQL: seconds to establish a connection."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HaSettings:
    replica_id: str | None = None
    """This replica's name in leases and the audit log; default: host name + a random suffix."""
    lease_duration: float = 15.0
    """Seconds a replica's runs stay its own without a renewal; then another replica takes
    them over. Also the leader lease's duration."""
    renew_interval: float = 5.0
    """Seconds between lease renewals (and looks for runs whose lease expired)."""
    leader_election: Literal["auto", "kubernetes", "postgresql", "none"] = "auto"
    """Who runs the singleton work (discovery, probes, gauges): ``auto`` is a Kubernetes Lease
    with a cluster and PostgreSQL, an advisory lock on PostgreSQL without one, and this
    replica alone on SQLite; ``none``: every replica does it."""
    lease_name: str = "remediator-leader"
    """The coordination.k8s.io Lease's name."""
    lease_namespace: str | None = None
    """The Lease's namespace; default: the pod's own (service account namespace file)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    concurrency: int = 8
    """Runs executing at once, across all playbooks."""
    queue_size: int = 1000
    """Runs waiting to start; past it the webhook answers 503 so Alertmanager retries."""
    grace_period: float = 25.0
    """On SIGTERM, seconds running steps get to finish before they are interrupted."""
    dry_run: bool = False
    """Global dry-run: mutating actions report what they would do and do nothing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusSettings:
    url: str | None = None
    """Base URL of the Prometheus that ``prometheus.*`` actions and verification query."""
    timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    allowed_hosts: tuple[str, ...] = ()
    """``host`` or ``host:port`` that ``http.request`` may call; nothing else is reachable."""
    timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    enabled: bool = True
    """Build a Kubernetes client at start-up; off for deployments without cluster access."""
    kubeconfig: str | None = None
    """Path of a kubeconfig; unset: in-cluster service account, else ``$KUBECONFIG``."""
    context: str | None = None
    timeout: float = 15.0
    """Seconds for one API request (watches have their own, longer, server-side timeout)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionerSettings:
    url: str | None = None
    """Base URL of the store provisioner API (``/api/v1/stores/<id>``)."""
    token_file: str | None = None
    """Bearer token for the provisioner, read at start-up; never logged."""
    token_env: str = "REMEDIATOR_PROVISIONER_TOKEN"  # noqa: S105 - a variable name
    """Environment variable read when ``token_file`` is not set."""
    timeout: float = 10.0
    retries: int = 3
    """Attempts on 5xx and connection errors, with backoff, inside one step."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSettings:
    enabled: bool = True
    """Probe each discovered store's URL and export ``store_up``."""
    url_template: str | None = None
    """The store's base URL, e.g. ``http://{store_id}.127.0.0.1.nip.io`` (placeholders
    ``{store_id}``, ``{namespace}``). Unset: the host of the store's Ingress, ``https`` when its
    TLS section names the host; a store without an Ingress host is not probed."""
    path: str = "/wp-includes/images/blank.gif"
    """Requested on every probe: a static file WordPress serves without PHP or the database."""
    timeout: float = 5.0
    """Seconds for one probe, connection included."""
    interval: float = 30.0
    """Seconds from the start of one probe round to the start of the next."""
    jitter: float = 0.5
    """Fraction (0-1) of ``interval`` over which a round's probes start, each at a random
    offset, so thousands of stores are not probed in one burst."""
    concurrency: int = 50
    """Probes in flight at once."""
    connect_to: str | None = None
    """``HOST:PORT`` every probe connects to instead of resolving the store's host, which still
    goes in the Host header and TLS SNI (curl's ``--connect-to``); for local platforms whose
    store hosts do not resolve. Unset: real DNS."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoresSettings:
    enabled: bool = True
    """Discover stores and export their metrics; needs the Kubernetes client."""
    selector: str = "app.kubernetes.io/part-of=store-platform"
    """Label selector of the stores' Namespaces."""
    id_label: str | None = None
    """Namespace label holding the store id. Unset: the name after ``namespace_prefix``."""
    namespace_prefix: str = "store-"
    exclude: tuple[str, ...] = ("store-platform",)
    """Namespaces that are never stores, even when selected."""
    app_deployment: str = "{store_id}-app"
    """Name of the store's app Deployment (placeholders ``{store_id}``, ``{namespace}``)."""
    db_statefulset: str = "{store_id}-db"
    """Name of the store's database StatefulSet."""
    helm_release: str = "store-{store_id}"
    """Name of the store's Helm release (its status is read off Helm's Secret labels)."""
    watch_timeout: float = 300.0
    """Seconds one watch request lasts (``timeoutSeconds``) before it is renewed."""
    refresh_interval: float = 10.0
    """Seconds between re-evaluations of every store's phase and the phase-duration gauges."""
    stuck_after: float = 600.0
    """A store provisioning longer than this counts in ``stores_provisioning_stuck``."""
    failure_grace: float = 300.0
    """How long an image-pull error, a crash loop or a Pending PVC may last before a
    provisioning store is ``failed``."""
    provisioning_timeout: float = 1800.0
    """A store provisioning longer than this is ``failed`` with reason ``timeout``."""
    check_interval: float = 30.0
    """Seconds between checks of the pods, PVCs and Helm release of stores that are
    provisioning or failed (never of running ones)."""
    check_concurrency: int = 4
    """Stores checked at once; each check is three list requests in the store's namespace."""
    provisioner_interval: float = 30.0
    """Seconds between reads of the provisioner API (``/healthz`` and the store list), when
    ``provisioner.url`` is set."""
    probe: ProbeSettings = ProbeSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyTarget:
    url: str
    """Slack-compatible incoming webhook URL."""
    token_env: str | None = None
    """Environment variable holding a bearer token for the target, if it needs one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySettings:
    targets: Mapping[str, NotifyTarget] = field(default_factory=dict)
    """Named escalation channels that ``notify.webhook`` steps refer to."""
    timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SafetySettings:
    defaults: safety.SafetyPolicy = field(default_factory=safety.SafetyPolicy)
    """Limits every playbook gets unless its own ``safety:`` section overrides them."""
    namespaces: tuple[str, ...] = scope.DEFAULT_NAMESPACES
    """Regexes (fully anchored) of namespaces Kubernetes actions may touch."""
    escalation_target: str | None = None
    """Notify target for the envelope's own escalations (breaker opened, storm started)."""
    known_targets: int | None = None
    """How many stores exist, for the storm percentage, until store discovery provides it."""
    status_interval: float = 5.0
    """Seconds between refreshes of the safety gauges (paused, breakers, storms)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleSettings:
    enabled: bool = True
    """Serve the operator console at ``/ui`` on the API's port."""
    session_ttl: float = 8 * 3600.0
    """Seconds a console login lasts (one shift); then the token is asked for again."""
    refresh_interval: float = 5.0
    """Seconds between refreshes of pages that change (overview, a running run)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingSettings:
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    playbooks: PlaybookSettings = PlaybookSettings()
    state: StateSettings = StateSettings()
    ha: HaSettings = HaSettings()
    engine: EngineSettings = EngineSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    http: HttpSettings = HttpSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    provisioner: ProvisionerSettings = ProvisionerSettings()
    stores: StoresSettings = StoresSettings()
    notify: NotifySettings = NotifySettings()
    safety: SafetySettings = SafetySettings()
    console: ConsoleSettings = ConsoleSettings()
    logging: LoggingSettings = LoggingSettings()


def load(path: str | Path | None) -> Settings:
    """Read a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return Settings()
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([Problem(source=source, path="", message=f"cannot read: {e}")]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem(source=source, path="", line=line, message=str(e))]) from e
    return from_mapping(raw or {}, source=source)


def from_mapping(raw: object, *, source: str = "<config>") -> Settings:
    problems: list[Problem] = []
    settings = _convert(Settings, raw, path="", source=source, problems=problems)
    if not problems:
        problems.extend(
            Problem(source=source, path=path, message=message)
            for path, message in _store_problems(typing.cast(Settings, settings).stores)
        )
        problems.extend(
            Problem(source=source, path=path, message=message)
            for path, message in _state_problems(typing.cast(Settings, settings))
        )
    if problems:
        raise ConfigError(problems)
    return typing.cast(Settings, settings)


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def _state_problems(settings: Settings) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    url = settings.state.path
    if is_postgres_url(url):
        credentials = url.split("://", 1)[1].partition("@")
        if credentials[1] and ":" in credentials[0]:
            found.append(
                (
                    "state.path",
                    "must not contain a password; put it in state.password_file or "
                    f"${settings.state.password_env}",
                )
            )
        if "password=" in url:
            found.append(("state.path", "must not contain a password= parameter"))
    positive = {
        "state.pool_size": settings.state.pool_size,
        "state.query_timeout": settings.state.query_timeout,
        "state.connect_timeout": settings.state.connect_timeout,
        "ha.lease_duration": settings.ha.lease_duration,
        "ha.renew_interval": settings.ha.renew_interval,
    }
    found.extend((path, "must be positive") for path, value in positive.items() if value <= 0)
    if settings.ha.renew_interval * 2 > settings.ha.lease_duration:
        found.append(("ha.renew_interval", "must be at most half of ha.lease_duration"))
    return found


def _store_problems(settings: StoresSettings) -> list[tuple[str, str]]:
    """Checks the types alone cannot make: templates, ``HOST:PORT``, ranges."""
    found: list[tuple[str, str]] = []
    probe = settings.probe
    templates = {
        "stores.app_deployment": settings.app_deployment,
        "stores.db_statefulset": settings.db_statefulset,
        "stores.helm_release": settings.helm_release,
    }
    for path, template in templates.items():
        if (problem := stores.template_problem(template)) is not None:
            found.append((path, problem))
    if probe.url_template is not None:
        problem = stores.template_problem(probe.url_template, url=True)
        if problem is not None:
            found.append(("stores.probe.url_template", problem))
    if probe.connect_to is not None and parse_host_port(probe.connect_to) is None:
        found.append(("stores.probe.connect_to", "must be HOST:PORT, e.g. 127.0.0.1:8080"))
    if not probe.path.startswith("/"):
        found.append(("stores.probe.path", "must start with /"))
    if probe.jitter > 1:
        found.append(("stores.probe.jitter", "must be a fraction between 0 and 1"))
    positive = {
        "stores.probe.timeout": probe.timeout,
        "stores.probe.interval": probe.interval,
        "stores.probe.concurrency": probe.concurrency,
        "stores.check_concurrency": settings.check_concurrency,
        "stores.refresh_interval": settings.refresh_interval,
        "stores.check_interval": settings.check_interval,
        "stores.provisioner_interval": settings.provisioner_interval,
    }
    found.extend((path, "must be positive") for path, value in positive.items() if value <= 0)
    if settings.watch_timeout < 1:
        found.append(("stores.watch_timeout", "must be at least 1s"))
    return found


def parse_host_port(value: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` split, or None when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port)) if host and "/" not in host else None


def override(settings: Settings, **changes: Any) -> Settings:
    """Apply dotted overrides such as ``{"server.port": 8080}`` (CLI flags)."""
    for dotted, value in changes.items():
        if value is None:
            continue
        group_name, _, field_name = dotted.partition(".")
        group = getattr(settings, group_name)
        settings = dataclasses.replace(
            settings, **{group_name: dataclasses.replace(group, **{field_name: value})}
        )
    return settings


def read_token(file: str | None, env: str) -> str | None:
    """A token from a file (preferred, it does not leak into /proc/*/environ) or the environment."""
    if file:
        try:
            token = Path(file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(
                [Problem(source="<config>", path="auth", message=f"cannot read token file: {e}")]
            ) from e
    else:
        token = os.environ.get(env, "").strip()
    return token or None


def _convert(tp: Any, raw: object, *, path: str, source: str, problems: list[Problem]) -> Any:
    def problem(message: str) -> None:
        problems.append(Problem(source=source, path=path or "(top level)", message=message))

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(raw, dict):
            return problem("must be a mapping")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        for key in raw:
            if key not in known:
                suggestion = _closest(str(key), known)
                problem(f"unknown key {key!r}{suggestion}")
        values = {
            name: _convert(
                hints[name], raw[name], path=_join(path, name), source=source, problems=problems
            )
            for name in known
            if name in raw
        }
        missing = [
            f.name
            for f in dataclasses.fields(tp)
            if f.name not in raw
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        for name in missing:
            # Named by path like every other problem, not as Python's "__init__() missing".
            problems.append(Problem(source=source, path=_join(path, name), message="is required"))
        if missing:
            return None
        return typing.cast(Any, tp)(**values)
    if origin is Literal:
        if raw not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            return problem(f"must be one of {allowed}, not {raw!r}")
        return raw
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None:
            return None
        return _convert(args[0], raw, path=path, source=source, problems=problems)
    if origin is tuple:
        if not isinstance(raw, list):
            return problem("must be a list")
        (item_type, _) = typing.get_args(tp)
        return tuple(
            _convert(item_type, item, path=f"{path}[{i}]", source=source, problems=problems)
            for i, item in enumerate(raw)
        )
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(raw, dict):
            return problem("must be a mapping")
        _, value_type = typing.get_args(tp)
        return types.MappingProxyType(
            {
                str(k): _convert(
                    value_type, v, path=_join(path, str(k)), source=source, problems=problems
                )
                for k, v in raw.items()
            }
        )
    if tp is bool:
        if not isinstance(raw, bool):
            return problem("must be true or false")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            return problem("must be an integer")
        if raw < 0:
            return problem("must not be negative")
        return raw
    if tp is float:
        try:
            return durations.parse_duration(raw) if isinstance(raw, str) else _number(raw)
        except (TypeError, ValueError) as e:
            return problem(f"must be a number or a duration like '30s': {e}")
    if tp is str:
        if not isinstance(raw, str):
            return problem("must be a string")
        return raw
    raise TypeError(f"unsupported settings type {tp!r} at {path}")  # a bug in this module


def _number(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError(f"{raw!r} is not a number")
    if raw < 0:
        raise ValueError("must not be negative")
    return float(raw)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _closest(name: str, candidates: set[str]) -> str:
    import difflib

    found = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""
