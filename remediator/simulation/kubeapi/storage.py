"""Object storage with etcd-like bookkeeping: one global resourceVersion, bounded event history.

Every write bumps the global counter and records a `WatchEvent`, so a watch can resume from
any retained resourceVersion and one older than the history gets "410 Gone", which is what
makes real clients re-list. Subscribers are fed synchronously during the write, so nothing can
slip between a list (or a history replay) and the subscription that follows it.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Literal

from remediator.simulation.kubeapi import discovery

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """One change, as stored in the history and handed to subscribers."""

    type: EventType
    object: dict[str, Any]
    """The object after the change (for DELETED: its last state, with the deletion's RV)."""
    old_object: dict[str, Any] | None
    """The object before the change; lets watches with selectors see objects leave a selection."""
    resource: discovery.ResourceType
    resource_version: int


class ExpiredError(Exception):
    """The requested resourceVersion is older than the retained history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Subscription:
    """An async iterator of `WatchEvent`; ends when closed (or when its store shuts it down)."""

    def __init__(
        self,
        unregister: Callable[[Subscription], None],
        accepts: Callable[[WatchEvent], bool],
        *,
        copies: bool,
    ) -> None:
        self._unregister = unregister
        self._accepts = accepts
        self._copies = copies
        self._queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._closed = False

    def deliver(self, event: WatchEvent) -> None:
        if self._closed or not self._accepts(event):
            return
        if self._copies:
            # Subscribers are free to mutate what they get; the history must stay intact.
            event = dataclasses.replace(
                event,
                object=copy.deepcopy(event.object),
                old_object=copy.deepcopy(event.old_object),
            )
        self._queue.put_nowait(event)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._unregister(self)
            self._queue.put_nowait(None)

    @property
    def pending(self) -> bool:
        return not self._queue.empty()

    def drain(self) -> list[WatchEvent]:
        """The events queued so far, without waiting. Writes deliver synchronously, so after a
        sync helper or an awaited HTTP call returns, its events are already here."""
        events: list[WatchEvent] = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is None:
                self._queue.put_nowait(None)  # keep the end-of-stream marker for iterators
                break
            events.append(event)
        return events

    async def get(self) -> WatchEvent | None:
        """The next event, or None once closed."""
        if self._closed and self._queue.empty():
            return None
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_Key = tuple[str, str]  # (namespace or "", name)


class ObjectStore:
    """Objects per resource type, keyed by (namespace, name). Stored dicts are never shared."""

    def __init__(self, *, history_size: int) -> None:
        if history_size < 1:
            raise ValueError("history_size must be positive")
        self._objects: dict[discovery.ResourceType, dict[_Key, dict[str, Any]]] = {}
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=history_size)
        self._subscriptions: set[Subscription] = set()
        self._revision = 0
        self._compacted = 0

    @property
    def resource_version(self) -> int:
        return self._revision

    @property
    def compacted_resource_version(self) -> int:
        """Watches must start at or after this revision; events up to it are forgotten."""
        return self._compacted

    def get(
        self, resource: discovery.ResourceType, namespace: str, name: str
    ) -> dict[str, Any] | None:
        """The stored object itself (not a copy); callers must not mutate it."""
        return self._objects.get(resource, {}).get((namespace, name))

    def iter(
        self, resource: discovery.ResourceType, namespace: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stored objects in (namespace, name) order; all namespaces when namespace is None."""
        bucket = self._objects.get(resource, {})
        for key in sorted(bucket):
            if namespace is None or key[0] == namespace:
                yield bucket[key]

    def iter_all(self) -> Iterator[tuple[discovery.ResourceType, dict[str, Any]]]:
        for resource, bucket in list(self._objects.items()):
            for obj in list(bucket.values()):
                yield resource, obj

    def put(
        self, resource: discovery.ResourceType, obj: dict[str, Any], event_type: EventType
    ) -> dict[str, Any]:
        """Store ``obj`` under a new resourceVersion; returns a copy of what was stored."""
        metadata = obj["metadata"]
        key = (metadata.get("namespace", ""), metadata["name"])
        bucket = self._objects.setdefault(resource, {})
        old = bucket.get(key)
        self._revision += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self._revision)
        bucket[key] = stored
        self._record(WatchEvent(
            type=event_type,
            object=stored,
            old_object=old,
            resource=resource,
            resource_version=self._revision,
        ))  # fmt: skip
        return copy.deepcopy(stored)

    def remove(self, resource: discovery.ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Drop the object stored under ``obj``'s key; ``obj`` is its final state (e.g. with
        finalizers just emptied). Returns that state stamped with the deletion's resourceVersion.
        """
        metadata = obj["metadata"]
        key = (metadata.get("namespace", ""), metadata["name"])
        old = self._objects.get(resource, {}).pop(key)
        self._revision += 1
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = str(self._revision)
        self._record(WatchEvent(
            type="DELETED",
            object=final,
            old_object=old,
            resource=resource,
            resource_version=self._revision,
        ))  # fmt: skip
        return copy.deepcopy(final)

    def _record(self, event: WatchEvent) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].resource_version
        self._history.append(event)
        for subscription in list(self._subscriptions):
            subscription.deliver(event)

    def history_since(self, resource_version: int) -> list[WatchEvent]:
        """Events after ``resource_version``; `ExpiredError` if some were already forgotten."""
        if resource_version < self._compacted:
            raise ExpiredError(resource_version, self._compacted + 1)
        return [e for e in self._history if e.resource_version > resource_version]

    def subscribe(
        self, accepts: Callable[[WatchEvent], bool] | None = None, *, copies: bool = True
    ) -> Subscription:
        subscription = Subscription(
            self._subscriptions.discard, accepts or (lambda _: True), copies=copies
        )
        self._subscriptions.add(subscription)
        return subscription
