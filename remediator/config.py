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

from remediator.core import durations, safety, scope
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
    """The SQLite file holding dedupe keys, runs, step results and the audit log."""


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
class LoggingSettings:
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    playbooks: PlaybookSettings = PlaybookSettings()
    state: StateSettings = StateSettings()
    engine: EngineSettings = EngineSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    http: HttpSettings = HttpSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    provisioner: ProvisionerSettings = ProvisionerSettings()
    notify: NotifySettings = NotifySettings()
    safety: SafetySettings = SafetySettings()
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
    if problems:
        raise ConfigError(problems)
    return typing.cast(Settings, settings)


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
