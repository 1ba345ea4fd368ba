"""An in-memory Kubernetes API server over HTTP, for tests and the simulated platform.

Driven by the real ``kubernetes_asyncio`` client and the real ``kubectl``::

    emulator = kubeapi.KubeEmulator()
    emulator.seed([namespace, deployment, ...])
    async with kubeapi.serve(emulator) as url:
        kubeapi.write_kubeconfig(path, url)
        ...

Not emulated, on purpose: server-side apply (``apply-patch+yaml`` gets 415), protobuf (JSON
only), OpenAPI schemas (``kubectl explain``), managedFields, admission beyond a few validity
checks, pod graceful termination (no kubelet: pods without finalizers go at once), snapshot
semantics for list ``resourceVersion``/``continue``. kubectl (client-go) sends credentials
only over TLS, so a ``token=`` emulator is for kubernetes_asyncio, not kubectl; kubectl acts as
a service account by impersonating it (``--as``).

Requests are authorized (`authorization`): the admin (the ``token``, or no credentials when
there is none) may do anything, a service account's token (`KubeEmulator.service_account_token`)
only what the stored Roles, ClusterRoles and bindings grant it; ``SelfSubjectAccessReview``
answers ``kubectl auth can-i``.
"""

from remediator.simulation.kubeapi.discovery import DEFAULT_RESOURCES, ResourceType
from remediator.simulation.kubeapi.emulation import (
    Access,
    DeleteOptions,
    DeleteResult,
    KubeEmulator,
    ListResult,
    Selection,
)
from remediator.simulation.kubeapi.errors import StatusError
from remediator.simulation.kubeapi.kubeconfigs import write_kubeconfig
from remediator.simulation.kubeapi.patching import PatchType
from remediator.simulation.kubeapi.server import ServerSettings, make_app, serve
from remediator.simulation.kubeapi.storage import Subscription, WatchEvent

__all__ = [
    "DEFAULT_RESOURCES",
    "Access",
    "DeleteOptions",
    "DeleteResult",
    "KubeEmulator",
    "ListResult",
    "PatchType",
    "ResourceType",
    "Selection",
    "ServerSettings",
    "StatusError",
    "Subscription",
    "WatchEvent",
    "make_app",
    "serve",
    "write_kubeconfig",
]
