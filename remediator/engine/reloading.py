"""The active playbook set, and hot reload that keeps the last good set on any error."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from remediator.adapters import loading, metrics, state
from remediator.core import validation
from remediator.core.actions import ActionCatalog
from remediator.core.errors import PlaybookError
from remediator.core.playbooks import PlaybookSet
from remediator.core.runs import AuditEvent, AuditKind
from remediator.core.safety import SafetyPolicy

log = structlog.get_logger(__name__)


class PlaybookLibrary:
    """Holds the active set; callers take ``library()`` once per decision, never cache it."""

    def __init__(self, playbooks: PlaybookSet) -> None:
        self._current = playbooks

    def __call__(self) -> PlaybookSet:
        return self._current

    def replace(self, playbooks: PlaybookSet) -> None:
        self._current = playbooks


class Reloader:
    def __init__(
        self,
        *,
        library: PlaybookLibrary,
        paths: Sequence[str | Path],
        catalog: ActionCatalog,
        store: state.StateStore,
        metrics: metrics.Metrics,
        clock: Callable[[], float] = time.time,
        defaults: SafetyPolicy = validation.DEFAULT_POLICY,
    ) -> None:
        self._defaults = defaults
        self._library = library
        self._paths = list(paths)
        self._catalog = catalog
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._lock = asyncio.Lock()

    async def reload(self, *, trigger: str) -> bool:
        """Load and swap in the set on disk; False (and the old set kept) when it is invalid."""
        async with self._lock:
            try:
                playbooks = await asyncio.to_thread(
                    functools.partial(
                        loading.load_playbooks,
                        self._paths,
                        self._catalog,
                        defaults=self._defaults,
                    )
                )
            except PlaybookError as e:
                self._metrics.reload_failures.inc()
                await self._store.append_audit(
                    [
                        AuditEvent(
                            kind=AuditKind.PLAYBOOKS_RELOAD_FAILED,
                            outcome="kept_previous",
                            reason=trigger,
                            details={
                                "problems": [str(p) for p in e.problems][:100],
                                "kept": [p.name for p in self._library().playbooks],
                            },
                        )
                    ],
                    now=self._clock(),
                )
                return False
            if playbooks.digest == self._library().digest:
                return True
            self._library.replace(playbooks)
            self._metrics.playbooks_loaded.set(len(playbooks.playbooks))
            self._metrics.know_playbooks(p.name for p in playbooks.playbooks)
            await self._store.append_audit(
                [loaded_event(playbooks, trigger=trigger)], now=self._clock()
            )
            return True

    async def watch(self, interval: float) -> None:
        """Poll the files for changes; a background task until cancelled."""
        seen = await asyncio.to_thread(loading.snapshot, self._paths)
        while True:
            await asyncio.sleep(interval)
            current = await asyncio.to_thread(loading.snapshot, self._paths)
            if current != seen:
                seen = current
                try:
                    await self.reload(trigger="file_change")
                except Exception:  # a store hiccup must not end hot reload for good
                    log.exception("playbook_reload_crashed")


def loaded_event(playbooks: PlaybookSet, *, trigger: str) -> AuditEvent:
    return AuditEvent(
        kind=AuditKind.PLAYBOOKS_LOADED,
        outcome="loaded",
        reason=trigger,
        details={
            "digest": playbooks.digest,
            "playbooks": sorted(p.name for p in playbooks.playbooks),
        },
    )
