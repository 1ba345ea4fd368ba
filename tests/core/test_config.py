from __future__ import annotations

import dataclasses
import pathlib
import types
import typing
from typing import Any

import pytest
import yaml

from remediator import config
from remediator.core.errors import ConfigError

EXAMPLE = pathlib.Path(__file__).parent.parent.parent / "deploy" / "config.example.yaml"


def problems_of(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(raw)
    return [str(p) for p in caught.value.problems]


def test_defaults() -> None:
    settings = config.Settings()

    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 9095)
    assert settings.server.max_body_bytes == 1024 * 1024
    assert settings.auth.token_file is None
    assert settings.auth.token_env == "REMEDIATOR_TOKEN"
    assert settings.auth.insecure_no_auth is False
    assert settings.playbooks.directory == "playbooks"
    assert settings.playbooks.match == "first"
    assert settings.engine.concurrency == 8
    assert settings.engine.queue_size == 1000
    assert settings.engine.grace_period == 25.0
    assert settings.engine.dry_run is False
    assert settings.prometheus.url is None
    assert settings.http.allowed_hosts == ()
    assert dict(settings.notify.targets) == {}
    assert (settings.logging.format, settings.logging.level) == ("json", "info")


@pytest.mark.parametrize(
    "raw",
    [{}, {"server": {}, "engine": {}}],
    ids=["empty", "empty-groups"],
)
def test_empty_mapping_gives_the_defaults(raw: dict[str, Any]) -> None:
    assert config.from_mapping(raw) == config.Settings()


def test_no_file_gives_the_defaults() -> None:
    assert config.load(None) == config.Settings()


def test_empty_file_gives_the_defaults(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")

    assert config.load(path) == config.Settings()


def test_example_config_loads_and_equals_the_defaults() -> None:
    # The example documents the defaults: a change to either must be made to both.
    assert config.load(EXAMPLE) == config.Settings()


def _missing_keys(tp: Any, raw: object, path: str) -> list[str]:
    """Dotted names of the fields of ``tp`` that ``raw`` does not spell out, recursively."""
    if not isinstance(raw, dict):
        return []
    missing = []
    hints = typing.get_type_hints(tp)
    for field in dataclasses.fields(tp):
        dotted = f"{path}{field.name}"
        if field.name not in raw:
            missing.append(dotted)
            continue
        kind = hints[field.name]
        if typing.get_origin(kind) not in (None, types.UnionType, typing.Union):
            continue  # a mapping of named entries (notify.targets): examples are optional
        nested = [t for t in (typing.get_args(kind) or (kind,)) if dataclasses.is_dataclass(t)]
        if nested:
            missing.extend(_missing_keys(nested[0], raw[field.name], f"{dotted}."))
    return missing


def test_example_config_lists_every_key() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())

    assert _missing_keys(config.Settings, raw, "") == []


def test_source_and_path_name_the_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping({"engine": {"concurrency": "8"}}, source="remediator.yaml")

    [problem] = caught.value.problems
    assert (problem.source, problem.path) == ("remediator.yaml", "engine.concurrency")
    assert str(problem) == "remediator.yaml: engine.concurrency: must be an integer"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"engine": {"concurency": 3}},
            "<config>: engine: unknown key 'concurency' (did you mean 'concurrency'?)",
        ),
        (
            {"srver": {"port": 1}},
            "<config>: (top level): unknown key 'srver' (did you mean 'server'?)",
        ),
        (
            {"logging": {"colour": True}},
            "<config>: logging: unknown key 'colour'",
        ),
        (
            {"notify": {"targets": {"oncall": {"url": "https://x", "token": "T"}}}},
            "<config>: notify.targets.oncall: unknown key 'token' (did you mean 'token_env'?)",
        ),
    ],
    ids=["nested", "top-level", "no-suggestion", "inside-mapping"],
)
def test_unknown_key(raw: dict[str, Any], expected: str) -> None:
    assert problems_of(raw) == [expected]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"engine": {"concurrency": "8"}}, "engine.concurrency: must be an integer"),
        ({"engine": {"concurrency": 8.5}}, "engine.concurrency: must be an integer"),
        ({"server": {"port": True}}, "server.port: must be an integer"),
        ({"engine": {"queue_size": -1}}, "engine.queue_size: must not be negative"),
        ({"engine": {"dry_run": "yes"}}, "engine.dry_run: must be true or false"),
        (
            {"playbooks": {"match": "any"}},
            "playbooks.match: must be one of 'first', 'all', not 'any'",
        ),
        (
            {"engine": {"grace_period": "soon"}},
            "engine.grace_period: must be a number or a duration like '30s': "
            "invalid duration 'soon' at column 1: expected a number of seconds or a duration "
            "like '500ms', '30s', '5m', '1h30m', '2d'",
        ),
        (
            {"engine": {"grace_period": False}},
            "engine.grace_period: must be a number or a duration like '30s': False is not a number",
        ),
        (
            {"prometheus": {"timeout": -1}},
            "prometheus.timeout: must be a number or a duration like '30s': must not be negative",
        ),
        ({"prometheus": {"url": 9090}}, "prometheus.url: must be a string"),
        ({"http": {"allowed_hosts": "shop.example"}}, "http.allowed_hosts: must be a list"),
        ({"http": {"allowed_hosts": ["a", 5]}}, "http.allowed_hosts[1]: must be a string"),
        ({"server": "0.0.0.0:9095"}, "server: must be a mapping"),
        ({"notify": {"targets": ["oncall"]}}, "notify.targets: must be a mapping"),
        ({"notify": {"targets": {"oncall": {}}}}, "notify.targets.oncall.url: is required"),
        (
            {"notify": {"targets": {"oncall": "https://x"}}},
            "notify.targets.oncall: must be a mapping",
        ),
    ],
    ids=[
        "int-from-string",
        "int-from-float",
        "int-from-bool",
        "negative-int",
        "bool-from-string",
        "literal",
        "duration-text",
        "duration-bool",
        "negative-duration",
        "optional-string",
        "list-from-string",
        "list-item",
        "group-not-mapping",
        "targets-not-mapping",
        "target-url-required",
        "target-not-mapping",
    ],
)
def test_wrong_type_names_the_field(raw: dict[str, Any], expected: str) -> None:
    assert problems_of(raw) == [f"<config>: {expected}"]


def test_top_level_must_be_a_mapping() -> None:
    assert problems_of(["server"]) == ["<config>: (top level): must be a mapping"]


def test_all_problems_are_reported_at_once() -> None:
    raw = {
        "server": {"port": "high", "hots": "x"},
        "engine": {"dry_run": 1},
        "logging": {"level": "loud"},
    }

    assert sorted(problems_of(raw)) == [
        "<config>: engine.dry_run: must be true or false",
        "<config>: logging.level: must be one of 'debug', 'info', 'warning', 'error', not 'loud'",
        "<config>: server.port: must be an integer",
        "<config>: server: unknown key 'hots' (did you mean 'host'?)",
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30.0), ("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0), (5, 5.0), (2.5, 2.5)],
    ids=["30s", "500ms", "1m30s", "2h", "int", "float"],
)
def test_durations(value: object, seconds: float) -> None:
    settings = config.from_mapping({"engine": {"grace_period": value}})

    assert settings.engine.grace_period == seconds
    assert type(settings.engine.grace_period) is float


def test_notify_targets_mapping() -> None:
    settings = config.from_mapping(
        {
            "notify": {
                "targets": {
                    "oncall": {"url": "https://hooks.example/T0/B0", "token_env": "ONCALL_TOKEN"},
                    "ops": {"url": "https://hooks.example/T0/B1"},
                },
                "timeout": "3s",
            }
        }
    )

    assert dict(settings.notify.targets) == {
        "oncall": config.NotifyTarget(url="https://hooks.example/T0/B0", token_env="ONCALL_TOKEN"),
        "ops": config.NotifyTarget(url="https://hooks.example/T0/B1"),
    }
    assert settings.notify.timeout == 3.0
    assert isinstance(settings.notify.targets, types.MappingProxyType)


def test_allowed_hosts_become_a_tuple() -> None:
    settings = config.from_mapping({"http": {"allowed_hosts": ["a.example", "b.example:8443"]}})

    assert settings.http.allowed_hosts == ("a.example", "b.example:8443")


def test_load_reads_a_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "remediator.yaml"
    path.write_text("server:\n  port: 8080\nengine:\n  dry_run: true\n  grace_period: 10s\n")

    settings = config.load(path)

    assert settings.server.port == 8080
    assert settings.engine.dry_run is True
    assert settings.engine.grace_period == 10.0
    assert settings.server.host == "127.0.0.1"


def test_load_names_the_file_in_problems(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "remediator.yaml"
    path.write_text("engine:\n  concurrency: many\n")

    with pytest.raises(ConfigError) as caught:
        config.load(path)

    assert [str(p) for p in caught.value.problems] == [
        f"{path}: engine.concurrency: must be an integer"
    ]


def test_yaml_syntax_error_has_its_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  port: 9095\nengine:\n  concurrency: [8\n  dry_run: true\n")

    with pytest.raises(ConfigError) as caught:
        config.load(path)

    [problem] = caught.value.problems
    assert problem.source == str(path)
    assert problem.line == 5
    assert "expected ',' or ']'" in problem.message


def test_unreadable_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "missing.yaml"

    with pytest.raises(ConfigError) as caught:
        config.load(path)

    [problem] = caught.value.problems
    assert problem.source == str(path)
    assert problem.message.startswith("cannot read: ")


def test_override_replaces_dotted_fields() -> None:
    settings = config.from_mapping({"server": {"port": 9000}, "state": {"path": "a.sqlite"}})

    changed = config.override(
        settings, **{"server.port": 8080, "engine.dry_run": True, "state.path": None}
    )

    assert changed.server.port == 8080
    assert changed.server.host == "127.0.0.1"
    assert changed.engine.dry_run is True
    assert changed.state.path == "a.sqlite"  # None means "flag not given"
    assert settings.server.port == 9000  # frozen: the original is unchanged
    assert settings.engine.dry_run is False


def test_override_with_nothing_is_the_same_settings() -> None:
    settings = config.Settings()

    assert config.override(settings) == settings
    assert config.override(settings, **{"server.host": None}) == settings


def test_read_token_prefers_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("TEST_REMEDIATOR_TOKEN", "from-env")

    assert config.read_token(str(token_file), "TEST_REMEDIATOR_TOKEN") == "from-file"


def test_read_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REMEDIATOR_TOKEN", "  from-env \n")

    assert config.read_token(None, "TEST_REMEDIATOR_TOKEN") == "from-env"


@pytest.mark.parametrize("value", [None, "", "   \n"], ids=["unset", "empty", "blank"])
def test_read_token_missing_or_blank_is_none(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("TEST_REMEDIATOR_TOKEN", raising=False)
    else:
        monkeypatch.setenv("TEST_REMEDIATOR_TOKEN", value)

    assert config.read_token(None, "TEST_REMEDIATOR_TOKEN") is None


def test_read_token_blank_file_is_none(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")

    assert config.read_token(str(token_file), "UNUSED") is None


def test_read_token_unreadable_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.read_token(str(tmp_path / "missing"), "UNUSED")

    [problem] = caught.value.problems
    assert problem.path == "auth"
    assert problem.message.startswith("cannot read token file: ")
