"""``helm.release_status`` and ``helm.clear_pending_release`` on Helm 3 storage Secrets."""

from __future__ import annotations

import base64
import gzip
import json
import time
from typing import Any

import pytest

from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions import helm
from remediator.engine.actions.registry import ActionContext
from remediator.simulation import kubeapi

from . import objects
from .conftest import OUT_OF_SCOPE, ApiLog, Kubectl, nothing_sent, requires_kubectl

NS = "store-a"
STATUS = helm.ReleaseStatusAction()
HOUR = 3600.0


def later(seconds: float) -> helm.ClearPendingReleaseAction:
    """The action with a wall clock ``seconds`` ahead, making every record that much older."""
    return helm.ClearPendingReleaseAction(clock=lambda: time.time() + seconds)


def history(*statuses: str, **more: Any) -> list[objects.Obj]:
    return [
        objects.release_record(NS, NS, revision=i, status=status, **more)
        for i, status in enumerate(statuses, start=1)
    ]


@pytest.fixture
def pending(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    """Runbook scenario 4: an upgrade died half-way and left its record pending."""
    emulator.seed(
        [
            objects.namespace(NS),
            *history("superseded", "deployed", "pending-upgrade"),
            objects.release_record("other", NS, revision=9, status="pending-install"),
        ]
    )
    return emulator


def status_params(release: str = NS, namespace: str = NS) -> helm.ReleaseStatusParams:
    return helm.ReleaseStatusParams(namespace=namespace, release=release)


def clear(release: str = NS, older_than: float = 600.0, namespace: str = NS) -> Any:
    return helm.ClearPendingParams(namespace=namespace, release=release, older_than=older_than)


@pytest.mark.usefixtures("pending")
async def test_release_status(context: ActionContext, api_log: ApiLog) -> None:
    output = await STATUS.run(status_params(), context)

    assert output["release"] == NS
    assert (output["revision"], output["status"], output["pending"]) == (3, "pending-upgrade", True)
    assert [(r["revision"], r["status"], r["name"]) for r in output["records"]] == [
        (1, "superseded", "sh.helm.release.v1.store-a.v1"),
        (2, "deployed", "sh.helm.release.v1.store-a.v2"),
        (3, "pending-upgrade", "sh.helm.release.v1.store-a.v3"),
    ]
    assert all(r["created"] for r in output["records"])
    assert output["last_deployed"] == objects.STAMP
    assert output["chart_version"] == "0.3.1"
    (request,) = api_log.seen
    assert request.query["labelSelector"] == ["owner=helm,name=store-a"]


async def test_release_status_not_found(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed([objects.namespace(NS), objects.secret("sh.helm.release.v1.store-a.v1", NS)])

    output = await STATUS.run(status_params(), context)

    assert output == {"release": NS, "status": "not-found"}


async def test_an_undecodable_payload_still_has_a_status(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed(
        [
            objects.namespace(NS),
            objects.release_record(
                NS, NS, revision=1, status="failed", payload="not base64 at all!"
            ),
        ]
    )

    output = await STATUS.run(status_params(), context)

    assert (output["status"], output["revision"]) == ("failed", 1)
    assert output["decode_error"].startswith("not base64")


@pytest.mark.parametrize(
    ("payload", "release"),
    [
        (base64.b64encode(gzip.compress(b'{"name": "x"}')).decode(), {"name": "x"}),
        (base64.b64encode(b'{"name": "y"}').decode(), {"name": "y"}),  # old, uncompressed
    ],
    ids=["gzip", "plain"],
)
def test_decode_release(payload: str, release: dict[str, Any]) -> None:
    assert helm.decode_release(base64.b64encode(payload.encode()).decode()) == release


@pytest.mark.parametrize(
    "payload",
    [
        base64.b64encode(b"\x1f\x8bbroken gzip").decode(),
        base64.b64encode(gzip.compress(b"[1, 2]")).decode(),
        base64.b64encode(gzip.compress(b"{not json")).decode(),
    ],
    ids=["bad-gzip", "not-an-object", "bad-json"],
)
def test_decode_release_errors(payload: str) -> None:
    with pytest.raises(ValueError, match=r"not"):
        helm.decode_release(base64.b64encode(payload.encode()).decode())


@requires_kubectl
async def test_clear_an_old_pending_record(
    pending: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, kubectl: Kubectl
) -> None:
    output = await later(HOUR).run(clear(), context)

    assert output["cleared"] is True
    assert (output["revision"], output["status"]) == (3, "pending-upgrade")
    assert output["secret"] == "sh.helm.release.v1.store-a.v3"
    assert output["age"] >= HOUR
    names = await kubectl("get", "secrets", "-n", NS, "-l", "owner=helm,name=store-a", "-o", "name")
    assert names.split() == [
        "secret/sh.helm.release.v1.store-a.v1",
        "secret/sh.helm.release.v1.store-a.v2",
    ]
    (deletion,) = api_log.writes()
    assert deletion.path.endswith("/secrets/sh.helm.release.v1.store-a.v3")


async def test_a_recent_pending_record_is_left_alone(
    pending: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    output = await later(60).run(clear(), context)

    assert (output["cleared"], output["reason"]) == (False, "too recent")
    assert 60 <= output["age"] < 600
    assert api_log.writes() == []


async def test_modified_at_label_wins_over_creation(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    recently = int(time.time() + HOUR) - 30  # modified 30s before the action's "now"
    emulator.seed(
        [
            objects.namespace(NS),
            objects.release_record(
                NS, NS, revision=1, status="pending-install", modified_at=recently
            ),
        ]
    )

    output = await later(HOUR).run(clear(), context)

    assert (output["cleared"], output["reason"]) == (False, "too recent")
    assert 29 <= output["age"] <= 31


@pytest.mark.parametrize(
    ("statuses", "reason"),
    [
        (("deployed",), "not pending"),
        (("pending-upgrade", "failed"), "not pending"),
        ((), "not found"),
    ],
    ids=["deployed", "failed-after-pending", "none"],
)
async def test_nothing_to_clear(
    emulator: kubeapi.KubeEmulator,
    context: ActionContext,
    api_log: ApiLog,
    statuses: tuple[str, ...],
    reason: str,
) -> None:
    emulator.seed([objects.namespace(NS), *history(*statuses)])

    output = await later(HOUR).run(clear(), context)

    assert (output["cleared"], output["reason"]) == (False, reason)
    assert api_log.writes() == []


async def test_dry_run_deletes_nothing(
    pending: kubeapi.KubeEmulator, dry_context: ActionContext, api_log: ApiLog
) -> None:
    version = pending.resource_version

    output = await later(HOUR).run(clear(), dry_context)

    assert (output["cleared"], output["dry_run"]) == (True, True)
    assert pending.resource_version == version
    assert [s.query["dryRun"] for s in api_log.writes()] == [["All"]]


async def test_helm_finishing_meanwhile_is_a_conflict(
    pending: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    name = "sh.helm.release.v1.store-a.v3"

    def helm_completes() -> None:
        def deployed(secret: dict[str, Any]) -> None:
            secret["metadata"]["labels"]["status"] = "deployed"

        pending.apply_change("v1", "Secret", name, deployed, namespace=NS)

    api_log.before("DELETE", name, helm_completes)

    with pytest.raises(TemporaryStepError, match=r"HTTP 409 Conflict"):
        await later(HOUR).run(clear(), context)

    assert pending.get("v1", "Secret", name, NS) is not None
    retried = await later(HOUR).run(clear(), context)
    assert retried["reason"] == "not pending"


async def test_record_deleted_meanwhile(
    pending: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    api_log.fail("DELETE", "/secrets/", 404)

    output = await later(HOUR).run(clear(), context)

    assert (output["cleared"], output["reason"]) == (False, "not found")


@pytest.mark.parametrize("namespace", OUT_OF_SCOPE, ids=["kube-system", "traversal", "long"])
async def test_out_of_scope_is_refused_without_a_call(
    pending: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, namespace: str
) -> None:
    with nothing_sent(pending, api_log):
        for params in (
            status_params(namespace=namespace),
            status_params(release="../x"),
            status_params(release="r" * 54),
        ):
            with pytest.raises(PermanentStepError, match=r"^scope: "):
                await STATUS.run(params, context)
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await later(HOUR).run(clear(namespace=namespace), context)


@pytest.mark.usefixtures("pending")
@pytest.mark.parametrize(
    ("method", "status", "error"),
    [
        ("GET", 503, TemporaryStepError),
        ("GET", 403, PermanentStepError),
        ("DELETE", 500, TemporaryStepError),
    ],
    ids=["list-503", "list-403", "delete-500"],
)
async def test_api_failures(
    context: ActionContext, api_log: ApiLog, method: str, status: int, error: type[Exception]
) -> None:
    api_log.fail(method, "/secrets", status)

    with pytest.raises(error, match=rf"HTTP {status}"):
        await later(HOUR).run(clear(), context)


def test_records_ignore_other_secrets() -> None:
    impostor = objects.release_record(NS, NS, revision=4, status="deployed")
    impostor["type"] = "Opaque"
    unnumbered = objects.release_record(NS, NS, revision=5, status="deployed")
    unnumbered["metadata"]["labels"]["version"] = "five"
    records = helm.release_records([*history("deployed"), impostor, unnumbered])

    assert [(r.release, r.revision) for r in records] == [(NS, 1)]


def test_release_payload_is_readable_json() -> None:
    record = objects.release_record(NS, NS, revision=2, status="deployed")

    release = helm.decode_release(record["data"]["release"])

    assert json.dumps(release)
    assert release["info"]["status"] == "deployed"
