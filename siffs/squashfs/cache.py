"""A bounded, thread-safe LRU cache that also de-duplicates work in flight.

The image is immutable, so anything decoded from it may be kept as long as memory allows.
Several FUSE worker threads often want the same block at once (readahead, two processes
reading one library); the second asker waits for the first decompression instead of
repeating it. The loader runs outside the lock, so decompressions of different blocks
proceed in parallel (the codecs release the GIL).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

V = TypeVar("V")


class _Pending:
    """One load in progress: waiters block on ``done`` and then take ``result`` or ``error``.

    ``done`` is a lock the loading thread holds until it is finished (a bare lock costs a tenth
    of an Event, and a miss happens once per block or inode).
    """

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.result: tuple[Any] | None = None  # a 1-tuple, so that a loaded None is told from "not loaded"
        self.error: BaseException | None = None


class LruCache:
    """Keeps values up to a total cost of ``capacity`` (bytes), evicting the least recently used.

    One cache holds values of several kinds (blocks, inodes, indexes), so each caller says
    what its value costs. A value costing more than the whole capacity is returned but not
    kept. Failed loads are not cached: the error goes to the caller and to everyone waiting
    on the same key.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = max(0, capacity)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._used = 0
        self._lock = threading.Lock()

    @property
    def table(self) -> OrderedDict[Hashable, tuple[Any, int]]:
        """The entries, key -> (value, cost), oldest first, for native readers' hits.

        A reader may look a value up and then ``move_to_end`` its key (what a hit here does),
        nothing else: every store and eviction goes through :meth:`get_or_load` or :meth:`put`.
        """
        return self._items

    @property
    def used(self) -> int:
        """Total cost of the values held now."""
        return self._used

    def __len__(self) -> int:
        return len(self._items)

    def get_or_load(self, key: Hashable, load: Callable[[], V], cost: Callable[[V], int]) -> V:
        """Return the cached value for ``key``, or run ``load`` once (however many threads ask).

        The caller owns the key space: a key must always name values of one type.
        """
        # A hit, the common case by far, takes no lock: each of these two steps on the (C)
        # OrderedDict is atomic under the GIL, and a value evicted between them by another thread
        # is still right to return (the image never changes). The lock costs more than the hit.
        item = self._items.get(key)
        if item is not None:
            try:  # noqa: SIM105 - contextlib.suppress would cost more than the rest of the hit
                self._items.move_to_end(key)
            except KeyError:
                pass
            value: V = item[0]
            return value
        with self._lock:
            item = self._items.get(key)
            if item is not None:  # stored by another thread since the look above
                self._items.move_to_end(key)
                stored: V = item[0]
                return stored
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
        if not owner:
            with pending.done:
                pass
            if pending.result is None:
                assert pending.error is not None
                raise pending.error
            loaded: V = pending.result[0]
            return loaded
        try:
            value = load()
        except BaseException as e:
            pending.error = e
            with self._lock:
                del self._pending[key]
            pending.done.release()
            raise
        pending.result = (value,)
        with self._lock:
            del self._pending[key]
            self._store(key, value, cost(value))
        pending.done.release()
        return value

    def put(self, key: Hashable, value: V, cost: int) -> V:
        """Keep ``value`` under ``key`` unless a value is there already; return the one kept.

        For a native reader that made the value itself (a directory segment parsed in C): the
        same store as a load's. A load of the key in flight meanwhile only stores the same value
        again, since the image never changes.
        """
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                kept: V = item[0]
                return kept
            self._store(key, value, cost)
        return value

    def _store(self, key: Hashable, value: Any, cost: int) -> None:
        """Insert under the lock, then evict from the old end until within capacity."""
        if cost > self._capacity:
            return
        replaced = self._items.pop(key, None)  # stored by ``put`` while a load of it was in flight
        if replaced is not None:
            self._used -= replaced[1]
        self._items[key] = (value, cost)
        self._used += cost
        while self._used > self._capacity:
            _, (_, old_cost) = self._items.popitem(last=False)
            self._used -= old_cost
