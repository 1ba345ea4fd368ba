"""The HTTP face of `KubeEmulator`: Kubernetes REST paths, query parameters and watch streams.

Routing is table-driven: ``/api/v1/...`` and ``/apis/<group>/<version>/...`` are parsed into a
resource, an optional namespace, name and subresource, and every request then maps onto one
`KubeEmulator` operation. Failures are ``kind: Status`` bodies with the real status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from remediator.simulation import serving
from remediator.simulation.kubeapi import (
    authorization,
    discovery,
    emulation,
    errors,
    openapi,
    patching,
    protobuf,
    selectors,
    storage,
    tables,
)

_JOB_ORPHAN_WARNING = (
    '299 - "child pods are preserved by default when jobs are deleted; set '
    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress "
    'this warning"'
)
# Kinds whose DELETE answers with the object rather than a Success Status, as upstream.
_DELETE_RETURNS_OBJECT = frozenset({("", "Pod"), ("", "Namespace")})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    bookmark_interval: float = 60.0
    """Seconds between BOOKMARK events on idle watches that allow them (the real server: ~1m)."""
    watch_timeout: float = 1800.0
    """Watch duration when the client sends no ``timeoutSeconds``."""


EMULATOR = web.AppKey("emulator", emulation.KubeEmulator)
SETTINGS = web.AppKey("settings", ServerSettings)
WATCHES = web.AppKey("watches", set[storage.Subscription])
USER = web.RequestKey("user", authorization.User)
"""Who a request is made by (after impersonation)."""
_IMPERSONATE_USER = "Impersonate-User"
_IMPERSONATE_GROUP = "Impersonate-Group"
_IMPERSONATE_UID = "Impersonate-Uid"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _status_response(error: errors.StatusError) -> web.Response:
    return _json(error.to_status(), status=error.code)


@web.middleware
async def _status_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.StatusError as e:
        return _status_response(e)
    except selectors.SelectorError as e:
        return _status_response(errors.bad_request(str(e)))


@web.middleware
async def _authentication(request: web.Request, handler: _Handler) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    user = emulator.authenticate(request.headers.get("Authorization"))
    if user is None:
        return _status_response(errors.unauthorized())
    try:
        request[USER] = _impersonation(request, emulator, user)
    except errors.StatusError as e:
        return _status_response(e)
    return await handler(request)


def _impersonation(
    request: web.Request, emulator: emulation.KubeEmulator, user: authorization.User
) -> authorization.User:
    """The user ``Impersonate-*`` headers ask for (``kubectl --as``), if ``user`` may
    impersonate them (verb ``impersonate`` on users, groups, serviceaccounts, as upstream)."""
    name = request.headers.get(_IMPERSONATE_USER)
    groups = request.headers.getall(_IMPERSONATE_GROUP, [])
    if name is None:
        if groups:
            raise errors.bad_request("requested impersonation of groups without a user")
        return user
    wanted = [("", "users", name, "")]
    if name.startswith(authorization.SERVICE_ACCOUNT_PREFIX):
        namespace, _, account = name.removeprefix(authorization.SERVICE_ACCOUNT_PREFIX).partition(
            ":"
        )
        wanted = [("", "serviceaccounts", account, namespace)]
    wanted += [("", "groups", group, "") for group in groups]
    for group, resource, target, namespace in wanted:
        attributes = authorization.Attributes(
            user=user,
            verb="impersonate",
            api_group=group,
            resource=resource,
            name=target,
            namespace=namespace,
        )
        if not emulator.authorize(attributes).allowed:
            raise authorization.forbidden(attributes)
    return authorization.impersonated(name, groups, request.headers.get(_IMPERSONATE_UID, ""))


def requester(request: web.Request) -> authorization.User:
    user: authorization.User = request.get(USER, authorization.ADMIN)
    return user


def make_app(
    emulator: emulation.KubeEmulator, *, settings: ServerSettings | None = None
) -> web.Application:
    app = web.Application(middlewares=[_authentication, _status_errors])
    app[EMULATOR] = emulator
    app[SETTINGS] = settings or ServerSettings()
    watches: set[storage.Subscription] = set()
    app[WATCHES] = watches
    app.on_shutdown.append(_close_watches)
    router = app.router
    router.add_get("/version", _version)
    for probe in ("/healthz", "/livez", "/readyz"):
        router.add_get(probe, _ok)
    router.add_get("/api", _core_versions)
    router.add_route("*", "/api/v1", _core)
    router.add_route("*", "/api/v1/{tail:.+}", _core)
    router.add_get("/openapi/v3", _openapi_root)
    router.add_get("/openapi/v3/{prefix:.+}", _openapi_document)
    router.add_get("/apis", _groups)
    router.add_get("/apis/{group}", _group)
    router.add_post(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", _self_subject_access_review
    )
    router.add_route("*", "/apis/{group}/{version}", _named)
    router.add_route("*", "/apis/{group}/{version}/{tail:.+}", _named)
    # Everything else (e.g. /openapi/v2, which kubectl tolerates missing) is a JSON 404
    # Status, which clients parse more gracefully than aiohttp's text page.
    router.add_route("*", "/{tail:.*}", _not_found)
    return app


@contextlib.asynccontextmanager
async def serve(
    emulator: emulation.KubeEmulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ServerSettings | None = None,
) -> AsyncIterator[str]:
    """Serve ``emulator`` over real HTTP; yields the base URL once the socket is listening."""
    app = make_app(emulator, settings=settings)
    async with serving.serve_app(app, host=host, port=port, shutdown_timeout=5.0) as url:
        yield url


async def _close_watches(app: web.Application) -> None:
    # Open watches would otherwise hold the shutdown for its full timeout.
    watches = app[WATCHES]
    for subscription in list(watches):
        subscription.close()


# --- discovery --------------------------------------------------------------------------------


async def _version(request: web.Request) -> web.Response:
    return _json(discovery.VERSION_INFO)


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _not_found(request: web.Request) -> web.Response:
    return _status_response(errors.no_such_resource())


async def _core_versions(request: web.Request) -> web.Response:
    return _json(discovery.api_versions(request.host))


async def _groups(request: web.Request) -> web.Response:
    return _json(discovery.api_group_list(request.app[EMULATOR].resources))


async def _group(request: web.Request) -> web.Response:
    doc = discovery.api_group(request.app[EMULATOR].resources, request.match_info["group"])
    if doc is None:
        raise errors.no_such_resource()
    return _json(doc)


async def _openapi_root(request: web.Request) -> web.Response:
    return _json(openapi.root_document(request.app[EMULATOR].resources))


async def _openapi_document(request: web.Request) -> web.Response:
    prefix = request.match_info["prefix"].strip("/").split("/")
    table = request.app[EMULATOR].resources
    document = None
    if len(prefix) == 2 and prefix[0] == "api":
        document = openapi.group_version_document(table, "", prefix[1])
    elif len(prefix) == 3 and prefix[0] == "apis":
        document = openapi.group_version_document(table, prefix[1], prefix[2])
    if document is None:
        raise errors.no_such_resource()
    return _json(document)


async def _core(request: web.Request) -> web.StreamResponse:
    return await _dispatch(request, "", "v1", request.match_info.get("tail", ""))


async def _named(request: web.Request) -> web.StreamResponse:
    info = request.match_info
    return await _dispatch(request, info["group"], info["version"], info.get("tail", ""))


# --- resource requests ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Target:
    resource: discovery.ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _resolve(
    table: discovery.ResourceTable, group: str, version: str, segments: list[str]
) -> _Target:
    namespace: str | None = None
    # "namespaces/x/status" is a namespace subresource; "namespaces/x/pods" scopes pods.
    if (
        segments[0] == "namespaces"
        and len(segments) >= 3
        and not (group == "" and len(segments) == 3 and segments[2] in _NAMESPACE_SUBRESOURCES)
    ):
        namespace, segments = segments[1], segments[2:]
    if len(segments) > 3:
        raise errors.no_such_resource()
    resource = table.by_path(group, version, segments[0])
    if resource is None:
        raise errors.no_such_resource()
    name = segments[1] if len(segments) > 1 else None
    subresource = segments[2] if len(segments) > 2 else None
    if namespace is not None and not resource.namespaced:
        raise errors.no_such_resource()
    if namespace is None and resource.namespaced and name is not None:
        raise errors.no_such_resource()
    if subresource is not None and subresource not in resource.subresources:
        raise errors.no_such_resource()
    return _Target(resource=resource, namespace=namespace, name=name, subresource=subresource)


async def _dispatch(
    request: web.Request, group: str, version: str, tail: str
) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    segments = [s for s in tail.split("/") if s]
    if not segments:
        if request.method != "GET":
            raise errors.method_not_allowed(
                f"the server does not allow this method on {request.path}"
            )
        doc = discovery.api_resource_list(emulator.resources, group, version)
        if doc is None:
            raise errors.no_such_resource()
        return _json(doc)
    target = _resolve(emulator.resources, group, version, segments)
    _authorize(request, emulator, target)
    if target.name is None:
        return await _collection(request, emulator, target)
    if target.subresource is None:
        return await _item(request, emulator, target, target.name)
    return await _subresource(request, emulator, target, target.name, target.subresource)


def _authorize(request: web.Request, emulator: emulation.KubeEmulator, target: _Target) -> None:
    """403 unless the requester's RBAC allows the request (``RequestInfo`` + the authorizer)."""
    resource = target.resource
    name = target.name or ""
    if target.name is None and request.method == "GET":
        name = authorization.name_from_field_selector(request.query.get("fieldSelector", ""))
    namespace = target.namespace or ""
    if resource.group == "" and resource.plural == "namespaces" and target.name is not None:
        namespace = target.name  # as RequestInfo has it: a namespace is in itself
    attributes = authorization.Attributes(
        user=requester(request),
        verb=authorization.request_verb(
            request.method, has_name=target.name is not None, watch=_flag(request, "watch")
        ),
        api_group=resource.group,
        resource=resource.plural,
        subresource=target.subresource or "",
        name=name,
        namespace=namespace,
    )
    if not emulator.authorize(attributes).allowed:
        raise authorization.forbidden(attributes)


async def _self_subject_access_review(request: web.Request) -> web.Response:
    """``kubectl auth can-i``: may the requester do what ``spec`` describes?"""
    if request.content_type == protobuf.CONTENT_TYPE:
        body: Any = protobuf.self_subject_access_review(await request.read())
    else:
        body = await _body(request)
    spec = body.get("spec") if isinstance(body, Mapping) else None
    if not isinstance(spec, Mapping):
        raise errors.bad_request("SelfSubjectAccessReview: spec is required")
    emulator = request.app[EMULATOR]
    resource = spec.get("resourceAttributes")
    if isinstance(resource, Mapping):
        attributes = authorization.Attributes(
            user=requester(request),
            verb=str(resource.get("verb") or ""),
            api_group=str(resource.get("group") or ""),
            resource=str(resource.get("resource") or ""),
            subresource=str(resource.get("subresource") or ""),
            name=str(resource.get("name") or ""),
            namespace=str(resource.get("namespace") or ""),
        )
        decision = emulator.authorize(attributes)
    elif isinstance(spec.get("nonResourceAttributes"), Mapping):
        # The default system:discovery binding: every authenticated user may GET them.
        verb = str(spec["nonResourceAttributes"].get("verb") or "")
        decision = authorization.Decision(allowed=verb in ("get", "head"))
    else:
        raise errors.bad_request(
            "SelfSubjectAccessReview: resourceAttributes or nonResourceAttributes is required"
        )
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    return _json(
        {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": dict(spec),
            "status": status,
        },
        status=201,
    )


def _not_allowed(request: web.Request) -> errors.StatusError:
    return errors.method_not_allowed(
        f"the server does not allow this method on the requested resource ({request.method})"
    )


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


def _int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_request(f"{name}: invalid integer {raw!r}") from None


def _dry_run(request: web.Request) -> bool:
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise errors.bad_request(f'Invalid dry run value "{value}": only "All" is supported')
    return bool(values)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    if "protobuf" in request.content_type:
        raise errors.unsupported_media_type("this emulator accepts JSON bodies only")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise errors.bad_request(f"couldn't decode the request body as JSON: {e}") from None


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _selection(request: web.Request, target: _Target) -> emulation.Selection:
    return emulation.Selection(
        resource=target.resource,
        namespace=target.namespace,
        labels=selectors.parse_label_selector(request.query.get("labelSelector", "")),
        fields=selectors.parse_field_selector(request.query.get("fieldSelector", "")),
    )


def _render(
    request: web.Request,
    emulator: emulation.KubeEmulator,
    resource: discovery.ResourceType,
    obj: dict[str, Any],
    *,
    status: int = 200,
) -> web.Response:
    if _wants_table(request):
        table = tables.render_table(
            resource,
            [obj],
            now=emulator.now(),
            resource_version=obj["metadata"].get("resourceVersion"),
            include_object=request.query.get("includeObject", "Metadata"),
        )
        return _json(table, status=status)
    return _json(obj, status=status)


async def _collection(
    request: web.Request, emulator: emulation.KubeEmulator, target: _Target
) -> web.StreamResponse:
    resource = target.resource
    if request.method == "GET":
        selection = _selection(request, target)
        if _flag(request, "watch"):
            return await _watch(request, emulator, selection)
        page = emulator.list_objects(
            selection, limit=_int(request, "limit"), continue_token=request.query.get("continue")
        )
        if _wants_table(request):
            return _json(
                tables.render_table(
                    resource,
                    page.items,
                    now=emulator.now(),
                    resource_version=page.resource_version,
                    continue_token=page.continue_token,
                    include_object=request.query.get("includeObject", "Metadata"),
                )
            )
        return _json(_list_body(resource, page))
    if request.method == "POST":
        if resource.namespaced and target.namespace is None:
            raise _not_allowed(request)
        created = emulator.create_object(
            resource, target.namespace, await _body(request), dry_run=_dry_run(request)
        )
        return _render(request, emulator, resource, created, status=201)
    if request.method == "DELETE":
        options, explicit = _delete_options(request, await _body(request))
        results = emulator.delete_collection(_selection(request, target), options)
        page = emulation.ListResult(
            items=[r.object for r in results], resource_version=str(emulator.resource_version)
        )
        return _json(_list_body(resource, page), headers=_delete_warnings(resource, explicit))
    raise _not_allowed(request)


def _list_body(resource: discovery.ResourceType, page: emulation.ListResult) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": page.resource_version}
    if page.continue_token:
        metadata["continue"] = page.continue_token
        metadata["remainingItemCount"] = page.remaining_item_count
    return {
        "kind": resource.list_kind,
        "apiVersion": resource.api_version,
        "metadata": metadata,
        "items": page.items,
    }


async def _item(
    request: web.Request, emulator: emulation.KubeEmulator, target: _Target, name: str
) -> web.StreamResponse:
    resource, namespace = target.resource, target.namespace
    if request.method == "GET":
        return _render(request, emulator, resource, emulator.read(resource, namespace, name))
    if request.method == "PUT":
        replaced = emulator.replace_object(
            resource, namespace, name, await _body(request), dry_run=_dry_run(request)
        )
        return _json(replaced)
    if request.method == "PATCH":
        patched = emulator.patch_object(
            resource,
            namespace,
            name,
            await _body(request),
            _patch_type(request),
            dry_run=_dry_run(request),
        )
        return _json(patched)
    if request.method == "DELETE":
        options, explicit = _delete_options(request, await _body(request))
        result = emulator.delete_object(resource, namespace, name, options)
        headers = _delete_warnings(resource, explicit)
        if result.removed and (resource.group, resource.kind) not in _DELETE_RETURNS_OBJECT:
            return _json(_success(resource, result.object), headers=headers)
        return _json(result.object, headers=headers)
    raise _not_allowed(request)


async def _subresource(
    request: web.Request,
    emulator: emulation.KubeEmulator,
    target: _Target,
    name: str,
    subresource: str,
) -> web.StreamResponse:
    resource, namespace, method = target.resource, target.namespace, request.method
    dry_run = _dry_run(request)
    match subresource, method:
        case "log", "GET":
            text = emulator.read_pod_log(
                namespace or "default",
                name,
                container=request.query.get("container"),
                tail_lines=_int(request, "tailLines"),
                limit_bytes=_int(request, "limitBytes"),
                previous=_flag(request, "previous"),
            )
            return web.Response(text=text, content_type="text/plain")
        case "scale", "GET":
            return _json(emulator.read_scale(resource, namespace, name))
        case "scale", "PUT":
            body = await _body(request)
            return _json(emulator.replace_scale(resource, namespace, name, body, dry_run=dry_run))
        case "scale", "PATCH":
            body = await _body(request)
            patch_type = _patch_type(request)
            return _json(
                emulator.patch_scale(resource, namespace, name, body, patch_type, dry_run=dry_run)
            )
        case "status", "GET":
            return _json(emulator.read(resource, namespace, name))
        case "status", "PUT":
            body = await _body(request)
            access = emulation.Access.STATUS
            return _json(
                emulator.replace_object(
                    resource, namespace, name, body, access=access, dry_run=dry_run
                )
            )
        case "status", "PATCH":
            body = await _body(request)
            return _json(
                emulator.patch_object(
                    resource,
                    namespace,
                    name,
                    body,
                    _patch_type(request),
                    access=emulation.Access.STATUS,
                    dry_run=dry_run,
                )
            )
        case "finalize", "PUT":
            body = await _body(request)
            access = emulation.Access.FINALIZE
            return _json(
                emulator.replace_object(
                    resource, namespace, name, body, access=access, dry_run=dry_run
                )
            )
    raise _not_allowed(request)


def _patch_type(request: web.Request) -> patching.PatchType:
    try:
        return patching.PatchType(request.content_type)
    except ValueError:
        raise errors.unsupported_media_type(
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{', '.join(p.value for p in patching.PatchType)}"
        ) from None


def _delete_options(request: web.Request, body: Any) -> tuple[emulation.DeleteOptions, bool]:
    """DeleteOptions from the query, overridden by a body; also whether a policy was given."""
    policy = request.query.get("propagationPolicy") or None
    orphan = request.query.get("orphanDependents")
    grace = _int(request, "gracePeriodSeconds")
    dry_run = _dry_run(request)
    uid = rv = None
    if isinstance(body, Mapping):
        policy = body.get("propagationPolicy") or policy
        if body.get("orphanDependents") is not None:
            orphan = str(body["orphanDependents"]).lower()
        if body.get("gracePeriodSeconds") is not None:
            grace = int(body["gracePeriodSeconds"])
        dry_run = dry_run or bool(body.get("dryRun"))
        preconditions = body.get("preconditions") or {}
        uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
    if policy is None and orphan is not None:
        # The deprecated boolean, still sent by old clients.
        policy = "Orphan" if orphan.lower() == "true" else "Background"
    options = emulation.DeleteOptions(
        propagation_policy=policy,
        grace_period_seconds=grace,
        precondition_uid=uid,
        precondition_resource_version=rv,
        dry_run=dry_run,
    )
    return options, policy is not None


def _delete_warnings(resource: discovery.ResourceType, explicit_policy: bool) -> dict[str, str]:
    if resource.orphans_by_default and not explicit_policy:
        return {"Warning": _JOB_ORPHAN_WARNING}
    return {}


def _success(resource: discovery.ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {
        "name": obj["metadata"]["name"],
        "kind": resource.plural,
        "uid": obj["metadata"]["uid"],
    }
    if resource.group:
        details["group"] = resource.group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


# --- watch ------------------------------------------------------------------------------------


async def _watch(
    request: web.Request, emulator: emulation.KubeEmulator, selection: emulation.Selection
) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    timeout = _int(request, "timeoutSeconds")
    duration = float(timeout) if timeout is not None and timeout > 0 else settings.watch_timeout
    bookmarks = _flag(request, "allowWatchBookmarks")
    as_table = _wants_table(request)
    include_object = request.query.get("includeObject", "Metadata")
    resource = selection.resource

    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()

    async def send(event_type: str, obj: dict[str, Any]) -> None:
        if as_table and event_type != "BOOKMARK":
            obj = tables.render_table(
                resource, [obj], now=emulator.now(), include_object=include_object
            )
        line = json.dumps({"type": event_type, "object": obj}) + "\n"
        await response.write(line.encode())

    async def bookmark() -> None:
        rv = str(emulator.resource_version)
        await send(
            "BOOKMARK",
            {"kind": resource.kind, "apiVersion": resource.api_version,
             "metadata": {"resourceVersion": rv}},
        )  # fmt: skip

    try:
        initial, subscription = emulator.open_watch(
            selection, resource_version=request.query.get("resourceVersion")
        )
    except errors.StatusError as e:
        if e.code != 410:
            raise
        # Like the real server: a 200 stream carrying one ERROR event, so clients re-list.
        await response.prepare(request)
        await send("ERROR", e.to_status())
        await response.write_eof()
        return response

    watches = request.app[WATCHES]
    watches.add(subscription)
    loop = asyncio.get_running_loop()
    try:
        await response.prepare(request)
        for event_type, obj in initial:
            await send(event_type, obj)
        deadline = loop.time() + duration
        next_bookmark = loop.time() + settings.bookmark_interval
        while (now := loop.time()) < deadline:
            wake = min(deadline, next_bookmark) if bookmarks else deadline
            try:
                event = await asyncio.wait_for(subscription.get(), max(wake - now, 0))
            except TimeoutError:
                # Bookmark only when drained, so its resourceVersion covers every event sent.
                if bookmarks and not subscription.pending:
                    await bookmark()
                    next_bookmark = loop.time() + settings.bookmark_interval
                continue
            if event is None:
                break  # the server is shutting down
            translated = selection.translate(event)
            if translated is not None:
                await send(*translated)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; nothing left to tell it
    finally:
        subscription.close()
        watches.discard(subscription)
    return response
