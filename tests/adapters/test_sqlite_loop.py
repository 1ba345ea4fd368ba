"""The SQLite backend runs its transactions on the event loop: what that must never cost.

A write lock held by another process is waited for without blocking the loop, and given up
with a clear error; the checkpoint, the one step that fsyncs, happens on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from remediator.adapters import state
from remediator.adapters.state.connections import Connection


async def ticks_while(task: asyncio.Task[object], *, at_least: float) -> int:
    """Loop iterations counted while ``task`` waits at least ``at_least`` seconds."""
    ticks = 0
    loop = asyncio.get_running_loop()
    until = loop.time() + at_least
    while loop.time() < until:
        await asyncio.sleep(0.005)
        ticks += 1
    assert not task.done()
    return ticks


async def test_a_write_lock_held_elsewhere_is_waited_for_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    async with state.SqliteStateStore(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
            write = asyncio.create_task(store.put_setting("owner", "the daemon"))
            # The loop keeps running other work while the write waits for the lock.
            assert await ticks_while(write, at_least=0.3) > 10
            other.execute("COMMIT")
            await asyncio.wait_for(write, timeout=5)
        finally:
            other.close()
        assert await store.get_setting("owner") == "the daemon"


async def test_a_write_lock_held_past_the_busy_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    async with state.SqliteStateStore(path, busy_timeout=0.2) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(state.StateError, match=r"state\.sqlite is locked: .*0\.2 s"):
                await store.put_setting("owner", "the daemon")
        finally:
            other.execute("ROLLBACK")
            other.close()
        # Nothing was half-written, and the store works once the lock is free.
        assert await store.get_setting("owner") is None
        await store.put_setting("owner", "the daemon")
        assert await store.get_setting("owner") == "the daemon"


def settings_in_the_file_alone(path: Path, scratch: Path) -> int:
    """Settings the database file holds without its WAL: what checkpoints have copied there."""
    shutil.copyfile(path, scratch)
    copy = sqlite3.connect(scratch)
    try:
        (count,) = copy.execute("SELECT COUNT(*) FROM settings").fetchone()
        return int(count)
    finally:
        copy.close()


async def created(path: Path) -> None:
    """A store file whose schema is in the file itself (closing the last connection
    checkpoints everything)."""
    async with state.SqliteStateStore(path):
        pass


async def test_the_checkpointer_copies_commits_into_the_database_file(tmp_path: Path) -> None:
    path, scratch = tmp_path / "state.sqlite", tmp_path / "copy.sqlite"
    await created(path)
    async with state.SqliteStateStore(path, checkpoint_interval=0.05) as store:
        await store.put_setting("checkpointed", "yes")
        for _ in range(200):
            if settings_in_the_file_alone(path, scratch):
                break
            await asyncio.sleep(0.05)
        assert settings_in_the_file_alone(path, scratch) == 1


async def test_a_checkpoint_never_runs_on_the_writer_below_its_backstop(tmp_path: Path) -> None:
    path, scratch = tmp_path / "state.sqlite", tmp_path / "copy.sqlite"
    await created(path)
    # An interval longer than the test: only the writer itself could checkpoint here.
    async with state.SqliteStateStore(path, checkpoint_interval=3600) as store:
        for i in range(50):
            await store.put_setting(f"k{i}", "v" * 2000)
        assert settings_in_the_file_alone(path, scratch) == 0
    # Closed: the checkpointer's last pass has put everything in the file.
    assert settings_in_the_file_alone(path, scratch) == 50


async def test_blocking_calls_from_the_loop_thread_are_refused(tmp_path: Path) -> None:
    async with state.SqliteStateStore(tmp_path / "state.sqlite") as store:
        with pytest.raises(RuntimeError, match="other threads"):
            store._call_blocking(lambda: None)
        # From another thread they run on the loop, as every other call does.
        assert await asyncio.to_thread(store._call_blocking, lambda: 42) == 42


def sqlite_temp_files() -> list[str]:
    """Temporary files SQLite holds open in this process (it unlinks them at once)."""
    links = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            links.append(os.readlink(fd))
    return [link for link in links if "etilqs_" in link]


async def test_savepoint_journals_stay_in_memory(tmp_path: Path) -> None:
    async with state.SqliteStateStore(tmp_path / "state.sqlite") as store:
        for i in range(100):
            await store.put_setting(f"k{i}", "v" * 2000)

        def rewrite_in_a_savepoint(conn: Connection) -> list[str]:
            # About 200 KiB of existing pages changed inside one savepoint, as a group's write
            # does: past 64 KiB SQLite would spill its journal of them to a temporary file.
            conn.execute("SAVEPOINT one_write")
            conn.execute("UPDATE settings SET value = ? WHERE key LIKE 'k%'", ("w" * 2000,))
            opened = sqlite_temp_files()
            conn.execute("RELEASE SAVEPOINT one_write")
            return opened

        assert await store._transact("rewrite", rewrite_in_a_savepoint) == []
        assert await store.get_setting("k99") == "w" * 2000


class CountingStore(state.SqliteStateStore):
    """The real store, counting the write transactions it commits."""

    writes_committed = 0

    def _in_transaction(self, operation: str, job: Any, *, write: bool) -> Any:
        result = super()._in_transaction(operation, job, write=write)
        self.writes_committed += write
        return result


async def writes_one_per_iteration(store: state.SqlStateStore, count: int) -> None:
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(store.put_setting(f"k{i}", "v")))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)


async def test_writes_arriving_while_a_group_waits_share_its_commit(tmp_path: Path) -> None:
    async with CountingStore(tmp_path / "state.sqlite") as store:
        before = store.writes_committed
        await writes_one_per_iteration(store, 5)
        assert store.writes_committed - before == 1

        # ... but only so long: past gather_iterations the group commits anyway.
        before = store.writes_committed
        await writes_one_per_iteration(store, 4 * store.gather_iterations)
        assert store.writes_committed - before >= 3
        assert await store.get_setting(f"k{4 * store.gather_iterations - 1}") == "v"
