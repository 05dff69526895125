"""Group commit (cds_service/store/group_commit.py): concurrent audit writes share transactions,
no submitter returns before its own item is written, and a failed batch fails each of its items."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from cds_service.store.database import HookCallRecord, Store, create_database_engine
from cds_service.store.group_commit import GroupCommit
from cds_service.store.migrations import upgrade_database


class SlowLog:
    """A write function that takes a while, records each batch, and fails on request."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.batches: list[list[int]] = []
        self.written: set[int] = set()
        self.fail_on: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> None:
        time.sleep(self.seconds)
        if self.fail_on & set(items):
            raise RuntimeError("write failed")
        with self.lock:
            self.batches.append(list(items))
            self.written.update(items)


def submit_all(commits: GroupCommit[int], log: SlowLog, count: int) -> dict[int, str]:
    """``count`` threads submit one item each at once; what each saw when submit returned."""
    barrier = threading.Barrier(count)
    seen: dict[int, str] = {}

    def work(item: int) -> None:
        barrier.wait()
        try:
            commits.submit(item)
        except RuntimeError:
            seen[item] = "error"
        else:
            seen[item] = "written" if item in log.written else "returned before its write"

    threads = [threading.Thread(target=work, args=(item,)) for item in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def test_concurrent_submitters_share_transactions_and_each_returns_after_its_write() -> None:
    log = SlowLog()
    commits: GroupCommit[int] = GroupCommit(log)
    seen = submit_all(commits, log, 32)
    assert seen == dict.fromkeys(range(32), "written")
    assert sorted(item for batch in log.batches for item in batch) == list(range(32))
    assert len(log.batches) < 32 / 2  # shared: far fewer transactions than items
    assert commits.batches == len(log.batches)


def test_a_lone_submitter_writes_at_once() -> None:
    log = SlowLog(seconds=0)
    commits: GroupCommit[int] = GroupCommit(log)
    for item in range(3):
        commits.submit(item)
        assert log.batches[-1] == [item]


def test_batches_never_exceed_their_bound_and_items_keep_their_order() -> None:
    log = SlowLog()
    commits: GroupCommit[int] = GroupCommit(log, max_batch=4)
    submit_all(commits, log, 24)
    assert max(len(batch) for batch in log.batches) <= 4
    assert sorted(item for batch in log.batches for item in batch) == list(range(24))


def test_a_failed_batch_fails_each_of_its_items_and_the_next_batch_is_written() -> None:
    log = SlowLog()
    log.fail_on = {0}
    commits: GroupCommit[int] = GroupCommit(log)
    with pytest.raises(RuntimeError):
        commits.submit(0)
    seen = submit_all(commits, log, 8)
    assert seen[0] == "error"
    failed = {item for item, outcome in seen.items() if outcome == "error"}
    assert set(seen) - failed == log.written  # the other batches were written, and said so
    log.fail_on = set()
    commits.submit(9)
    assert 9 in log.written


def test_past_the_queue_bound_a_submitter_writes_on_its_own() -> None:
    log = SlowLog(seconds=0.05)
    commits: GroupCommit[int] = GroupCommit(log, max_pending=2)
    seen = submit_all(commits, log, 12)
    assert seen == dict.fromkeys(range(12), "written")
    assert any(len(batch) == 1 for batch in log.batches)


def test_records_of_concurrent_calls_are_all_stored_with_their_cards(database_url: str) -> None:
    """The Store through the group commit, on each database: 40 threads, every record and
    issued card stored once, in fewer transactions than calls."""
    engine = create_database_engine(database_url)
    upgrade_database(engine)
    store = Store(engine)
    count = 40
    barrier = threading.Barrier(count)

    def call(number: int) -> None:
        barrier.wait()
        store.record_hook_call(
            HookCallRecord(
                request_id=f"r{number}",
                service_id="cpt20703-encounter-discharge",
                hook="encounter-discharge",
                hook_instance=None,
                client_iss=None,
                status=200,
                latency_ms=1.0,
                issued=[(f"card-{number}", "add-on-suggested")],
            )
        )

    try:
        threads = [threading.Thread(target=call, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(row["request_id"] for row in store.hook_call_rows()) == sorted(
            f"r{n}" for n in range(count)
        )
        with engine.connect() as connection:
            cards = connection.execute(sa.text("SELECT card_uuid FROM issued_card")).scalars()
            assert sorted(cards) == sorted(f"card-{n}" for n in range(count))
        assert store._audit_commits.batches < count
    finally:
        engine.dispose()
