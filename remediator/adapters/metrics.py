"""Prometheus metrics, on a registry passed in (one per daemon or test).

`Metrics` are the daemon's own (``remediator_*``): label values are bounded (playbook names,
action names, outcomes, reasons and status codes), never fingerprints, targets or store ids
(those belong in the audit log). `StoreMetrics` are about the stores, from discovery and the
prober; their names and labels are the contract ``alerts/stores.rules.yml`` is written against,
and their per-store series (``store_id``, ``namespace``) are removed when the store goes.
Nothing here does I/O at scrape time: background tasks set every value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from remediator.core import stores

PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PROVISIONING_BUCKETS = (30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600)
WEBHOOK_CODES = ("200", "400", "401", "413", "415", "503")
RUN_OUTCOMES = ("succeeded", "failed", "unverified", "interrupted", "rejected")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.webhook_requests = Counter(
            "remediator_webhook_requests",
            "Webhook requests by HTTP status code.",
            ["code"],
            registry=registry,
        )
        self.webhook_rejections = Counter(
            "remediator_webhook_rejections",
            "Webhook requests refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.alerts_received = Counter(
            "remediator_alerts_received",
            "Alerts received, by status (duplicates included).",
            ["status"],
            registry=registry,
        )
        self.alerts_duplicate = Counter(
            "remediator_alerts_duplicate",
            "Alert deliveries already seen (Alertmanager re-sends).",
            registry=registry,
        )
        self.runs = Counter(
            "remediator_runs",
            "Finished runs by playbook and outcome.",
            ["playbook", "outcome"],
            registry=registry,
        )
        self.runs_not_started = Counter(
            "remediator_runs_not_started",
            "Alerts or runs that did not run, by reason.",
            ["reason"],
            registry=registry,
        )
        self.run_duration = Histogram(
            "remediator_run_duration_seconds",
            "Run duration from start to finish.",
            ["playbook"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.steps = Counter(
            "remediator_steps",
            "Steps by playbook, action and outcome.",
            ["playbook", "action", "outcome"],
            registry=registry,
        )
        self.step_duration = Histogram(
            "remediator_step_duration_seconds",
            "Step duration including retries.",
            ["action"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "remediator_queue_depth",
            "Runs waiting to start.",
            registry=registry,
        )
        self.runs_active = Gauge(
            "remediator_runs_active",
            "Runs executing now.",
            registry=registry,
        )
        self.playbooks_loaded = Gauge(
            "remediator_playbooks_loaded",
            "Playbooks in the active set.",
            registry=registry,
        )
        self.reload_failures = Counter(
            "remediator_playbook_reload_failures",
            "Reloads refused because the new set was invalid.",
            registry=registry,
        )

        self.paused = Gauge(
            "remediator_paused",
            "1 while the kill switch has paused all remediation.",
            registry=registry,
        )
        self.paused_since = Gauge(
            "remediator_paused_since_timestamp_seconds",
            "When remediation was paused (0 when running).",
            registry=registry,
        )
        self.breakers_open = Gauge(
            "remediator_breakers_open",
            "Open circuit breakers, by playbook.",
            ["playbook"],
            registry=registry,
        )
        self.storm_active = Gauge(
            "remediator_storm_active",
            "1 while a storm suspends per-target runs of an alert.",
            ["playbook", "alertname"],
            registry=registry,
        )
        self.escalations = Counter(
            "remediator_escalations",
            "Escalations the safety envelope sent, by kind and outcome.",
            ["kind", "outcome"],
            registry=registry,
        )
        self.kube_permission_denied = Counter(
            "remediator_kubernetes_permission_denied",
            "Kubernetes API requests refused with 403 (missing RBAC, e.g. a store namespace "
            'without its RoleBinding), by verb and resource ("unknown" when the API server did '
            "not name them).",
            ["verb", "resource"],
            registry=registry,
        )
        self.audit_head = Gauge(
            "remediator_audit_head_seq",
            "Sequence number of the newest audit record; it never goes down unless records "
            "were removed.",
            registry=registry,
        )
        self.awaiting_approval = Gauge(
            "remediator_runs_awaiting_approval",
            "Runs waiting for an operator's decision.",
            registry=registry,
        )
        self.leader = Gauge(
            "remediator_leader",
            "1 while this replica runs the singleton work (discovery, probes, gauges).",
            registry=registry,
        )
        self.leader_changes = Counter(
            "remediator_leader_changes",
            "Times this replica became leader or stopped being it.",
            ["change"],
            registry=registry,
        )
        self.lease_ok = Gauge(
            "remediator_replica_lease_ok",
            "1 while this replica's lease on its runs is renewed in time.",
            registry=registry,
        )
        self.takeovers = Counter(
            "remediator_runs_taken_over",
            "Runs this replica took over from a replica that stopped renewing its lease.",
            ["outcome"],
            registry=registry,
        )

        # Series exist from the start at 0, so increase() and rate() see their first increment.
        for code in WEBHOOK_CODES:
            self.webhook_requests.labels(code=code)
        for status in ("firing", "resolved"):
            self.alerts_received.labels(status=status)
        for change in ("elected", "lost"):
            self.leader_changes.labels(change=change)
        for outcome in ("resumed", "interrupted"):
            self.takeovers.labels(outcome=outcome)

    def count_permission_denied(self, verb: str | None, resource: str | None) -> None:
        """One 403; label values are what remediator asks for, so they stay bounded."""
        self.kube_permission_denied.labels(
            verb=verb or "unknown", resource=resource or "unknown"
        ).inc()

    def know_playbooks(self, names: Iterable[str]) -> None:
        """Create each playbook's run series at 0 (after every load and reload)."""
        for name in names:
            for outcome in RUN_OUTCOMES:
                self.runs.labels(playbook=name, outcome=outcome)

    def step_finished(self, *, playbook: str, action: str, outcome: str, duration: float) -> None:
        self.steps.labels(playbook=playbook, action=action, outcome=outcome).inc()
        self.step_duration.labels(action=action).observe(duration)

    def run_finished(self, *, playbook: str, outcome: str, duration: float) -> None:
        self.runs.labels(playbook=playbook, outcome=outcome).inc()
        self.run_duration.labels(playbook=playbook).observe(duration)


class WhileLeading:
    """Exposes another registry's metrics only while ``leading()``: the store metrics come from
    the leader alone, so a follower must not export what it stopped updating (a stale
    ``store_up`` or ``provisioner_up`` would hide a real outage behind ``max()``)."""

    def __init__(self, source: CollectorRegistry, leading: Callable[[], bool]) -> None:
        self._source = source
        self._leading = leading

    def collect(self) -> Iterator[Metric]:
        if self._leading():
            yield from self._source.collect()


class StoreMetrics:
    """The stores' metrics. Every label value of a closed set starts at 0, so that
    ``increase()`` sees the first failure of each reason and every phase has a series."""

    def __init__(self, registry: CollectorRegistry, *, provisioner: bool = False) -> None:
        self.registry = registry
        self.store_up = Gauge(
            "store_up",
            "1 when the store's URL answered the last probe below 400, else 0.",
            ["store_id", "namespace"],
            registry=registry,
        )
        self.probe_duration = Histogram(
            "store_probe_duration_seconds",
            "Duration of store probes, failed ones included.",
            buckets=PROBE_BUCKETS,
            registry=registry,
        )
        self.probe_failures = Counter(
            "store_probe_failures",
            "Failed store probes, by reason.",
            ["reason"],
            registry=registry,
        )
        self.stores = Gauge(
            "stores",
            "Discovered stores, by phase.",
            ["phase"],
            registry=registry,
        )
        self.phase_duration = Gauge(
            "store_phase_duration_seconds",
            "Seconds the store has been in its current phase (one series per store).",
            ["store_id", "namespace", "phase"],
            registry=registry,
        )
        self.provisioning_duration = Histogram(
            "store_provisioning_duration_seconds",
            "From namespace creation to the store first running, for stores seen provisioning.",
            buckets=PROVISIONING_BUCKETS,
            registry=registry,
        )
        self.provisioning_failures = Counter(
            "store_provisioning_failures",
            "Stores that failed provisioning, once per store and reason.",
            ["reason"],
            registry=registry,
        )
        self.provisioning_stuck = Gauge(
            "stores_provisioning_stuck",
            "Stores provisioning for longer than stores.stuck_after.",
            registry=registry,
        )
        self.component_ready = Gauge(
            "store_component_ready",
            "1 when the store's app Deployment is available / DB StatefulSet ready, else 0.",
            ["store_id", "namespace", "component"],
            registry=registry,
        )
        self.provisioner_up: Gauge | None = None
        """Only when a provisioner is configured: an unset gauge would read 0, i.e. down."""
        if provisioner:
            self.provisioner_up = Gauge(
                "provisioner_up",
                "1 when the provisioner API answered its health check below 400, else 0.",
                registry=registry,
            )
        for probe_reason in stores.ProbeFailure:
            self.probe_failures.labels(reason=probe_reason.value)
        for failure_reason in stores.FailureReason:
            self.provisioning_failures.labels(reason=failure_reason.value)
        for phase in stores.Phase:
            self.stores.labels(phase=phase.value).set(0)

    def forget_store(self, ref: stores.StoreRef, *, phase: stores.Phase | None) -> None:
        """Remove every series of a store that is gone."""
        self.store_up.remove(ref.store_id, ref.namespace)
        if phase is not None:
            self.phase_duration.remove(ref.store_id, ref.namespace, phase.value)
        for component in stores.Component:
            self.component_ready.remove(ref.store_id, ref.namespace, component.value)
