"""The Kubernetes API client: the only module that imports kubernetes_asyncio.

A thin, generic layer over ``ApiClient.call_api``: objects are plain JSON dicts addressed by a
`Resource` row (group, version, plural), so one code path serves Deployments, cert-manager
Certificates and namespace finalization alike, and the RBAC an action needs is read off the
same rows. Every request has a time limit, and every failure becomes a `KubeError` subclass
chosen by HTTP status, with the original exception as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import dataclasses
import enum
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import incluster_config

from remediator.config import KubernetesSettings
from remediator.core import redaction
from remediator.core.errors import ConfigError, Problem, RemediatorError

log = structlog.get_logger(__name__)

Object = dict[str, Any]
"""A Kubernetes object (or Status) as decoded JSON."""

MAX_ERROR = 256
"""Characters of an API error body kept in messages (kopf's ``TEXT_ERROR_MAX_SIZE``)."""
PAGE_SIZE = 500
MAX_PAGES = 20
"""Lists stop after this many pages: remediation never needs 10 000 objects of one kind."""
MAX_WATCH_LINE = 16 * 1024 * 1024
"""Bytes of one watch event; the API server refuses objects above ~1.5 MiB anyway."""
_JSON_RESPONSES = {200: "object", 201: "object", 202: "object"}
_AUTH = ["BearerToken"]
IN_CLUSTER = "in-cluster"
ForbiddenHook = Callable[[str | None, str | None], None]
"""Called with the (verb, resource) of each 403, None where the API server named none."""


class PatchType(enum.StrEnum):
    MERGE = "application/merge-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"
    JSON = "application/json-patch+json"


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """One REST resource, e.g. ``apps/v1 deployments``."""

    group: str
    """``""`` for the core group, served under ``/api/v1``."""
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path; every segment is percent-encoded, so no value can add a segment."""
        parts = ["api", self.version] if not self.group else ["apis", self.group, self.version]
        if self.namespaced:
            if namespace is None:
                raise ValueError(f"{self.plural} are namespaced: a namespace is required")
            parts += ["namespaces", quote(namespace, safe="")]
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
            if subresource is not None:
                parts.append(subresource)
        return "/" + "/".join(parts)


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
SECRETS = Resource("", "v1", "secrets", "Secret")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PERSISTENTVOLUMECLAIMS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
JOBS = Resource("batch", "v1", "jobs", "Job")
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", "Ingress")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
CERTIFICATES = Resource("cert-manager.io", "v1", "certificates", "Certificate")

RESOURCES: tuple[Resource, ...] = (
    NAMESPACES,
    PODS,
    EVENTS,
    SERVICES,
    ENDPOINTS,
    SECRETS,
    CONFIGMAPS,
    PERSISTENTVOLUMECLAIMS,
    SERVICEACCOUNTS,
    DEPLOYMENTS,
    STATEFULSETS,
    DAEMONSETS,
    REPLICASETS,
    JOBS,
    INGRESSES,
    LEASES,
    CERTIFICATES,
)
"""Every resource remediator knows; also what ``k8s.wait_for`` accepts."""
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}


def resource_for(api_version: str, kind: str) -> Resource | None:
    return _BY_KIND.get((api_version, kind))


# --- errors -----------------------------------------------------------------------------------


class KubeError(RemediatorError):
    """A Kubernetes API call failed; ``status`` is the HTTP status, None without an answer."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeNotFoundError(KubeError):
    """404: the object (or, for a CRD that is not installed, its whole type) does not exist."""


class KubeConflictError(KubeError):
    """409: a stale resourceVersion, or the object already exists."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Denial:
    """What RBAC refused, read off the API server's 403 message (``responsewriters.Forbidden``:
    ``User "U" cannot VERB resource "R" in API group "G" in the namespace "N"``)."""

    user: str
    verb: str
    resource: str
    """The plural, with ``/subresource`` if any."""
    api_group: str
    namespace: str | None
    """None at the cluster scope."""

    @property
    def qualified_resource(self) -> str:
        return f"{self.resource}.{self.api_group}" if self.api_group else self.resource

    @property
    def account(self) -> str:
        """The service account's name (``remediator``), or the user as it is."""
        if self.user.startswith("system:serviceaccount:"):
            return self.user.rpartition(":")[2]
        return self.user

    def explain(self) -> str:
        """One sentence an operator can act on: which permission, where, and the likely fix."""
        what = f"{self.user} may not {self.verb} {self.qualified_resource}"
        if self.namespace:
            return (
                f"permission denied: {what} in namespace {self.namespace}: no RoleBinding for "
                f"{self.account} in {self.namespace}? Store namespaces get theirs from "
                "helm-charts/remediator-store-access (deploy/README.md)"
            )
        return (
            f"permission denied: {what} at the cluster scope: is the ClusterRoleBinding of "
            "remediator's chart missing or older than this remediator?"
        )


_DENIAL = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]*)" in API group '
    r'"(?P<group>[^"]*)" (?:in the namespace "(?P<namespace>[^"]*)"|at the cluster scope)'
)


def parse_denial(message: str) -> Denial | None:
    found = _DENIAL.search(message)
    if found is None:
        return None
    return Denial(
        user=found["user"],
        verb=found["verb"],
        resource=found["resource"],
        api_group=found["group"],
        namespace=found["namespace"] or None,
    )


class KubeForbiddenError(KubeError):
    """403: RBAC (or an admission policy) refused the request; ``denial`` says what RBAC
    refused when the API server's message names it."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str = "",
        denial: Denial | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.denial = denial


class KubeUnauthorizedError(KubeForbiddenError):
    """401: no valid credentials (an expired or revoked token)."""


class KubeGoneError(KubeError):
    """410: the resourceVersion (or continue token) is older than what the server keeps.

    A watcher cannot resume: it must list again and watch from the new list's resourceVersion.
    """


class KubeInvalidError(KubeError):
    """400/422: the request itself is wrong; sending it again cannot help."""


class KubeUnavailableError(KubeError):
    """5xx, 429, timeouts and connection failures: worth trying again later."""


def _error_class(status: int) -> type[KubeError]:
    if status == 404:
        return KubeNotFoundError
    if status == 409:
        return KubeConflictError
    if status == 410:
        return KubeGoneError
    if status == 401:
        return KubeUnauthorizedError
    if status == 403:
        return KubeForbiddenError
    if status in (400, 422):
        return KubeInvalidError
    if status >= 500 or status == 429:
        return KubeUnavailableError
    return KubeError


def _error(what: str, status: int, reason: str | None, body: object) -> KubeError:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        text = decoded["message"]
        reason = str(decoded.get("reason") or reason or "")
    detail = redaction.truncate(text.strip(), MAX_ERROR) if text.strip() else ""
    message = f"{what}: HTTP {status} {reason or ''}".rstrip()
    message = f"{message}: {detail}" if detail else message
    if status == 403:
        return KubeForbiddenError(
            message, status=status, reason=reason or "", denial=parse_denial(text)
        )
    return _error_class(status)(message, status=status, reason=reason or "")


# --- the client -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scale:
    """An ``autoscaling/v1`` Scale: what ``/scale`` says about a Deployment or StatefulSet."""

    replicas: int
    """Desired (``spec.replicas``)."""
    current: int
    """Observed (``status.replicas``)."""
    resource_version: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ObjectList:
    """The items of a list and the resourceVersion to watch from afterwards."""

    items: builtins.list[Object]
    resource_version: str


class WatchEventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"
    """Only a newer ``metadata.resourceVersion`` to resume from; nothing changed."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    type: WatchEventType
    object: Object

    @property
    def resource_version(self) -> str | None:
        value = (self.object.get("metadata") or {}).get("resourceVersion")
        return str(value) if value else None


class KubeClient:
    """Generic operations on JSON objects; one instance per daemon, closed at shutdown."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        timeout: float = 15.0,
        on_forbidden: ForbiddenHook | None = None,
    ) -> None:
        self._api = api
        self.timeout = timeout
        """Seconds for one HTTP request (each page of a list is one request)."""
        self._on_forbidden = on_forbidden
        """Told of every 403's verb and resource (the permission-failure metric), whoever
        handles the error."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 15.0,
        on_forbidden: ForbiddenHook | None = None,
    ) -> KubeClient:
        """A client for a plain URL (tests, the emulator). Call inside a running event loop."""
        configuration = client.Configuration(host=url)
        if token is not None:
            configuration.api_key["BearerToken"] = f"Bearer {token}"
        return cls(client.ApiClient(configuration), timeout=timeout, on_forbidden=on_forbidden)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- objects ----------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> Object:
        path = resource.path(namespace=namespace, name=name)
        return await self._json("GET", path)

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Object]:
        """Every matching object (following ``continue`` tokens, up to `MAX_PAGES`)."""
        listed = await self.list_versioned(
            resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
        )
        return listed.items

    async def list_versioned(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        label_selector: str | None = None,
        field_selector: str | None = None,
        max_pages: int | None = MAX_PAGES,
    ) -> ObjectList:
        """Like `list`, plus the resourceVersion a watch of the same selection starts from.

        ``all_namespaces`` lists a namespaced resource cluster-wide; ``max_pages=None`` follows
        every ``continue`` token (a watcher needs the whole collection). An expired continue
        token is a `KubeGoneError`: list again from the start.
        """
        path = _collection_path(resource, namespace, all_namespaces=all_namespaces)
        query: list[tuple[str, str]] = [("limit", str(PAGE_SIZE))]
        query += _selectors(label_selector, field_selector)
        items: builtins.list[Object] = []
        token: str | None = None
        version: str | None = None
        pages = 0
        while max_pages is None or pages < max_pages:
            page = await self._json("GET", path, query=[*query, *_maybe("continue", token)])
            pages += 1
            metadata = page.get("metadata") or {}
            # The first page's: every page of one list is read at that revision.
            version = version or str(metadata.get("resourceVersion") or "")
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            token = metadata.get("continue") or None
            if token is None:
                break
        return ObjectList(items=items, resource_version=version or "")

    async def watch(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes after ``resource_version`` (none: synthetic ADDED events for what exists,
        then changes), until the server ends the watch after ``timeout_seconds``.

        BOOKMARK events carry only a newer resourceVersion to resume from. A resourceVersion
        the server no longer keeps raises `KubeGoneError` (from an HTTP 410 or, as the API
        server does it, an ``ERROR`` event with a 410 Status in a 200 stream): list again.
        Connection failures and silence past the timeout raise `KubeUnavailableError`; resume
        from the last resourceVersion seen. Close the iterator when leaving it early
        (``contextlib.aclosing``), so that the connection is released at once.
        """
        path = _collection_path(resource, namespace, all_namespaces=all_namespaces)
        query = [
            ("watch", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
            *_maybe("allowWatchBookmarks", "true" if bookmarks else None),
            *_maybe("resourceVersion", resource_version),
            *_selectors(label_selector, field_selector),
        ]
        what = f"WATCH {path}"
        # No total limit: the server ends the stream. A silent connection (no event, no
        # bookmark, no end) for longer than the server's own timeout is a dead one.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_read=timeout_seconds + self.timeout
        )
        try:
            response = await self._api.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=_AUTH,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as e:
            raise KubeError(f"{what}: {e.reason}") from e
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _unavailable(what, e) from e
        try:
            if response.status != 200:
                raise self._failed(
                    _error(what, response.status, response.reason, await response.read())
                )
            async for line in _lines(response.content, what):
                event = _watch_event(what, line)
                if event is not None:
                    yield event
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _unavailable(what, e) from e
        finally:
            response.release()

    async def create(
        self,
        resource: Resource,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        dry_run: bool = False,
    ) -> Object:
        path = _collection_path(resource, namespace)
        return await self._json("POST", path, query=_dry_run(dry_run), body=dict(body))

    async def replace(
        self,
        resource: Resource,
        name: str,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Object:
        """PUT; a ``metadata.resourceVersion`` in ``body`` is a precondition (else 409)."""
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        return await self._json("PUT", path, query=_dry_run(dry_run), body=dict(body))

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        patch_type: PatchType = PatchType.MERGE,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Object:
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        body = [dict(op) for op in patch] if isinstance(patch, Sequence) else dict(patch)
        return await self._json(
            "PATCH", path, query=_dry_run(dry_run), body=body, content_type=patch_type.value
        )

    async def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        propagation: str | None = None,
        grace_period: int | None = None,
        resource_version: str | None = None,
        dry_run: bool = False,
    ) -> Object:
        """The object as it now is (still terminating) or a ``Success`` Status.

        With ``resource_version`` the deletion is conditional: 409 if the object has changed.
        """
        path = resource.path(namespace=namespace, name=name)
        query = [
            *_maybe("propagationPolicy", propagation),
            *_maybe("gracePeriodSeconds", None if grace_period is None else str(grace_period)),
            *_dry_run(dry_run),
        ]
        body = None
        if resource_version is not None:
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "preconditions": {"resourceVersion": resource_version},
            }
        return await self._json("DELETE", path, query=query, body=body)

    # --- subresources -----------------------------------------------------------------------

    async def get_scale(self, resource: Resource, name: str, *, namespace: str) -> Scale:
        path = resource.path(namespace=namespace, name=name, subresource="scale")
        return _scale(await self._json("GET", path))

    async def patch_scale(
        self, resource: Resource, name: str, replicas: int, *, namespace: str, dry_run: bool = False
    ) -> Scale:
        path = resource.path(namespace=namespace, name=name, subresource="scale")
        body = {"spec": {"replicas": replicas}}
        scale = await self._json(
            "PATCH", path, query=_dry_run(dry_run), body=body, content_type=PatchType.MERGE.value
        )
        return _scale(scale)

    async def pod_logs(
        self,
        namespace: str,
        pod: str,
        *,
        container: str | None = None,
        tail_lines: int | None = None,
        previous: bool = False,
        limit_bytes: int | None = None,
    ) -> str:
        path = PODS.path(namespace=namespace, name=pod, subresource="log")
        query = [
            *_maybe("container", container),
            *_maybe("tailLines", None if tail_lines is None else str(tail_lines)),
            *_maybe("limitBytes", None if limit_bytes is None else str(limit_bytes)),
            *_maybe("previous", "true" if previous else None),
        ]
        # Read raw: the generated client would json.loads() a log whose text happens to be
        # JSON (a structured log line) and hand back the repr of a dict.
        what = f"GET {path}"
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._api.call_api(
                    path,
                    "GET",
                    query_params=query,
                    header_params={"Accept": "text/plain"},
                    auth_settings=_AUTH,
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
                try:
                    raw: bytes = await response.read()
                    status: int = response.status
                    reason: str | None = response.reason
                finally:
                    response.release()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _unavailable(what, e) from e
        if not 200 <= status < 300:
            raise self._failed(_error(what, status, reason, raw))
        return raw.decode("utf-8", errors="replace")

    async def finalize_namespace(
        self, namespace: Mapping[str, Any], finalizers: Sequence[str], *, dry_run: bool = False
    ) -> Object:
        """PUT ``namespaces/{name}/finalize`` with ``spec.finalizers`` replaced.

        ``namespace`` is the object as read; its resourceVersion makes the write conditional.
        """
        body = copy.deepcopy(dict(namespace))
        body.setdefault("spec", {})["finalizers"] = list(finalizers)
        name = str(body["metadata"]["name"])
        return await self.replace(NAMESPACES, name, body, subresource="finalize", dry_run=dry_run)

    # --- transport --------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> Object:
        what = f"{method} {path}"
        try:
            async with asyncio.timeout(self.timeout):
                result = await self._api.call_api(
                    path,
                    method,
                    query_params=list(query),
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    response_types_map=_JSON_RESPONSES,
                    auth_settings=_AUTH,
                    _return_http_data_only=True,
                    _request_timeout=self.timeout,
                )
        except ApiException as e:
            if e.status in (None, 0):  # raised before any request was sent
                raise KubeError(f"{what}: {e.reason}") from e
            raise self._failed(_error(what, e.status, e.reason, e.body)) from e
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _unavailable(what, e) from e
        if not isinstance(result, dict):
            raise KubeError(f"{what}: expected a JSON object, got {type(result).__name__}")
        return result

    def _failed(self, error: KubeError) -> KubeError:
        if isinstance(error, KubeForbiddenError) and not isinstance(error, KubeUnauthorizedError):
            denial = error.denial
            log.warning(
                "kubernetes_permission_denied",
                verb=denial.verb if denial else None,
                resource=denial.qualified_resource if denial else None,
                namespace=denial.namespace if denial else None,
                error=str(error),
            )
            if self._on_forbidden is not None:
                self._on_forbidden(
                    denial.verb if denial else None, denial.qualified_resource if denial else None
                )
        return error


def _collection_path(
    resource: Resource, namespace: str | None, *, all_namespaces: bool = False
) -> str:
    if resource.namespaced and namespace is None:
        if not all_namespaces:
            raise ValueError(f"{resource.plural} are namespaced: a namespace is required")
        # /apis/apps/v1/deployments: the collection across all namespaces.
        return dataclasses.replace(resource, namespaced=False).path()
    return resource.path(namespace=namespace)


def _selectors(label_selector: str | None, field_selector: str | None) -> list[tuple[str, str]]:
    return [
        *_maybe("labelSelector", label_selector or None),
        *_maybe("fieldSelector", field_selector or None),
    ]


async def _lines(content: aiohttp.StreamReader, what: str) -> AsyncIterator[bytes]:
    """The stream's newline-separated records, however long each is (aiohttp's readline stops
    at 128 KiB, which a large object can pass)."""
    buffer = bytearray()
    async for chunk in content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
        if len(buffer) > MAX_WATCH_LINE:
            raise KubeError(f"{what}: a watch event larger than {MAX_WATCH_LINE} bytes")
    if bytes(buffer).strip():
        yield bytes(buffer)


def _watch_event(what: str, line: bytes) -> WatchEvent | None:
    try:
        decoded = json.loads(line)
    except ValueError as e:
        raise KubeError(f"{what}: undecodable watch event: {redaction.truncate(str(e), 80)}") from e
    if not isinstance(decoded, dict) or not isinstance(decoded.get("object"), dict):
        raise KubeError(f"{what}: malformed watch event")
    kind, obj = decoded.get("type"), decoded["object"]
    if kind == "ERROR":
        code = obj.get("code")
        status = code if isinstance(code, int) and code >= 400 else 500
        raise _error(what, status, str(obj.get("reason") or ""), json.dumps(obj))
    try:
        event_type = WatchEventType(str(kind))
    except ValueError:
        log.warning("watch_event_unknown", what=what, type=redaction.truncate(str(kind), 40))
        return None
    return WatchEvent(type=event_type, object=obj)


def _maybe(key: str, value: str | None) -> list[tuple[str, str]]:
    return [(key, value)] if value is not None else []


def _dry_run(dry_run: bool) -> list[tuple[str, str]]:
    return [("dryRun", "All")] if dry_run else []


def _unavailable(what: str, error: BaseException) -> KubeUnavailableError:
    if isinstance(error, TimeoutError):
        return KubeUnavailableError(f"{what}: timed out")
    detail = redaction.truncate(f"{type(error).__name__}: {error}", MAX_ERROR)
    return KubeUnavailableError(f"{what}: {detail}")


def _scale(obj: Mapping[str, Any]) -> Scale:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return Scale(
        replicas=int(spec.get("replicas") or 0),
        current=int(status.get("replicas") or 0),
        resource_version=str((obj.get("metadata") or {}).get("resourceVersion", "")),
    )


# --- connecting -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(
    settings: KubernetesSettings,
    *,
    environ: Mapping[str, str] | None = None,
    on_forbidden: ForbiddenHook | None = None,
) -> AsyncIterator[KubeClient | None]:
    """A client for the configured cluster, closed on exit; None when there is no cluster.

    Tried in order: ``settings.kubeconfig``; the in-cluster service account when
    ``KUBERNETES_SERVICE_HOST`` is set; ``$KUBECONFIG``; ``~/.kube/config``. An explicit but
    unusable configuration is a `ConfigError`, not a silent fallback.
    """
    env = os.environ if environ is None else environ
    if not settings.enabled:
        log.info("kubernetes_disabled")
        yield None
        return
    configuration = client.Configuration()
    source = await _load_configuration(settings, env, configuration)
    if source is None:
        log.warning("kubernetes_not_configured", hint="set kubernetes.kubeconfig")
        yield None
        return
    log.info("kubernetes_configured", source=source, host=configuration.host)
    api = client.ApiClient(configuration)
    async with KubeClient(api, timeout=settings.timeout, on_forbidden=on_forbidden) as kube:
        yield kube


async def _load_configuration(
    settings: KubernetesSettings, env: Mapping[str, str], configuration: client.Configuration
) -> str | None:
    """Fill ``configuration``; returns where it came from, or None if nowhere."""
    source = _locate(settings, env)
    if source is None:
        return None
    if source == IN_CLUSTER:
        try:
            incluster_config.InClusterConfigLoader(
                token_filename=incluster_config.SERVICE_TOKEN_FILENAME,
                cert_filename=incluster_config.SERVICE_CERT_FILENAME,
                environ=dict(env),
            ).load_and_set(configuration)
        except config.ConfigException as e:
            raise _config_error("kubernetes", f"in-cluster configuration: {e}") from e
        return source
    await _load_kubeconfig(source, settings.context, configuration)
    return source


def _locate(settings: KubernetesSettings, env: Mapping[str, str]) -> str | None:
    """Kubeconfig path(s) to load, `IN_CLUSTER`, or None when there is no configuration."""
    if settings.kubeconfig:
        path = Path(settings.kubeconfig).expanduser()
        if not path.is_file():
            raise _config_error("kubernetes.kubeconfig", f"{path}: no such file")
        return str(path)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return IN_CLUSTER
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    candidates = env.get("KUBECONFIG") or str(home / ".kube" / "config")
    existing = [p for p in candidates.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    return os.pathsep.join(existing) or None


async def _load_kubeconfig(
    paths: str, context: str | None, configuration: client.Configuration
) -> None:
    try:
        await config.load_kube_config(
            config_file=paths,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (config.ConfigException, OSError, ValueError, KeyError, TypeError) as e:
        raise _config_error("kubernetes.kubeconfig", f"{paths}: {e}") from e


def _config_error(path: str, message: str) -> ConfigError:
    return ConfigError([Problem(source="<config>", path=path, message=message)])
