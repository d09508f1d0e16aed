"""Store benchmark: what publishing costs, how fast reads verify, how small deltas are.

Run ``python bench/store.py`` (``--quick`` for a smaller run, ``--json`` to end stdout with one
JSON object).  Two parts:

1. Ingest.  A 256 MiB object of float32 Gaussian noise (std 0.02, seed 0: weights-like, nearly
   incompressible, unlike zeros) is published the way an artifact is, with
   :func:`~p2phier.artifact.compress.compress_into_store`: zstd-3 compressed in a worker thread
   while the calling thread adds the frame to a fresh :class:`~p2phier.store.DiskStore`
   (chunked, hashed, each block written crash-safe with fsync).  The baseline, in the same run
   on the same bytes, is a plain ``sha256`` plus the same zstd-3 compression.
   ``ingest_ratio = baseline_s / ingest_s`` (medians of 3; goal >= 0.6).  Then verify-on-read:
   ``cat`` of the stored object (every block re-hashed; the files are in the page cache) and
   ``verify()`` of the whole store, in MB/s.
2. Delta sizes.  A LoRA classifier on MiniLM is trained on a BBC News subset for N steps
   (checkpoint 1), then M more (checkpoint 2).  Checkpoint 2 is packed as fp32, fp16, int8-delta
   and topk-delta (deltas against checkpoint 1) and the stored bytes of each artifact (manifest,
   config and zstd-compressed tensors) are given as % of MiniLM's full safetensors file
   (``delta_pct_of_full``; goal int8-delta <= 0.1 %), with the accuracy on held-out BBC articles
   of each decoded artifact minus that of the exact checkpoint 2 (``delta_acc_diff_pts``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit_json, log, median_seconds, parser, print_table, timed, verdict

INGEST_GOAL = 0.6
INT8_PCT_GOAL = 0.1
MB = 1e6


def weights_like(nbytes: int, seed: int = 0) -> bytes:
    """float32 N(0, 0.02) noise: what trained weights look like to a compressor."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(nbytes // 4, dtype=np.float32) * np.float32(0.02)).tobytes()


def bench_ingest(size_mib: int, repeat: int, workdir: Path) -> dict[str, Any]:
    from p2phier.artifact.compress import LEVEL, compress, compress_into_store
    from p2phier.store import DiskStore, MetaSpec

    log(f"ingest: generating {size_mib} MiB of float32 noise")
    data = weights_like(size_mib << 20)
    ingest_s: list[float] = []
    baseline_s: list[float] = []
    result: dict[str, Any] = {}
    for rep in range(repeat):
        root = workdir / f"store-{rep}"

        def baseline() -> None:
            hashlib.sha256(data).digest()
            compress(data)

        # The store is opened (SQLite index created) outside the timing: publishing into a
        # running node's store does not open it.
        with DiskStore(root) as store:

            def ingest(store: DiskStore = store) -> Any:
                # The product path (as pack_adapter publishes a payload): compression in a
                # worker thread overlapped with chunk + hash + write in this one.
                return compress_into_store(store, data, meta=MetaSpec(kind="bench"), pin=True)

            # Alternate the order so page-cache and frequency effects do not favour one side.
            if rep % 2:
                ingest_s.append(timed(ingest)[0])
                baseline_s.append(timed(baseline)[0])
            else:
                baseline_s.append(timed(baseline)[0])
                ingest_s.append(timed(ingest)[0])
        log(
            f"  rep {rep + 1}/{repeat}: baseline {baseline_s[-1]:.2f} s, "
            f"ingest {ingest_s[-1]:.2f} s"
        )
        if rep < repeat - 1:
            shutil.rmtree(root)

    with DiskStore(workdir / f"store-{repeat - 1}") as store:
        (meta,) = store.query(kind="bench")
        stored = sum(store.block_size(c) for c in store.iter_block_cids())

        def cat() -> int:
            return sum(len(piece) for piece in store.cat(meta.cid))

        cat_s, _ = median_seconds(cat, repeat)

        def verify() -> None:
            bad = store.verify()
            if bad:
                raise RuntimeError(f"verify found {len(bad)} corrupt blocks in a fresh store")

        verify_s, _ = median_seconds(verify, repeat)
    shutil.rmtree(workdir / f"store-{repeat - 1}")

    base = float(np.median(baseline_s))
    ing = float(np.median(ingest_s))
    result.update(
        object_mib=size_mib,
        data="float32 N(0, 0.02) noise, seed 0",
        zstd_level=LEVEL,
        compressed_bytes=meta.size,
        stored_bytes=stored,
        baseline_seconds=base,
        ingest_seconds=ing,
        baseline_samples=baseline_s,
        ingest_samples=ingest_s,
        ingest_ratio=base / ing,
        ingest_mb_s=len(data) / MB / ing,
        cat_verify_mb_s=meta.size / MB / cat_s,
        verify_mb_s=stored / MB / verify_s,
    )
    return result


def bench_deltas(quick: bool, workdir: Path) -> dict[str, Any]:
    import torch

    from p2phier.artifact import Encoding, materialise, pack_adapter
    from p2phier.identity import Identity
    from p2phier.learn.quick import QuickTask, full_model_bytes, load_bbc
    from p2phier.store import DiskStore

    torch.set_num_threads(2)
    train_n, test_n, steps1, steps2 = (16, 10, 8, 4) if quick else (60, 40, 40, 20)
    log(f"deltas: BBC {train_n}/class train, {test_n}/class test; {steps1} + {steps2} LoRA steps")
    train, test = load_bbc(train_n, test_n, seed=0)
    task = QuickTask(train, test, threads=2)
    t_train, _ = timed(lambda: task.train(steps1))
    ckpt1 = task.save(workdir / "ckpt1")
    t2, _ = timed(lambda: task.train(steps2))
    t_train += t2
    ckpt2 = task.save(workdir / "ckpt2")
    exact = task.accuracy()
    full = full_model_bytes()
    ident = Identity.from_seed(bytes(32))
    sizes: dict[str, int] = {}
    pct: dict[str, float] = {}
    acc: dict[str, float] = {}
    diff: dict[str, float] = {}
    with DiskStore(workdir / "store") as store:
        parent = pack_adapter(
            store,
            ckpt1,
            ident,
            encoding=Encoding.FP32,
            round=1,
            now=time.time(),
            layer="device",
            domain="news/bbc",
            base_model_id=BASE_MODEL_ID,
        )
        for enc in Encoding:
            art = pack_adapter(
                store,
                ckpt2,
                ident,
                encoding=enc,
                parent=parent.cid if enc.delta_only else None,
                round=2,
                now=time.time(),
                layer="device",
                domain="news/bbc",
                base_model_id=BASE_MODEL_ID,
            )
            sizes[enc.value] = art.stored_bytes
            pct[enc.value] = 100.0 * sizes[enc.value] / full
            out = workdir / f"decoded-{enc.value}"
            materialise(store, art.cid, out)
            acc[enc.value] = task.adapter_accuracy(out)
            diff[enc.value] = 100.0 * (acc[enc.value] - exact)
            log(f"  {enc.value}: {sizes[enc.value]} B, accuracy {acc[enc.value]:.3f}")
    return {
        "full_model_bytes": full,
        "train_per_class": train_n,
        "test_articles": len(test),
        "steps": [steps1, steps2],
        "train_seconds": t_train,
        "accuracy_exact": exact,
        "artifact_bytes": sizes,
        "delta_pct_of_full": pct,
        "accuracy": acc,
        "delta_acc_diff_pts": diff,
    }


BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0] if __doc__ else "store benchmark").parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    size_mib, repeat = (32, 3) if args.quick else (256, 3)
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="p2phier-bench-store-"))
    try:
        ingest = bench_ingest(size_mib, repeat, workdir)
        deltas = bench_deltas(args.quick, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print_table(
        f"Ingest of a {size_mib} MiB object ({ingest['data']}), median of {repeat}",
        ("measure", "value", "goal", ""),
        [
            ("baseline sha256 + zstd-3 (s)", f"{ingest['baseline_seconds']:.2f}", "", ""),
            ("ingest zstd-3 + DiskStore add (s)", f"{ingest['ingest_seconds']:.2f}", "", ""),
            (
                "ingest_ratio (baseline / ingest)",
                f"{ingest['ingest_ratio']:.2f}",
                f">= {INGEST_GOAL}",
                verdict(ingest["ingest_ratio"] >= INGEST_GOAL),
            ),
            ("ingest throughput (MB/s of input)", f"{ingest['ingest_mb_s']:.0f}", "", ""),
            ("cat with re-hash (MB/s)", f"{ingest['cat_verify_mb_s']:.0f}", "", ""),
            ("verify() (MB/s)", f"{ingest['verify_mb_s']:.0f}", "", ""),
        ],
    )
    rows = []
    for enc, p in deltas["delta_pct_of_full"].items():
        goal = f"<= {INT8_PCT_GOAL}%" if enc == "int8-delta" else ""
        ok = verdict(p <= INT8_PCT_GOAL) if enc == "int8-delta" else ""
        rows.append(
            (
                enc,
                deltas["artifact_bytes"][enc],
                f"{p:.3f}%",
                goal,
                ok,
                f"{deltas['accuracy'][enc]:.3f}",
                f"{deltas['delta_acc_diff_pts'][enc]:+.2f}",
            )
        )
    print_table(
        f"Checkpoint 2 of a MiniLM LoRA classifier (steps {deltas['steps']}), stored bytes as % "
        f"of the full model ({deltas['full_model_bytes']} B); exact accuracy "
        f"{deltas['accuracy_exact']:.3f} on {deltas['test_articles']} held-out articles",
        ("encoding", "bytes", "% of full", "goal", "", "accuracy", "diff (pts)"),
        rows,
    )
    result = {
        "bench": "store",
        "quick": args.quick,
        "seconds": time.perf_counter() - t0,
        **{k: v for k, v in ingest.items()},
        **deltas,
        "goals": {
            "ingest_ratio": {"goal": INGEST_GOAL, "met": ingest["ingest_ratio"] >= INGEST_GOAL},
            "int8_delta_pct": {
                "goal": INT8_PCT_GOAL,
                "met": deltas["delta_pct_of_full"]["int8-delta"] <= INT8_PCT_GOAL,
            },
        },
    }
    if args.json:
        emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
