"""Data sets received into memory, and the one bound on what they all hold at once.

A request's data set that is not a C-STORE's (a C-FIND/C-GET/C-MOVE identifier, an N-xxx
attribute list, a data set a C-CANCEL-RQ announces and we drain) is received into a
:class:`BytesSink`: at most ``limit`` bytes each (the ``memory_dataset_max_bytes`` setting).
Each request of every association may hold one (up to ``max_associations`` x
``max_async_operations`` of them), so the bytes they hold together are also counted by one
:class:`MemoryBudget` per process (``memory_datasets_budget_bytes``): a write that would take it
past its limit is refused (:class:`MemoryBudgetExhausted`); the rest of that message is drained
and the request answered with its service's out-of-resources status (services/status.py).

A sink gives its bytes back to the budget when it is discarded: after its request's handler
ended, when the association drops it unanswered (abort, close, held past the window), when the
request is refused, and when its data set could not be taken. A C-STORE received into memory
(core/staging.py) takes its share up front (services/storage.py) and gives it back once ingested.
"""

from __future__ import annotations

import threading

#: Default of ``memory_dataset_max_bytes``: the largest data set one request may hold in memory.
MAX_MEMORY_DATASET = 16 * 1024 * 1024
#: Default of ``memory_datasets_budget_bytes``: what all such data sets may hold at once.
MEMORY_DATASETS_BUDGET = 256 * 1024 * 1024


class InMemoryRefused(Exception):
    """A data set could not be received into memory; the request gets an out-of-resources status."""


class DatasetTooLargeForMemory(InMemoryRefused, ValueError):
    """The data set is larger than one request may hold in memory (``memory_dataset_max_bytes``)."""


class MemoryBudgetExhausted(InMemoryRefused):
    """The data sets of all associations already hold what the process allows (``memory_datasets_budget_bytes``)."""


class MemoryBudget:
    """The bytes held by data sets received into memory, counted across every association of the process.

    ``take`` and ``give`` may be called from any thread (a lock guards the count)."""

    __slots__ = ("_lock", "held", "limit", "most_held")

    def __init__(self, limit: int = MEMORY_DATASETS_BUDGET) -> None:
        if limit < 1:
            raise ValueError("a memory budget must be at least 1 byte")
        self.limit = limit
        self.held = 0
        #: The most ever held at once (for tests and the curious).
        self.most_held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes as held; False (nothing counted) when that would pass the limit."""
        with self._lock:
            held = self.held + size
            if held > self.limit:
                return False
            self.held = held
            if held > self.most_held:
                self.most_held = held
            return True

    def give(self, size: int) -> None:
        """``size`` bytes taken before are no longer held."""
        with self._lock:
            self.held -= size

    def exhausted(self, size: int) -> MemoryBudgetExhausted:
        """The refusal of ``size`` more bytes, in words a log reader can act on."""
        return MemoryBudgetExhausted(
            f"data sets received into memory by all associations already hold {self.held} bytes; {size} more "
            f"would pass memory_datasets_budget_bytes ({self.limit}); try again later, or raise the setting"
        )


class BytesSink:
    """Keeps a data set of at most ``limit`` bytes in memory, counted in ``budget`` when given."""

    __slots__ = ("budget", "buffer", "limit")

    def __init__(self, limit: int = MAX_MEMORY_DATASET, budget: MemoryBudget | None = None) -> None:
        self.limit = limit
        self.budget = budget
        self.buffer = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        size = len(data)
        if len(self.buffer) + size > self.limit:
            raise DatasetTooLargeForMemory(
                f"data set larger than {self.limit} bytes, the most one request may hold in memory "
                "(memory_dataset_max_bytes)"
            )
        budget = self.budget
        if budget is not None and not budget.take(size):
            raise budget.exhausted(size)
        self.buffer += data

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        """Drop the bytes and give them back to the budget; safe to call more than once."""
        held = len(self.buffer)
        self.buffer = bytearray()
        if held and self.budget is not None:
            self.budget.give(held)

    def getvalue(self) -> bytes:
        return bytes(self.buffer)


__all__ = [
    "MAX_MEMORY_DATASET",
    "MEMORY_DATASETS_BUDGET",
    "BytesSink",
    "DatasetTooLargeForMemory",
    "InMemoryRefused",
    "MemoryBudget",
    "MemoryBudgetExhausted",
]
