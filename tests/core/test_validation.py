"""Golden playbooks: ``tests/playbooks/valid`` must load, ``invalid`` must fail exactly so.

An invalid case is a file, or a directory of files loaded together. Its expected problems are
written in the files themselves, one comment per problem, without the file name:

    # expect: 12: steps[1].params.replicas: must be an integer, got string 'three'

so a case and what it must produce are read and changed in one place.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Literal

import pytest

from remediator.core import alerts, validation
from remediator.core.actions import ActionSpec, StaticCatalog
from remediator.core.errors import PlaybookError
from remediator.core.playbooks import MatchOp, Phase, PlaybookSet, RetryPolicy

GOLDEN = pathlib.Path(__file__).parent.parent / "playbooks"
VALID = sorted((GOLDEN / "valid").glob("*.yaml"))
INVALID = sorted(
    p for p in (GOLDEN / "invalid").iterdir() if p.is_dir() or p.suffix in (".yaml", ".yml")
)
EXPECT = re.compile(r"^# expect: (.+)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LogParams:
    message: str
    level: Literal["info", "warning", "error"] = "info"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScaleParams:
    deployment: str
    replicas: int

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError("replicas must not be negative")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueryParams:
    query: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RequestParams:
    url: str
    method: Literal["GET", "POST"] = "GET"


def _request_mutates(params: RequestParams) -> bool:
    return params.method != "GET"


CATALOG = StaticCatalog(
    {
        "log": ActionSpec(name="log", params=LogParams, mutating=False),
        "k8s.scale": ActionSpec(name="k8s.scale", params=ScaleParams, mutating=True),
        "prometheus.query": ActionSpec(name="prometheus.query", params=QueryParams, mutating=False),
        # Mutating by params only: validation cannot tell, so verify checks may use it.
        "http.request": ActionSpec(
            name="http.request",
            params=RequestParams,
            mutating=True,
            mutating_when=_request_mutates,
        ),
    }
)


def case_files(case: pathlib.Path) -> dict[str, str]:
    """Source name (relative to ``invalid/``) → text, for a file or a directory case."""
    paths = sorted(case.glob("*.yaml")) if case.is_dir() else [case]
    return {p.relative_to(case.parent).as_posix(): p.read_text() for p in paths}


def expected_problems(files: dict[str, str]) -> list[str]:
    return sorted(
        f"{source}:{found}" for source, text in files.items() for found in EXPECT.findall(text)
    )


def load(files: dict[str, str]) -> PlaybookSet:
    return validation.load_set(files, CATALOG)


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_playbook_loads(path: pathlib.Path) -> None:
    loaded = load({path.name: path.read_text()})

    documents = len(re.findall(r"^name:", path.read_text(), re.MULTILINE))
    assert len(loaded.playbooks) == documents >= 1
    assert all(p.source == path.name for p in loaded.playbooks)


def test_all_valid_playbooks_load_together() -> None:
    loaded = load({p.name: p.read_text() for p in VALID})

    assert len({p.name for p in loaded.playbooks}) == len(loaded.playbooks) >= len(VALID)


@pytest.mark.parametrize("case", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_playbook_yields_exactly_the_expected_problems(case: pathlib.Path) -> None:
    files = case_files(case)
    expected = expected_problems(files)
    assert expected, f"{case.name} has no '# expect:' comments"

    with pytest.raises(PlaybookError) as caught:
        load(files)

    assert sorted(str(p) for p in caught.value.problems) == expected


def test_all_problems_are_reported_at_once() -> None:
    files = case_files(GOLDEN / "invalid" / "four-problems.yaml")

    with pytest.raises(PlaybookError) as caught:
        load(files)

    assert len(caught.value.problems) == 4
    assert len({p.line for p in caught.value.problems}) == 4


def test_problems_of_every_file_are_reported_together() -> None:
    files = {
        **case_files(GOLDEN / "invalid" / "bad-matcher.yaml"),
        **case_files(GOLDEN / "invalid" / "unknown-action.yaml"),
    }

    with pytest.raises(PlaybookError) as caught:
        load(files)

    assert sorted(str(p) for p in caught.value.problems) == expected_problems(files)


def test_a_valid_file_does_not_hide_an_invalid_one() -> None:
    files = {
        "minimal.yaml": (GOLDEN / "valid" / "minimal.yaml").read_text(),
        **case_files(GOLDEN / "invalid" / "when-in-braces.yaml"),
    }

    with pytest.raises(PlaybookError) as caught:
        load(files)

    assert {p.source for p in caught.value.problems} == {"when-in-braces.yaml"}


def test_every_valid_playbook_is_rejected_by_an_empty_catalog() -> None:
    """The catalog is what makes actions known: nothing passes without it."""
    for path in VALID:
        with pytest.raises(PlaybookError) as caught:
            validation.load_set({path.name: path.read_text()}, StaticCatalog({}))
        assert all("unknown action" in p.message for p in caught.value.problems)


def test_full_playbook_parses_to_its_values() -> None:
    [playbook] = load({"full.yaml": (GOLDEN / "valid" / "full.yaml").read_text()}).playbooks

    assert playbook.name == "store-down-full"
    assert playbook.line == 2
    assert playbook.priority == 10
    assert playbook.dry_run is True
    assert [(m.name, m.op) for m in playbook.trigger.matchers] == [
        ("alertname", MatchOp.EQUAL),
        ("severity", MatchOp.REGEX),
        ("store_id", MatchOp.NOT_EQUAL),
        ("env", MatchOp.NOT_REGEX),
    ]
    assert playbook.trigger.statuses == {alerts.AlertStatus.FIRING, alerts.AlertStatus.RESOLVED}
    scale = playbook.steps[1]
    assert scale.when == 'alert.status == "firing"'
    assert scale.timeout == 90.0
    assert scale.retry == RetryPolicy(attempts=3, backoff=2.0, max_backoff=30.0)
    assert dict(scale.params) == {"deployment": "store-{{ alert.labels.store_id }}", "replicas": 2}
    assert playbook.verify is not None
    assert (playbook.verify.timeout, playbook.verify.interval) == (300.0, 15.0)
    assert [c.expect for c in playbook.verify.checks] == [
        "output.value == 1",
        "output.status == 200",
    ]
    assert [(phase, s.name) for phase, s in playbook.all_steps()] == [
        (Phase.STEPS, "announce"),
        (Phase.STEPS, "scale_up"),
        (Phase.VERIFY, "store_up"),
        (Phase.VERIFY, "health_page"),
        (Phase.ON_FAILURE, "escalate"),
    ]


def test_defaults_of_a_minimal_playbook() -> None:
    [playbook] = load({"minimal.yaml": (GOLDEN / "valid" / "minimal.yaml").read_text()}).playbooks

    assert playbook.trigger.statuses == {alerts.AlertStatus.FIRING}
    assert playbook.dry_run is False
    assert playbook.verify is None
    assert playbook.on_failure == ()
    [step] = playbook.steps
    assert step.timeout == 30.0
    assert step.retry == RetryPolicy(attempts=1, backoff=1.0, max_backoff=60.0)


def test_durations_parse_to_seconds() -> None:
    [playbook] = load(
        {"durations.yaml": (GOLDEN / "valid" / "durations.yaml").read_text()}
    ).playbooks

    assert [s.timeout for s in playbook.steps] == [0.0, 1.5, 5400.0]
    assert [(s.retry.backoff, s.retry.max_backoff) for s in playbook.steps[1:]] == [
        (0.25, 0.0),
        (60.5, 86400.0),
    ]
    assert playbook.verify is not None
    assert (playbook.verify.timeout, playbook.verify.interval) == (7 * 86400.0, 0.5)


def test_loaded_params_are_read_only() -> None:
    [playbook] = load({"full.yaml": (GOLDEN / "valid" / "full.yaml").read_text()}).playbooks

    with pytest.raises(TypeError):
        playbook.steps[1].params["replicas"] = 0  # type: ignore[index]


def test_digest_is_kept() -> None:
    text = (GOLDEN / "valid" / "minimal.yaml").read_text()

    loaded = validation.load_set({"minimal.yaml": text}, CATALOG, digest="abc")

    assert loaded.digest == "abc"
