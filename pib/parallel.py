"""A small thread pool for I/O-bound work (git, store round trips)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 8) -> list[R]:
    """fn over items on a few threads, results in order; the first exception is re-raised.

    Plain threads rather than concurrent.futures: its import alone is a
    noticeable part of a no-op build.
    """
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    next_index = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None or errors:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
