"""Command line: ``remediator serve | validate | simulate | test | audit | demo``.

Exit codes: 0 success, 1 invalid input or a failed check (problems are printed as
``file:line: path: message``), 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from remediator import __version__, config, running
from remediator.adapters import loading, state
from remediator.core import reporting
from remediator.core import scenarios as core_scenarios
from remediator.core.errors import InvalidInputError, RemediatorError
from remediator.core.runs import AuditRecord, Page, RunFilter
from remediator.engine import simulating
from remediator.engine.actions import registry


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except InvalidInputError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    except RemediatorError as e:
        # E.g. a state file that is missing or not a database: a message, not a traceback.
        print(f"remediator: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remediator", description="Auto-remediation for Alertmanager alerts."
    )
    parser.add_argument("--version", action="version", version=f"remediator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="YAML config file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override server.host/port")
    serve.add_argument("--playbooks", metavar="DIR", help="override playbooks.directory")
    serve.add_argument(
        "--state", metavar="PATH|URL", help="override state.path (SQLite file or postgresql:// URL)"
    )
    serve.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="mutating actions only report what they would do",
    )
    serve.add_argument("--token-file", metavar="FILE", help="webhook bearer token file")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="accept unauthenticated requests (local experiments only)",
    )
    serve.set_defaults(handler=_serve)

    validate = commands.add_parser("validate", help="check playbooks; exit 1 on any problem")
    validate.add_argument("paths", nargs="*", default=["playbooks"], metavar="PATH")
    validate.add_argument(
        "--config", type=Path, help="the daemon's config, for its safety defaults"
    )
    validate.set_defaults(handler=_validate)

    simulate = commands.add_parser("simulate", help="show what an alert would do, changing nothing")
    simulate.add_argument(
        "--alert",
        required=True,
        type=Path,
        help="an Alertmanager webhook payload or a single alert (JSON)",
    )
    simulate.add_argument("--playbooks", default="playbooks", metavar="DIR")
    simulate.add_argument("--config", type=Path)
    simulate.add_argument("--json", action="store_true", help="machine-readable output")
    simulate.add_argument(
        "--state",
        metavar="PATH",
        help="decide safety against this state file (read-only), not a fresh one",
    )
    simulate.set_defaults(handler=_simulate)

    audit = commands.add_parser("audit", help="review the audit log")
    audit.add_argument(
        "--state", metavar="PATH|URL", help="SQLite file or postgresql:// URL (default: --config)"
    )
    audit.add_argument("--config", type=Path)
    audit_commands = audit.add_subparsers(dest="audit_command")
    verify = audit_commands.add_parser("verify", help="check the hash chain")
    verify.add_argument("--state", metavar="PATH", dest="verify_state")
    verify.set_defaults(handler=_audit_verify)
    for name in ("since", "until", "playbook", "target", "outcome", "alertname", "kind"):
        audit.add_argument(f"--{name}")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--cursor")
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    audit.set_defaults(handler=_audit)

    test = commands.add_parser(
        "test",
        help="run playbook scenarios on the simulated platform; exit 1 on a failure, 2 on a bad"
        " scenario file",
    )
    test.add_argument("paths", nargs="*", default=["playbooks/tests"], metavar="PATH")
    test.add_argument("--playbooks", default="playbooks", metavar="DIR")
    test.add_argument("--config", type=Path, help="the daemon's config, for its safety defaults")
    test.add_argument(
        "--coverage",
        action="store_true",
        help="list the branches and steps no scenario exercised; exit 1 if a branch is untaken",
    )
    test.add_argument(
        "--time-scale",
        type=float,
        default=core_scenarios.DEFAULT_TIME_SCALE,
        help="factor applied to the playbooks' poll intervals and backoffs"
        f" (default {core_scenarios.DEFAULT_TIME_SCALE:g})",
    )
    test.set_defaults(handler=_test)

    _add_control_commands(commands)

    demo = commands.add_parser(
        "demo",
        help="break a simulated store and watch remediator fix it, through a real Prometheus"
        " and Alertmanager",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave everything running afterwards, until Ctrl-C"
    )
    demo.add_argument(
        "--no-monitoring",
        action="store_true",
        help="run without Prometheus and Alertmanager, as when they are not installed"
        " (also REMEDIATOR_DEMO_NO_MONITORING=1)",
    )
    demo.add_argument(
        "--ha",
        action="store_true",
        help="three replicas on a real PostgreSQL: kill the one running the remediation and"
        " watch another take it over (needs PostgreSQL installed)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _settings(args: argparse.Namespace) -> config.Settings:
    settings = config.load(getattr(args, "config", None))
    overrides: dict[str, Any] = {}
    listen = getattr(args, "listen", None)
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise SystemExit(f"remediator: --listen must be HOST:PORT, not {listen!r}")
        overrides["server.host"], overrides["server.port"] = host or "127.0.0.1", int(port)
    overrides["playbooks.directory"] = getattr(args, "playbooks", None)
    overrides["state.path"] = getattr(args, "state", None)
    overrides["engine.dry_run"] = getattr(args, "dry_run", None)
    overrides["auth.token_file"] = getattr(args, "token_file", None)
    overrides["auth.insecure_no_auth"] = getattr(args, "insecure_no_auth", None)
    return config.override(settings, **overrides)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    running.configure_logging(settings.logging)
    return asyncio.run(running.serve(settings))


def _validate(args: argparse.Namespace) -> int:
    files = loading.playbook_files(args.paths)
    defaults = config.load(args.config).safety.defaults
    playbooks = loading.load_playbooks(args.paths, registry.builtin(), defaults=defaults)
    print(f"{len(playbooks.playbooks)} playbooks in {len(files)} files: OK")
    return 0


def _test(args: argparse.Namespace) -> int:
    # Imported here: the daemon's commands never load the simulation.
    from remediator.simulation import scenarios

    # The engine's and the platform's own log lines would bury the one line per scenario.
    running.configure_logging(config.LoggingSettings(format="console", level="error"))
    return scenarios.main(
        [Path(p) for p in args.paths],
        playbooks_dir=Path(args.playbooks),
        config_path=args.config,
        coverage=args.coverage,
        time_scale=args.time_scale,
        out=sys.stdout,
        err=sys.stderr,
    )


def _simulate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    actions = registry.builtin()
    playbooks = loading.load_playbooks([args.playbooks], actions, defaults=settings.safety.defaults)
    try:
        raw = json.loads(args.alert.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"{args.alert}: cannot read alert JSON: {e}", file=sys.stderr)
        return 1
    decide = None
    if args.state:
        decide = asyncio.run(_preview_decisions(args.state, raw, playbooks, settings))
    report = simulating.simulate(raw, playbooks, actions, settings=settings, decide=decide)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        simulating.print_report(report, sys.stdout)
    return 0


async def _preview_decisions(
    path: str, raw: Any, playbooks: Any, settings: config.Settings
) -> simulating.Decide:
    """Decisions against a live state, read-only: what the daemon would decide now."""
    store = state.open_store(dataclasses.replace(settings.state, path=path), readonly=True)
    await store.open()
    try:
        table = {}
        for run, alertname in simulating.candidates(raw, playbooks, settings=settings):
            assert run.policy is not None  # noqa: S101 - plan_admission attaches one
            table[(run.playbook, run.target, alertname)] = await store.preview_admission(
                run,
                run.policy,
                alertname,
                now=time.time(),
                known_targets=settings.safety.known_targets,
            )
    finally:
        await store.close()
    return lambda run, alertname: table[(run.playbook, run.target, alertname)]


def _add_control_commands(commands: Any) -> None:
    def control(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        parser.add_argument("--config", type=Path, help="to find the daemon's address")
        parser.add_argument("--url", help="daemon base URL (default from --config)")
        parser.add_argument(
            "--token-file",
            metavar="FILE",
            help="API token (default $REMEDIATOR_API_TOKEN, then $REMEDIATOR_TOKEN)",
        )
        parser.add_argument(
            "--by",
            default=os.environ.get("USER", "operator"),
            help="who is deciding, for the audit log (default $USER)",
        )
        return parser

    pause = control("pause", "pause all remediation (kill switch); alerts are still recorded")
    pause.add_argument("--reason", required=True)
    pause.set_defaults(handler=_pause)
    resume = control("resume", "resume remediation")
    resume.set_defaults(handler=_resume)
    status = control("safety", "show pause state, open breakers, storms, runs awaiting approval")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_safety)
    breakers = control("breakers", "reset circuit breakers")
    breakers.add_argument("action", choices=["reset"])
    breakers.add_argument("playbook")
    breakers.add_argument("--target", help="only this target's breaker")
    breakers.set_defaults(handler=_reset_breakers)
    for name, approved in (("approve", True), ("reject", False)):
        decide = control(name, f"{name} a run waiting in awaiting_approval")
        decide.add_argument("run_id")
        decide.add_argument("--comment", default="")
        decide.set_defaults(handler=_approval, approved=approved)


def _api(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One authenticated call to the daemon's API; prints the error and exits 1 on failure."""
    settings = config.load(args.config)
    wildcard = settings.server.host in ("0.0.0.0", "::")  # noqa: S104 - a listen address, mapped to loopback
    host = "127.0.0.1" if wildcard else settings.server.host
    url = (args.url or f"http://{host}:{settings.server.port}").rstrip("/") + path
    token = config.read_token(args.token_file, "REMEDIATOR_API_TOKEN") or config.read_token(
        None, "REMEDIATOR_TOKEN"
    )

    async def call() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=15)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url, json=body, headers=headers) as response,
        ):
            return response.status, await response.json(content_type=None)

    try:
        status, payload = asyncio.run(call())
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise SystemExit(f"remediator: cannot reach {url}: {e}") from e
    if status >= 400:
        message = payload.get("message", payload) if isinstance(payload, dict) else payload
        raise SystemExit(f"remediator: {method} {path}: HTTP {status}: {message}")
    return payload


def _pause(args: argparse.Namespace) -> int:
    result = _api(args, "POST", "/api/v1/pause", {"by": args.by, "reason": args.reason})
    print("remediation paused" if result["changed"] else "remediation was already paused")
    return 0


def _resume(args: argparse.Namespace) -> int:
    result = _api(args, "POST", "/api/v1/resume", {"by": args.by})
    print("remediation resumed" if result["changed"] else "remediation was not paused")
    return 0


def _safety(args: argparse.Namespace) -> int:
    status = _api(args, "GET", "/api/v1/safety")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    paused = status["paused"]
    print(
        f"paused: by {paused['by']} since {reporting.timestamp(paused['since'])}: "
        f"{paused['reason']}"
        if paused
        else "paused: no"
    )
    for breaker in status["breakers"]:
        scope = breaker["target"] or "(whole playbook)"
        print(
            f"breaker open: {breaker['playbook']} {scope} until "
            f"{reporting.timestamp(breaker['closes_at'])}"
        )
    for storm in status["storms"]:
        print(f"storm: {storm['alertname']} (playbook {storm['playbook']})")
    for run_id in status["awaiting_approval"]:
        print(f"awaiting approval: run {run_id}")
    return 0


def _reset_breakers(args: argparse.Namespace) -> int:
    body = {"by": args.by, "playbook": args.playbook, "target": args.target}
    result = _api(args, "POST", "/api/v1/breakers/reset", body)
    print(f"closed {result['closed']} breaker(s)")
    return 0


def _approval(args: argparse.Namespace) -> int:
    verb = "approve" if args.approved else "reject"
    _api(
        args, "POST", f"/api/v1/runs/{args.run_id}/{verb}", {"by": args.by, "comment": args.comment}
    )
    print(f"run {args.run_id}: {'approved' if args.approved else 'rejected'}")
    return 0


def _state_settings(args: argparse.Namespace) -> config.StateSettings:
    """The config's state group, with ``--state`` (a file or a postgresql:// URL) over it."""
    settings = config.load(args.config).state
    explicit = getattr(args, "verify_state", None) or args.state
    return dataclasses.replace(settings, path=str(explicit)) if explicit else settings


def _audit(args: argparse.Namespace) -> int:
    where = _state_settings(args)
    query = {
        k: v
        for k in ("since", "until", "playbook", "target", "outcome", "alertname", "kind")
        if (v := getattr(args, k)) is not None
    }
    try:
        since = reporting.parse_timestamp(query["since"]) if "since" in query else None
        until = reporting.parse_timestamp(query["until"]) if "until" in query else None
    except ValueError as e:
        print(f"remediator audit: --since/--until must be RFC 3339 or epoch: {e}", file=sys.stderr)
        return 1
    flt = RunFilter(
        since=since,
        until=until,
        playbook=query.get("playbook"),
        target=query.get("target"),
        outcome=query.get("outcome"),
        alertname=query.get("alertname"),
        kind=query.get("kind"),
    )
    page = asyncio.run(_query_audit(where, flt, args.limit, args.cursor))
    if args.json:
        for record in page.items:
            print(json.dumps(reporting.audit_json(record), sort_keys=True))
    else:
        _print_audit_table(page.items, sys.stdout)
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


async def _query_audit(
    where: config.StateSettings, flt: RunFilter, limit: int, cursor: str | None
) -> Page[AuditRecord]:
    store = state.open_store(where, readonly=True)
    await store.open()
    try:
        return await store.query_audit(flt, limit=limit, cursor=cursor)
    finally:
        await store.close()


def _print_audit_table(records: Sequence[AuditRecord], out: TextIO) -> None:
    columns = ("seq", "time", "kind", "alertname", "playbook", "target", "outcome", "reason")
    rows = []
    for record in records:
        item = reporting.audit_json(record)
        rows.append([str(item[c] if item[c] is not None else "-") for c in columns])
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    widths = [min(w, 48) for w in widths]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    for row in rows:
        print("  ".join(v[:w].ljust(w) for v, w in zip(row, widths, strict=True)), file=out)


def _audit_verify(args: argparse.Namespace) -> int:
    where = _state_settings(args)

    async def verify() -> Any:
        store = state.open_store(where, readonly=True)
        await store.open()
        try:
            return await store.verify_audit()
        finally:
            await store.close()

    report = asyncio.run(verify())
    if report.intact:
        print(f"audit log intact: {report.checked} records")
        # Only a copy kept elsewhere can show that records were cut off the end.
        print(f"head: seq {report.head_seq} hash {report.head_hash}")
        return 0
    print(
        f"audit log BROKEN at record {report.first_broken}: {report.reason} "
        f"({report.checked} records before it are intact)"
    )
    return 1


def _demo(args: argparse.Namespace) -> int:
    from remediator import demo  # the demo pulls in the simulation; serve never needs it

    if args.ha:
        from remediator import hademo

        if args.keep or args.no_monitoring:
            print("remediator demo: --ha takes neither --keep nor --no-monitoring", file=sys.stderr)
            return 2

        return hademo.main()
    return demo.main(keep=args.keep, no_monitoring=args.no_monitoring)
