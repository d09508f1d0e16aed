"""``p2phier store ...`` end to end through the real CLI, on a temp home."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from p2phier.cid import CID
from tests.cli.conftest import Runner


def _blocks(home: Path) -> list[Path]:
    return sorted(p for p in (home / "store" / "blocks").rglob("*") if p.is_file())


def test_add_cat_get_roundtrip(cli: Runner, tmp_path: Path) -> None:
    data = os.urandom(600_000)  # three 256 KiB chunks -> a dag-pb root
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    r = cli("store", "add", src, "--json")
    assert r.returncode == 0, r
    out = r.json()
    assert out["size"] == len(data) and out["name"] == "in.bin" and out["pinned"] is True
    cid = CID.parse(out["cid"])
    assert str(cid) == out["cid"] and str(cid).startswith("bafybei")

    human = cli("store", "add", src)
    assert human.text.strip() == out["cid"]  # same bytes, same CID; plain mode prints the CID

    cat = cli("store", "cat", out["cid"])
    assert cat.returncode == 0 and cat.stdout == data

    dest = tmp_path / "out.bin"
    got = cli("store", "get", out["cid"], "--out", dest, "--json")
    assert got.returncode == 0, got
    assert got.json() == {"cid": out["cid"], "path": str(dest), "size": len(data)}
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_small_file_is_one_raw_block_with_kubo_cid(cli: Runner, tmp_path: Path) -> None:
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello world\n")
    out = cli("store", "add", src, "--json").json()
    # `ipfs add --cid-version=1 --raw-leaves` of a single-chunk file is CID.raw(data)
    assert out["cid"] == str(CID.raw(b"hello world\n"))


def test_ls_pin_unpin_gc(cli: Runner, tmp_path: Path, home: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(300_000))
    b.write_bytes(os.urandom(1000))
    ca = cli("store", "add", a, "--json").json()["cid"]
    cb = cli("store", "add", b, "--no-pin", "--json").json()["cid"]

    ls = cli("store", "ls", "--json").json()
    by_cid = {o["cid"]: o for o in ls["objects"]}
    assert by_cid[ca]["name"] == "a.bin" and by_cid[ca]["size"] == 300_000
    assert by_cid[ca]["pin"] == "recursive" and by_cid[cb]["pin"] is None
    assert ls["pins"] == {ca: "recursive"}
    assert "a.bin" in cli("store", "ls").text

    gc = cli("store", "gc", "--json").json()
    assert gc["removed"] == 1 and gc["cids"] == [cb] and gc["bytes_freed"] == 1000
    assert cli("store", "cat", cb).returncode == 5  # gone
    assert cli("store", "cat", ca).returncode == 0  # pinned: kept

    assert cli("store", "unpin", ca, "--json").json() == {"cid": ca, "pinned": False}
    again = cli("store", "unpin", ca, "--json")
    assert again.returncode == 5 and again.json()["type"] == "NotPinnedError"
    gc = cli("store", "gc", "--json").json()
    assert gc["removed"] == 3 and gc["bytes_freed"] > 300_000  # 2 leaves + root
    assert _blocks(home) == []

    a2 = cli("store", "add", a, "--no-pin", "--json").json()["cid"]
    assert cli("store", "pin", a2, "--json").json() == {"cid": a2, "pinned": True}
    assert cli("store", "gc", "--json").json()["removed"] == 0


def test_ls_shows_bracketed_names_as_they_are(cli: Runner, tmp_path: Path) -> None:
    # the table is rich markup: "[v2]" and "[bold]" must stay text, not vanish as styles
    for name in ("notes[v2].txt", "[bold]x.txt"):
        (tmp_path / name).write_bytes(name.encode())
        assert cli("store", "add", tmp_path / name).returncode == 0
    shown = cli("store", "ls").text
    assert "notes[v2].txt" in shown and "[bold]x.txt" in shown


def test_bad_and_unknown_cids(cli: Runner) -> None:
    bad = cli("store", "cat", "bafkreinot-a-cid", "--json")
    assert bad.returncode == 4 and bad.json()["type"] == "CIDError" and bad.stderr == ""
    bad = cli("store", "pin", "not-a-cid", "--json")
    assert bad.returncode == 4 and bad.json()["type"] == "CIDError"
    unknown = str(CID.raw(b"never added"))
    r = cli("store", "get", unknown, "--out", "x.bin", "--json")
    assert r.returncode == 5 and r.json()["type"] == "BlockNotFoundError"
    r = cli("store", "cat", unknown)
    assert r.returncode == 5 and r.stdout == b"" and len(r.stderr.splitlines()) == 1


def test_missing_input_file(cli: Runner, tmp_path: Path) -> None:
    r = cli("store", "add", tmp_path / "nope.bin", "--json")
    assert r.returncode == 2
    assert r.json() == {"error": f"{tmp_path / 'nope.bin'}: no such file", "type": "InputFileError"}
    r = cli("store", "add", tmp_path)
    assert r.returncode == 2 and "not a regular file" in r.stderr


def test_verify_finds_corrupt_block_and_exits_nonzero(
    cli: Runner, tmp_path: Path, home: Path
) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(os.urandom(600_000))
    cid = cli("store", "add", src, "--json").json()["cid"]
    ok = cli("store", "verify", "--json")
    assert ok.returncode == 0 and ok.json()["ok"] is True and ok.json()["checked"] == 4

    leaf = next(p for p in _blocks(home) if p.name.startswith("bafkrei"))
    raw = bytearray(leaf.read_bytes())
    raw[1234] ^= 0xFF
    leaf.write_bytes(bytes(raw))

    r = cli("store", "verify", "--json")
    assert r.returncode == 5, r
    report = r.json()
    assert report["ok"] is False and report["corrupt"] == [leaf.name]
    human = cli("store", "verify")
    assert human.returncode == 0  # the corrupt block was quarantined by the first verify
    # ...so the object is now incomplete, and reading it fails cleanly instead of serving bad bytes
    cat = cli("store", "cat", cid)
    assert cat.returncode == 5 and cat.stdout == b""


def test_a_lost_index_loses_no_pinned_data(cli: Runner, tmp_path: Path, home: Path) -> None:
    # Regression: with index.sqlite gone, `store ls` showed nothing and `store gc`
    # deleted every block, pinned content included.
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(600_000))
    ca = cli("store", "add", a, "--json").json()["cid"]
    store_dir = next(p.parent for p in home.rglob("index.sqlite"))
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (store_dir / name).unlink(missing_ok=True)
    assert cli("store", "ls", "--json").json()["pins"] == {ca: "recursive"}
    assert cli("store", "gc", "--json").json()["removed"] == 0
    got = cli("store", "cat", ca)
    assert got.returncode == 0 and got.stdout == a.read_bytes()


def test_get_onto_a_symlink_is_refused_and_the_link_kept(cli: Runner, tmp_path: Path) -> None:
    # Regression: the atomic write replaced the link itself with the content.
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1000))
    cid = cli("store", "add", src, "--json").json()["cid"]
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(target)
    got = cli("store", "get", cid, "--out", link, "--json")
    assert got.returncode != 0 and "symbolic link" in got.json()["error"]
    assert link.is_symlink() and target.read_text() == "keep me"


def test_cat_and_get_refuse_a_fan_in_dag_and_an_oversized_object(
    cli: Runner, tmp_path: Path, home: Path
) -> None:
    # Regression: a 3-block DAG whose links fan in to the same leaves declared 16 TiB;
    # `store cat` streamed gigabytes and `store get` wrote until the disk was full.
    from p2phier.store import DiskStore
    from tests.test_unixfs import _fan_in

    root, blocks = _fan_in(5, 174)  # 6 blocks declaring 174^5 bytes
    cli("store", "ls", "--json")  # creates the home's store
    store_dir = next(p.parent for p in home.rglob("index.sqlite"))
    with DiskStore(store_dir) as store:
        for cid, block in blocks.items():
            store.put_block(cid, block)
    out = tmp_path / "out.bin"
    got = cli("store", "get", str(root), "--out", out, "--json")
    assert got.returncode != 0 and not out.exists()
    assert "over the limit" in got.json()["error"]  # 1.6e11 > the 64 GiB default
    cat = cli("store", "cat", str(root))
    assert cat.returncode != 0 and cat.stdout == b""  # not one byte of content
    # within the size limit, the fan-in shape itself is refused before any byte
    small, small_blocks = _fan_in(3, 174)  # 5.3 MB declared from 4 blocks
    with DiskStore(store_dir) as store:
        for cid, block in small_blocks.items():
            store.put_block(cid, block)
    cat = cli("store", "cat", str(small))
    assert cat.returncode != 0 and cat.stdout == b"", cat.stderr
    assert "reuse small blocks" in cat.stderr
    # an operator limit below an honest object's size
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(300_000))
    ca = cli("store", "add", a, "--json").json()["cid"]
    limited = cli(
        "store", "get", ca, "--out", out, "--json", env={"P2PHIER_STORE_MAX_OBJECT_SIZE": "100k"}
    )
    assert limited.returncode != 0 and not out.exists()
    assert cli("store", "get", ca, "--out", out, "--json").returncode == 0
    assert out.read_bytes() == a.read_bytes()


def test_pin_refuses_what_get_refuses_and_pins_nothing(
    cli: Runner, tmp_path: Path, home: Path
) -> None:
    # Regression: `store pin` pinned DAGs that `store get` refuses (lying sizes, depth 40,
    # directory roots, links fanning in to tiny blocks) into the index and the pin journal.
    from p2phier.store import DiskStore
    from p2phier.unixfs import UNIXFS_DIRECTORY
    from tests.store.helpers import Blocks, chain, leaf, node
    from tests.test_unixfs import _fan_in

    blocks: Blocks = {}
    a, b = leaf(b"a" * 10, blocks), leaf(b"b" * 10, blocks)
    lying, lying_block = node([(a, 10), (b, 20)])  # leaf b holds 10 bytes, not 20
    directory, dir_block = node([(a, 10)], type_=UNIXFS_DIRECTORY, filesize=None, name="a.txt")
    deep, deep_blocks = chain(40)
    fan_in, fan_in_blocks = _fan_in(3, 174)  # 4 blocks declaring 5.3 MB: 5.3M block reads
    huge, huge_blocks = _fan_in(5, 174)  # 6 blocks declaring 1.6e11 bytes
    blocks |= {lying: lying_block, directory: dir_block}
    blocks |= deep_blocks | fan_in_blocks | huge_blocks
    cli("store", "ls", "--json")  # creates the home's store
    store_dir = next(p.parent for p in home.rglob("index.sqlite"))
    with DiskStore(store_dir) as store:
        for cid, block in blocks.items():
            store.put_block(cid, block)
    cases = [
        (lying, 4, "UnixFSError", "but its parent claims 20"),
        (directory, 4, "UnixFSError", "is a directory, not a file"),
        (deep, 4, "UnixFSError", "deeper than 32 levels"),
        (fan_in, 4, "DagAmplificationError", "reuse small blocks"),
        (huge, 5, "ObjectTooLargeError", "store.max_object_size"),
    ]
    out = tmp_path / "out.bin"
    for root, code, kind, words in cases:
        got = cli("store", "pin", str(root), "--json")
        assert got.returncode == code, got
        assert got.json()["type"] == kind and words in got.json()["error"], got
        assert "nothing was pinned" in got.json()["error"]
        human = cli("store", "pin", str(root))
        assert human.returncode == code and human.stdout == b""
        assert len(human.stderr.splitlines()) == 1 and "Traceback" not in human.stderr
        assert cli("store", "get", str(root), "--out", out).returncode != 0  # as `get` does
    assert cli("store", "ls", "--json").json()["pins"] == {}
    assert [p.name for p in (store_dir / "pins").iterdir()] == ["FORMAT"]
    assert cli("store", "gc", "--json").json()["removed"] == len(blocks)  # nothing protected
