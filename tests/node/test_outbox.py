"""What leaves the learner (p2phier.node.outbox): int8 deltas on what the receiver holds,
int8 keyframes when it holds nothing (issue 15, section 2).

The learner's driver is stood in for: a real store and identity, a node that records what
it publishes; the packing is the real ``pack_adapter`` and readers rebuild with the real
``materialise``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
from safetensors.numpy import load_file

from p2phier.artifact import materialise, read_artifact
from p2phier.artifact.synthetic import write_synthetic_adapter
from p2phier.artifact.verify import BlockSource
from p2phier.cid import CID
from p2phier.identity import Identity
from p2phier.learnplan import LearnSettings
from p2phier.node.learncore import CHILDREN, LearnerState
from p2phier.node.outbox import Outbox
from p2phier.store import MemoryStore

PARENT = "12D3KooWparent"
HIDDEN = 128  # tensors large enough that their bytes, not the safetensors header, count


class Box(Outbox):
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.store = MemoryStore()
        self.published: list[tuple[str, str]] = []
        self.node: Any = SimpleNamespace(
            store=self.store,
            identity=Identity.from_seed(b"\x07" * 32),
            config=SimpleNamespace(
                layer=SimpleNamespace(label="subdomain", below=object()),
                domain="en/news/tech",
            ),
            hierarchy=SimpleNamespace(parent=PARENT),
            clock=lambda: 1_700_000_000.0,
            publish=self._publish,
        )
        self.plan: Any = replace(LearnSettings(), **settings)
        self.state = LearnerState(tier={"tier_id": "test/tiny-bert", "bundle_cid": None})
        self.errors: deque[str] = deque()
        self.tmp = tmp
        self.dir = tmp / "learn"
        self.n = 0

    async def _publish(self, cid: str, to: str) -> dict[str, Any]:
        self.published.append((cid, to))
        return {}

    async def _work(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def adapter(self, seed: int, *, r: int = 2, near: Path | None = None) -> Path:
        """A synthetic adapter; ``near``: a small step away from that one (a training round)."""
        self.n += 1
        out = self.tmp / f"a{self.n}"
        if near is None:
            return write_synthetic_adapter(out, seed=seed, r=r, hidden=HIDDEN)
        rng = np.random.default_rng(seed)
        prev = load_file(str(near / "adapter_model.safetensors"))
        step = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in prev.items()}  # fmt: skip
        return write_synthetic_adapter(out, seed=seed, r=r, hidden=HIDDEN, tensors=step)

    def send(self, adapter: Path, round_: int, stream: str = "up") -> Any:
        return trio.run(
            lambda: self._pack(adapter, base_version=None, round_=round_, stream=stream)
        )

    def rebuilt(self, cid: Any, name: str) -> dict[str, Any]:
        out = materialise(self.store, cid, self.tmp / f"rebuilt-{name}")
        return load_file(str(out / "adapter_model.safetensors"))


def _max_err(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.parametrize("rms_steps", [0.0, 8.0])
def test_updates_go_as_int8_deltas_on_the_previous_one_and_rebuild_within_int8_error(
    tmp_path: Path, rms_steps: float
) -> None:
    box = Box(tmp_path, update_rms_steps=rms_steps)
    a1 = box.adapter(1)
    art1 = box.send(a1, 1)
    # the keyframe: a full adapter in int8, half what the same adapter takes in fp16
    assert art1.manifest.parent is None and art1.manifest.encoding.value == "int8"
    fp16 = Box(tmp_path / "fp16", wire_encoding="fp16").send(a1, 1)
    assert fp16.manifest.encoding.value == "fp16"
    assert art1.manifest.tensors.size < 0.6 * fp16.manifest.tensors.size
    adapters, arts = [a1], [art1]
    for r in range(2, 5):
        adapters.append(box.adapter(r, near=adapters[-1]))
        arts.append(box.send(adapters[-1], r))
        m = arts[-1].manifest
        assert m.parent == arts[-2].cid and m.encoding.value == "int8-delta"
        assert box.state.sent["up"].chain == r - 1
        assert m.tensors.size < 0.6 * fp16.manifest.tensors.size
    rebuilt = []
    for i, (adapter, art) in enumerate(zip(adapters, arts, strict=True)):
        want = load_file(str(adapter / "adapter_model.safetensors"))
        got = box.rebuilt(art.cid, str(i))
        # int8 of each delta against the *rebuilt* previous: errors never add up along the
        # chain (each is at most half a step per tensor of what that artifact encodes: the
        # whole adapter for the keyframe, its own step for a delta; the step max|x|/127, or
        # at the plan's coarser step the RMS of the whole tensor over update_rms_steps)
        encoded = want if art.manifest.parent is None else {
            k: want[k] - rebuilt[-1][k] for k in want
        }  # fmt: skip
        for k in want:
            step = float(np.max(np.abs(encoded[k]))) / 127
            if rms_steps:
                step = max(step, float(np.sqrt(np.mean(np.square(want[k])))) / rms_steps)
            bound = step / 2 * (1 + 1e-5) + 1e-7
            assert float(np.max(np.abs(want[k] - got[k]))) <= bound, (i, k)
        rebuilt.append(got)


def test_a_coarser_step_makes_updates_smaller_and_versions_keep_the_finest(
    tmp_path: Path,
) -> None:
    fine, coarse = Box(tmp_path / "fine", update_rms_steps=0.0), Box(tmp_path / "coarse")
    assert coarse.plan.update_rms_steps == 8.0  # the default
    a1 = fine.adapter(1)
    sizes = [b.send(a1, 1).manifest.tensors.size for b in (fine, coarse)]
    assert sizes[1] < 0.8 * sizes[0]
    # a version going down is the whole model the children train on: the finest step
    trio.run(lambda: coarse._publish_flat(a1, base_cid=None, round_=1))
    assert coarse.state.flat is not None
    held = load_file(str(Path(coarse.state.flat.dir) / "adapter_model.safetensors"))
    want = load_file(str(a1 / "adapter_model.safetensors"))
    for k in want:
        bound = float(np.max(np.abs(want[k]))) / 254 * (1 + 1e-5) + 1e-7
        assert float(np.max(np.abs(want[k] - held[k]))) <= bound, k


def test_an_update_trained_afresh_goes_whole_where_that_is_smaller(tmp_path: Path) -> None:
    """After a rebase the LoRA restarts: the new update is no nearer its predecessor than
    zero, and the delta's wider spread costs more at the coarse step.  The whole update goes
    (and the chain starts again); a round's small step on the same adapter stays a delta."""
    box = Box(tmp_path)
    a1 = box.adapter(1)
    box.send(a1, 1)
    a2 = box.adapter(2, near=a1)
    assert box.send(a2, 2).manifest.parent is not None
    fresh = box.adapter(3)  # another random adapter of the same shapes
    art = box.send(fresh, 3)
    assert art.manifest.parent is None and art.manifest.encoding.value == "int8"
    assert box.state.sent["up"].chain == 0
    rebuilt = box.rebuilt(art.cid, "fresh")
    want = load_file(str(fresh / "adapter_model.safetensors"))
    for k in want:
        step = max(float(np.max(np.abs(want[k]))) / 127, float(np.sqrt(np.mean(want[k] ** 2))) / 8)
        assert float(np.max(np.abs(want[k] - rebuilt[k]))) <= step / 2 * (1 + 1e-5) + 1e-7


def test_a_new_parent_gets_a_keyframe(tmp_path: Path) -> None:
    box = Box(tmp_path)
    a1 = box.adapter(1)
    box.send(a1, 1)
    box.node.hierarchy.parent = "12D3KooWnewparent"
    art = box.send(box.adapter(2, near=a1), 2)
    assert art.manifest.parent is None
    assert box.state.sent["up"].to == "12D3KooWnewparent"


def test_a_delta_that_cannot_be_packed_falls_back_to_a_keyframe(tmp_path: Path) -> None:
    """Another rank (a re-factorised version) has other shapes: no delta, and no failure."""
    box = Box(tmp_path)
    box.send(box.adapter(1, r=2), 1)
    art = box.send(box.adapter(2, r=3), 2)
    assert art.manifest.parent is None and box.state.sent["up"].chain == 0
    # the previous artifact gone from the store: a keyframe again
    box.store.close()
    box.store = box.node.store = MemoryStore()
    art = box.send(box.adapter(3, r=3), 3)
    assert art.manifest.parent is None


@pytest.mark.parametrize(("settings", "kinds"), [
    ({"keyframe_every": 3}, [None, 0, 1, None, 3, 4]),
    ({"wire_encoding": "fp16"}, [None] * 6),
])  # fmt: skip
def test_versions_go_down_as_the_plan_says(
    tmp_path: Path, settings: dict[str, Any], kinds: list[int | None]
) -> None:
    box = Box(tmp_path, **settings)
    adapter = box.adapter(1)
    cids = []
    for r in range(1, 7):
        trio.run(lambda r=r, a=adapter: box._publish_flat(a, base_cid=None, round_=r))
        assert box.state.flat is not None
        cids.append(box.state.flat.cid)
        adapter = box.adapter(r + 1, near=adapter)
    got = []
    for cid in cids:
        art = read_artifact(BlockSource(box.store).get_block, CID.parse(cid))
        got.append(None if art.manifest.parent is None else cids.index(str(art.manifest.parent)))
    assert got == kinds
    keyframe = "fp16" if settings.get("wire_encoding") == "fp16" else "int8"
    for cid, kind in zip(cids, kinds, strict=True):
        art = read_artifact(BlockSource(box.store).get_block, CID.parse(cid))
        assert art.manifest.encoding.value == (keyframe if kind is None else "int8-delta")
    assert [to for _, to in box.published] == ["children"] * 6
    assert box.state.sent["down"].to == CHILDREN


def test_a_parent_holds_its_version_as_its_children_rebuild_it(tmp_path: Path) -> None:
    """The children train on the version as its artifact rebuilds it (int8 keyframe, then
    int8 deltas): the parent measures their updates against the same bytes."""
    from p2phier.artifact import materialise
    from p2phier.learn.train import read_adapter

    box = Box(tmp_path)
    adapter = box.adapter(1)
    for r in (1, 2):
        trio.run(lambda r=r, a=adapter: box._publish_flat(a, base_cid=None, round_=r))
        assert box.state.flat is not None
        held = Path(box.state.flat.dir)
        assert held != adapter and box.state.published[box.state.flat.cid] == str(held)
        rebuilt = materialise(box.store, box.state.flat.cid, tmp_path / f"child-{r}")
        mine, theirs, exact = (read_adapter(p).state for p in (held, rebuilt, adapter))
        assert mine.keys() == theirs.keys() == exact.keys()
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key])
        # ...which is not the adapter to the last bit (int8 keyframe, then an int8 delta)
        assert any(not np.array_equal(mine[k], exact[k]) for k in mine)
        adapter = box.adapter(r + 1, near=adapter)
