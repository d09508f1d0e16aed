"""The memory promise of :mod:`p2phier.artifact.limits`, measured as a child process's peak RSS.

Issue 13 measured an 8.8 KB artifact (fp16 zeros) costing 873 MiB to verify
and 2,060 MiB to unpack, an 8-deep chain of 4 KB int8 zero-deltas 1,755 MiB,
and a 1 GiB CAR of junk held whole in memory before its root was looked for.
Here each operation runs in a fresh process (``memory_child.py``) on artifacts
built to sit exactly at a set of small limits, and its peak resident memory
beyond what the process held before must stay within
:meth:`Limits.peak_memory` (plus a fixed allowance for the allocator and the
interpreter's own working memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from p2phier.artifact import (
    SIGNING_DOMAIN,
    ContentRef,
    Encoding,
    Envelope,
    Limits,
    Manifest,
    export_car,
    parse_adapter_config,
)
from p2phier.artifact.car import encode_car
from p2phier.artifact.compress import compress
from p2phier.artifact.encode import encode_tensors
from p2phier.artifact.pack import pack_tensors
from p2phier.artifact.tensors import write_safetensors
from p2phier.artifact.verify import META_ENCODING, META_FORMAT, PAYLOAD_FORMAT
from p2phier.cid import CID
from p2phier.identity import Identity
from p2phier.store import DiskStore

from .conftest import BASE_MODEL, MODULES, adapter_config

KiB = 1024
MiB = 1024 * KiB
RANK = 64
HIDDEN = 131_072  # 4 tensors of 64 x 131072 float32: 128 MiB decoded
LIMITS = {"max_decoded": 128 * MiB, "max_decompressed": 64 * MiB + 64 * KiB, "max_compressed": MiB}
BOUND = Limits(**LIMITS).peak_memory()  # 128 + 64 + 128 MiB
ALLOWANCE = 32 * MiB  # allocator arenas, interpreter, one block read
CHAIN = 8
CHILD = Path(__file__).with_name("memory_child.py")


@dataclass(frozen=True)
class Built:
    store_dir: Path
    root: CID  # fp16 zeros, 64 MiB payload decompressed, 128 MiB decoded
    leaf: CID  # CHAIN int8 zero-deltas on top of root
    chain_car: Path
    junk_car: Path


def _zeros() -> dict[str, np.ndarray]:
    out = {}
    for module in MODULES:
        prefix = f"base_model.model.{module}"
        out[f"{prefix}.lora_A.weight"] = np.zeros((RANK, HIDDEN), np.float32)
        out[f"{prefix}.lora_B.weight"] = np.zeros((HIDDEN, RANK), np.float32)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    tmp = tmp_path_factory.mktemp("memory")
    author = Identity.generate()
    limits = Limits(**LIMITS)
    config = parse_adapter_config(json.dumps(adapter_config(r=RANK)).encode(), max_size=65536)
    with DiskStore(tmp / "store") as store:
        root = pack_tensors(
            store,
            config,
            _zeros(),
            author,
            layer="device",
            domain="en/news",
            base_model_id=BASE_MODEL,
            encoding=Encoding.FP16,
            now=1_700_000_000.0,
            limits=limits,
        )
        # One int8 zero-delta payload (32 MiB decompressed, a few KB stored), signed
        # CHAIN times as successive updates: what a peer can publish for almost nothing.
        encoded = encode_tensors(_zeros(), Encoding.INT8_DELTA)
        raw = write_safetensors(
            encoded.tensors, {META_FORMAT: PAYLOAD_FORMAT, META_ENCODING: "int8-delta"}
        )
        z = compress(raw)
        assert len(z) < 64 * KiB
        payload = ContentRef(store.add_bytes(z, pin=True), len(z))
        parent = root.cid
        for i in range(CHAIN):
            manifest = Manifest(
                base_model_id=BASE_MODEL,
                base_model_cid=None,
                parent=parent,
                layer="device",
                domain="en/news",
                round=i + 1,
                encoding=Encoding.INT8_DELTA,
                metrics=(),
                author=author.peer_id,
                created_ms=1_700_000_000_000 + i,
                config=root.manifest.config,
                tensors=payload,
                tensors_raw_size=len(raw),
            )
            data = manifest.to_bytes()
            env = Envelope(data, author.sign(SIGNING_DOMAIN, data), author.peer_id.multihash_bytes)
            parent = store.add_bytes(env.to_bytes(), pin=True)
        chain_car = export_car(store, parent, tmp / "chain.car", limits=limits)
    junk_car = tmp / "junk.car"
    with open(junk_car, "wb") as fh:
        junk = (os.urandom(MiB) for _ in range(256))
        for piece in encode_car(
            [CID.raw(b"a root the archive does not hold")],
            ((CID.raw(block), block) for block in junk),
        ):
            fh.write(piece)
    yield Built(tmp / "store", root.cid, parent, chain_car, junk_car)


def _run(*args: str | Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(CHILD), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _limits() -> str:
    return json.dumps(LIMITS)


def test_verify_at_the_limits_stays_within_the_bound(built: Built) -> None:
    out = _run("verify", built.store_dir, built.root, _limits())
    assert out["error"] is None, out
    extra = int(out["extra"])  # type: ignore[call-overload]
    assert extra >= 128 * MiB  # the decoded tensors were held: the probe measures something
    assert extra <= BOUND + ALLOWANCE, f"{extra / MiB:.0f} MiB"


def test_a_chain_of_zero_deltas_stays_within_the_bound(built: Built) -> None:
    out = _run("verify", built.store_dir, built.leaf, _limits())
    assert out["error"] is None, out
    extra = int(out["extra"])  # type: ignore[call-overload]
    assert extra >= 128 * MiB
    assert extra <= BOUND + ALLOWANCE, f"{extra / MiB:.0f} MiB"


def test_unpack_streams_the_weights(built: Built, tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    out = _run("unpack", built.store_dir, built.leaf, _limits(), dest)
    assert out["error"] is None, out
    assert (dest / "adapter_model.safetensors").stat().st_size > 128 * MiB
    extra = int(out["extra"])  # type: ignore[call-overload]
    assert extra <= BOUND + ALLOWANCE, f"{extra / MiB:.0f} MiB"


def test_import_of_a_chain_stays_within_the_bound(built: Built, tmp_path: Path) -> None:
    out = _run("import", tmp_path / "fresh", built.chain_car, _limits())
    assert out["error"] is None, out
    extra = int(out["extra"])  # type: ignore[call-overload]
    assert extra >= 128 * MiB
    assert extra <= BOUND + ALLOWANCE, f"{extra / MiB:.0f} MiB"


def test_a_car_of_junk_is_not_held_in_memory(built: Built, tmp_path: Path) -> None:
    assert built.junk_car.stat().st_size > 256 * MiB
    out = _run("import", tmp_path / "fresh", built.junk_car, _limits())
    assert out["error"] == "MissingBlocksError", out
    extra = int(out["extra"])  # type: ignore[call-overload]
    assert extra < 32 * MiB, f"{extra / MiB:.0f} MiB for a 256 MiB archive"
    with DiskStore(tmp_path / "fresh") as store:
        assert not list(store.iter_block_cids())  # a failed import stores nothing
