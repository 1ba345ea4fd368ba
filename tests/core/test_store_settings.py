"""The ``stores`` settings group: defaults, and the checks its types cannot express."""

from __future__ import annotations

from typing import Any

import pytest

from remediator import config
from remediator.core.errors import ConfigError


def test_defaults() -> None:
    settings = config.Settings().stores
    assert settings.selector == "app.kubernetes.io/part-of=store-platform"
    assert settings.exclude == ("store-platform",)
    assert settings.probe.path == "/wp-includes/images/blank.gif"
    assert settings.probe.connect_to is None
    assert settings.probe.url_template is None
    assert settings.stuck_after == 600


def test_a_full_group_loads() -> None:
    settings = config.from_mapping(
        {
            "stores": {
                "id_label": "example.com/store",
                "exclude": ["store-platform", "store-staging"],
                "provisioning_timeout": "45m",
                "probe": {
                    "url_template": "http://{store_id}.127.0.0.1.nip.io",
                    "connect_to": "127.0.0.1:8080",
                    "timeout": "2s",
                    "jitter": 0,
                },
            }
        }
    ).stores
    assert settings.exclude == ("store-platform", "store-staging")
    assert settings.provisioning_timeout == 2700
    assert settings.probe.connect_to == "127.0.0.1:8080"
    assert settings.probe.timeout == 2.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"probe": {"url_template": "http://<store>.nip.io"}},
            None,
        ),
        (
            {"probe": {"url_template": "http://{store}.nip.io"}},
            "stores.probe.url_template: unknown placeholder {store}",
        ),
        (
            {"probe": {"url_template": "{store_id}.nip.io"}},
            "stores.probe.url_template: must start with http:// or https://",
        ),
        ({"probe": {"connect_to": "127.0.0.1"}}, "stores.probe.connect_to: must be HOST:PORT"),
        ({"probe": {"connect_to": "127.0.0.1:0"}}, "stores.probe.connect_to: must be HOST:PORT"),
        ({"probe": {"connect_to": "[::1]:8080"}}, None),
        ({"probe": {"connect_to": "localhost:8080"}}, None),
        ({"probe": {"path": "blank.gif"}}, "stores.probe.path: must start with /"),
        ({"probe": {"jitter": 1.5}}, "stores.probe.jitter: must be a fraction"),
        ({"probe": {"interval": 0}}, "stores.probe.interval: must be positive"),
        ({"probe": {"concurrency": 0}}, "stores.probe.concurrency: must be positive"),
        ({"app_deployment": "{id}-app"}, "stores.app_deployment: unknown placeholder {id}"),
        ({"watch_timeout": "500ms"}, "stores.watch_timeout: must be at least 1s"),
        ({"check_concurrency": 0}, "stores.check_concurrency: must be positive"),
    ],
    ids=[
        "literal-angle-brackets",
        "unknown-placeholder",
        "no-scheme",
        "no-port",
        "port-zero",
        "ipv6",
        "hostname",
        "relative-path",
        "jitter-above-one",
        "zero-interval",
        "zero-concurrency",
        "name-template",
        "short-watch",
        "zero-checks",
    ],
)
def test_store_problems_name_the_field(raw: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        config.from_mapping({"stores": raw})
        return
    with pytest.raises(ConfigError) as caught:
        config.from_mapping({"stores": raw}, source="r.yaml")
    [problem] = caught.value.problems
    assert str(problem).startswith(f"r.yaml: {expected}")


def test_parse_host_port() -> None:
    assert config.parse_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert config.parse_host_port("[::1]:443") == ("::1", 443)
    assert config.parse_host_port("shop:x") is None
    assert config.parse_host_port(":80") is None
