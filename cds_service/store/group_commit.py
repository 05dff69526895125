"""Group commit: the threads of a worker that write at the same moment share one transaction.

Every hook call writes its audit record before it answers (so feedback sent at once, to any
instance, finds its card). One transaction per call costs a pool checkout with its liveness
ping, a BEGIN, the inserts, a COMMIT and, on SQLite, an fsync: more CPU than the rules. Here the
first thread to arrive writes everything queued in one transaction (the leader), the others wait
for that commit; while it writes, newcomers queue, and when it is done the oldest of them leads
the next batch. No call answers before its own record is committed, and no extra thread runs: a
lone call writes at once, as before. The queue is bounded: past ``max_pending`` a call writes
on its own rather than wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(eq=False)
class _Pending(Generic[Item]):
    item: Item
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    error: BaseException | None = None


class GroupCommit(Generic[Item]):
    """Submit items to ``write`` (one transaction per call of it), in batches of concurrent
    submitters; :meth:`submit` returns once the item's batch is committed, or raises its error."""

    def __init__(
        self,
        write: Callable[[Sequence[Item]], None],
        max_batch: int = 64,
        max_pending: int = 1024,
    ) -> None:
        self._write = write
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._queue: list[_Pending[Item]] = []
        self._writing = False
        self.batches = 0  # transactions written (for tests and the curious)

    def submit(self, item: Item) -> None:
        pending = _Pending(item)
        with self._lock:
            if len(self._queue) >= self.max_pending:
                overflow = True
            else:
                overflow = False
                self._queue.append(pending)
                lead = not self._writing
                self._writing = True
        if overflow:
            self._write([item])
            return
        while not pending.done:
            if not lead:
                pending.wake.wait()
                pending.wake.clear()
                if pending.done:
                    break
            self._lead()
            lead = True  # still queued (a batch ahead of it was full): lead the next one
        if pending.error is not None:
            raise pending.error

    def _lead(self) -> None:
        """Write the oldest queued items in one transaction, wake them, hand over the lead."""
        with self._lock:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
        error: BaseException | None = None
        try:
            self._write([pending.item for pending in batch])
        except Exception as exc:  # every item of the batch gets it, as its own call would
            error = exc
        with self._lock:
            self.batches += 1
            for pending in batch:
                pending.error = error
                pending.done = True
                pending.wake.set()
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._writing = False
        if successor is not None:
            successor.wake.set()  # not done: it leads the next batch
