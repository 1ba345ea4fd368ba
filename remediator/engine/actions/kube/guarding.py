"""What every ``k8s.*`` and ``helm.*`` action does before and around its API calls.

Before: the namespace must match the allowlist (``safety.namespaces``) and each object name
must be a DNS-1123 subdomain, or the step fails with ``scope: ...`` and nothing is sent. Around:
`KubeError` becomes a step error the executor understands: unavailable and conflict are
retryable, everything else (not found, forbidden, invalid) is permanent. A 403 says which
permission is missing where ("no RoleBinding for remediator in store-x?"): the run fails with
that message, which the audit log, the escalation and the breaker all get.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from remediator.adapters import kubernetes
from remediator.core import scope
from remediator.core.actions import Permission
from remediator.core.errors import PermanentStepError, StepError, TemporaryStepError
from remediator.engine.actions.registry import ActionContext

PLATFORM_NAMESPACE = "store-platform"
"""Never deleted or force-finalized by remediator, whatever the allowlist says."""
# Label selectors as the API accepts them (a=b, a!=b, a in (b,c), !a); anything else, such as
# a newline or a quote smuggled in through a template, is refused before it is sent.
_SELECTOR = re.compile(r"^[A-Za-z0-9._/=!,() -]{1,512}\Z")


def check_namespace(namespace: str, context: ActionContext) -> None:
    allowlist = scope.compile_allowlist(context.resources.settings.safety.namespaces)
    problem = scope.check_namespace(namespace, allowlist)
    if problem is not None:
        raise PermanentStepError(f"scope: {problem}")


def check_name(name: str) -> None:
    problem = scope.check_name(name)
    if problem is not None:
        raise PermanentStepError(f"scope: {problem}")


def check_selector(selector: str) -> None:
    if not _SELECTOR.match(selector):
        raise PermanentStepError(
            f"scope: label selector {selector[:64]!r} has characters a selector cannot have"
        )


def check_not_platform(namespace: str) -> None:
    if namespace == PLATFORM_NAMESPACE:
        raise PermanentStepError(
            f"scope: never delete or force-finalize the platform namespace {namespace!r}"
        )


def client(context: ActionContext) -> kubernetes.KubeClient:
    if context.resources.kube is None:
        raise PermanentStepError("no Kubernetes client (kubernetes.enabled, kubeconfig)")
    return context.resources.kube


def step_error(error: kubernetes.KubeError, what: str) -> StepError:
    """The step error for a failed call: retry on unavailable/conflict, give up otherwise."""
    message = f"{what}: {error}"
    if isinstance(error, kubernetes.KubeForbiddenError) and error.denial is not None:
        message = f"{what}: {error.denial.explain()} ({error})"
    if isinstance(error, kubernetes.KubeUnavailableError | kubernetes.KubeConflictError):
        return TemporaryStepError(message)
    return PermanentStepError(message)


@contextlib.contextmanager
def api_errors(what: str) -> Iterator[None]:
    """Translate any `KubeError` raised inside into a step error (see `step_error`).

    Actions that treat 404 specially catch `KubeNotFoundError` inside the block first.
    """
    try:
        yield
    except kubernetes.KubeError as e:
        raise step_error(e, what) from e


def permission(resource: kubernetes.Resource, *verbs: str, subresource: str = "") -> Permission:
    plural = f"{resource.plural}/{subresource}" if subresource else resource.plural
    return Permission(api_group=resource.group, resource=plural, verbs=verbs)
