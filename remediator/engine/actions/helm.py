"""``helm.release_status`` and ``helm.clear_pending_release``: Helm 3 release records.

Helm 3 keeps one Secret per release revision, named ``sh.helm.release.v1.<release>.v<N>``, of
type ``helm.sh/release.v1``, labelled ``owner=helm``, ``name``, ``status`` and ``version`` (plus
``createdAt``/``modifiedAt``, unix seconds). ``data.release`` holds base64(gzip(JSON)), which
the Secret API base64-encodes once more. Status and revision are read from the labels; the
payload is decoded only for the latest record's timestamps.

A release stuck in ``pending-*`` (the Helm process died mid-operation) blocks every later
``helm upgrade`` with "another operation is in progress"; the runbook's fix (scenario 4) is to
delete that latest record, which is what ``helm.clear_pending_release`` does, carefully.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from remediator.adapters import kubernetes
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError
from remediator.engine.actions.kube import bodies, guarding
from remediator.engine.actions.registry import ActionContext, Output

RELEASE_TYPE = "helm.sh/release.v1"
PENDING = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})
FAILED = "failed"
MAX_RECORDS = 20
MAX_PAYLOAD = 8 * 1024 * 1024
"""Decompressed bytes read from a release payload; more is not a release we can use."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRecord:
    """One revision of a release, as its storage Secret describes it."""

    release: str
    revision: int
    status: str
    secret: str
    resource_version: str
    created: str
    """The Secret's creationTimestamp (RFC 3339), "" if absent."""
    modified_at: int | None
    """The ``modifiedAt`` label (unix seconds) that Helm sets when it updates a record."""


def release_records(secrets: Iterable[Mapping[str, Any]]) -> list[ReleaseRecord]:
    """Helm 3 release records among ``secrets``, oldest revision first."""
    found = []
    for secret in secrets:
        labels = bodies.labels(secret)
        revision = _integer(labels.get("version"))
        if (
            bodies.text(secret, "type") != RELEASE_TYPE
            or labels.get("owner") != "helm"
            or revision is None
        ):
            continue
        found.append(
            ReleaseRecord(
                release=str(labels.get("name", "")),
                revision=revision,
                status=str(labels.get("status", "unknown")),
                secret=bodies.name(secret),
                resource_version=bodies.text(secret, "metadata", "resourceVersion"),
                created=bodies.text(secret, "metadata", "creationTimestamp"),
                modified_at=_integer(labels.get("modifiedAt")),
            )
        )
    return sorted(found, key=lambda r: (r.release, r.revision))


def latest_by_release(records: Iterable[ReleaseRecord]) -> dict[str, ReleaseRecord]:
    latest: dict[str, ReleaseRecord] = {}
    for record in records:
        if record.release not in latest or record.revision > latest[record.release].revision:
            latest[record.release] = record
    return latest


def decode_release(data: str) -> dict[str, Any]:
    """The release JSON from a Secret's ``data.release``; `ValueError` if it is not one."""
    try:
        stored = base64.b64decode(data, validate=True)
        payload = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not base64: {e}") from e
    if payload[:2] == b"\x1f\x8b":
        try:
            # Bounded: a release payload is small; a gzip bomb must not exhaust memory.
            decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            payload = decompressor.decompress(payload, MAX_PAYLOAD)
        except zlib.error as e:
            raise ValueError(f"not gzip: {e}") from e
    try:
        release = json.loads(payload)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from e
    if not isinstance(release, dict):
        raise ValueError("not a JSON object")
    return release


def _integer(value: object) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _record_output(record: ReleaseRecord) -> dict[str, Any]:
    return {
        "revision": record.revision,
        "status": record.status,
        "name": record.secret,
        "created": record.created,
    }


def _check(namespace: str, release: str, context: ActionContext) -> None:
    guarding.check_namespace(namespace, context)
    guarding.check_name(release)
    if len(release) > 53:  # Helm's own limit; longer names never have records
        raise PermanentStepError(f"scope: release name {release[:64]!r} is longer than 53")


async def _read_records(
    kube: kubernetes.KubeClient, namespace: str, release: str
) -> tuple[list[ReleaseRecord], list[kubernetes.Object]]:
    with guarding.api_errors(f"list Helm records of {namespace}/{release}"):
        secrets = await kube.list(
            kubernetes.SECRETS, namespace=namespace, label_selector=f"owner=helm,name={release}"
        )
    records = [r for r in release_records(secrets) if r.release == release]
    return records, secrets


def _release_info(secrets: Iterable[Mapping[str, Any]], record: ReleaseRecord) -> dict[str, Any]:
    """``info`` fields of the decoded payload, or the reason it could not be decoded."""
    secret = next((s for s in secrets if bodies.name(s) == record.secret), None)
    data = bodies.text(secret, "data", "release")
    if not data:
        return {"decode_error": "no data.release"}
    try:
        release = decode_release(data)
    except ValueError as e:
        return {"decode_error": str(e)[:256]}
    info = bodies.mapping(release, "info")
    return {
        key: value
        for key, value in (
            ("last_deployed", bodies.text(info, "last_deployed")),
            ("first_deployed", bodies.text(info, "first_deployed")),
            ("description", bodies.text(info, "description")[:256]),
            ("chart_version", bodies.text(release, "chart", "metadata", "version")),
        )
        if value
    }


# --- helm.release_status ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseStatusParams:
    namespace: str = field(metadata={"doc": "Namespace the release is installed in."})
    release: str = field(metadata={"doc": "Release name, e.g. store-abc."})


class ReleaseStatusAction:
    spec = ActionSpec(
        name="helm.release_status",
        params=ReleaseStatusParams,
        mutating=False,
        description=(
            "Read a Helm 3 release's records (storage Secrets): latest revision and status "
            "(deployed, failed, pending-upgrade…) and the history; status 'not-found' if none."
        ),
        permissions=(guarding.permission(kubernetes.SECRETS, "list"),),
    )

    async def run(self, params: ReleaseStatusParams, context: ActionContext) -> Output:
        _check(params.namespace, params.release, context)
        kube = guarding.client(context)
        records, secrets = await _read_records(kube, params.namespace, params.release)
        if not records:
            return {"release": params.release, "status": "not-found"}
        latest = records[-1]
        return {
            "release": params.release,
            "revision": latest.revision,
            "status": latest.status,
            "pending": latest.status in PENDING,
            "records": [_record_output(r) for r in records[-MAX_RECORDS:]],
            **_release_info(secrets, latest),
        }

    def preview(self, params: ReleaseStatusParams) -> str:
        return f"read Helm release {params.namespace}/{params.release}"


# --- helm.clear_pending_release -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearPendingParams:
    namespace: str = field(metadata={"doc": "Namespace the release is installed in."})
    release: str = field(metadata={"doc": "Release name, e.g. store-abc."})
    older_than: float = field(
        default=600.0,
        metadata={
            "doc": "Seconds the pending record must have existed (creationTimestamp, or its "
            "modifiedAt label); a younger one may belong to a Helm that is still running."
        },
    )

    def __post_init__(self) -> None:
        if self.older_than < 0:
            raise ValueError("older_than must not be negative")


class ClearPendingReleaseAction:
    spec = ActionSpec(
        name="helm.clear_pending_release",
        params=ClearPendingParams,
        mutating=True,
        supports_dry_run=True,
        description=(
            "Delete a release's latest record if it is stuck in pending-install/upgrade/rollback "
            "for longer than older_than, so the next helm upgrade can run (runbook scenario 4). "
            "Otherwise changes nothing and says why: not found, not pending, too recent."
        ),
        permissions=(guarding.permission(kubernetes.SECRETS, "list", "delete"),),
    )

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        """Wall-clock seconds, compared with the record's timestamps."""

    async def run(self, params: ClearPendingParams, context: ActionContext) -> Output:
        _check(params.namespace, params.release, context)
        kube = guarding.client(context)
        records, _ = await _read_records(kube, params.namespace, params.release)
        base: dict[str, Any] = {"release": params.release, "dry_run": context.dry_run}
        if not records:
            return {**base, "cleared": False, "reason": "not found"}
        latest = records[-1]
        base |= {"revision": latest.revision, "status": latest.status, "secret": latest.secret}
        if latest.status not in PENDING:
            return {**base, "cleared": False, "reason": "not pending"}
        age = self._age(latest)
        if age is None or age < params.older_than:
            return {
                **base,
                "cleared": False,
                "reason": "too recent",
                "age": None if age is None else round(age, 1),
            }
        with guarding.api_errors(f"delete Helm record {params.namespace}/{latest.secret}"):
            try:
                # Conditional: if Helm finishes meanwhile, the record changes and this 409s.
                await kube.delete(
                    kubernetes.SECRETS,
                    latest.secret,
                    namespace=params.namespace,
                    resource_version=latest.resource_version or None,
                    dry_run=context.dry_run,
                )
            except kubernetes.KubeNotFoundError:
                return {**base, "cleared": False, "reason": "not found"}
        context.log.info(
            "helm_pending_record_deleted",
            release=params.release,
            revision=latest.revision,
            status=latest.status,
            dry_run=context.dry_run,
        )
        return {**base, "cleared": True, "age": round(age, 1)}

    def _age(self, record: ReleaseRecord) -> float | None:
        if record.modified_at is not None:
            return self._clock() - record.modified_at
        created = bodies.timestamp(record.created)
        return None if created is None else self._clock() - created.timestamp()

    def preview(self, params: ClearPendingParams) -> str:
        return (
            f"delete the latest Helm record of {params.namespace}/{params.release} if it is "
            f"pending for over {params.older_than:g}s"
        )
