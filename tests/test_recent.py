"""The bounded cache of a worker's recent results (cds_service/recent.py): least recently used
dropped first, never over its capacity, consistent under threads; and the content digest its
keys are made of."""

from __future__ import annotations

import threading

import pytest

from cds_service.recent import RecentCache, content_digest


def test_the_cache_drops_the_least_recently_used_entry() -> None:
    cache: RecentCache[str] = RecentCache(capacity=2)
    cache.put((b"a", "Procedure/1"), "first")
    cache.put((b"b", "Procedure/1"), "second")
    assert cache.get((b"a", "Procedure/1")) == "first"  # now the most recently used
    cache.put((b"c", "Procedure/1"), "third")
    assert cache.get((b"b", "Procedure/1")) is None
    assert cache.get((b"a", "Procedure/1")) == "first"
    assert cache.get((b"c", "Procedure/1")) == "third"
    assert len(cache) == 2
    assert cache.held_keys() == [(b"a", "Procedure/1"), (b"c", "Procedure/1")]
    assert cache.get((b"a", "Device/1")) is None  # the source is part of the key
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("capacity", [0, 1, 5])
def test_the_cache_never_holds_more_than_its_capacity(capacity: int) -> None:
    cache: RecentCache[int] = RecentCache(capacity)
    for number in range(20):
        cache.put((bytes([number]), "x"), number)
    assert len(cache) == capacity
    kept = [cache.get((bytes([number]), "x")) for number in range(20)]
    assert kept == [None] * (20 - capacity) + list(range(20 - capacity, 20))


def test_the_cache_stays_bounded_and_consistent_under_threads() -> None:
    cache: RecentCache[int] = RecentCache(capacity=50)
    wrong: list[tuple[int, int | None]] = []

    def work(offset: int) -> None:
        for number in range(offset, offset + 2_000):
            key = (str(number % 120).encode(), "x")
            cache.put(key, number % 120)
            found = cache.get(key)
            if found is not None and found != number % 120:
                wrong.append((number % 120, found))

    threads = [threading.Thread(target=work, args=(offset * 7,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(cache) == 50


def test_the_content_digest_ignores_key_order_and_tells_any_change() -> None:
    first = content_digest({"a": 1, "b": [1, {"c": "x"}]})
    assert first is not None
    assert len(first) == 16
    assert content_digest({"b": [1, {"c": "x"}], "a": 1}) == first
    assert content_digest({"a": 1, "b": [1, {"c": "y"}]}) != first
    assert content_digest({"a": 1.0, "b": [1, {"c": "x"}]}) != first  # 1.0 is written "1.0"
    assert content_digest({"a": 2**70}) is None
