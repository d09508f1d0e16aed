"""The baselines as low-priority child processes that run while the devnet does.

Owns :class:`BaselineJob` (the launcher's side) and :func:`main` (a child:
``python -m p2phier.devnet.baseline_job --part PART``).  The isolated and
central baselines (:mod:`p2phier.devnet.baselines`) take as long as the rounds
themselves and depend on nothing the nodes do, only on the scenario, the
nodes' data and the root tier.  Run one after the other after the devnet, on
one torch thread as the scenario says, they left one of two cores idle and
doubled the devnet's wall time.  So the launcher starts them at the beginning
of the run, split into independent parts (the isolated baseline, and the
central model at each learning rate it tries), one child process each, with
the lowest CPU priority (niceness 19): the kernel gives them what the nodes
leave idle (the nodes' learning threads run at ``learn.worker_nice``, their
event loops at normal priority), and after the last round they share the
cores.  Each part is seeded on its own, so the numbers are those of
:func:`~p2phier.devnet.baselines.run_baselines`, which runs the same parts in
sequence.

The parent hands each child its inputs (scenario, data, root tier: plain
frozen dataclasses and paths) as a pickle on the child's stdin: the two are
one program, and nothing else can write that pipe.  A child's answer comes
back as one JSON line on stdout and is checked field by field.  Each child's
log is ``baselines-PART.log`` in the run directory; the launcher records the
pids in ``devnet.json`` so that ``devnet down`` stops them after a crash.
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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2phier.devnet.baselines import (
    NodeData,
    central_candidate,
    central_rates,
    combine_baselines,
    isolated_baseline,
)
from p2phier.devnet.procs import REPO
from p2phier.devnet.report import Baselines, RunRecordError, accuracy, accuracy_map
from p2phier.devnet.scenario import Scenario
from p2phier.errors import P2PHierError
from p2phier.learn.central import Candidate as CentralCandidate

log = logging.getLogger(__name__)

NICE = 19
MODULE = "p2phier.devnet.baseline_job"
MAX_ANSWER_BYTES = 1 << 20
ISOLATED = "isolated"


class BaselineError(P2PHierError):
    """A baselines child failed or answered something unreadable."""


def _part_name(part: str) -> str:
    return part.replace(":", "-")


class _Child:
    def __init__(self, part: str, payload: bytes, log_path: Path, nice: int) -> None:
        self.part = part
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
        with open(log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--part", part, "--nice", str(nice)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logf,
                cwd=str(REPO),
                env=env,
            )
        stdin, self.proc.stdin = self.proc.stdin, None  # communicate() must not flush it
        assert stdin is not None
        try:
            stdin.write(payload)
        except OSError:  # the child died at once: answer() reports it with its log
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def answer(self, timeout: float) -> Any:
        try:
            out, _ = self.proc.communicate(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            raise BaselineError(f"baselines part {self.part!r} took too long") from None
        if self.proc.returncode != 0:
            raise BaselineError(
                f"baselines part {self.part!r} failed (exit {self.proc.returncode}); "
                f"{self.log_path} ends with:\n{self._log_tail()}"
            )
        lines = out[-MAX_ANSWER_BYTES:].strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else None
        except ValueError as exc:
            raise BaselineError(f"baselines part {self.part!r} answered garbage: {exc}") from None

    def stop(self, grace: float) -> None:
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


def _scores(value: Any, names: set[str], what: str) -> dict[str, float]:
    scores = accuracy_map(value, what)
    if set(scores) != names:
        raise BaselineError(f"{what}: must score exactly the training nodes {sorted(names)}")
    return scores


class BaselineJob:
    """The baselines' child processes; :meth:`result` waits for them, :meth:`stop` reaps them."""

    def __init__(
        self,
        scenario: Scenario,
        work_dir: Path,
        data: Mapping[str, NodeData],
        root: Path,
        *,
        log_dir: Path,
        nice: int = NICE,
    ) -> None:
        self.scenario, self.work_dir, self.data = scenario, Path(work_dir), dict(data)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        payload = pickle.dumps((scenario, self.work_dir, self.data, Path(root)))
        parts = [ISOLATED, *(f"central:{lr!r}" for lr in central_rates(scenario))]
        self.children: list[_Child] = []
        try:
            for part in parts:
                path = Path(log_dir) / f"baselines-{_part_name(part)}.log"
                self.children.append(_Child(part, payload, path, nice))
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> dict[str, int]:
        return {f"baselines-{_part_name(c.part)}": c.proc.pid for c in self.children}

    def running(self) -> bool:
        return any(c.proc.poll() is None for c in self.children)

    def result(self, timeout: float) -> Baselines:
        """Wait for every child (``timeout`` s in all) and combine their checked answers."""
        deadline = time.monotonic() + timeout
        names = {n.name for n in self.scenario.training_nodes() if n.name in self.data}
        try:
            isolated = _scores(self.children[0].answer(deadline - time.monotonic()), names,
                               "isolated")  # fmt: skip
            candidates = []
            for child in self.children[1:]:
                got = child.answer(deadline - time.monotonic())
                if not isinstance(got, dict):
                    raise BaselineError(f"baselines part {child.part!r}: not an object")
                lr = float(child.part.split(":", 1)[1])
                candidates.append(CentralCandidate(
                    lr=lr,
                    valid=accuracy(got.get("valid"), f"{child.part}.valid"),
                    adapter_dir=self.work_dir / f"central-lr{lr:g}",
                    scores=_scores(got.get("scores"), names, f"{child.part}.scores"),
                ))  # fmt: skip
        except RunRecordError as exc:
            raise BaselineError(f"a baselines part answered something unreadable: {exc}") from None
        finally:
            self.stop()
        return combine_baselines(self.scenario, self.work_dir, self.data, isolated, candidates)

    def stop(self, grace: float = 5.0) -> None:
        """Terminate every child still running; always wait for them."""
        for child in self.children:
            child.stop(grace)


def is_baseline_job(cmdline: bytes) -> bool:
    """True if a /proc cmdline is one of this module's children (for ``devnet down``)."""
    return MODULE.encode() in cmdline.split(b"\x00")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("--part", required=True, help="isolated, or central:LR")
    parser.add_argument("--nice", type=int, default=NICE)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    # The pipe's writer is the launcher that started this process (see the module docstring).
    scenario, work_dir, data, root = pickle.loads(sys.stdin.buffer.read())
    if args.nice > 0:
        os.nice(args.nice)
    log.info("baselines part %s starts at niceness %d", args.part, os.nice(0))
    answer: Any
    if args.part == ISOLATED:
        answer = isolated_baseline(scenario, work_dir, data, root)
    elif args.part.startswith("central:"):
        got: CentralCandidate = central_candidate(
            scenario, work_dir, data, float(args.part.split(":", 1)[1]), root
        )
        answer = {"valid": got.valid, "scores": dict(got.scores)}
    else:
        parser.error(f"unknown part {args.part!r}")
    sys.stdout.write(json.dumps(answer, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
