"""The SQLite backend runs its transactions on the event loop: what that must never cost.

A write lock held by another process is waited for without blocking the loop, and given up
with a clear error; the checkpoint, the one step that fsyncs, happens on its own thread.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from remediator.adapters import state


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
