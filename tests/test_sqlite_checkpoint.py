"""SQLite's log is copied into the database by a thread of its own, never inside a commit."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, insert, text

from services.common.db import WalCheckpointer, open_database


def _blobs() -> Table:
    return Table(
        "blobs",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("body", LargeBinary),
    )


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


async def test_the_log_reaches_the_database_file_without_a_commit_checkpointing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(WalCheckpointer, "INTERVAL", 0.05)
    path = tmp_path / "wal.db"
    table = _blobs()
    async with open_database(f"sqlite:///{path}", table.metadata) as db:
        async with db.connect() as conn:
            # The service's own connection never checkpoints.
            assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar() == 0
        before = path.stat().st_size
        for n in range(40):
            async with db.begin() as conn:
                await conn.execute(insert(table), [{"id": n, "body": bytes(100_000)}])
        # 4 MB went into the log; only the checkpoint thread can have moved it across.
        for _ in range(400):
            if path.stat().st_size > before + 3_000_000:
                break
            await asyncio.sleep(0.025)
        assert path.stat().st_size > before + 3_000_000
        assert len(_checkpoint_threads()) == 1
    # Closing stops the thread, and the last connection's close folds the log in.
    assert _checkpoint_threads() == []
    assert _files(tmp_path) == {"wal.db"}


async def test_an_in_memory_database_has_no_checkpoint_thread() -> None:
    table = _blobs()
    async with open_database("sqlite://", table.metadata) as db:
        async with db.begin() as conn:
            await conn.execute(insert(table), [{"id": 1, "body": b"x"}])
        assert _checkpoint_threads() == []


def test_stop_without_start_is_harmless(tmp_path: Path) -> None:
    checkpointer = WalCheckpointer(str(tmp_path / "never.db"))
    checkpointer.stop()
    assert checkpointer.checkpoints == 0


async def test_the_log_starts_over_under_steady_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain checkpoint never catches the last frames of a busy writer, and the log only
    # starts over once one has: before the chase it grew by every byte written.
    monkeypatch.setattr(WalCheckpointer, "INTERVAL", 0.05)
    monkeypatch.setattr(WalCheckpointer, "LIMIT", 1 << 20)
    path = tmp_path / "busy.db"
    log_file = tmp_path / "busy.db-wal"
    table = _blobs()
    sizes = []
    async with open_database(f"sqlite:///{path}", table.metadata) as db:
        for n in range(1500):  # 60 MB, as a service under load writes it: with gaps
            async with db.begin() as conn:
                await conn.execute(text("SELECT count(*) FROM blobs WHERE id = :n"), {"n": n - 1})
                await conn.execute(insert(table), [{"id": n, "body": bytes(40_000)}])
            sizes.append(log_file.stat().st_size)
            await asyncio.sleep(0.001)
    # Without the chase the log only grows, to all 60 MB. With it the log starts over and is
    # cut back to LIMIT: how often, and so how large it gets meanwhile, depends on how much
    # CPU the thread gets on a busy machine, but it happens.
    pairs = itertools.pairwise(sizes)
    assert any(after < before and after <= 2 << 20 for before, after in pairs)


def _count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small checkpoint rounds, and a one-item list counting the checkpoint passes."""
    monkeypatch.setattr(WalCheckpointer, "INTERVAL", 0.05)
    monkeypatch.setattr(WalCheckpointer, "LIMIT", 64 << 10)
    passes = [0]
    checkpoint = WalCheckpointer._checkpoint

    def counted(self: WalCheckpointer, conn: sqlite3.Connection) -> tuple[int, int]:
        passes[0] += 1
        return checkpoint(self, conn)

    monkeypatch.setattr(WalCheckpointer, "_checkpoint", counted)
    return passes


async def test_a_large_idle_log_is_not_chased_and_the_next_write_cuts_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes = _count_passes(monkeypatch)
    path = tmp_path / "idle.db"
    log_file = tmp_path / "idle.db-wal"
    table = _blobs()
    async with open_database(f"sqlite:///{path}", table.metadata) as db:
        async with db.begin() as conn:
            await conn.execute(
                insert(table), [{"id": n, "body": bytes(10_000)} for n in range(100)]
            )
        await asyncio.sleep(0.3)
        assert log_file.stat().st_size > 1_000_000
        before = passes[0]
        await asyncio.sleep(1.0)
        # Two passes a round (20 rounds a second); chasing every 2 ms would be hundreds.
        assert passes[0] - before < 100
        async with db.begin() as conn:
            await conn.execute(insert(table), [{"id": 100, "body": b"x"}])
        assert log_file.stat().st_size <= 64 << 10


async def test_a_log_a_reader_holds_back_is_not_chased(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes = _count_passes(monkeypatch)
    path = tmp_path / "held.db"
    table = _blobs()
    async with open_database(f"sqlite:///{path}", table.metadata) as db:
        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM blobs").fetchone()  # pins its snapshot
            async with db.begin() as conn:
                await conn.execute(
                    insert(table), [{"id": n, "body": bytes(10_000)} for n in range(100)]
                )
            await asyncio.sleep(0.3)
            before = passes[0]
            stop = time.monotonic() + 1.0
            n = 100
            while time.monotonic() < stop:  # writes go on, faster than the chase's passes
                async with db.begin() as conn:
                    await conn.execute(insert(table), [{"id": n, "body": bytes(1_000)}])
                n += 1
                await asyncio.sleep(0.0005)
            # No pass can copy past the reader's snapshot: a round gives up after a few
            # (about 120 a second); chasing throughout would be near 500.
            assert passes[0] - before < 250
        finally:
            reader.close()
