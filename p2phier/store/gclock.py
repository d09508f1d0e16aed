"""The store's ingest/GC lock: many ingests at once, or one GC (or block deletion) alone.

Owns :class:`GcLock` and the modes it asks an implementation's process-wide lock for
(``OS_SHARED``, ``OS_EXCLUSIVE``, ``OS_UNLOCK``), so that GC in one process never removes
the blocks of an ingest in progress in another (:mod:`p2phier.store.disk` maps them to
``fcntl.flock``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from p2phier.errors import StoreError

OS_SHARED, OS_EXCLUSIVE, OS_UNLOCK = "shared", "exclusive", "unlock"


class GcLock:
    """Shared (ingest) / exclusive (GC) lock; shared holds are reentrant per thread.

    Waiting GC blocks new ingests so it cannot starve.  ``os_lock`` mirrors the
    in-process state onto a lock other processes see (the first shared holder
    takes it, the last one releases it).
    """

    def __init__(self, os_lock: Callable[[str], None]) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._owner: int | None = None
        self._waiting = 0
        self._held = threading.local()
        self._os_lock = os_lock

    def _depth(self) -> int:
        return int(getattr(self._held, "depth", 0))

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = self._depth()
        if depth or self._owner == threading.get_ident():
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        with self._cond:
            while self._owner is not None or self._waiting:
                self._cond.wait()
            if self._shared == 0:
                self._os_lock(OS_SHARED)
            self._shared += 1
        self._held.depth = 1
        try:
            yield
        finally:
            self._held.depth = 0
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    try:
                        self._os_lock(OS_UNLOCK)
                    finally:
                        self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._depth() or self._owner == me:
            raise StoreError("GC or block deletion cannot run inside an ingest of the same thread")
        with self._cond:
            self._waiting += 1
            try:
                while self._owner is not None or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._owner = me
            try:
                self._os_lock(OS_EXCLUSIVE)
            except BaseException:
                self._owner = None
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                try:
                    self._os_lock(OS_UNLOCK)
                finally:
                    self._owner = None
                    self._cond.notify_all()


__all__ = ["OS_EXCLUSIVE", "OS_SHARED", "OS_UNLOCK", "GcLock"]
