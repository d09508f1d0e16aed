"""A dedicated worker thread, at lowered CPU priority, for the node's learning steps.

Owns :class:`PriorityWorker`.  A node trains in the background while it must
keep answering its peers: Bitswap wants, announcements, registrations.  On a
machine whose cores are all busy training (a devnet of twelve nodes on two
cores, or a community node on a laptop), a training step at the same priority
as the network code delays every block and announcement by the scheduler's
time slices.  The learner therefore runs its blocking steps in one thread of
its own whose niceness is raised by ``learn.worker_nice``: the kernel then
prefers the daemon's event loop and its verification threads, in this process
and in every other node on the machine, and training takes what is left.

Linux schedules threads individually, so only this thread (and the threads it
starts, such as torch's intra-op pool, which inherit its niceness) is lowered.
Elsewhere ``setpriority`` would renice the whole process, so the worker runs
at normal priority there and says so in the log.  A raised niceness cannot be
lowered again without privileges: that is why the thread is dedicated rather
than borrowed from trio's thread cache, whose threads also serve the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
MAX_NICE = 19


class PriorityWorker:
    """Runs blocking functions one at a time in a thread with raised niceness."""

    def __init__(
        self, nice: int = 0, name: str = "p2phier-worker", *, stop_grace_s: float = math.inf
    ) -> None:
        if not 0 <= nice <= MAX_NICE:
            raise ValueError(f"nice must be in 0..{MAX_NICE}, not {nice}")
        if not stop_grace_s >= 0:
            raise ValueError("stop_grace_s must be >= 0")
        self.nice = nice
        self.name = name
        #: how long a cancelled caller still waits for its step before abandoning it
        self.stop_grace_s = stop_grace_s
        #: The thread's niceness once it runs (None before it starts).
        self.niceness: int | None = None
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        self.niceness = self._lower_priority()
        while (job := self._jobs.get()) is not None:
            job()

    def _lower_priority(self) -> int | None:
        if not sys.platform.startswith("linux"):
            if self.nice:
                logger.info("learning steps run at normal priority (per-thread nice is Linux-only)")
            return None
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + self.nice))
            except OSError as exc:  # e.g. a seccomp profile that forbids it
                logger.warning("could not lower the learning thread's priority: %s", exc)
        return os.getpriority(os.PRIO_PROCESS, tid)

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    async def run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn()`` in the worker thread and return its result (or raise its error).

        Like ``trio.to_thread.run_sync`` without abandoning at once: a cancellation waits
        up to ``stop_grace_s`` for the step to finish, so the caller does not lose track of
        what the step did (its result is returned; the cancellation resurfaces at the
        caller's next checkpoint).  A step still running after that is abandoned, so that a
        node stops within ``timeouts.shutdown_s`` even mid-training: the thread is a daemon
        thread and dies with the process, and the step's output, never recorded in the
        learner's state, is redone after a restart.
        """
        self._ensure_started()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[_T]] = []

        def job() -> None:
            box.append(outcome.capture(fn))
            # RunFinishedError: the event loop is gone, nobody is waiting
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        self._jobs.put(job)
        try:
            await done.wait()
        except trio.Cancelled:
            with trio.move_on_after(self.stop_grace_s) as grace:
                grace.shield = True
                await done.wait()
            if not done.is_set():
                logger.warning(
                    "a learning step still ran %.1f s after the stop: abandoned", self.stop_grace_s
                )
                raise
        return box[0].unwrap()

    def close(self) -> None:
        """Let the thread exit after the steps already queued (it is a daemon thread)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None
