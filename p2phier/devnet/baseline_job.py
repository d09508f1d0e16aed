"""The baselines as a low-priority child process that runs while the devnet does.

Owns :class:`BaselineJob` (the launcher's side) and :func:`main` (the child:
``python -m p2phier.devnet.baseline_job``).  The isolated and central
baselines (:func:`p2phier.devnet.baselines.run_baselines`) take as long as the
rounds themselves, and they depend on nothing the nodes do, only on the
scenario and the nodes' data.  Run after the devnet, they doubled its wall
time.  A devnet round leaves the CPU partly idle: its critical path is a chain
(children train, the parent aggregates, versions flow down, children rebase)
on which few nodes are busy at a time.  So the launcher starts the baselines
at the beginning of the run in a child process with the lowest CPU priority
(niceness 19): the kernel gives it only what the nodes leave idle (their
learning threads run at ``learn.worker_nice``, their event loops at normal
priority), and after the last round it finishes at full speed.

The parent hands the child its inputs (scenario, data: plain frozen
dataclasses) as a pickle on the child's stdin: the two are one program, and
nothing else can write that pipe.  The child's answer comes back as one JSON
line on stdout and is checked field by field (:func:`baselines_from_json`).
Its log goes to ``baselines.log`` in the run directory; the launcher records
its pid in ``devnet.json`` so that ``devnet down`` stops it after a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from p2phier.devnet.baselines import NodeData, run_baselines
from p2phier.devnet.procs import REPO
from p2phier.devnet.report import Baselines, RunRecordError, baselines_from_json
from p2phier.devnet.scenario import Scenario
from p2phier.errors import P2PHierError

log = logging.getLogger(__name__)

NICE = 19
MODULE = "p2phier.devnet.baseline_job"
MAX_ANSWER_BYTES = 1 << 20
LOG_FILE = "baselines.log"


class BaselineError(P2PHierError):
    """The baselines child failed or answered something unreadable."""


class BaselineJob:
    """One baselines child process; :meth:`result` waits for it, :meth:`stop` reaps it."""

    def __init__(
        self,
        scenario: Scenario,
        work_dir: Path,
        data: Mapping[str, NodeData],
        *,
        log_dir: Path,
        nice: int = NICE,
    ) -> None:
        self.log_path = Path(log_dir) / LOG_FILE
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--nice", str(nice)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logf,
                cwd=str(REPO),
                env=env,
            )
        stdin, self.proc.stdin = self.proc.stdin, None  # communicate() must not flush it
        assert stdin is not None
        try:
            stdin.write(pickle.dumps((scenario, Path(work_dir), dict(data))))
        except OSError:  # the child died at once: result() reports it with its log
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float | None = None) -> Baselines:
        """Wait for the child (at most ``timeout`` s) and return its checked answer."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BaselineError(f"the baselines took longer than {timeout:.0f} s") from None
        if self.proc.returncode != 0:
            raise BaselineError(
                f"the baselines failed (exit {self.proc.returncode}); "
                f"{self.log_path} ends with:\n{self._log_tail()}"
            )
        lines = out[-MAX_ANSWER_BYTES:].strip().splitlines()
        try:
            return baselines_from_json(json.loads(lines[-1]) if lines else None)
        except (ValueError, RunRecordError) as exc:
            raise BaselineError(f"the baselines answered something unreadable: {exc}") from None

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the child if it still runs; always wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def is_baseline_job(cmdline: bytes) -> bool:
    """True if a /proc cmdline is this module's child (for ``devnet down``)."""
    return MODULE.encode() in cmdline.split(b"\x00")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("--nice", type=int, default=NICE)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    # The pipe's writer is the launcher that started this process (see the module docstring).
    scenario, work_dir, data = pickle.loads(sys.stdin.buffer.read())
    if args.nice > 0:
        os.nice(args.nice)
    log.info("baselines start at niceness %d", os.nice(0))
    result = run_baselines(scenario, work_dir, data=data)
    sys.stdout.write(json.dumps(asdict(result), sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
