"""Store discovery and probing of many simulated stores, next to a plain loop of aiohttp GETs.

Four processes besides this one, all on 127.0.0.1: the Kubernetes API emulator seeded with
``--stores`` namespaces (labelled as stores) and one Ingress each (host ``s<i>.bench.test``); one
aiohttp server answering every store by Host header; and, one after the other, the workers:

- ``daemon``: remediator's own code. `StoreMonitor` discovers the stores (list + watch of
  namespaces, Deployments, StatefulSets, Ingresses), then `ProbeLoop.probe_round` probes every
  store ``--rounds`` times through `Prober` with ``connect_to`` (a fresh connection per probe),
  ``--concurrency`` at once, and the directory records each answer in the store metrics;
- ``plain-fresh``: ``asyncio.gather`` of ``session.get(...)`` behind a semaphore of the same
  size, ``force_close=True`` (a fresh connection per GET, like the prober);
- ``plain-keepalive``: the same with aiohttp's default connection pooling.

Each worker is its own process, so CPU time (``time.process_time``, all threads) and peak
memory (``ru_maxrss``) are its own; the servers' CPU is not counted. Reported per worker: CPU
seconds and wall seconds per round (median of the rounds), probes per CPU second, RSS after
imports and peak RSS; for the daemon also discovery time and CPU, and the CPU of one
``StoreDirectory.refresh`` over all stores (what the refresher does every 10 s).

    python bench/probe.py [--stores N] [--rounds R] [--concurrency C] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import resource
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

HOST = "127.0.0.1"
DOMAIN = "bench.test"
PATH = "/wp-includes/images/blank.gif"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
DEFAULT_STORES = 10_000
DEFAULT_ROUNDS = 3
DEFAULT_CONCURRENCY = 50
STARTUP_TIMEOUT = 120.0
SCRIPT = Path(__file__).resolve()
WORKERS = ("plain-fresh", "plain-keepalive", "daemon")


class BenchError(Exception):
    """The bench could not measure: a server or worker did not start or failed."""


def host(i: int) -> str:
    return f"s{i}.{DOMAIN}"


def rss_mib() -> float:
    """Resident memory now, from /proc (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def announce(value: dict[str, Any]) -> None:
    """One JSON line on stdout: how a child tells the bench its address or its report."""
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def until_stdin_closes() -> None:
    """Children live as long as the bench holds their stdin open: no orphans if it dies."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()


# --- the servers (children) ---------------------------------------------------------------------


async def serve_stores() -> None:
    async def blank(request: web.Request) -> web.Response:
        return web.Response(body=GIF, content_type="image/gif")

    app = web.Application()
    app.router.add_get("/{tail:.*}", blank)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=4096)
    await site.start()
    announce({"port": runner.addresses[0][1]})
    try:
        await until_stdin_closes()
    finally:
        await runner.cleanup()


async def serve_kube(stores: int) -> None:
    from remediator.simulation import kubeapi

    emulator = kubeapi.KubeEmulator()
    objects: list[dict[str, Any]] = []
    for i in range(stores):
        ns = f"store-s{i}"
        labels = {"app.kubernetes.io/part-of": "store-platform"}
        metadata = {"name": ns, "labels": labels}
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
        objects.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {"name": f"s{i}-app", "namespace": ns},
                "spec": {"rules": [{"host": host(i)}]},
            }
        )
    emulator.seed(objects)
    async with kubeapi.serve(emulator) as url:
        announce({"url": url})
        await until_stdin_closes()


# --- the workers (children) ---------------------------------------------------------------------


def summarize(rounds: list[dict[str, float]], probes: int) -> dict[str, Any]:
    cpu = statistics.median(r["cpu_s"] for r in rounds)
    wall = statistics.median(r["wall_s"] for r in rounds)
    return {
        "rounds": rounds,
        "cpu_s_per_round": round(cpu, 3),
        "wall_s_per_round": round(wall, 3),
        "probes_per_cpu_s": round(probes / cpu) if cpu else None,
        "probes_per_s": round(probes / wall) if wall else None,
    }


async def measure(action: Awaitable[object]) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    await action
    return {
        "cpu_s": round(time.process_time() - cpu, 3),
        "wall_s": round(time.perf_counter() - wall, 3),
    }


async def daemon_worker(args: argparse.Namespace, base_rss: float) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from remediator import config
    from remediator.adapters import kubernetes, metrics, probing
    from remediator.engine import monitoring

    settings = config.from_mapping(
        {
            "stores": {
                "refresh_interval": 3600,
                "check_interval": 3600,
                "watch_timeout": 3600,
                "probe": {"enabled": False},  # rounds are run below, one after the other
            }
        }
    )
    registry = CollectorRegistry()
    store_metrics = metrics.StoreMetrics(registry)
    async with (
        kubernetes.KubeClient.from_url(args.kube, timeout=120) as kube,
        aiohttp.ClientSession() as http,
    ):
        monitor = monitoring.StoreMonitor(
            settings=settings, kube=kube, http=http, store_metrics=store_metrics
        )
        directory = monitor.directory
        started_cpu, started = time.process_time(), time.perf_counter()
        task = asyncio.create_task(monitor.run())
        try:
            await monitor.synced()
            await directory.wait_until(lambda: len(directory.targets()) >= args.stores)
            discovery = {
                "cpu_s": round(time.process_time() - started_cpu, 3),
                "wall_s": round(time.perf_counter() - started, 3),
                "rss_mib": rss_mib(),
                "peak_rss_mib": peak_rss_mib(),
            }
            refresh_cpu = time.process_time()
            directory.refresh()
            refresh_cpu = time.process_time() - refresh_cpu
            targets = directory.targets()
            async with probing.Prober(
                timeout=args.probe_timeout,
                connect_to=(HOST, args.port),
                concurrency=args.concurrency,
            ) as prober:
                loop = monitoring.ProbeLoop(
                    directory,
                    prober,
                    interval=3600,
                    jitter=0,
                    concurrency=args.concurrency,
                )
                rounds = [await measure(loop.probe_round(targets)) for _ in range(args.rounds)]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    up = sum(
        1
        for family in registry.collect()
        if family.name == "store_up"
        for s in family.samples
        if s.value == 1
    )
    failed = {
        s.labels["reason"]: s.value
        for family in registry.collect()
        if family.name == "store_probe_failures"
        for s in family.samples
        if s.name.endswith("_total") and s.value
    }
    return {
        "discovered": len(directory),
        "discovery": discovery,
        "refresh_cpu_s": round(refresh_cpu, 3),
        "probed_up": up,
        "failures": failed,
        **summarize(rounds, len(targets)),
        "base_rss_mib": base_rss,
        "end_rss_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
    }


async def plain_worker(args: argparse.Namespace, base_rss: float, *, fresh: bool) -> dict[str, Any]:
    url = f"http://{HOST}:{args.port}{PATH}"
    hosts = [host(i) for i in range(args.stores)]
    limit = asyncio.Semaphore(args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.probe_timeout)
    ok = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=fresh)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def get(name: str) -> int:
            async with limit:
                try:
                    async with session.get(url, headers={"Host": name}) as response:
                        return response.status
                except (aiohttp.ClientError, TimeoutError):
                    return 0

        async def one_round() -> None:
            nonlocal ok
            statuses = await asyncio.gather(*(get(h) for h in hosts))
            ok = sum(1 for s in statuses if s == 200)

        rounds = [await measure(one_round()) for _ in range(args.rounds)]
    return {
        "probed_up": ok,
        **summarize(rounds, len(hosts)),
        "base_rss_mib": base_rss,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    # stdout carries the report: logs go to stderr, warnings and errors only.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    # Import what the daemon imports before the baseline RSS is taken, so that both kinds of
    # worker report their working memory on top of the same interpreter + libraries.
    import kubernetes_asyncio  # noqa: F401
    import prometheus_client  # noqa: F401

    import remediator.engine.monitoring  # noqa: F401

    base_rss = rss_mib()
    if args.worker == "daemon":
        return asyncio.run(daemon_worker(args, base_rss))
    return asyncio.run(plain_worker(args, base_rss, fresh=args.worker == "plain-fresh"))


# --- the bench (parent) -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def child(
    *argv: str, deadline: float = STARTUP_TIMEOUT
) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, Any]]]:
    """This script in another role; yields once it has announced itself (one JSON line): a
    server its address, a worker its report."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(deadline):
            line = await process.stdout.readline()
        if not line:
            raise BenchError(f"{' '.join(argv)}: exited with {await process.wait()}")
        yield process, json.loads(line)
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    common = [
        "--stores", str(args.stores),
        "--rounds", str(args.rounds),
        "--concurrency", str(args.concurrency),
        "--probe-timeout", str(args.probe_timeout),
    ]  # fmt: skip
    report: dict[str, Any] = {
        "config": {
            "stores": args.stores,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
    }
    async with (
        child("--role", "stores") as (_, stores_server),
        child("--role", "kube", "--stores", str(args.stores)) as (_, kube),
    ):
        port = str(stores_server["port"])
        for worker in WORKERS:
            argv = ["--worker", worker, "--port", port, "--kube", kube["url"], *common]
            async with child(*argv, deadline=args.timeout) as (process, found):
                report[worker] = found
                if await process.wait() != 0:
                    raise BenchError(f"worker {worker} exited with {process.returncode}")
    daemon, plain = report["daemon"], report["plain-fresh"]
    report["ratio"] = {
        "cpu_per_round_vs_plain_fresh": _ratio(daemon["cpu_s_per_round"], plain["cpu_s_per_round"]),
        "cpu_per_round_vs_plain_keepalive": _ratio(
            daemon["cpu_s_per_round"], report["plain-keepalive"]["cpu_s_per_round"]
        ),
        "peak_rss_vs_plain_fresh": _ratio(daemon["peak_rss_mib"], plain["peak_rss_mib"]),
    }
    report["checks"] = {
        "all_discovered": daemon["discovered"] == args.stores,
        "daemon_all_up": daemon["probed_up"] == args.stores and not daemon["failures"],
        "plain_all_up": all(report[w]["probed_up"] == args.stores for w in WORKERS[:2]),
    }
    report["complete"] = all(report["checks"].values())
    return report


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def print_report(report: dict[str, Any]) -> None:
    config = report["config"]
    print(
        f"{config['stores']} stores, {config['rounds']} rounds, concurrency "
        f"{config['concurrency']}, Python {config['python']}, {config['cpus']} CPUs"
    )
    print(f"{'worker':<16} {'CPU s/round':>11} {'wall s/round':>12} {'probes/CPU s':>12} "
          f"{'RSS MiB':>8} {'peak MiB':>8}")  # fmt: skip
    for worker in WORKERS:
        row = report[worker]
        print(
            f"{worker:<16} {row['cpu_s_per_round']:>11} {row['wall_s_per_round']:>12} "
            f"{row['probes_per_cpu_s']!s:>12} {row['base_rss_mib']:>8} {row['peak_rss_mib']:>8}"
        )
    daemon = report["daemon"]
    print(
        f"daemon discovery: {daemon['discovery']['wall_s']} s wall, "
        f"{daemon['discovery']['cpu_s']} s CPU, peak {daemon['discovery']['peak_rss_mib']} MiB; "
        f"one refresh of all stores: {daemon['refresh_cpu_s']} s CPU; "
        f"RSS after the rounds {daemon['end_rss_mib']} MiB"
    )
    ratio = report["ratio"]
    print(
        f"ratio daemon/plain CPU per round: {ratio['cpu_per_round_vs_plain_fresh']} (fresh), "
        f"{ratio['cpu_per_round_vs_plain_keepalive']} (keep-alive); "
        f"peak RSS daemon/plain: {ratio['peak_rss_vs_plain_fresh']}"
    )
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("checks: all passed" if not failed else f"checks FAILED: {', '.join(failed)}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/probe.py",
        description="CPU per probe round and peak memory: store prober vs plain aiohttp GETs.",
    )
    parser.add_argument("--stores", type=int, default=DEFAULT_STORES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--probe-timeout", type=float, default=30.0, help="seconds per probe")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds each worker may take (default 900)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")
    parser.add_argument("--role", choices=("stores", "kube"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kube", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stores < 1 or args.rounds < 1 or args.concurrency < 1:
        parser.error("--stores, --rounds and --concurrency must be >= 1")
    return args


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C: the children's stdin closes and they exit.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_bench(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "stores":
        asyncio.run(serve_stores())
        return 0
    if args.role == "kube":
        asyncio.run(serve_kube(args.stores))
        return 0
    if args.worker is not None:
        announce(run_worker(args))
        return 0
    try:
        report = asyncio.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench interrupted; children stopped", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
