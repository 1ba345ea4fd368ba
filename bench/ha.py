"""What high availability costs: one replica on SQLite, one and three on PostgreSQL, one run.

The same load shapes as ``bench/compare.py`` (its load generator, servers and measurement,
reused), against three set-ups of remediator started fresh for each measurement:

- ``sqlite x1``: one daemon on a fresh SQLite file (what a single replica runs);
- ``postgresql x1``: one daemon on a fresh database of a real PostgreSQL;
- ``postgresql x3``: three daemons sharing a fresh database, the load round-robin over them.

PostgreSQL is started by the bench (`remediator.simulation.postgresql.run_postgres`, as the
tests and ``demo --ha`` do: a throw-away server with ``fsync=off``, so the figures are the
coordination's, not a disk's), one server for the whole run and one database per measurement.
Each daemon reads the password from ``state.password_file``. Two shapes, ``--seconds`` long,
``--repetitions`` times, interleaved between the set-ups so that a neighbour's load hits all
alike, medians reported:

- ``dispatch``: ``--connections`` workers post one alert and wait, every alert for a new store,
  so every one becomes a run: accepted alerts/s, and runs finished per second within the load;
- ``open``: ``--open-rate`` alerts/s on a fixed schedule, each for a new store: p99 from the
  scheduled POST to the run's ``started_at``.

Nothing is pinned: the replicas, PostgreSQL and the load generator share the machine's CPUs, as
they would share a node. Run from the repository root::

    python -m bench.ha [--seconds 10] [--repetitions 3] [--open-rate 10] [--shapes ...]
                       [--quick] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import compare, intake
from remediator.simulation import closedloop, postgresql


@dataclass(frozen=True, slots=True)
class Setup:
    backend: str
    """``sqlite`` or ``postgresql``."""
    replicas: int

    @property
    def name(self) -> str:
        return f"{self.backend} x{self.replicas}"


SETUPS = (Setup("sqlite", 1), Setup("postgresql", 1), Setup("postgresql", 3))
BASELINE = SETUPS[0]
SHAPES = ("dispatch", "open")
FIGURES = {
    "alerts_per_s": "accepted alerts/s (every alert a run)",
    "runs_per_s": "runs finished/s within the load",
    "p99_ms": "open loop: p99 POST→run started ms",
}
QUICK = {"seconds": 1.0, "repetitions": 1, "open_rate": 10.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class Database:
    """Where fresh PostgreSQL databases come from, and the file with their password."""

    server: postgresql.PostgresServer
    password_file: Path


def compare_options(args: argparse.Namespace) -> compare.Options:
    """compare.measure's options: only the load's fields matter to it."""
    return compare.Options(
        seconds=args.seconds,
        repetitions=args.repetitions,
        connections=args.connections,
        open_rate=args.open_rate,
        burst=0,
        burst_group=1,
        burst_sender="retry-after",
        burst_only=False,
        skip_ansible=True,
        state="sqlite",
        replicas=1,
        cache=compare.ROOT / ".bench",
        timeout=args.timeout,
        profile=None,
    )


def figures_of(shape: str, measured: dict[str, Any]) -> dict[str, float | None]:
    if shape == "dispatch":
        return {"alerts_per_s": measured["alerts_per_s"], "runs_per_s": measured["actions_per_s"]}
    p99: float | None = measured["action_latency"]["p99_ms"]
    return {"p99_ms": p99}


async def measure_setup(
    setup: Setup,
    shape: str,
    *,
    run_dir: Path,
    prefix: str,
    options: compare.Options,
    database: Database,
) -> dict[str, Any]:
    state = "sqlite"
    password_file = None
    if setup.backend == "postgresql":
        name = run_dir.name.replace("-", "_")
        state = await asyncio.to_thread(database.server.create_database, name)
        password_file = database.password_file
    async with compare.remediator_servers(
        run_dir, state=state, replicas=setup.replicas, cpu=None, password_file=password_file
    ) as server:
        return await compare.measure(server, shape, options=options, prefix=prefix, profile=None)


async def run_ha(
    options: compare.Options, workdir: Path, database: Database, *, shapes: Sequence[str]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    count = 0
    for shape in shapes:
        per_setup: dict[str, list[dict[str, Any]]] = {}
        for repetition in range(options.repetitions):
            for setup in SETUPS:
                count += 1
                run_dir = workdir / f"m{count:02d}-{shape}-{setup.backend}{setup.replicas}"
                run_dir.mkdir()
                measured = await measure_setup(
                    setup,
                    shape,
                    run_dir=run_dir,
                    prefix=f"t{count}-",
                    options=options,
                    database=database,
                )
                per_setup.setdefault(setup.name, []).append(measured)
                shown = ", ".join(f"{k} {v}" for k, v in figures_of(shape, measured).items())
                print(f"  {shape:<9} {setup.name:<14} #{repetition + 1}: {shown}", file=sys.stderr)
        results[shape] = per_setup
    return results


def summarize(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Set-up → figure → median, min, max and the ratio of medians to `BASELINE`'s."""
    summary: dict[str, dict[str, Any]] = {}
    for shape, per_setup in results.items():
        for name, measured in per_setup.items():
            row = summary.setdefault(name, {})
            values: dict[str, list[float]] = {}
            for one in measured:
                for figure, value in figures_of(shape, one).items():
                    if value is not None:
                        values.setdefault(figure, []).append(value)
            for figure, found in values.items():
                row[figure] = {
                    "median": round(statistics.median(found), 1),
                    "min": min(found),
                    "max": max(found),
                }
    base = summary.get(BASELINE.name, {})
    for row in summary.values():
        for figure, cell in row.items():
            reference = base.get(figure, {}).get("median")
            cell["ratio"] = round(cell["median"] / reference, 2) if reference else None
    return summary


def print_report(report: dict[str, Any]) -> None:
    cfg, summary = report["config"], report["summary"]
    print(
        f"ha: {cfg['seconds']:g} s per test, {cfg['repetitions']} repetitions (median"
        f" [min-max] (ratio to {BASELINE.name})), {cfg['connections']} connections, open loop"
        f" {cfg['open_rate']:g} alerts/s, {cfg['cpus']} CPUs, nothing pinned"
    )
    header = f"{'':<40}" + "".join(f"{setup.name:>30}" for setup in SETUPS)
    print(header)
    print("-" * len(header))
    for figure, title in FIGURES.items():
        cells = []
        for setup in SETUPS:
            cell = summary.get(setup.name, {}).get(figure)
            if cell is None:
                cells.append(f"{'-':>30}")
                continue
            ratio = "-" if cell["ratio"] is None else f"{cell['ratio']:g}"
            text = f"{cell['median']:,} [{cell['min']:,}-{cell['max']:,}] ({ratio})"
            cells.append(f"{text:>30}")
        print(f"{title:<40}" + "".join(cells))
    print("-" * len(header))
    for shape, per_setup in report["results"].items():
        for name, measured in per_setup.items():
            print(
                f"  {shape} {name}: 503s {[m['refusals_503'] for m in measured]}, errors"
                f" {[m['errors'] for m in measured]}, server CPU s"
                f" {[m['server_cpu_s'] for m in measured]}"
            )
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("checks: all passed" if not failed else f"checks FAILED: {', '.join(failed)}")


async def run_bench(
    options: compare.Options, workdir: Path, database: Database, *, shapes: Sequence[str]
) -> dict[str, Any]:
    results = await run_ha(options, workdir, database, shapes=shapes)
    measured = [m for per in results.values() for ms in per.values() for m in ms]
    opened = [m for ms in results.get("open", {}).values() for m in ms]
    checks = {
        "no_errors": all(m["errors"] == 0 for m in measured),
        "open_loop_drained": all(m["drained"] for m in opened),
        "open_loop_every_run_started": all(m["actions"] == m["accepted_alerts"] for m in opened),
    }
    return {
        "bench": "ha",
        "config": {
            "seconds": options.seconds,
            "repetitions": options.repetitions,
            "connections": options.connections,
            "open_rate": options.open_rate,
            "shapes": list(shapes),
            "setups": [s.name for s in SETUPS],
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "results": results,
        "summary": summarize(results),
        "checks": checks,
        "complete": all(checks.values()),
    }


@contextlib.contextmanager
def running_database(workdir: Path) -> Iterator[Database]:
    """A throw-away PostgreSQL for the whole bench, its password in a 0600 file."""
    with postgresql.run_postgres(workdir / "postgres") as server:
        password_file = closedloop.write_secret(workdir / "state-password", server.password)
        yield Database(server=server, password_file=password_file)


async def _main(
    options: compare.Options, workdir: Path, database: Database, *, shapes: Sequence[str]
) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C: cancellation, so every server is stopped on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with asyncio.timeout(options.timeout):
        return await run_bench(options, workdir, database, shapes=shapes)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ha",
        description="remediator on SQLite x1, PostgreSQL x1 and PostgreSQL x3, same loads.",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="load per test (10)")
    parser.add_argument("--repetitions", type=int, default=3, help="per shape and set-up (3)")
    parser.add_argument("--connections", type=int, default=16, help="client connections (16)")
    parser.add_argument("--open-rate", type=float, default=10.0, help="open loop alerts/s (10)")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=SHAPES,
        default=list(SHAPES),
        help="load shapes to measure (both)",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="global deadline (s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny loads, 1 rep")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    if args.seconds <= 0 or args.repetitions < 1 or args.connections < 1 or args.open_rate <= 0:
        parser.error("--seconds, --repetitions, --connections and --open-rate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = compare_options(args)
    if not postgresql.available():
        print(
            "ha bench: PostgreSQL is not installed (Debian package postgresql; `make setup`"
            " installs it)",
            file=sys.stderr,
        )
        return 2

    def run() -> dict[str, Any]:
        with intake.work_directory(args.keep) as workdir, running_database(workdir) as database:
            return asyncio.run(_main(options, workdir, database, shapes=args.shapes))

    return intake.run_to_exit_status(
        "ha bench",
        run,
        timeout=options.timeout,
        show=print_report,
        json_path=args.json,
        errors=(intake.BenchError, postgresql.PostgresError),
    )


if __name__ == "__main__":
    raise SystemExit(main())
