"""``p2phier artifact ...`` end to end on a tiny synthetic PEFT adapter, via the real CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from p2phier.artifact.synthetic import synthetic_lora_tensors as adapter_tensors
from p2phier.artifact.synthetic import write_synthetic_adapter as write_adapter
from tests.cli.conftest import Runner, run_p2phier

PACK = ("--layer", "device", "--domain", "news/bbc")


def _pack(cli: Runner, adapter: Path, *extra: str) -> dict[str, Any]:
    r = cli("artifact", "pack", adapter, *PACK, *extra, "--json")
    assert r.returncode == 0, r
    out = r.json()
    assert isinstance(out, dict)
    return out


def test_pack_full_then_delta_and_inspect(cli: Runner, home: Path, tmp_path: Path) -> None:
    a1 = write_adapter(tmp_path / "a1", seed=0)
    r = cli("artifact", "pack", a1, *PACK, "--metric", "accuracy=0.5", "--json")
    assert r.returncode == 0, r
    first = r.json()
    assert first["encoding"] == "fp32" and first["parent"] is None and first["round"] == 0
    assert first["base_model_id"] == "test/tiny-bert"  # taken from adapter_config.json
    # The key was created on first use, private, and announced on stderr.
    assert first["created_identity"] is True
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    assert "created a new identity" in r.stderr
    peer = cli("id", "show", "--json").json()["peer_id"]
    assert first["author"] == peer

    info = cli("artifact", "inspect", first["cid"], "--json").json()
    assert info["verified"] is True and info["cid"] == first["cid"]
    assert info["bytes"]["stored"] == first["bytes"]
    assert info["manifest"]["metrics"] == {"accuracy": 0.5}
    assert info["manifest"]["layer"] == "device" and info["manifest"]["domain"] == "news/bbc"

    a2 = write_adapter(tmp_path / "a2", seed=1)
    second = _pack(cli, a2, "--parent", str(first["cid"]))
    assert second["encoding"] == "int8-delta"  # the default for a delta
    assert second["parent"] == first["cid"] and second["round"] == 1
    assert second["created_identity"] is False
    info2 = cli("artifact", "inspect", second["cid"], "--json").json()
    assert info2["lineage"] == [second["cid"], first["cid"]] and info2["delta"] is True

    for enc in ("fp16", "topk-delta", "fp32"):
        out = _pack(cli, a2, "--parent", str(first["cid"]), "--encoding", enc, "--round", "7")
        assert out["encoding"] == enc and out["round"] == 7
    # int8 is a full adapter (a node's keyframes); with a parent it is refused, clearly
    full = _pack(cli, a2, "--encoding", "int8")
    assert full["encoding"] == "int8" and full["parent"] is None
    refused = cli("artifact", "pack", a2, *PACK, "--parent", str(first["cid"]), "--encoding",
                  "int8", "--json")  # fmt: skip
    assert refused.returncode != 0 and "full adapter" in refused.stdout.decode() + refused.stderr

    human = cli("artifact", "inspect", second["cid"])
    assert "int8-delta" in human.text and str(first["cid"]) in human.text

    listed = cli("store", "ls", "--json").json()["objects"]
    kinds = {o["kind"] for o in listed}
    assert {"artifact", "adapter-config", "adapter-tensors"} <= kinds


def test_verify_unpack_export_import(cli: Runner, home: Path, tmp_path: Path) -> None:
    a1 = write_adapter(tmp_path / "a1", seed=0)
    a2 = write_adapter(tmp_path / "a2", seed=1)
    c1 = _pack(cli, a1)["cid"]
    c2 = _pack(cli, a2, "--parent", str(c1))["cid"]

    v = cli("artifact", "verify", c2, "--json")
    assert v.returncode == 0, v
    assert v.json()["ok"] is True and v.json()["lineage"] == [c2, c1]

    # unpack: a PEFT adapter directory that decodes to a2 within int8 error
    out = tmp_path / "unpacked"
    u = cli("artifact", "unpack", c2, "--out", out, "--json")
    assert u.returncode == 0, u
    assert u.json()["files"] == ["adapter_config.json", "adapter_model.safetensors"]
    got = load_file(str(out / "adapter_model.safetensors"))
    want = adapter_tensors(1)
    assert set(got) == set(want)
    for name, value in want.items():
        delta = value - adapter_tensors(0)[name]
        bound = np.abs(delta).max() / 254 + 1e-6
        assert np.abs(got[name] - value).max() <= bound, name
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2

    # export, verify the file, import it into a second, empty home
    car = tmp_path / "a2.car"
    e = cli("artifact", "export", c2, "--out", car, "--json")
    assert e.returncode == 0, e
    assert e.json()["bytes"] == car.stat().st_size > 0
    before = cli("store", "ls", "--json").json()
    vf = cli("artifact", "verify", car, "--json")
    assert vf.returncode == 0, vf
    assert vf.json()["source"] == "car" and vf.json()["cid"] == c2
    assert cli("store", "ls", "--json").json() == before  # verifying a file stores nothing

    other = tmp_path / "other-home"
    other.mkdir()
    assert run_p2phier(other, "artifact", "verify", c2, "--json").returncode != 0
    imp = run_p2phier(other, "artifact", "import", car, "--json")
    assert imp.returncode == 0, imp
    assert imp.json()["cid"] == c2
    assert run_p2phier(other, "artifact", "verify", c2, "--json").json()["ok"] is True


def test_tampered_car_fails_verification(cli: Runner, tmp_path: Path) -> None:
    c1 = _pack(cli, write_adapter(tmp_path / "a1", seed=0))["cid"]
    car = tmp_path / "a.car"
    assert cli("artifact", "export", c1, "--out", car).returncode == 0
    data = bytearray(car.read_bytes())
    data[-40] ^= 0x01  # inside the last block's bytes
    bad = tmp_path / "bad.car"
    bad.write_bytes(bytes(data))
    r = cli("artifact", "verify", bad, "--json")
    assert r.returncode != 0
    out = r.json()
    assert out["ok"] is False and out["error"] and out["source"] == "car"
    human = cli("artifact", "verify", bad)
    assert human.returncode == r.returncode and "verification failed" in human.stderr


def test_corrupt_payload_in_store_fails_verify(cli: Runner, home: Path, tmp_path: Path) -> None:
    c1 = _pack(cli, write_adapter(tmp_path / "a1", seed=0))["cid"]
    info = cli("artifact", "inspect", c1, "--json").json()
    payload_cid = info["manifest"]["tensors"]["cid"]
    block = next((home / "store" / "blocks").rglob(payload_cid))
    raw = bytearray(block.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    block.write_bytes(bytes(raw))
    r = cli("artifact", "verify", c1, "--json")
    assert r.returncode == 5, r  # the store's CorruptBlockError
    assert r.json()["ok"] is False and r.json()["type"] == "CorruptBlockError"
    # The corrupt block was quarantined, so now the artifact is incomplete, never served bad.
    u = cli("artifact", "unpack", c1, "--out", tmp_path / "u", "--json")
    assert u.returncode == 6 and u.json()["type"] == "MissingBlocksError"
    assert not (tmp_path / "u").exists()


def test_pack_errors(cli: Runner, home: Path, tmp_path: Path) -> None:
    a1 = write_adapter(tmp_path / "a1", seed=0)
    r = cli("artifact", "pack", a1, *PACK, "--encoding", "int8-delta", "--json")
    assert r.returncode == 2 and "parent" in r.json()["error"]
    r = cli("artifact", "pack", a1, *PACK, "--metric", "accuracy", "--json")
    assert r.returncode == 2 and "name=value" in r.json()["error"]
    r = cli("artifact", "pack", a1, *PACK, "--encoding", "fp8", "--json")
    assert r.returncode == 2
    r = cli("artifact", "pack", tmp_path / "nope", *PACK, "--json")
    assert r.returncode == 2 and r.json()["type"] == "InputFileError"
    r = cli("artifact", "pack", a1, "--layer", "device", "--domain", "Bad Domain", "--json")
    assert r.returncode == 6 and r.json()["type"] == "ManifestError"
    # a LoRA A tensor whose rank disagrees with the config
    t = adapter_tensors(0)
    name = next(n for n in t if n.endswith("lora_A.weight"))
    t[name] = np.zeros((3, 16), dtype=np.float32)
    broken = write_adapter(tmp_path / "broken", tensors=t)
    r = cli("artifact", "pack", broken, *PACK, "--json")
    assert r.returncode == 6 and r.json()["type"] == "TensorFileError"
    # nothing was stored by the failed packs
    assert cli("store", "ls", "--json").json()["objects"] == []


def test_signing_without_key_when_auto_create_is_off(
    cli: Runner, home: Path, tmp_path: Path
) -> None:
    (home / "config.toml").write_text("[identity]\nauto_create = false\n")
    a1 = write_adapter(tmp_path / "a1", seed=0)
    r = cli("artifact", "pack", a1, *PACK, "--json")
    assert r.returncode == 3 and "p2phier id new" in r.json()["error"]
    assert not (home / "identity.key").exists()
    assert cli("id", "new").returncode == 0
    assert cli("artifact", "pack", a1, *PACK, "--json").returncode == 0


def test_unknown_artifact(cli: Runner) -> None:
    from p2phier.cid import CID

    missing = str(CID.raw(b"no such envelope"))
    r = cli("artifact", "inspect", missing, "--json")
    assert r.returncode in (5, 6) and "error" in r.json()
    r = cli("artifact", "inspect", "zzz", "--json")
    assert r.returncode == 4 and r.json()["type"] == "CIDError"


def test_pack_refuses_a_parent_at_the_chain_limit(cli: Runner, home: Path, tmp_path: Path) -> None:
    from p2phier.artifact import DEFAULT_LIMITS, export_car, pack_tensors, parse_adapter_config
    from p2phier.identity import Identity
    from p2phier.store import MemoryStore

    # A lineage of exactly max_chain updates (valid), built in memory and imported via a CAR.
    a = write_adapter(tmp_path / "a", seed=0)
    config = parse_adapter_config(
        (a / "adapter_config.json").read_bytes(), max_size=DEFAULT_LIMITS.max_config
    )
    ident = Identity.from_seed(bytes(32))
    car = tmp_path / "chain.car"
    with MemoryStore() as mem:
        parent = None
        for i in range(DEFAULT_LIMITS.max_chain):
            art = pack_tensors(
                mem,
                config,
                adapter_tensors(i),
                ident,
                layer="device",
                domain="news/bbc",
                base_model_id="test/tiny-bert",
                parent=parent,
                encoding="fp16" if parent else None,
                now=1_700_000_000.0 + i,
            )
            parent = art.cid
        export_car(mem, parent, car)
    leaf = cli("artifact", "import", car, "--json")
    assert leaf.returncode == 0, leaf
    tip = leaf.json()["cid"]
    assert cli("artifact", "verify", tip, "--json").json()["ok"] is True
    before = cli("store", "ls", "--json").json()

    r = cli("artifact", "pack", a, *PACK, "--parent", tip, "--json")
    assert r.returncode == 6, r  # was 0, and the new artifact then failed `artifact verify`
    assert r.json()["type"] == "LineageError" and "limit of 64" in r.json()["error"]
    assert cli("store", "ls", "--json").json() == before


def test_pack_refuses_a_fifo_without_hanging(cli: Runner, home: Path, tmp_path: Path) -> None:
    import os

    extra = write_adapter(tmp_path / "extra", seed=0)
    os.mkfifo(extra / "notes.fifo")  # an unrelated FIFO is never opened: the pack works
    assert _pack(cli, extra)["cid"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        d = write_adapter(tmp_path / name, seed=1)
        (d / name).unlink()
        os.mkfifo(d / name)
        # The timeout turns a regression (open() of a FIFO blocks for ever) into a failure.
        r = cli("artifact", "pack", d, *PACK, "--json", timeout=60)
        assert r.returncode == 2, r
        assert "not a regular file" in r.json()["error"] and name in r.json()["error"]
        r = cli("artifact", "pack", d, *PACK, "--base-model", "test/tiny-bert", timeout=60)
        assert r.returncode == 2, r


def test_verify_of_an_overlong_non_cid_is_a_cid_error(cli: Runner) -> None:
    for target in ("b" * 10_000, "x" * 300, "bafy-not-a-cid"):
        r = cli("artifact", "verify", target, "--json")
        assert r.returncode == 4, r  # was 74 (OSError: file name too long)
        out = r.json()
        assert out["ok"] is False and out["type"] == "CIDError" and out["source"] == "store"
        human = cli("artifact", "verify", target)
        assert human.returncode == 4 and "verification failed" in human.stderr


_FAIL_AFTER_CONFIG = """
import sys
import p2phier.artifact.pack as pack
from p2phier.errors import StoreIOError

real = pack.compress_into_store

def refused(*args, **kw):
    real(*args, **kw)  # the payload's blocks are written, then the add fails (disk full)
    raise StoreIOError("no space left on device")

pack.compress_into_store = refused
from p2phier.cli.main import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_failed_pack_leaves_nothing_pinned(cli: Runner, home: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.cli.conftest import cli_env

    kept = _pack(cli, write_adapter(tmp_path / "kept", seed=0))["cid"]
    before = cli("store", "ls", "--json").json()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _FAIL_AFTER_CONFIG,
            "artifact",
            "pack",
            write_adapter(tmp_path / "a", seed=1, r=4),
            *PACK,
            "--json",
        ],
        capture_output=True,
        env=cli_env(home),
        cwd=home.parent,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 5, proc.stderr  # StoreIOError
    after = cli("store", "ls", "--json").json()
    assert after["pins"] == before["pins"]  # was: a new pinned adapter-config object
    gc = cli("store", "gc", "--json")
    assert gc.returncode == 0 and gc.json()["removed"] > 0, gc
    assert cli("store", "ls", "--json").json() == before
    assert cli("artifact", "verify", kept, "--json").json()["ok"] is True


def test_base_weights_check_the_targeted_modules(cli: Runner, home: Path, tmp_path: Path) -> None:
    """--base-weights: the adapter must adapt exactly the modules its config targets there."""
    from p2phier.artifact.tensors import write_safetensors

    cid = _pack(cli, write_adapter(tmp_path / "a", seed=0))["cid"]

    def base(layers: int) -> Path:
        names = {
            f"encoder.layer.{i}.attention.self.{m}.{p}": np.zeros(1, np.float32)
            for i in range(layers)
            for m in ("query", "key", "value")
            for p in ("weight", "bias")
        }
        path = tmp_path / f"base-{layers}" / "model.safetensors"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(write_safetensors(names))
        return path

    ok = cli("artifact", "verify", cid, "--base-weights", base(2), "--json")
    assert ok.returncode == 0, ok
    out = tmp_path / "out"
    assert (
        cli("artifact", "unpack", cid, "-o", out, "--base-weights", base(2).parent).returncode == 0
    )
    # a base with a third layer: its query/value would get untrained LoRA layers
    bad = cli("artifact", "verify", cid, "--base-weights", base(3), "--json")
    assert bad.returncode == 6, bad  # the verification-failed exit code
    assert bad.json()["type"] == "TensorFileError"
    assert "encoder.layer.2.attention.self.query" in bad.json()["error"]
    u = cli("artifact", "unpack", cid, "-o", tmp_path / "out3", "--base-weights", base(3), "--json")
    assert u.returncode == 6 and not (tmp_path / "out3").exists()
