"""`KubeEmulator`: the API server's object semantics, in memory and synchronous.

Everything the HTTP layer does goes through here, and so do the sync helpers used by tests
and by simulated controllers, so both see the same rules: optimistic concurrency, no-op
writes that keep the resourceVersion, finalizers, namespace termination, owner-reference
garbage collection, dry-run, and watch selection.

Controllers that a real cluster runs (garbage collector, namespace controller) are applied
synchronously inside the write that triggers them, which keeps simulations deterministic.
Pods have no kubelet here, so a pod without finalizers disappears at once on DELETE.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import copy
import dataclasses
import enum
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from remediator.simulation.kubeapi import (
    authorization,
    discovery,
    errors,
    patching,
    selectors,
    storage,
)

_Object = dict[str, Any]
_Objects = list[dict[str, Any]]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# k8s.io/apiserver/pkg/storage/names: consonants and digits that cannot spell words.
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_POLICIES = ("Orphan", "Background", "Foreground")
_FOREGROUND = "foregroundDeletion"
_NAMESPACE_FINALIZER = "kubernetes"


class Access(enum.Enum):
    """Which part of an object a write may change."""

    MAIN = "main"
    """PUT/PATCH on the resource itself: ``status`` is kept when there is a status subresource."""
    STATUS = "status"
    """The ``/status`` subresource: only ``status`` changes."""
    FINALIZE = "finalize"
    """``PUT namespaces/{name}/finalize``: only ``spec.finalizers`` changes."""
    FULL = "full"
    """The sync helpers (simulated controllers): spec and status alike."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeleteOptions:
    propagation_policy: str | None = None
    """``Orphan``, ``Background`` or ``Foreground``; None means the resource's default."""
    grace_period_seconds: int | None = None
    precondition_uid: str | None = None
    precondition_resource_version: str | None = None
    dry_run: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeleteResult:
    object: _Object
    """The object as it now is (terminating) or as it was when removed."""
    removed: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ListResult:
    items: _Objects
    resource_version: str
    continue_token: str | None = None
    remaining_item_count: int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """What one watch (or list) is looking at."""

    resource: discovery.ResourceType
    namespace: str | None = None
    labels: selectors.LabelSelector = dataclasses.field(default_factory=selectors.LabelSelector)
    fields: selectors.FieldSelector = dataclasses.field(default_factory=selectors.FieldSelector)

    def accepts(self, event: storage.WatchEvent) -> bool:
        return event.resource == self.resource and (
            self.namespace is None
            or event.object["metadata"].get("namespace", "") == self.namespace
        )

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return self.labels.matches(obj["metadata"].get("labels")) and self.fields.matches(obj)

    def translate(self, event: storage.WatchEvent) -> tuple[str, _Object] | None:
        """The event as this watch sees it: objects entering or leaving the selection show up
        as ADDED / DELETED, like the apiserver's cacheWatcher does it."""
        if not self.accepts(event):
            return None
        now = self.matches(event.object)
        before = event.old_object is not None and self.matches(event.old_object)
        if event.type == "ADDED":
            return ("ADDED", event.object) if now else None
        if event.type == "DELETED":
            return ("DELETED", event.object) if now or before else None
        if now and before:
            return "MODIFIED", event.object
        if now:
            return "ADDED", event.object
        if before:
            assert event.old_object is not None  # noqa: S101 - implied by `before`
            # The previous state, stamped with this event's resourceVersion.
            gone = copy.deepcopy(event.old_object)
            gone["metadata"]["resourceVersion"] = str(event.resource_version)
            return "DELETED", gone
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What `metadata.generation` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _restore(new: dict[str, Any], old: Mapping[str, Any], key: str) -> None:
    if key in old:
        new[key] = copy.deepcopy(old[key])
    else:
        new.pop(key, None)


class KubeEmulator:
    """An in-memory Kubernetes API: state plus semantics, no I/O (see `kubeapi.serve`)."""

    def __init__(
        self,
        *,
        resources: Sequence[discovery.ResourceType] = discovery.DEFAULT_RESOURCES,
        token: str | None = None,
        history_size: int = 1000,
        namespaces: Sequence[str] = ("default",),
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """
        :param token: the admin's bearer token. When set, HTTP requests need it or a token from
            `issue_token`; when not, requests without credentials are the admin's.
        :param history_size: watch events kept for resuming; older resourceVersions get 410.
        :param namespaces: created up front, like a real cluster's ``default``.
        :param clock: wall-clock time for timestamps (creation, deletion, conditions).
        """
        self.resources = discovery.ResourceTable(resources)
        self.token = token
        self._tokens: dict[str, authorization.User] = {}
        self._store = storage.ObjectStore(history_size=history_size)
        self._clock = clock
        self._logs: dict[tuple[str, str, str, bool], str] = {}
        self._namespaces = self.resources.by_kind("v1", "Namespace")
        self._pods = self.resources.by_kind("v1", "Pod")
        # Namespaces whose contents are being deleted in bulk: report conditions once at the end.
        self._cascading: set[str] = set()
        for name in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # --- sync helpers (tests, seeding, simulated controllers) ---------------------------------

    @property
    def resource_version(self) -> int:
        """The global resourceVersion: the revision of the latest write."""
        return self._store.resource_version

    def now(self) -> datetime:
        return self._clock()

    def seed(self, objects: Iterable[Mapping[str, Any]]) -> _Objects:
        """Create objects as if POSTed, namespaces first so that their contents can follow;
        returns the stored objects in that (creation) order."""
        ordered = sorted(objects, key=lambda o: o.get("kind") != "Namespace")
        return [self.create(obj) for obj in ordered]

    def create(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> _Object:
        resource = self.resources.by_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
        return self.create_object(resource, _meta(obj).get("namespace"), obj, dry_run=dry_run)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> _Object | None:
        resource = self.resources.by_kind(api_version, kind)
        found = self._store.get(resource, self._scope(resource, namespace), name)
        return copy.deepcopy(found) if found is not None else None

    def update(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> _Object:
        """Replace an object, spec and status alike (a controller's view); honours a
        ``metadata.resourceVersion`` precondition, finalizers and deletion like a PUT does."""
        resource = self.resources.by_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
        metadata = _meta(obj)
        return self.replace_object(
            resource,
            metadata.get("namespace"),
            str(metadata.get("name")),
            obj,
            access=Access.FULL,
            dry_run=dry_run,
        )

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: patching.PatchType | str = patching.PatchType.MERGE,
        dry_run: bool = False,
    ) -> _Object:
        """Patch spec and status alike (a controller's view)."""
        resource = self.resources.by_kind(api_version, kind)
        return self.patch_object(
            resource,
            namespace,
            name,
            patch,
            patching.PatchType(patch_type),
            access=Access.FULL,
            dry_run=dry_run,
        )

    def apply_change(
        self,
        api_version: str,
        kind: str,
        name: str,
        mutate: Callable[[_Object], None],
        *,
        namespace: str | None = None,
    ) -> _Object:
        """Read-modify-write: ``mutate`` edits a copy in place, which is then written back."""
        current = self.get(api_version, kind, name, namespace)
        if current is None:
            resource = self.resources.by_kind(api_version, kind)
            raise errors.not_found(resource.plural, resource.group, name)
        mutate(current)
        return self.update(current)

    def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
    ) -> _Object | None:
        """Delete like the API does; returns the object if it is still there (terminating)."""
        resource = self.resources.by_kind(api_version, kind)
        result = self.delete_object(
            resource,
            namespace,
            name,
            DeleteOptions(
                propagation_policy=propagation_policy,
                grace_period_seconds=grace_period_seconds,
                dry_run=dry_run,
            ),
        )
        return None if result.removed else result.object

    def set_pod_log(
        self, namespace: str, pod: str, container: str, text: str, *, previous: bool = False
    ) -> None:
        """What ``GET pods/{pod}/log?container=...`` returns (``previous=true`` for the last
        terminated instance). The pod itself may be created before or after."""
        self._logs[(namespace, pod, container, previous)] = text

    def subscribe(
        self,
        *,
        api_version: str | None = None,
        kind: str | None = None,
        namespace: str | None = None,
    ) -> storage.Subscription:
        """Every change from now on (optionally one kind, one namespace), as `WatchEvent`s.

        Use as ``async with emulator.subscribe() as events: async for event in events: ...``.
        """
        if (api_version is None) != (kind is None):
            raise ValueError("subscribe() needs both api_version and kind, or neither")
        wanted = self.resources.by_kind(api_version, kind) if api_version and kind else None

        def accepts(event: storage.WatchEvent) -> bool:
            return (wanted is None or event.resource == wanted) and (
                namespace is None or event.object["metadata"].get("namespace") == namespace
            )

        return self._store.subscribe(accepts, copies=True)

    # --- who may do what (the HTTP layer asks; the sync helpers are the admin's) --------------

    def issue_token(self, user: authorization.User) -> str:
        """A new bearer token for ``user``; its requests are authorized by the stored RBAC."""
        token = secrets.token_urlsafe(24)
        self._tokens[token] = user
        return token

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token of the ServiceAccount ``namespace/name`` (which must exist), as the kubelet
        mounts one into a pod running as it."""
        account = self._existing(self.resources.by_kind("v1", "ServiceAccount"), namespace, name)
        user = authorization.service_account(namespace, name, uid=account["metadata"]["uid"])
        return self.issue_token(user)

    def authenticate(self, header: str | None) -> authorization.User | None:
        """Who sends ``Authorization: <header>``; None when that is nobody known (401)."""
        if header is None:
            return authorization.ADMIN if self.token is None else None
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            return None
        if self.token is not None and secrets.compare_digest(token, self.token):
            return authorization.ADMIN
        return self._tokens.get(token)

    def authorize(self, attributes: authorization.Attributes) -> authorization.Decision:
        return authorization.authorize(attributes, self._rbac_objects)

    def _rbac_objects(self, kind: str, namespace: str | None) -> _Objects:
        # The stored objects themselves: the authorizer only reads them.
        resource = self.resources.by_kind(f"{authorization.RBAC_GROUP}/v1", kind)
        return list(self._store.iter(resource, namespace if resource.namespaced else None))

    # --- the API operations (HTTP handlers call these) ----------------------------------------

    def _scope(self, resource: discovery.ResourceType, namespace: str | None) -> str:
        if not resource.namespaced:
            return ""
        return namespace or "default"

    def _existing(
        self, resource: discovery.ResourceType, namespace: str | None, name: str
    ) -> _Object:
        found = self._store.get(resource, self._scope(resource, namespace), name)
        if found is None:
            raise errors.not_found(resource.plural, resource.group, name)
        return found

    def read(self, resource: discovery.ResourceType, namespace: str | None, name: str) -> _Object:
        return copy.deepcopy(self._existing(resource, namespace, name))

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> _Objects:
        """Objects of one kind (all namespaces when ``namespace`` is None), selectors applied."""
        resource = self.resources.by_kind(api_version, kind)
        selection = Selection(
            resource=resource,
            namespace=namespace if resource.namespaced else None,
            labels=selectors.parse_label_selector(label_selector or ""),
            fields=selectors.parse_field_selector(field_selector or ""),
        )
        return self.list_objects(selection).items

    def list_objects(
        self,
        selection: Selection,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> ListResult:
        """A consistent page of the current state, ordered by (namespace, name).

        Continue tokens resume after the last key rather than from a snapshot, which is all a
        paginating client needs from a store that changes only between its requests.
        """
        items = [
            obj
            for obj in self._store.iter(selection.resource, selection.namespace)
            if selection.matches(obj)
        ]
        if continue_token:
            after = _decode_continue(continue_token)
            items = [o for o in items if _key(o) > after]
        token: str | None = None
        remaining: int | None = None
        if limit is not None and 0 < limit < len(items):
            remaining = len(items) - limit
            items = items[:limit]
            token = _encode_continue(_key(items[-1]))
        return ListResult(
            items=copy.deepcopy(items),
            resource_version=str(self._store.resource_version),
            continue_token=token,
            remaining_item_count=remaining,
        )

    def open_watch(
        self, selection: Selection, *, resource_version: str | None
    ) -> tuple[builtins.list[tuple[str, _Object]], storage.Subscription]:
        """Initial events plus a live subscription, with nothing lost in between.

        No resourceVersion (or "0") starts with synthetic ADDED events for the current state;
        a retained one replays what happened after it; an older one raises 410 Expired.
        """
        subscription = self._store.subscribe(selection.accepts, copies=False)
        try:
            if resource_version in (None, "", "0"):
                initial = [
                    ("ADDED", obj)
                    for obj in self._store.iter(selection.resource, selection.namespace)
                    if selection.matches(obj)
                ]
            else:
                try:
                    since = int(str(resource_version))
                except ValueError:
                    raise errors.bad_request(
                        f'invalid resource version "{resource_version}"'
                    ) from None
                try:
                    history = self._store.history_since(since)
                except storage.ExpiredError as e:
                    raise errors.expired(str(e)) from e
                initial = [t for t in map(selection.translate, history) if t is not None]
        except BaseException:
            subscription.close()
            raise
        return initial, subscription

    def create_object(
        self,
        resource: discovery.ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
    ) -> _Object:
        if not isinstance(body, Mapping):
            raise errors.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        self._check_type(resource, obj)
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be an object")

        name = metadata.get("name") or ""
        if not name:
            prefix = metadata.get("generateName")
            if not prefix:
                raise errors.invalid(
                    resource.kind,
                    resource.group,
                    "",
                    [("metadata.name", "Required value: name or generateName is required")],
                )
            name = self._generate_name(resource, namespace or metadata.get("namespace"), prefix)
        metadata["name"] = name

        if resource.namespaced:
            in_body = metadata.get("namespace")
            if namespace and in_body and in_body != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            scope = namespace or in_body or "default"
            metadata["namespace"] = scope
            self._check_namespace_open(resource, scope, name)
        else:
            metadata.pop("namespace", None)
            scope = ""

        if self._store.get(resource, scope, name) is not None:
            raise errors.already_exists(resource.plural, resource.group, name)

        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = self._timestamp()
        metadata["generation"] = 1
        self._default(resource, obj)
        self._validate(resource, obj)
        if dry_run:
            return obj
        return self._store.put(resource, obj, "ADDED")

    def replace_object(
        self,
        resource: discovery.ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        access: Access = Access.MAIN,
        dry_run: bool = False,
    ) -> _Object:
        if not isinstance(body, Mapping):
            raise errors.bad_request("the request body must be a JSON object")
        old = self._existing(resource, namespace, name)
        new = copy.deepcopy(dict(body))
        self._check_type(resource, new)
        self._check_identity(resource, old, new)
        return self._commit(resource, old, self._scoped(resource, old, new, access), dry_run)

    def patch_object(
        self,
        resource: discovery.ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: patching.PatchType,
        *,
        access: Access = Access.MAIN,
        dry_run: bool = False,
    ) -> _Object:
        old = self._existing(resource, namespace, name)
        patched = self._patched(resource, old, patch, patch_type)
        self._check_type(resource, patched)
        self._check_identity(resource, old, patched)
        return self._commit(resource, old, self._scoped(resource, old, patched, access), dry_run)

    def _patched(
        self,
        resource: discovery.ResourceType,
        target: Mapping[str, Any],
        patch: Any,
        patch_type: patching.PatchType,
    ) -> _Object:
        if patch_type is patching.PatchType.STRATEGIC and not resource.builtin:
            # As for any CRD: strategic merge needs Go struct tags that CRDs do not have.
            raise errors.unsupported_media_type(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {patching.PatchType.JSON}, {patching.PatchType.MERGE}, "
                f"application/apply-patch+yaml"
            )
        try:
            return patching.apply_patch(copy.deepcopy(dict(target)), patch, patch_type)
        except patching.PatchFailedError as e:
            raise errors.unprocessable(str(e)) from e
        except patching.PatchError as e:
            raise errors.bad_request(str(e)) from e

    def delete_object(
        self,
        resource: discovery.ResourceType,
        namespace: str | None,
        name: str,
        options: DeleteOptions,
    ) -> DeleteResult:
        return self._delete(resource, self._existing(resource, namespace, name), options)

    def delete_collection(
        self, selection: Selection, options: DeleteOptions
    ) -> builtins.list[DeleteResult]:
        doomed = list(self._store.iter(selection.resource, selection.namespace))
        results = []
        for obj in doomed:
            current = self._store.get(
                selection.resource, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            )
            if current is not None and selection.matches(current):
                results.append(self._delete(selection.resource, current, options))
        return results

    # --- /scale ---------------------------------------------------------------------------------

    def read_scale(
        self, resource: discovery.ResourceType, namespace: str | None, name: str
    ) -> _Object:
        return self._scale_of(self._existing(resource, namespace, name))

    def replace_scale(
        self,
        resource: discovery.ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        dry_run: bool = False,
    ) -> _Object:
        old = self._existing(resource, namespace, name)
        if not isinstance(body, Mapping):
            raise errors.bad_request("the request body must be a JSON object")
        spec = body.get("spec")
        replicas = spec.get("replicas") if isinstance(spec, Mapping) else None
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid(
                "Scale",
                "autoscaling",
                name,
                [("spec.replicas", f"Invalid value: {replicas!r}: must be a non-negative integer")],
            )
        new = copy.deepcopy(old)
        new.setdefault("spec", {})["replicas"] = replicas
        requested = _meta(body).get("resourceVersion")
        new["metadata"]["resourceVersion"] = requested or old["metadata"]["resourceVersion"]
        return self._scale_of(self._commit(resource, old, new, dry_run))

    def patch_scale(
        self,
        resource: discovery.ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: patching.PatchType,
        *,
        dry_run: bool = False,
    ) -> _Object:
        scale = self.read_scale(resource, namespace, name)
        try:
            patched = patching.apply_patch(scale, patch, patch_type)
        except patching.PatchFailedError as e:
            raise errors.unprocessable(str(e)) from e
        except patching.PatchError as e:
            raise errors.bad_request(str(e)) from e
        return self.replace_scale(resource, namespace, name, patched, dry_run=dry_run)

    def _scale_of(self, obj: Mapping[str, Any]) -> _Object:
        metadata = obj["metadata"]
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        selector = selectors.selector_from_spec(spec.get("selector"))
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                key: metadata[key]
                for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if key in metadata
            },
            "spec": {"replicas": spec.get("replicas", 0)},
            "status": {
                "replicas": status.get("replicas", 0),
                "selector": selectors.format_label_selector(selector),
            },
        }

    # --- pods/log -------------------------------------------------------------------------------

    def read_pod_log(
        self,
        namespace: str,
        name: str,
        *,
        container: str | None = None,
        tail_lines: int | None = None,
        limit_bytes: int | None = None,
        previous: bool = False,
    ) -> str:
        pod = self._existing(self._pods, namespace, name)
        spec = pod.get("spec") or {}
        containers = [str(c.get("name")) for c in spec.get("containers") or []]
        others = [
            str(c.get("name"))
            for field in ("initContainers", "ephemeralContainers")
            for c in spec.get(field) or []
        ]
        if container is None:
            if len(containers) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(containers)}]"
                )
            container = containers[0]
        elif container not in containers + others:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        key = (namespace, name, container, previous)
        if previous and key not in self._logs:
            raise errors.bad_request(
                f'previous terminated container "{container}" in pod "{name}" not found'
            )
        text = self._logs.get(key, "")
        if tail_lines is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail_lines:]) if tail_lines > 0 else ""
        if limit_bytes is not None:
            text = text.encode()[:limit_bytes].decode(errors="ignore")
        return text

    # --- internals: writes ----------------------------------------------------------------------

    def _timestamp(self) -> str:
        return self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _generate_name(
        self, resource: discovery.ResourceType, namespace: str | None, prefix: str
    ) -> str:
        scope = self._scope(resource, namespace)
        while True:
            suffix = "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            name = f"{prefix}{suffix}"
            if self._store.get(resource, scope, name) is None:
                return name

    def _check_type(self, resource: discovery.ResourceType, obj: dict[str, Any]) -> None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version not in (None, "", resource.api_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({resource.api_version})"
            )
        if kind not in (None, "", resource.kind):
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
            )
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind

    def _check_identity(
        self, resource: discovery.ResourceType, old: Mapping[str, Any], new: dict[str, Any]
    ) -> None:
        metadata = new.get("metadata")
        if not isinstance(metadata, dict):
            metadata = new["metadata"] = {}
        name = old["metadata"]["name"]
        if metadata.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({metadata['name']}) does not match the name on the URL "
                f"({name})"
            )
        namespace = old["metadata"].get("namespace")
        if resource.namespaced and metadata.get("namespace", namespace) != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        uid = metadata.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise errors.conflict(
                resource.plural,
                resource.group,
                name,
                why=f"Precondition failed: UID in precondition: {uid}, "
                f"UID in object meta: {old['metadata']['uid']}",
            )

    def _scoped(
        self,
        resource: discovery.ResourceType,
        old: Mapping[str, Any],
        body: dict[str, Any],
        access: Access,
    ) -> dict[str, Any]:
        """The new object, keeping what this kind of write may not touch."""
        if access is Access.FULL:
            return body
        if access is Access.MAIN:
            if resource.has_status:
                _restore(body, old, "status")
            if resource == self._namespaces:
                # Namespace spec (its finalizers) changes only through /finalize.
                _restore(body, old, "spec")
            return body
        new = copy.deepcopy(dict(old))
        if access is Access.STATUS:
            _restore(new, body, "status")
        else:
            finalizers = (body.get("spec") or {}).get("finalizers") or []
            new.setdefault("spec", {})["finalizers"] = list(finalizers)
        requested = _meta(body).get("resourceVersion")
        new["metadata"]["resourceVersion"] = requested or old["metadata"]["resourceVersion"]
        return new

    def _commit(
        self,
        resource: discovery.ResourceType,
        old: Mapping[str, Any],
        new: dict[str, Any],
        dry_run: bool,
    ) -> _Object:
        """Write an update: precondition, immutable fields, generation, finalizer rules."""
        old_meta = old["metadata"]
        metadata = new.setdefault("metadata", {})
        name = old_meta["name"]
        requested = metadata.get("resourceVersion")
        if requested and requested != old_meta["resourceVersion"]:
            raise errors.conflict(resource.plural, resource.group, name)
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            _restore(metadata, old_meta, field)
        metadata["resourceVersion"] = old_meta["resourceVersion"]
        if _content(new) != _content(old):
            metadata["generation"] = int(old_meta.get("generation", 0)) + 1
        self._validate(resource, new)
        if old_meta.get("deletionTimestamp"):
            added = set(metadata.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    resource.kind,
                    resource.group,
                    name,
                    [(
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {sorted(added)}",
                    )],
                )  # fmt: skip
        if new == old:
            # The real server skips no-op writes: same resourceVersion, no watch event.
            return copy.deepcopy(dict(old))
        if dry_run:
            return new
        if self._finalized(resource, new):
            return self._remove(resource, new)
        stored = self._store.put(resource, new, "MODIFIED")
        if resource == self._namespaces:
            self._reconcile_namespace(name)
        return stored

    def _finalized(self, resource: discovery.ResourceType, obj: Mapping[str, Any]) -> bool:
        """Deletion was requested and nothing holds the object back any more."""
        metadata = obj["metadata"]
        if not metadata.get("deletionTimestamp") or metadata.get("finalizers"):
            return False
        return resource != self._namespaces or not (obj.get("spec") or {}).get("finalizers")

    def _default(self, resource: discovery.ResourceType, obj: dict[str, Any]) -> None:
        kind = (resource.group, resource.kind)
        if resource == self._namespaces:
            obj.setdefault("spec", {}).setdefault("finalizers", [_NAMESPACE_FINALIZER])
            obj["status"] = {"phase": "Active"}
        elif kind == ("", "Pod"):
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        elif kind == ("", "Service"):
            obj.setdefault("spec", {}).setdefault("type", "ClusterIP")
        elif "scale" in resource.subresources:
            obj.setdefault("spec", {}).setdefault("replicas", 1)

    def _validate(self, resource: discovery.ResourceType, obj: Mapping[str, Any]) -> None:
        """The handful of checks that catch real client bugs; not the full API validation."""
        metadata = obj["metadata"]
        name = str(metadata.get("name"))
        causes: builtins.list[tuple[str, str]] = []
        pattern, limit = (_LABEL, 63) if resource == self._namespaces else (_SUBDOMAIN, 253)
        if not pattern.match(name) or len(name) > limit:
            causes.append((
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 name must consist of lower case '
                "alphanumeric characters, '-' or '.'",
            ))  # fmt: skip
        for field in ("labels", "annotations"):
            values = metadata.get(field)
            if values is None:
                continue
            if not isinstance(values, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in values.items()
            ):
                causes.append((f"metadata.{field}", "Invalid value: must map strings to strings"))
            elif field == "labels":
                causes.extend(
                    ("metadata.labels", f'Invalid value: "{k}={v}": invalid label')
                    for k, v in values.items()
                    if not selectors.LABEL_KEY.match(k) or not selectors.LABEL_VALUE.match(v)
                )
        finalizers = metadata.get("finalizers")
        if finalizers is not None and not (
            isinstance(finalizers, list) and all(isinstance(f, str) for f in finalizers)
        ):
            causes.append(("metadata.finalizers", "Invalid value: must be a list of strings"))
        if "scale" in resource.subresources:
            replicas = (obj.get("spec") or {}).get("replicas")
            if replicas is not None and (
                isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0
            ):
                causes.append((
                    "spec.replicas",
                    f"Invalid value: {replicas!r}: must be greater than or equal to 0",
                ))  # fmt: skip
        if causes:
            raise errors.invalid(resource.kind, resource.group, name, causes)

    def _check_namespace_open(
        self, resource: discovery.ResourceType, namespace: str, name: str
    ) -> None:
        found = self._store.get(self._namespaces, "", namespace)
        if found is None:
            raise errors.not_found("namespaces", "", namespace)
        if found["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                resource.plural,
                resource.group,
                name,
                why=f"unable to create new content in namespace {namespace} because it is "
                "being terminated",
            )

    # --- internals: deletion, garbage collection, namespace controller --------------------------

    def _delete(
        self, resource: discovery.ResourceType, obj: _Object, options: DeleteOptions
    ) -> DeleteResult:
        metadata = obj["metadata"]
        name, uid = metadata["name"], metadata["uid"]
        if options.precondition_uid and options.precondition_uid != uid:
            raise errors.conflict(
                resource.plural,
                resource.group,
                name,
                why=f"Precondition failed: UID in precondition: {options.precondition_uid}, "
                f"UID in object meta: {uid}",
            )
        wanted_rv = options.precondition_resource_version
        if wanted_rv and wanted_rv != metadata["resourceVersion"]:
            raise errors.conflict(
                resource.plural,
                resource.group,
                name,
                why=f"Precondition failed: ResourceVersion in precondition: {wanted_rv}, "
                f"ResourceVersion in object meta: {metadata['resourceVersion']}",
            )
        policy = options.propagation_policy or (
            "Orphan" if resource.orphans_by_default else "Background"
        )
        if policy not in _POLICIES:
            raise errors.bad_request(
                f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                f'"{_POLICIES[0]}", "{_POLICIES[1]}", "{_POLICIES[2]}"'
            )

        if metadata.get("deletionTimestamp"):
            # Already terminating: a repeated DELETE only adds an orphaning request.
            if policy == "Orphan" and not options.dry_run:
                self._orphan_dependents(uid)
            return DeleteResult(object=copy.deepcopy(obj), removed=False)

        is_namespace = resource == self._namespaces
        finalizers = list(metadata.get("finalizers") or [])
        dependents = self._dependents(uid)
        if policy == "Foreground" and dependents and _FOREGROUND not in finalizers:
            finalizers.append(_FOREGROUND)
        graceful = bool(finalizers) or is_namespace

        if not graceful:
            if options.dry_run:
                return DeleteResult(object=copy.deepcopy(obj), removed=True)
            if policy == "Orphan":
                self._orphan_dependents(uid)
            return DeleteResult(object=self._remove(resource, obj), removed=True)

        terminating = copy.deepcopy(obj)
        meta = terminating["metadata"]
        meta["deletionTimestamp"] = self._timestamp()
        meta["deletionGracePeriodSeconds"] = self._grace_period(resource, obj, options)
        meta["generation"] = int(meta.get("generation", 0)) + 1
        if finalizers:
            meta["finalizers"] = finalizers
        if is_namespace:
            terminating.setdefault("status", {})["phase"] = "Terminating"
        if options.dry_run:
            return DeleteResult(object=terminating, removed=False)

        if policy == "Orphan":
            self._orphan_dependents(uid)
        stored = self._store.put(resource, terminating, "MODIFIED")
        if is_namespace:
            self._delete_namespace_contents(name)
        if policy == "Foreground":
            # The garbage collector deletes a foreground owner's dependents in the foreground
            # too, so the owner waits for the whole chain below it.
            for dep_resource, dependent in dependents:
                self._delete_if_present(dep_resource, dependent, policy="Foreground")
            self._release_foreground_owner(uid)
        current = self._store.get(resource, metadata.get("namespace", ""), name)
        if current is None or current["metadata"]["uid"] != uid:
            return DeleteResult(object=stored, removed=True)
        return DeleteResult(object=copy.deepcopy(current), removed=False)

    def _grace_period(
        self, resource: discovery.ResourceType, obj: Mapping[str, Any], options: DeleteOptions
    ) -> int:
        if options.grace_period_seconds is not None:
            return options.grace_period_seconds
        if resource == self._pods:
            return int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        return 0

    def _delete_if_present(
        self,
        resource: discovery.ResourceType,
        obj: Mapping[str, Any],
        *,
        policy: str = "Background",
    ) -> None:
        metadata = obj["metadata"]
        current = self._store.get(resource, metadata.get("namespace", ""), metadata["name"])
        if current is not None and current["metadata"]["uid"] == metadata["uid"]:
            self._delete(resource, current, DeleteOptions(propagation_policy=policy))

    def _remove(self, resource: discovery.ResourceType, obj: _Object) -> _Object:
        """Drop the object for good, then run what the cluster's controllers would."""
        final = self._store.remove(resource, obj)
        uid = final["metadata"]["uid"]
        self._collect_dependents(uid)
        for ref in final["metadata"].get("ownerReferences") or []:
            self._release_foreground_owner(str(ref.get("uid")))
        if resource.namespaced:
            self._reconcile_namespace(final["metadata"]["namespace"])
        return final

    def _find_uid(self, uid: str) -> tuple[discovery.ResourceType, _Object] | None:
        for resource, obj in self._store.iter_all():
            if obj["metadata"]["uid"] == uid:
                return resource, obj
        return None

    def _dependents(self, uid: str) -> builtins.list[tuple[discovery.ResourceType, _Object]]:
        return [
            (resource, obj)
            for resource, obj in self._store.iter_all()
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]

    def _without_owner(self, resource: discovery.ResourceType, obj: _Object, uid: str) -> None:
        new = copy.deepcopy(obj)
        refs = [r for r in new["metadata"]["ownerReferences"] if r.get("uid") != uid]
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            del new["metadata"]["ownerReferences"]
        self._commit(resource, obj, new, dry_run=False)

    def _orphan_dependents(self, uid: str) -> None:
        for resource, dependent in self._dependents(uid):
            self._without_owner(resource, dependent, uid)

    def _collect_dependents(self, uid: str) -> None:
        """The garbage collector: an owner is gone, so its dependents go too, unless another
        owner of theirs still exists, in which case only the dangling reference is dropped."""
        for resource, dependent in self._dependents(uid):
            metadata = dependent["metadata"]
            current = self._store.get(resource, metadata.get("namespace", ""), metadata["name"])
            if current is None or current["metadata"]["uid"] != metadata["uid"]:
                continue
            others = [
                ref
                for ref in current["metadata"].get("ownerReferences") or []
                if ref.get("uid") != uid and self._find_uid(str(ref.get("uid"))) is not None
            ]
            if others:
                self._without_owner(resource, current, uid)
            else:
                self._delete(resource, current, DeleteOptions(propagation_policy="Background"))

    def _release_foreground_owner(self, uid: str) -> None:
        found = self._find_uid(uid)
        if found is None:
            return
        resource, owner = found
        finalizers = owner["metadata"].get("finalizers") or []
        if _FOREGROUND not in finalizers or self._dependents(uid):
            return
        new = copy.deepcopy(owner)
        new["metadata"]["finalizers"] = [f for f in finalizers if f != _FOREGROUND]
        self._commit(resource, owner, new, dry_run=False)

    def _delete_namespace_contents(self, namespace: str) -> None:
        self._cascading.add(namespace)
        try:
            for resource in self.resources:
                if resource.namespaced:
                    for obj in list(self._store.iter(resource, namespace)):
                        self._delete_if_present(resource, obj)
        finally:
            self._cascading.discard(namespace)
        self._reconcile_namespace(namespace)

    def _reconcile_namespace(self, name: str) -> None:
        """The namespace controller: report what is left, then finalize an empty namespace."""
        if name in self._cascading:
            return
        namespace = self._store.get(self._namespaces, "", name)
        if namespace is None or not namespace["metadata"].get("deletionTimestamp"):
            return
        remaining = [
            (resource, obj)
            for resource in self.resources
            if resource.namespaced
            for obj in self._store.iter(resource, name)
        ]
        new = copy.deepcopy(namespace)
        if remaining:
            status = new.setdefault("status", {})
            status["conditions"] = self._termination_conditions(
                remaining, status.get("conditions") or []
            )
        else:
            spec = new.setdefault("spec", {})
            spec["finalizers"] = [
                f for f in spec.get("finalizers") or [] if f != _NAMESPACE_FINALIZER
            ]
        if new == namespace:
            return
        if self._finalized(self._namespaces, new):
            self._remove(self._namespaces, new)
        else:
            self._store.put(self._namespaces, new, "MODIFIED")

    def _termination_conditions(
        self,
        remaining: Sequence[tuple[discovery.ResourceType, Mapping[str, Any]]],
        previous: Sequence[Mapping[str, Any]],
    ) -> _Objects:
        """``NamespaceContentRemaining`` / ``NamespaceFinalizersRemaining``, worded like the
        real namespace controller so that diagnosis code can be tested against them."""
        counts: dict[str, int] = {}
        finalizers: dict[str, int] = {}
        for resource, obj in remaining:
            key = errors.group_resource(resource.plural, resource.group)
            counts[key] = counts.get(key, 0) + 1
            for finalizer in obj["metadata"].get("finalizers") or []:
                finalizers[finalizer] = finalizers.get(finalizer, 0) + 1
        content = ", ".join(f"{k} has {n} resource instances" for k, n in sorted(counts.items()))
        held = ", ".join(f"{k} in {n} resource instances" for k, n in sorted(finalizers.items()))
        wanted: _Objects = [
            {
                "type": "NamespaceContentRemaining",
                "status": "True",
                "reason": "SomeResourcesRemain",
                "message": f"Some resources are remaining: {content}",
            },
            {
                "type": "NamespaceFinalizersRemaining",
                "status": "True" if finalizers else "False",
                "reason": "SomeFinalizersRemain" if finalizers else "ContentHasNoFinalizers",
                "message": f"Some content in the namespace has finalizers remaining: {held}"
                if finalizers
                else "All content-preserving finalizers finished",
            },
        ]
        before = {c.get("type"): c for c in previous}
        for condition in wanted:
            old = before.get(condition["type"])
            same = old is not None and old.get("status") == condition["status"]
            condition["lastTransitionTime"] = (
                old.get("lastTransitionTime") if same and old is not None else self._timestamp()
            )
        return wanted


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _encode_continue(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise errors.bad_request(f"invalid continue token {token!r}") from None
    return str(namespace), str(name)
