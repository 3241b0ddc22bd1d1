"""Group commit against a real database: concurrent writes share transactions, and a broken
constraint fails only the write at fault."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from services.common.db import open_database
from services.common.group_commit import GroupCommit
from tests.conftest import Database

metadata = MetaData()
keys = Table("group_commit_keys", metadata, Column("key", String(20), primary_key=True))


async def test_concurrent_writes_share_transactions_and_only_a_duplicate_fails(
    database: Database,
) -> None:
    async with open_database(database.url, metadata, database.schema) as engine:
        transactions: list[int] = []

        async def write(batch: Sequence[str]) -> None:
            transactions.append(len(batch))
            async with engine.begin() as conn:
                await conn.execute(insert(keys), [{"key": k} for k in batch])

        commits = GroupCommit(write)
        await commits.submit("taken")
        wanted = [f"k{i}" for i in range(40)] + ["taken"]
        outcomes = await asyncio.gather(
            *(commits.submit(k) for k in wanted), return_exceptions=True
        )

        failed = [k for k, o in zip(wanted, outcomes, strict=True) if o is not None]
        assert failed == ["taken"]
        assert isinstance(outcomes[-1], IntegrityError)
        async with engine.connect() as conn:
            stored = {r.key for r in await conn.execute(select(keys))}
        assert stored == set(wanted)
        # Writes waiting behind a transaction went together (the batch holding the
        # duplicate was then written again one by one, to tell whose it was).
        assert max(transactions) > 1
        assert len(transactions) < 1 + 2 * len(wanted)


async def test_any_other_error_fails_the_whole_batch() -> None:
    async def broken(batch: Sequence[int]) -> None:
        raise OSError("disk gone")

    commits = GroupCommit(broken)
    outcomes = await asyncio.gather(*(commits.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes)
    # And the next write is tried afresh.
    with pytest.raises(OSError):
        await commits.submit(5)
