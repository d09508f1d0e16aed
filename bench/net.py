"""Network benchmark: Bitswap fetches between real processes, against the bare transports.

Run ``python bench/net.py`` (``--quick`` for a smaller run, ``--json`` to end stdout with one
JSON object).  A provider process (this script with ``--serve``) holds a 64 MiB object of random
bytes in a DiskStore and serves it three ways; the fetcher is this process:

1. ``fetch``: a Bitswap fetch of the object into a fresh store (every block hashed against its
   CID, stored, and the object pinned) -- once into a :class:`~p2phier.store.DiskStore` (what a
   node does; blocks are written crash-safe with fsync) and once into a MemoryStore.
2. ``raw stream``: the same bytes on one bare py-libp2p Noise + Yamux stream between the same two
   processes (the provider writes 1 MiB at a time; nothing is hashed or stored).
3. ``tcp``: the same bytes over a plain trio TCP connection.
4. ``raw stream, aligned writes`` (for information, not a goal): the raw stream again, written
   in pieces of ``p2phier.net.streams.WRITE_PIECE`` bytes, the write size Bitswap uses (one
   Yamux frame in one Noise message; 1 MiB writes become 64 KiB frames that Noise splits in
   two).  It shows how much of Bitswap's speed comes from that write size alone.
5. ``verified stream`` (for information, not a goal): no protocol at all, only the work any
   verified, durable fetch of the object must add to the aligned raw stream.  The provider
   reads each block of the object's DAG from its DiskStore (re-hashed, as when Bitswap serves
   it) and writes the blocks back to back in aligned pieces; the fetcher, which knows every
   block's CID and size in advance, cuts the stream into blocks, hashes each against its CID
   and writes them into a fresh DiskStore in 4 MiB batches, in a worker thread while it keeps
   reading (as Bitswap does), then pins the root.  ``verified_stream_vs_raw_stream`` is thus
   a ceiling for ``fetch_vs_raw_stream`` on the machine it runs on: what is left after the
   hashing and storing that the project's rules (hash on receive and before serving,
   crash-safe writes) require, whatever the protocol.

Rounds are interleaved (fetch, raw, tcp, ...), medians of 3.  ``fetch_vs_raw_stream`` =
aligned-raw-stream seconds / fetch seconds: information, no goal (on loopback a Python
Noise + Yamux stream is CPU-bound on 2 cores, so this ratio mostly measures the cost of
the hashing and durable writes every fetch must do; the goals live where users feel them,
on shaped links: the ``shaped`` part).  The baseline writes the sizes Bitswap writes, so the
two differ only in what Bitswap adds; ``fetch_vs_raw_stream_1mib_writes`` is the ratio
against the 1 MiB-write stream of earlier figures.  ``fetch_vs_tcp`` likewise (info).

Then ``two_provider_speedup``: two provider processes, each capped at 8 MB/s by the node's own
upload-rate limit, against one of them alone (goal >= 1.8x), on a 32 MiB object (16 MiB with
``--quick``).  ``idle_rss_mib`` is the RSS of an idle provider node process (goal <= 150).

Last, ``announce_to_verified_p50_s`` / ``_p99_s``: a 1 MiB update announced by a node until its
child lists it as fetched and verified, down a chain of real ``p2phier node run`` processes (one
per layer, ``announce_chain_hops`` hops; see bench/_net_chain.py).

``shaped`` (see bench/_net_shaped.py): real node processes in network namespaces, each provider
behind its own tbf link of 8 MB/s (bandwidth only, no added latency): ``shaped_goodput_ratio_<n>``
for 1, 2 and 4 providers, ``vs_kubo_shaped`` and ``vs_kubo_loopback`` (a kubo v0.22 fetcher and
provider against p2phier's, same object and DAG) and ``mixed_swarm`` (one kubo and one p2phier
provider).  Without namespaces these rows say ``skipped: <reason>``.  ``--parts`` picks parts
(``transfers``, ``providers``, ``announce``, ``shaped``; default all).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from _common import ROOT, emit_json, log, parser, print_table, verdict

RAW_PROTOCOL = "/p2phier-bench/raw/1.0.0"
RAW_ALIGNED_PROTOCOL = "/p2phier-bench/raw-aligned/1.0.0"
VERIFIED_PROTOCOL = "/p2phier-bench/verified/1.0.0"
VERIFIED_BATCH = 4 * (1 << 20)  # as Bitswap's store_batch_bytes
MiB = 1 << 20
MB = 1e6
SPEEDUP_GOAL = 1.8
RSS_GOAL_MIB = 150
CAP = 8 * MB  # bytes/s per provider in the two-provider run
PROPAGATION_P99_GOAL_S = 3.0  # the devnet's propagation_p99_s goal, shown for comparison
PARTS = ("transfers", "providers", "announce", "shaped")


# --- the provider process ----------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    from p2phier.identity import Identity
    from p2phier.net import open_bitswap, open_host
    from p2phier.store import DiskStore

    home = Path(args.home)
    store = DiskStore(home / "store")
    root = store.add_file(args.file)
    payload = Path(args.file).read_bytes()

    async def raw_handler(stream: Any) -> None:
        for i in range(0, len(payload), MiB):
            await stream.write(payload[i : i + MiB])
        await stream.close()

    async def raw_aligned_handler(stream: Any) -> None:
        from p2phier.net.streams import WRITE_PIECE

        for i in range(0, len(payload), WRITE_PIECE):
            await stream.write(payload[i : i + WRITE_PIECE])
        await stream.close()

    async def verified_handler(stream: Any) -> None:
        from p2phier.net.streams import WRITE_PIECE
        from p2phier.unixfs import build_file

        cids = [cid for cid, _ in build_file(payload)[1]]
        per_read = VERIFIED_BATCH // (256 << 10)

        def read(batch: list[Any]) -> bytes:
            # each block re-hashed by the store; joined so that every write is a full piece
            return b"".join([store.get_block(cid) for cid in batch])

        async def reader(send: Any) -> None:
            # reads the next blocks in a worker thread while the last are written
            async with send:
                for i in range(0, len(cids), per_read):
                    await send.send(await trio.to_thread.run_sync(read, cids[i : i + per_read]))

        send, recv = trio.open_memory_channel[bytes](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, send)
            async with recv:
                async for blocks in recv:
                    for i in range(0, len(blocks), WRITE_PIECE):
                        await stream.write(blocks[i : i + WRITE_PIECE])
        await stream.close()

    async def tcp_handler(conn: trio.SocketStream) -> None:
        async with conn:
            for i in range(0, len(payload), MiB):
                await conn.send_all(payload[i : i + MiB])

    async with (
        open_host(Identity.generate()) as host,
        open_bitswap(host, store) as bitswap,
        trio.open_nursery() as nursery,
    ):
        if args.upload_rate:
            bitswap.set_upload_rate(args.upload_rate, args.upload_burst)
        host.set_stream_handler(RAW_PROTOCOL, raw_handler)
        host.set_stream_handler(RAW_ALIGNED_PROTOCOL, raw_aligned_handler)
        host.set_stream_handler(VERIFIED_PROTOCOL, verified_handler)
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, tcp_handler, 0, host="127.0.0.1")
        )
        tcp_port = listeners[0].socket.getsockname()[1]
        line = {"addr": host.addrs[0], "root": str(root), "tcp_port": tcp_port}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await trio.sleep_forever()


# --- the fetcher (this process) ------------------------------------------------------------------


class Provider:
    def __init__(self, home: Path, file: Path, upload_rate: float | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--serve", "--home", str(home), "--file", str(file)]
        if upload_rate:
            cmd += ["--upload-rate", str(upload_rate), "--upload-burst", str(256 << 10)]
        self.stderr = open(home / "stderr.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.stderr, cwd=ROOT, env=dict(os.environ)
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"provider failed: {(home / 'stderr.log').read_text()[-2000:]}")
        info = json.loads(line)
        self.addr: str = info["addr"]
        self.root: str = info["root"]
        self.tcp_port: int = info["tcp_port"]

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = await fn()
    return time.perf_counter() - t0, n


async def verified_stream(
    host: Any, peer: str, root: Any, blocks: list[tuple[Any, bytes]], store: Any
) -> int:
    """The fetcher's side of the ``verified stream`` floor (see the module docstring)."""
    from libp2p.network.stream.exceptions import StreamEOF

    def hash_and_store(batch: list[tuple[Any, bytes]]) -> None:
        for cid, data in batch:
            if not cid.verify(data):
                raise RuntimeError(f"block {cid} does not hash to its CID")
        store.put_blocks(batch, verified=True)

    async def writer(recv: Any) -> None:
        async with recv:
            async for batch in recv:
                await trio.to_thread.run_sync(hash_and_store, batch)

    stream = await host.open_stream(peer, VERIFIED_PROTOCOL)
    pieces: list[bytes] = []  # received, not yet cut into blocks
    held = 0
    got = 0
    todo = iter(blocks)
    cid, expected = next(todo)
    batch: list[tuple[Any, bytes]] = []
    batch_bytes = 0
    send, recv = trio.open_memory_channel[list[tuple[Any, bytes]]](2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, recv)
        async with send:
            while cid is not None:
                try:
                    data = await stream.read(MiB)
                except StreamEOF:
                    data = b""
                if not data:
                    raise RuntimeError("verified stream ended early")
                got += len(data)
                pieces.append(data)
                held += len(data)
                while cid is not None and held >= len(expected):
                    # one join per block, of the pieces it spans
                    joined = b"".join(pieces) if len(pieces) > 1 else pieces[0]
                    batch.append((cid, joined[: len(expected)]))
                    rest = joined[len(expected) :]
                    pieces = [rest] if rest else []
                    held = len(rest)
                    batch_bytes += len(expected)
                    cid, expected = next(todo, (None, b""))
                    if batch_bytes >= VERIFIED_BATCH or cid is None:
                        await send.send(batch)
                        batch, batch_bytes = [], 0
    await trio.to_thread.run_sync(store.pin, root)
    return got


async def measure_transfers(
    provider: Provider, size: int, repeat: int, workdir: Path, data: bytes
) -> dict[str, list[float]]:
    from libp2p.network.stream.exceptions import StreamEOF

    from p2phier.cid import CID
    from p2phier.identity import Identity
    from p2phier.net import open_bitswap, open_host
    from p2phier.store import ContentStore, DiskStore, MemoryStore

    samples: dict[str, list[float]] = {
        "fetch": [],
        "fetch_mem": [],
        "raw": [],
        "tcp": [],
        "raw_aligned": [],
        "verified": [],
    }
    from p2phier.unixfs import build_file

    dag_root, dag_blocks = build_file(data)
    root = CID.parse(provider.root)
    peer = provider.addr.rsplit("/p2p/", 1)[1]
    async with open_host(Identity.generate()) as host:
        await host.connect(provider.addr)

        async def fetch_into(store: ContentStore) -> int:
            async with open_bitswap(host, store) as bitswap:
                await bitswap.fetch(root, [provider.addr], timeout=600)
            assert store.pins() == {root: "recursive"}
            return size

        async def raw(protocol: str = RAW_PROTOCOL) -> int:
            stream = await host.open_stream(peer, protocol)
            got = 0
            while True:
                try:
                    data = await stream.read(MiB)
                except StreamEOF:
                    break
                if not data:
                    break
                got += len(data)
            return got

        async def tcp() -> int:
            got = 0
            async with await trio.open_tcp_stream("127.0.0.1", provider.tcp_port) as conn:
                while data := await conn.receive_some(MiB):
                    got += len(data)
            return got

        for rep in range(repeat):
            disk_dir = workdir / f"fetch-{rep}"
            disk = DiskStore(disk_dir)
            try:
                dt, _ = await timed(lambda: fetch_into(disk))  # noqa: B023
            finally:
                disk.close()
                shutil.rmtree(disk_dir)
            samples["fetch"].append(dt)
            mem = MemoryStore()
            try:
                dt, _ = await timed(lambda: fetch_into(mem))  # noqa: B023
            finally:
                mem.close()
            samples["fetch_mem"].append(dt)
            dt, got = await timed(raw)
            assert got == size, (got, size)
            samples["raw"].append(dt)
            dt, got = await timed(tcp)
            assert got == size, (got, size)
            samples["tcp"].append(dt)
            dt, got = await timed(functools.partial(raw, RAW_ALIGNED_PROTOCOL))
            assert got == size, (got, size)
            samples["raw_aligned"].append(dt)
            verified_dir = workdir / f"verified-{rep}"
            verified = DiskStore(verified_dir)
            try:
                dt, _ = await timed(
                    functools.partial(verified_stream, host, peer, dag_root, dag_blocks, verified)
                )
                assert verified.pins() == {dag_root: "recursive"}
            finally:
                verified.close()
                shutil.rmtree(verified_dir)
            samples["verified"].append(dt)
            log(
                f"  round {rep + 1}: fetch {samples['fetch'][-1]:.2f}s "
                f"(memory store {samples['fetch_mem'][-1]:.2f}s), raw stream "
                f"{samples['raw'][-1]:.2f}s, tcp {samples['tcp'][-1]:.3f}s, raw stream with "
                f"aligned writes {samples['raw_aligned'][-1]:.2f}s, verified stream "
                f"{samples['verified'][-1]:.2f}s"
            )
    return samples


async def measure_two_providers(
    one: Provider, two: Provider, repeat: int, workdir: Path
) -> dict[str, list[float]]:
    from p2phier.cid import CID
    from p2phier.identity import Identity
    from p2phier.net import open_bitswap, open_host
    from p2phier.store import MemoryStore

    root = CID.parse(one.root)
    samples: dict[str, list[float]] = {"one": [], "two": []}
    async with open_host(Identity.generate()) as host:
        for rep in range(repeat):
            for key, providers in (("one", [one.addr]), ("two", [one.addr, two.addr])):
                store = MemoryStore()
                try:
                    async with open_bitswap(host, store) as bitswap:
                        for p in providers:
                            await host.connect(p)  # dial cost is not transfer time
                        t0 = time.perf_counter()
                        await bitswap.fetch(root, providers, timeout=600)
                        samples[key].append(time.perf_counter() - t0)
                finally:
                    store.close()
            log(f"  round {rep + 1}: one {samples['one'][-1]:.2f}s, two {samples['two'][-1]:.2f}s")
    del workdir
    return samples


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--upload-rate", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--upload-burst", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-two-providers", action="store_true")
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)",
    )
    p.add_argument("--announce-repeat", type=int, default=None, help="rounds down the chain")
    p.add_argument(
        "--shaped-mib", type=float, default=None, help="shaped part's object MiB (64; 16 quick)"
    )
    args = p.parse_args(argv)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or parts - set(PARTS):
        p.error(f"--parts takes some of {', '.join(PARTS)}, not {args.parts!r}")
    if args.serve:
        trio.run(serve, args)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = (16 if args.quick else 64) * MiB
    two_size = (16 if args.quick else 32) * MiB
    result: dict[str, Any] = {"object_mib": size // MiB, "two_provider_object_mib": two_size // MiB}
    workdir = Path(tempfile.mkdtemp(prefix="p2phier-bench-net-"))
    providers: list[Provider] = []
    try:
        data = os.urandom(max(size if "transfers" in parts else 0, two_size))
        if "transfers" in parts:
            log(f"net: {size // MiB} MiB object, {args.repeat} rounds")
            obj = workdir / "object.bin"
            obj.write_bytes(data[:size])
            provider = Provider(workdir / "provider", obj)
            providers.append(provider)
            s = trio.run(measure_transfers, provider, size, args.repeat, workdir, data[:size])
            med = {k: statistics.median(v) for k, v in s.items()}
            result.update(
                fetch_s=med["fetch"],
                fetch_memory_store_s=med["fetch_mem"],
                raw_stream_s=med["raw"],
                tcp_s=med["tcp"],
                raw_stream_aligned_s=med["raw_aligned"],
                fetch_mb_s=size / med["fetch"] / MB,
                fetch_memory_store_mb_s=size / med["fetch_mem"] / MB,
                raw_stream_mb_s=size / med["raw"] / MB,
                tcp_mb_s=size / med["tcp"] / MB,
                fetch_vs_raw_stream=med["raw_aligned"] / med["fetch"],
                fetch_memory_store_vs_raw_stream=med["raw_aligned"] / med["fetch_mem"],
                fetch_vs_tcp=med["tcp"] / med["fetch"],
                fetch_vs_raw_stream_1mib_writes=med["raw"] / med["fetch"],
                verified_stream_s=med["verified"],
                verified_stream_vs_raw_stream=med["raw_aligned"] / med["verified"],
                samples=s,
            )
            provider.stop()
            providers.remove(provider)

        if "providers" in parts:
            obj2 = workdir / "object2.bin"
            obj2.write_bytes(data[:two_size])
            capped = [Provider(workdir / f"capped-{i}", obj2, upload_rate=CAP) for i in range(2)]
            providers.extend(capped)
            time.sleep(2.0)  # let start-up work settle before reading an idle RSS
            result["idle_rss_mib"] = capped[0].rss_mib()
            if not args.skip_two_providers:
                log(f"two providers capped at {CAP / MB:.0f} MB/s each, {two_size // MiB} MiB")
                t = trio.run(measure_two_providers, capped[0], capped[1], args.repeat, workdir)
                one, two = statistics.median(t["one"]), statistics.median(t["two"])
                result.update(
                    one_provider_s=one,
                    two_providers_s=two,
                    two_provider_speedup=one / two,
                    two_provider_samples=t,
                )
            for prov in capped:
                prov.stop()
                providers.remove(prov)

        if "announce" in parts:
            from _net_chain import measure_chain

            rounds = args.announce_repeat or (3 if args.quick else 10)
            result.update(measure_chain(workdir, rounds))
            result["announce_rounds"] = rounds

        if "shaped" in parts:
            from _net_shaped import measure_shaped

            shaped_mib = args.shaped_mib or (16 if args.quick else 64)
            reps = min(args.repeat, 2) if args.quick else args.repeat
            result.update(measure_shaped(workdir, int(shaped_mib * MiB), reps))
    finally:
        for prov in providers:
            prov.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rows: list[list[object]] = []
    if "transfers" in parts:
        rows += [
            ["bitswap fetch -> DiskStore", f"{result['fetch_mb_s']:.1f}", "", ""],
            ["bitswap fetch -> MemoryStore", f"{result['fetch_memory_store_mb_s']:.1f}", "", ""],
            ["raw noise+yamux stream", f"{result['raw_stream_mb_s']:.1f}", "", ""],
            [
                "  (aligned writes, info)",
                f"{size / result['raw_stream_aligned_s'] / MB:.1f}",
                "",
                "",
            ],
            [
                "  (verified stream: hash + store, no protocol, info)",
                f"{size / result['verified_stream_s'] / MB:.1f}",
                "",
                "",
            ],
            ["plain TCP", f"{result['tcp_mb_s']:.1f}", "", ""],
            [
                "fetch_vs_raw_stream (aligned writes, info)",
                f"{result['fetch_vs_raw_stream']:.2f}",
                "",
                "",
            ],
            [
                "  (into a MemoryStore, info)",
                f"{result['fetch_memory_store_vs_raw_stream']:.2f}",
                "",
                "",
            ],
            [
                "verified_stream_vs_raw_stream (ceiling, info)",
                f"{result['verified_stream_vs_raw_stream']:.2f}",
                "",
                "",
            ],
            ["fetch_vs_tcp", f"{result['fetch_vs_tcp']:.3f}", "", ""],
            [
                "fetch_vs_raw_stream_1mib_writes (info)",
                f"{result['fetch_vs_raw_stream_1mib_writes']:.2f}",
                "",
                "",
            ],
        ]
    if "idle_rss_mib" in result:
        rows.append(
            [
                "idle_rss_mib",
                f"{result['idle_rss_mib']:.0f}",
                f"<= {RSS_GOAL_MIB}",
                verdict(result["idle_rss_mib"] <= RSS_GOAL_MIB),
            ]
        )
    if "two_provider_speedup" in result:
        rows.append(
            [
                "two_provider_speedup (8 MB/s caps)",
                f"{result['two_provider_speedup']:.2f}",
                f">= {SPEEDUP_GOAL}",
                verdict(result["two_provider_speedup"] >= SPEEDUP_GOAL),
            ]
        )
    if rows:
        print_table(
            f"Bitswap between processes, {size // MiB} MiB (medians of {args.repeat})",
            ["measure", "MB/s or ratio", "goal", ""],
            rows,
        )
    if "announce_chain_hops" in result:
        hops = result["announce_chain_hops"]
        n = result["announce_rounds"]
        p99 = result["announce_to_verified_p99_s"]
        arows: list[list[object]] = [
            [f"announce_to_verified_p50_s (per hop, {hops} x {n} samples)",
             f"{result['announce_to_verified_p50_s']:.3f}", "", ""],
            [f"announce_to_verified_p99_s (per hop, {hops} x {n} samples)", f"{p99:.3f}",
             f"< {PROPAGATION_P99_GOAL_S:g} (devnet propagation_p99_s)",
             verdict(p99 < PROPAGATION_P99_GOAL_S)],
            [f"chain total p50 ({hops} hops, sum of hops)",
             f"{result['announce_chain_total_p50_s']:.3f}", "", ""],
            [f"chain total p99 ({hops} hops, sum of hops)",
             f"{result['announce_chain_total_p99_s']:.3f}", "", ""],
        ]  # fmt: skip
        for name, samples in result["announce_samples"].items():
            arows.append([f"  hop {name} p50 / p99", f"{statistics.median(samples):.3f}",
                          f"p99 {max(samples):.3f}", ""])  # fmt: skip
        print_table(
            f"Announce -> fetched+verified, ~1 MiB LoRA ({result['announce_artifact_stored_bytes']}"
            f" bytes stored), {hops + 1}-node chain of real node processes, {hops} hops; no relay:"
            " each node publishes to its children in turn",
            ["measure", "seconds", "goal", ""],
            arows,
        )
    if "shaped" in parts:
        from _net_shaped import shaped_rows

        title, srows = shaped_rows(result)
        print_table(title, ["measure", "value", "goal", "", "detail"], srows)
    if args.json:
        emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
