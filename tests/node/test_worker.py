"""The learner's dedicated low-priority worker thread (p2phier.node.worker)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import trio

from p2phier.node.worker import PriorityWorker

# Only Linux schedules threads one by one (elsewhere the worker deliberately keeps normal
# priority, and setpriority on a thread id would renice the whole process).
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux_only
def test_steps_run_in_one_thread_with_raised_niceness_and_the_caller_keeps_its_own() -> None:
    async def main() -> None:
        worker = PriorityWorker(5)
        mine = _niceness()
        try:
            first = await worker.run(lambda: (threading.get_native_id(), _niceness()))
            second = await worker.run(lambda: (threading.get_native_id(), _niceness()))
        finally:
            worker.close()
        assert first[0] == second[0] != threading.get_native_id()  # one dedicated thread
        assert first[1] == min(19, mine + 5) == worker.niceness
        assert _niceness() == mine  # the event loop's thread is untouched
        # a thread from trio's own cache (the daemon's verification work) is untouched too
        assert await trio.to_thread.run_sync(_niceness) == mine

    trio.run(main)


def test_errors_propagate_and_the_worker_goes_on() -> None:
    async def main() -> None:
        worker = PriorityWorker(0)
        with pytest.raises(ZeroDivisionError):
            await worker.run(lambda: 1 // 0)
        assert await worker.run(lambda: 42) == 42
        worker.close()

    trio.run(main)


def test_a_cancelled_caller_waits_for_its_step_and_the_loop_keeps_running() -> None:
    done: list[float] = []
    ticks: list[float] = []

    def step() -> str:
        time.sleep(0.3)  # a blocking step (releases the GIL, as torch kernels do)
        done.append(time.monotonic())
        return "ok"

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await trio.sleep(0.02)

    async def main() -> None:
        worker = PriorityWorker(3)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            with trio.move_on_after(0.05) as scope:
                got = await worker.run(step)
            nursery.cancel_scope.cancel()
        worker.close()
        # the cancellation was deferred until the step finished: its result was not lost
        assert got == "ok" and done and scope.cancelled_caught is False
        assert len(ticks) >= 5  # the event loop ran while the step blocked

    trio.run(main)


def test_niceness_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.19"):
        PriorityWorker(20)


def test_a_step_still_running_after_the_grace_is_abandoned_so_a_stop_is_bounded() -> None:
    release = threading.Event()

    def step() -> str:
        release.wait(30.0)  # a training step far longer than any shutdown bound
        return "late"

    async def main() -> None:
        worker = PriorityWorker(0, stop_grace_s=0.2)
        began = time.monotonic()
        with trio.move_on_after(0.05) as scope:
            await worker.run(step)
        took = time.monotonic() - began
        release.set()
        worker.close()
        assert scope.cancelled_caught  # the caller was not held by the step...
        assert 0.2 <= took < 5.0, took  # ...beyond the grace

    trio.run(main)


def test_a_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="stop_grace_s"):
        PriorityWorker(0, stop_grace_s=-1.0)
