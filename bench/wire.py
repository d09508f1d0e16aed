"""What an update's int8 step saves and costs, on a kept devnet run.

Run ``python bench/wire.py RUN_DIR`` on a devnet run that was kept (``python bench/devnet.py
--keep``; ``--update-rms-steps 0`` for a run whose updates travelled at the finest step, so
that re-encoding them coarser is fair); ``--json`` ends stdout with one JSON object.  For
each step ``k`` of ``update_rms_steps`` (0: the finest, ``max|x|/127``; else at least each
tensor's RMS / k), two columns per node:

* ``bytes``: its updates as the run sent them (the lineage of its last one, rebuilt from its
  store), each re-encoded at ``k`` as the product does (``pack_tensors``: the delta on the
  previous one as its parent rebuilt it, or the whole update where that compresses
  smaller), the zstd payload summed over its rounds; and ``dw_err``, the mean relative
  error of each LoRA pair's product ``B @ A`` as the parent rebuilds it;
* ``changed``: the node's own model (its adapter on the version it last trained on; a
  node that does not train: its version alone) with that adapter quantised at ``k``, against
  the exact one: how many of its answers change on all its data (arrivals and held-out).
  A node's own adapter stands in for its update (a leaf's update is its adapter, its heads
  expressed against the version as received); a version is the whole model its children
  train on, which is why versions keep the finest step.

Nothing here changes the run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from _common import load_kept_run, log, parser, print_table

STEPS = (0.0, 16.0, 8.0, 4.0)


def _rebuilt_updates(home: Path, work: Path) -> list[dict[str, np.ndarray]]:
    """The node's updates as its parent rebuilt them, oldest first (its last one's lineage)."""
    from safetensors.numpy import load_file

    from p2phier.artifact import materialise, read_artifact
    from p2phier.artifact.verify import BlockSource
    from p2phier.cid import CID
    from p2phier.store.disk import DiskStore

    state = json.loads((home / "learn" / "state.json").read_text())
    sent = (state.get("sent") or {}).get("up")
    if not sent:
        return []
    store = DiskStore(home / "store")
    try:
        get = BlockSource(store).get_block
        chain: list[CID] = []
        cur: CID | None = CID.parse(sent["cid"])
        while cur is not None:
            art = read_artifact(get, cur)
            chain.append(art.cid)
            cur = art.manifest.parent
        out = []
        for cid in reversed(chain):
            d = materialise(store, cid, work / str(cid))
            out.append(load_file(str(d / "adapter_model.safetensors")))
        return out
    finally:
        store.close()


def _quantised(t: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], k: float) -> Any:
    """(payload bytes after zstd, the tensors as rebuilt) of ``t`` at step ``k``."""
    from p2phier.artifact.compress import compress
    from p2phier.artifact.encode import Encoding, decode_tensors, encode_tensors
    from p2phier.artifact.tensors import parse_safetensors, write_safetensors

    enc = encode_tensors(t, Encoding.INT8_DELTA, int8_rms_steps=k, reference=ref).tensors
    raw = write_safetensors(enc)
    parsed = parse_safetensors(raw, max_header=1 << 24, max_tensors=100_000)
    return len(compress(raw)), decode_tensors(parsed, Encoding.INT8_DELTA, max_decoded=1 << 31)


def _bytes_at(updates: list[dict[str, np.ndarray]], k: float) -> tuple[int, float]:
    total, errs, prev = 0, [], None
    for cur in updates:
        size, rec = _quantised(cur, cur, k)
        if prev is not None:
            d_size, d_rec = _quantised({n: cur[n] - prev[n] for n in cur}, cur, k)
            # the product sends the whole update only where it is smaller, and never at the
            # finest step (outbox: update_rms_steps = 0 is the former wire)
            if d_size <= size or k == 0:
                size, rec = d_size, {n: prev[n] + d_rec[n] for n in cur}
        total += size
        for n in cur:
            if "lora_A" in n and (b := n.replace("lora_A", "lora_B")) in cur:
                w = cur[b] @ cur[n]
                if (norm := float(np.linalg.norm(w))) > 0:
                    errs.append(float(np.linalg.norm(w - rec[b] @ rec[n])) / norm)
        prev = rec
    return total, float(np.mean(errs)) if errs else 0.0


def _answers_changed(home: Path, work: Path) -> dict[float, tuple[int, int]] | None:
    from safetensors.numpy import load_file, save_file

    from p2phier.learn.models import load_tier
    from p2phier.learn.train import Session

    state = json.loads((home / "learn" / "state.json").read_text())
    plan = json.loads((home / "learn" / "plan.json").read_text())
    data_file = home / "learn" / "data.json"
    local, flat = state.get("local") or {}, state.get("flat") or {}
    if local.get("dir"):
        adapter, parents = Path(local["dir"]), [Path(local["on"])] if local.get("on") else []
    elif flat.get("dir"):
        adapter, parents = Path(flat["dir"]), []
    else:
        return None
    if not data_file.exists() or not state.get("tier"):
        return None
    data = json.loads(data_file.read_text())
    texts = [r["text"] for batch in data["arrivals"] for r in batch] + [
        r["text"] for r in data["test"]
    ]
    tier = load_tier(Path(state["tier"]["dir"]))
    labels, length = plan.get("labels") or (), plan["max_length"]

    def answers(path: Path) -> list[str]:
        return Session(tier, parents=parents, adapter=path, answers=labels).predict(texts, length)

    exact = answers(adapter)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for k in STEPS:
        d = work / f"q{k:g}"
        d.mkdir()
        shutil.copy(adapter / "adapter_config.json", d)
        save_file(dict(_quantised(tensors, tensors, k)[1]), str(d / "adapter_model.safetensors"))
        out[k] = (sum(a != b for a, b in zip(answers(d), exact, strict=True)), len(texts))
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else "wire benchmark")
    p.add_argument("run", type=Path, help="a kept devnet run directory")
    args = p.parse_args(argv)
    from p2phier.learn.models import configure_torch

    configure_torch(2, seed=0)
    report, homes = load_kept_run(args.run)
    model_bytes = {n["name"]: n["model_bytes"] for n in report["run"]["nodes"]}
    rows, result = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, home in homes.items():
            log(f"wire bench: {name}")
            work = Path(tmp) / name
            work.mkdir()
            updates = _rebuilt_updates(home, work)
            sizes = {k: _bytes_at(updates, k) for k in STEPS} if updates else {}
            (work / "answers").mkdir()
            changed = _answers_changed(home, work / "answers")
            result[name] = {
                "updates": len(updates),
                "pct_of_full_per_round": {
                    f"{k:g}": 100.0 * sizes[k][0] / len(updates) / model_bytes[name] for k in sizes
                },
                "dw_err": {f"{k:g}": sizes[k][1] for k in sizes},
                "answers_changed": {f"{k:g}": list(v) for k, v in (changed or {}).items()},
            }
            rows.append(
                [name, len(updates)]
                + [
                    f"{100.0 * sizes[k][0] / len(updates) / model_bytes[name]:.3f}% "
                    f"({sizes[k][1]:.3f})"
                    if sizes
                    else "-"
                    for k in STEPS
                ]
                + [f"{changed[k][0]}/{changed[k][1]}" if changed else "-" for k in STEPS]
            )
    print_table(
        f"update payload per round, % of the node's full model (B@A error), and answers "
        f"changed, at update_rms_steps {', '.join(f'{k:g}' for k in STEPS)}",
        ["node", "updates"]
        + [f"bytes k={k:g}" for k in STEPS]
        + [f"changed k={k:g}" for k in STEPS],
        rows,
    )
    if args.json:
        print(json.dumps({"run": str(args.run), "steps": list(STEPS), "nodes": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
