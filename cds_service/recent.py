"""A bounded, thread-safe cache of a worker's most recent results, keyed by content digests.

Order-sign fires at every order signed and sends the same notes and resources each time; what
the service derives from them depends only on their content (and the pack), so a worker keeps
its recent results. Keys are (digest, label) pairs, never the content itself. The clinical-text
readings and the parsed input resources each have one. May import nothing from the package.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

import orjson

Value = TypeVar("Value")


def content_digest(data: Any) -> bytes | None:
    """A 16-byte digest of ``data`` as JSON with sorted keys (the same for any key order), or
    None when orjson cannot write it (an integer beyond 64 bits): such content is not kept."""
    try:
        text = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return None
    return hashlib.blake2b(text, digest_size=16).digest()


class RecentCache(Generic[Value]):
    """The most recent results of this worker, least recently used dropped first.

    Thread-safe: gunicorn's threads share a worker's caches.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[bytes, str], Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[bytes, str]) -> Value | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[bytes, str], value: Value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def held_keys(self) -> list[tuple[bytes, str]]:
        """The keys held now, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
