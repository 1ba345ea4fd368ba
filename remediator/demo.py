"""``remediator demo``: the closed loop, live. A store breaks; remediator's probe sees it,
Prometheus fires StoreDown, Alertmanager calls remediator's webhook, the store-down playbook
restarts the app, Prometheus confirms the store is back, and the alert resolves.

It runs `closedloop.run` (the simulated platform, remediator in this process, the real
Prometheus and Alertmanager) in a fresh directory, breaks one store with the fault
``app_down``, and reports every stage as it observes it, with the seconds since the start;
then prints the audit trail of the alert and its run. remediator's own log goes to a file in
that directory, so the output is the story alone.

Without the ``prometheus``/``prometheus-alertmanager`` binaries (or with
``REMEDIATOR_DEMO_NO_MONITORING=1`` or ``--no-monitoring``, which act exactly the same) the
demo says so first, posts the alert itself as Alertmanager would, and the playbook's
``store_up`` check reads remediator's own metrics through a stand-in (no PromQL).

The story is bounded by `DEADLINE`; a stage that does not come within `STAGE_TIMEOUT` ends it
with a message naming that stage, the directory is then kept for the logs. Everything
started is stopped on every way out, Ctrl-C included; ``--keep`` leaves it all running until
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from remediator import config, running
from remediator.adapters import prometheus
from remediator.core.playbooks import CHOOSE
from remediator.simulation import closedloop, monitoring, standins

NO_MONITORING_ENV = "REMEDIATOR_DEMO_NO_MONITORING"
STORES = ("s1", "s2", "s3")
BROKEN_STORE = "s1"
FAULT = "app_down"
ALERT = "StoreDown"
PLAYBOOK = "store-down"
DEADLINE = 180.0
"""Seconds for the whole story, start-up included."""
STAGE_TIMEOUT = 60.0
"""Seconds the next stage may take before the demo gives up and says which one it was."""
TICK = 0.2
"""Seconds between looks at Prometheus, Alertmanager and remediator's audit log."""
LOG_FILE = "remediator.log"
AUDIT_COLUMNS = ("seq", "time", "kind", "alertname", "playbook", "target", "outcome", "detail")


class DemoError(Exception):
    """A stage of the story did not happen (in time)."""


def monitoring_unavailable(*, disabled: bool) -> str | None:
    """Why the demo runs without Prometheus and Alertmanager, or None when it runs with them."""
    if disabled or os.environ.get(NO_MONITORING_ENV, "") not in ("", "0"):
        return f"monitoring disabled ({NO_MONITORING_ENV}=1 or --no-monitoring)"
    missing = monitoring.missing_binaries()
    if missing:
        return (
            f"prometheus not installed: {', '.join(missing)} not on PATH"
            " (make setup installs Debian's prometheus and prometheus-alertmanager)"
        )
    return None


class Narrator:
    """Prints the story, each stage with the seconds since the demo started."""

    def __init__(self, out: TextIO) -> None:
        self._start = time.monotonic()
        self._out = out

    def say(self, tag: str, text: str) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:5.1f}s] {tag:<8} {text}", file=self._out, flush=True)

    def note(self, text: str = "") -> None:
        print(text, file=self._out, flush=True)


@dataclass(kw_only=True)
class Story:
    """What has been seen so far, so each stage is told once."""

    loop: closedloop.ClosedLoop
    narrator: Narrator
    store_id: str
    after_seq: int
    """Audit records up to this one were there before the fault."""
    seen: set[str] = field(default_factory=set)
    waiting_for: str = "the metric to drop"
    progress_at: float = field(default_factory=time.monotonic)
    run_id: str | None = None
    run_status: str | None = None
    fingerprint: str | None = None
    skipped: list[str] = field(default_factory=list)
    posted_at: float | None = None
    """Without Alertmanager: when the demo posted the firing alert (its startsAt)."""

    def once(self, stage: str) -> bool:
        """True the first time ``stage`` is reached (and it counts as progress)."""
        if stage in self.seen:
            return False
        self.seen.add(stage)
        self.progress_at = time.monotonic()
        return True

    @property
    def done(self) -> bool:
        """The run finished and the alert resolved; or the run failed (it cannot resolve)."""
        if "run_finished" not in self.seen:
            return False
        return "webhook_resolved" in self.seen or self.run_status != "succeeded"

    @property
    def selector(self) -> str:
        return f'{ALERT}{{store_id="{self.store_id}"}}'

    async def tick(self) -> None:
        if time.monotonic() - self.progress_at > STAGE_TIMEOUT:
            raise DemoError(f"waited {STAGE_TIMEOUT:g}s for {self.waiting_for}")
        up = await self._store_up()
        if up == 0 and self.once("metric_dropped"):
            where = (
                f'Prometheus (PromQL max(store_up{{store_id="{self.store_id}"}}))'
                if self.loop.monitoring
                else "remediator's /metrics (no Prometheus)"
            )
            self.narrator.say("METRIC", f'store_up{{store_id="{self.store_id}"}} = 0 in {where}')
            self.waiting_for = "the alert to fire"
        if up == 1 and "metric_dropped" in self.seen and self.once("metric_recovered"):
            where = "in Prometheus" if self.loop.monitoring else "in remediator's /metrics"
            self.narrator.say("METRIC", f'store_up{{store_id="{self.store_id}"}} = 1 again {where}')
        if self.loop.monitoring:
            await self._watch_alerts()
        else:
            await self._stand_in_for_alertmanager(up)
        for record in await self.loop.audit(after=self.after_seq):
            self.after_seq = record["seq"]
            self._tell(record)

    async def _store_up(self) -> float | None:
        if self.loop.monitoring:
            with contextlib.suppress(prometheus.PrometheusError):
                return await self.loop.store_up(self.store_id)
            return None
        return (await self.loop.exported_store_up()).get(self.store_id)

    async def _watch_alerts(self) -> None:
        mine = [
            a
            for a in await self.loop.prometheus_alerts(ALERT)
            if a["labels"].get("store_id") == self.store_id
        ]
        state = mine[0]["state"] if mine else None
        hold = self.loop.settings.alert_hold
        if state == "pending" and self.once("alert_pending"):
            self.narrator.say("ALERT", f"{self.selector} pending in Prometheus (for: {hold})")
        if state == "firing" and self.once("alert_firing"):
            self.narrator.say("ALERT", f"{self.selector} firing in Prometheus (/api/v1/alerts)")
            self.waiting_for = "Alertmanager to notify remediator"
        if state is None and "alert_firing" in self.seen and self.once("alert_resolved"):
            self.narrator.say("RESOLVED", f"{self.selector} resolved in Prometheus")
        if "alert_firing" in self.seen and "alertmanager" not in self.seen:
            managed = [
                a
                for a in await self.loop.alertmanager_alerts(ALERT)
                if a["labels"].get("store_id") == self.store_id
            ]
            if managed and self.once("alertmanager"):
                wait = self.loop.settings.group_wait
                self.narrator.say(
                    "ALERT",
                    f"{self.selector} active in Alertmanager (/api/v2/alerts); it notifies"
                    f" remediator's webhook after group_wait {wait}",
                )

    async def _stand_in_for_alertmanager(self, up: float | None) -> None:
        labels = self.loop.alert_labels(ALERT, self.store_id)  # as the rule would label it
        if "metric_dropped" in self.seen and self.once("alert_firing"):
            self.posted_at = time.time()
            self.narrator.say(
                "ALERT",
                f"{self.selector}: the demo posts it to remediator's webhook as Alertmanager"
                " would (no Alertmanager)",
            )
            await self.loop.post_alert(
                standins.alertmanager_payload(labels, status="firing", starts_at=self.posted_at)
            )
            self.waiting_for = "the webhook to be audited"
        if up == 1 and "run_finished" in self.seen and self.once("alert_resolved"):
            assert self.posted_at is not None  # noqa: S101 - posted above
            self.narrator.say(
                "RESOLVED",
                f"{self.selector}: store_up is 1 again, the demo posts the resolved notification",
            )
            payload = standins.alertmanager_payload(
                labels, status="resolved", starts_at=self.posted_at, ends_at=time.time()
            )
            await self.loop.post_alert(payload)

    def _mine(self, record: dict[str, Any]) -> bool:
        alert = record["details"].get("alert") or {}
        if alert.get("labels", {}).get("store_id") == self.store_id:
            return bool(record["alertname"] == ALERT)
        return self.fingerprint is not None and record["fingerprint"] == self.fingerprint

    def _tell(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        say = self.narrator.say
        if not self._mine(record):
            return
        if kind == "alert_received":
            self.fingerprint = record["fingerprint"]
            source = "Alertmanager" if self.loop.monitoring else "the demo"
            if record["outcome"] == "firing" and self.once("webhook_firing"):
                say(
                    "WEBHOOK",
                    f"remediator received {ALERT} firing from {source}"
                    f" (audit #{record['seq']} alert_received, fingerprint {self.fingerprint})",
                )
                self.waiting_for = "the playbook run"
            elif record["outcome"] == "resolved" and self.once("webhook_resolved"):
                say(
                    "RESOLVED",
                    f"remediator received {ALERT} resolved from {source}"
                    f" (audit #{record['seq']} alert_received)",
                )
        elif kind == "alert_not_run" and record["reason"] != "resolved_without_playbook":
            say("AUDIT", f"not run: {record['playbook'] or '-'}: {record['reason']}")
        elif kind == "run_started" and self.once("run_started"):
            self.run_id = record["run_id"]
            say(
                "RUN",
                f"playbook {record['playbook']} started on {record['target']} (run {self.run_id})",
            )
            self.waiting_for = "the run to finish"
        elif kind == "step_finished" and record["run_id"] == self.run_id:
            self._tell_step(record)
        elif kind == "verification_finished" and record["run_id"] == self.run_id:
            self._tell_verification(record)
        elif kind == "run_finished" and record["run_id"] == self.run_id:
            self.once("run_finished")
            self.run_status = record["outcome"]
            self._tell_skipped()
            error = f": {record['reason']}" if record["reason"] else ""
            say("RUN", f"{record['outcome']} in {record['details'].get('duration', 0):.1f}s{error}")
            self.waiting_for = "the alert to resolve"

    def _tell_step(self, record: dict[str, Any]) -> None:
        details = record["details"]
        if record["outcome"] == "skipped":
            self.skipped.append(details["step"])
            return
        output = details.get("output") or {}
        note = ""
        if details.get("action") == CHOOSE and output.get("branch"):
            note = f"branch {output['branch']}"
        elif output.get("summary"):
            note = str(output["summary"])
        if record["reason"]:
            note = f"{note}; {record['reason']}" if note else str(record["reason"])
        phase = "" if details.get("phase") == "steps" else f" [{details.get('phase')}]"
        say = self.narrator.say
        say(
            "STEP",
            f"  {details['step']}{phase} ({details['action']}): {record['outcome']}"
            f" in {details.get('duration', 0):.2f}s{' - ' + note if note else ''}",
        )

    def _tell_verification(self, record: dict[str, Any]) -> None:
        self.once("verified")
        self._tell_skipped()
        how = (
            "through PromQL in Prometheus"
            if self.loop.monitoring
            else "from remediator's /metrics by the stand-in (no PromQL)"
        )
        rounds = record["details"].get("rounds")
        checks = _checks(record)
        self.narrator.say("VERIFY", f"{record['outcome']}: {checks} {how} (round {rounds})")

    def _tell_skipped(self) -> None:
        if self.skipped:
            names = ", ".join(self.skipped)
            self.narrator.say("STEP", f"  skipped (other branches): {names}")
            self.skipped = []


def _checks(record: dict[str, Any]) -> str:
    """``store_up=1 held``: the checks of a verification that ran (a check whose ``when:``
    is false has neither output nor error), with their values."""
    ran = [c for c in record["details"].get("checks") or [] if c.get("output") or c.get("error")]
    if not ran:
        return "every check held"
    return ", ".join(
        f"{c['check']}={_value(c.get('output'))} {'held' if c.get('holds') else 'failed'}"
        for c in ran
    )


def _value(output: Any) -> str:
    if isinstance(output, dict) and "value" in output:
        value = output["value"]
        return f"{value:g}" if isinstance(value, int | float) else str(value)
    return "ok"


async def tell(loop: closedloop.ClosedLoop, narrator: Narrator) -> Story:
    """Break the store and follow the loop until the run finished and the alert resolved."""
    store_id = BROKEN_STORE
    await loop.wait_scraped(timeout=STAGE_TIMEOUT)
    source = "Prometheus has" if loop.monitoring else "remediator's /metrics has"
    narrator.say("BASELINE", f"{source} store_up == 1 for {', '.join(loop.platform.store_ids)}")
    existing = await loop.audit()
    story = Story(
        loop=loop,
        narrator=narrator,
        store_id=store_id,
        after_seq=existing[-1]["seq"] if existing else 0,
    )
    fault = loop.platform.inject(FAULT, store_id)
    narrator.say("BREAK", f"fault {FAULT} injected into store {store_id}: {fault.description}")
    while True:
        loop.check_daemon()
        await story.tick()
        if story.done:
            return story
        await asyncio.sleep(TICK)


async def print_audit_trail(loop: closedloop.ClosedLoop, story: Story, out: TextIO) -> None:
    records = [
        r
        for r in await loop.audit()
        if (story.fingerprint and r["fingerprint"] == story.fingerprint)
        or (story.run_id and r["run_id"] == story.run_id)
    ]
    print(
        f"\naudit trail of {ALERT} for store {story.store_id} and run {story.run_id}"
        " (GET /api/v1/audit; `remediator audit` shows the same records), times in UTC:",
        file=out,
    )
    print_audit_table(records, out)


def print_audit_table(records: list[dict[str, Any]], out: TextIO) -> None:
    """Audit records (as the API gives them) as a table of `AUDIT_COLUMNS`."""
    rows = [[_cell(record, column) for column in AUDIT_COLUMNS] for record in records]
    widths = [
        min(48, max([len(c), *(len(row[i]) for row in rows)])) for i, c in enumerate(AUDIT_COLUMNS)
    ]
    for row in [[c.upper() for c in AUDIT_COLUMNS], *rows]:
        line = "  ".join(v[:w].ljust(w) for v, w in zip(row, widths, strict=True))
        print(line.rstrip(), file=out)


def _cell(record: dict[str, Any], column: str) -> str:
    if column == "time":
        return datetime.fromisoformat(record["time"]).strftime("%H:%M:%S.%f")[:-3]
    if column == "detail":
        details = record["details"]
        if record["kind"] == "step_finished":
            return f"{details.get('phase')}: {details.get('step')}"
        if record["kind"] == "verification_finished":
            return f"round {details.get('rounds')}: {_checks(record)}"
        return str(record["reason"] or "-")
    value = record.get(column)
    return "-" if value is None else str(value)


def configure_logging(log: TextIO) -> None:
    """remediator's structlog (console format) and the standard library's, into ``log``."""
    running.configure_logging(config.LoggingSettings(format="console", level="info"))
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=log))
    logging.basicConfig(stream=log, level=logging.WARNING, force=True)


async def run_demo(workdir: Path, *, keep: bool, no_monitoring: bool, out: TextIO) -> int:
    narrator = Narrator(out)
    unavailable = monitoring_unavailable(disabled=no_monitoring)
    narrator.note(
        "remediator demo: a store breaks, and remediator fixes it in a closed loop"
        " (store probe -> Prometheus -> Alertmanager -> webhook -> playbook -> PromQL check)"
    )
    if unavailable:
        narrator.note(
            f"{unavailable}.\n  So the demo posts the alert itself, shaped like Alertmanager's"
            " webhook, and the playbook's store_up check reads remediator's own /metrics"
            " through a stand-in for Prometheus' query API (no PromQL)."
        )
    narrator.note(f"workdir {workdir} (remediator's log: {workdir / LOG_FILE})")

    def escalated(target: str, body: dict[str, Any]) -> None:
        narrator.say("ONCALL", f"{target} received: {body.get('text', body)}")

    settings = closedloop.LoopSettings(stores=STORES, monitoring=unavailable is None)
    async with closedloop.run(workdir=workdir, settings=settings, on_escalation=escalated) as loop:
        sim = loop.platform
        narrator.say(
            "START",
            f"simulated platform: stores {', '.join(sim.store_ids)}; Kubernetes API"
            f" {sim.kube_url}, storefront {sim.storefront_url}",
        )
        if loop.monitoring:
            narrator.say(
                "START",
                f"Alertmanager {loop.alertmanager_url} -> remediator's webhook (bearer token,"
                f" group_wait {settings.group_wait}, send_resolved)",
            )
            narrator.say(
                "START",
                f"Prometheus {loop.prometheus_url}: scrapes remediator every"
                f" {settings.scrape_interval}; rules {loop.rules.name} with for:"
                f" {settings.alert_hold}",
            )
        narrator.say(
            "START",
            f"remediator {loop.url}: playbooks {loop.daemon.settings.playbooks.directory},"
            f" probing every store every {settings.probe_interval:g}s",
        )
        try:
            async with asyncio.timeout(DEADLINE):
                story = await tell(loop, narrator)
        except TimeoutError:
            narrator.note(f"\ndemo: FAILED: not finished within {DEADLINE:g}s")
            return 1
        except (DemoError, closedloop.ClosedLoopError) as e:
            if loop.daemon.stopping.is_set():
                narrator.note("\ndemo: interrupted")
                return 130
            narrator.note(f"\ndemo: FAILED: {e}")
            return 1
        healthy = sim.healthy(story.store_id)
        narrator.say(
            "HEALTHY" if healthy else "PROBLEM",
            f"store {story.store_id}: "
            + ("serving, every part ready" if healthy else "; ".join(sim.problems(story.store_id))),
        )
        await print_audit_trail(loop, story, out)
        escalations = len(loop.receiver.messages)
        narrator.note(
            f"\nrun {story.run_id}: {story.run_status}; escalations to oncall: {escalations}"
        )
        if keep:
            # The demo's token is random, local to 127.0.0.1 and gone at Ctrl-C; showing it is
            # what lets a person log in to the console at once.
            narrator.note(
                f"\nconsole {loop.url}/ui/ : log in with any name and the token {loop.token}"
            )
            narrator.note(
                f"--keep: everything keeps running until Ctrl-C. remediator {loop.url}"
                f" (token in {loop.workdir / 'webhook-token'}), storefront"
                f" {sim.storefront_url} (Host: <store>.{sim.domain}), kubeconfig {sim.kubeconfig}"
                + (
                    f", Prometheus {loop.prometheus_url}, Alertmanager {loop.alertmanager_url}"
                    if loop.monitoring
                    else ""
                )
            )
            await loop.daemon.stopping.wait()
        ok = story.run_status == "succeeded" and healthy
    stopped = "remediator, Prometheus, Alertmanager" if settings.monitoring else "remediator"
    narrator.note(f"stopped: {stopped} and the simulated platform")
    return 0 if ok else 1


def main(*, keep: bool = False, no_monitoring: bool = False, out: TextIO = sys.stdout) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="remediator-demo-"))
    code = 1
    try:
        with (workdir / LOG_FILE).open("a", encoding="utf-8") as log:
            configure_logging(log)
            code = asyncio.run(run_demo(workdir, keep=keep, no_monitoring=no_monitoring, out=out))
    except KeyboardInterrupt:
        code = 130
    finally:
        if code == 1:
            print(f"demo: logs kept in {workdir}", file=out, flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code
