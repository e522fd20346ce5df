"""A small thread-safe LRU map for reference profiles, with hit/miss counters."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CacheInfo", "LRUCache"]

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Counters of an :class:`LRUCache`."""

    hits: int
    misses: int
    size: int
    maxsize: int


class LRUCache(Generic[V]):
    """Least-recently-used map of at most ``maxsize`` entries (0 disables caching).

    Safe to share between threads (a Celery worker with a thread pool); values must be
    immutable since they are handed out without copying.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._data: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get(self, key: str) -> V | None:
        """The value for ``key``, or ``None``; counts a hit or a miss."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: str, value: V) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        if self._maxsize <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._data.clear()

    def info(self) -> CacheInfo:
        """Current counters."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._data), self._maxsize)
