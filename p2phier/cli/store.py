"""``p2phier store``: add, read, pin, collect and check content in the node's local store.

The store is a :class:`p2phier.store.DiskStore` at ``<home>/store`` (setting ``store.path``).
Objects are UnixFS files (CIDv1, raw leaves, 256 KiB chunks), so a CID printed here is the one
``ipfs add --cid-version=1 --raw-leaves`` prints for the same bytes.  Every read re-hashes each
block; ``verify`` re-hashes everything and exits non-zero when it finds corruption.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, cast

import typer

from p2phier.cli import output
from p2phier.cli.config import CLIContext, ConfigOption, HomeOption, open_store

if TYPE_CHECKING:
    from p2phier.store import ContentStore, ObjectMeta

store_app = typer.Typer(
    help="The local content store (blocks, objects, pins).", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
CidArg = Annotated[str, typer.Argument(help="Content id (CIDv1 or CIDv0).", show_default=False)]
PROGRESS_MIN_BYTES = 8 << 20  # below this a progress bar only flickers


def _settings(ctx: typer.Context) -> Any:
    cli = ctx.find_object(CLIContext)
    assert cli is not None, "the root callback sets the context"
    return cli.settings()


class _ProgressReader:
    """A read-only file wrapper that advances a rich progress bar."""

    def __init__(self, raw: BinaryIO, advance: Any) -> None:
        self._raw, self._advance = raw, advance

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._advance(len(data))
        return data


def _add_with_progress(store: ContentStore, path: Path, meta: Any, pin: bool) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    size = path.stat().st_size
    columns = (
        TextColumn("adding {task.description}", markup=False),  # a file name is text
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=output.console(stderr=True), transient=True) as progress:
        task = progress.add_task(path.name, total=size)
        with path.open("rb") as raw:
            reader = _ProgressReader(raw, lambda n: progress.advance(task, n))
            return store.add_stream(cast(BinaryIO, reader), meta, pin)


@store_app.command("add")
def store_add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="File to add.", show_default=False)],
    pin: Annotated[bool, typer.Option("--pin/--no-pin", help="Pin the object (default).")] = True,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Add a file; print its CID."""
    output.set_json(json_out)
    from p2phier.store import MetaSpec

    path = output.input_file(file)
    meta = MetaSpec(name=path.name[:1024] or None)
    with open_store(_settings(ctx)) as store:
        t0 = time.perf_counter()
        big = path.stat().st_size >= PROGRESS_MIN_BYTES
        if big and output.stdout_is_tty() and not output.STATE.json:
            cid = _add_with_progress(store, path, meta, pin)
        else:
            cid = store.add_file(path, meta, pin)
        seconds = time.perf_counter() - t0
        stored = store.get_meta(cid)
        size = stored.size if stored is not None else path.stat().st_size
    output.emit(
        {"cid": str(cid), "size": size, "name": path.name, "pinned": pin, "seconds": seconds},
        str(cid),
    )


@store_app.command("get")
def store_get(
    ctx: typer.Context,
    cid: CidArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the content.")],
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Write an object's content to a file (verified, atomic)."""
    output.set_json(json_out)
    from p2phier.cid import CID

    root = CID.parse(cid)
    dest = out.expanduser().absolute()
    if dest.is_symlink():
        # Writing atomically would replace the link itself, not the file it names.
        raise output.InputFileError(
            f"{dest} is a symbolic link; give the path of the file itself with --out"
        )
    if dest.is_dir():
        raise output.InputFileError(f"{dest} is a directory; give a file name with --out")
    settings = _settings(ctx)
    with open_store(settings) as store:
        store.export_file(root, dest, max_size=settings.store_max_object_size)
    output.emit({"cid": str(root), "path": str(dest), "size": dest.stat().st_size}, f"wrote {dest}")


@store_app.command("cat")
def store_cat(
    ctx: typer.Context,
    cid: CidArg,
    json_out: Annotated[
        bool, typer.Option("--json", help="Errors as JSON (the content stays raw bytes).")
    ] = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Write an object's bytes to stdout (each block re-hashed first)."""
    output.set_json(json_out)
    from p2phier.cid import CID
    from p2phier.errors import BlockNotFoundError

    root = CID.parse(cid)
    settings = _settings(ctx)
    with open_store(settings) as store:
        # Check completeness first, so a missing block fails before any output is written.
        missing = store.missing_blocks(root)
        if missing:
            raise BlockNotFoundError(
                f"{root}: {len(missing)} block(s) missing or corrupt (first {missing[0]})"
            )
        sink = sys.stdout.buffer
        # The size limit and the DAG's shape are checked before the first piece.
        for piece in store.cat(root, max_size=settings.store_max_object_size):
            sink.write(piece)
        sink.flush()


@store_app.command("pin")
def store_pin(
    ctx: typer.Context,
    cid: CidArg,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Pin an object (recursively): GC never removes it.

    Refused, with nothing pinned, when ``cat``/``get`` would refuse the object: a DAG
    that is not a well-formed UnixFS file (exit 4) or that declares more than
    ``store.max_object_size`` bytes (exit 5).
    """
    output.set_json(json_out)
    from p2phier.cid import CID

    root = CID.parse(cid)
    settings = _settings(ctx)
    with open_store(settings) as store:
        store.pin(root, max_size=settings.store_max_object_size)
    output.emit({"cid": str(root), "pinned": True}, f"pinned {root}")


@store_app.command("unpin")
def store_unpin(
    ctx: typer.Context,
    cid: CidArg,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove an object's pin (its blocks go at the next GC unless pinned otherwise)."""
    output.set_json(json_out)
    from p2phier.cid import CID

    root = CID.parse(cid)
    with open_store(_settings(ctx)) as store:
        store.unpin(root)
    output.emit({"cid": str(root), "pinned": False}, f"unpinned {root}")


@store_app.command("gc")
def store_gc(
    ctx: typer.Context,
    json_out: JsonFlag = False,
    trust_index: Annotated[
        bool,
        typer.Option(
            "--trust-index",
            help="After the index was lost in a store without a pin journal: declare the "
            "pins it holds now (pin again what to keep first) complete, and collect.",
        ),
    ] = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove every block no pin protects (refused while the pins cannot be proven)."""
    output.set_json(json_out)
    with open_store(_settings(ctx)) as store:
        if trust_index:
            store.trust_index()
        # Sizes are read before GC: afterwards the files are gone.
        sizes = {c: store.block_size(c) for c in store.iter_block_cids()}
        removed = store.gc()
    freed = sum(sizes.get(c, 0) for c in removed)
    output.emit(
        {"removed": len(removed), "bytes_freed": freed, "cids": [str(c) for c in removed]},
        f"removed {len(removed)} block(s), freed {output.human_size(freed)}",
    )


@store_app.command("verify")
def store_verify(
    ctx: typer.Context,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-hash every block; corrupt ones are quarantined and listed (exit 5 if any)."""
    output.set_json(json_out)
    from p2phier.errors import StoreError

    with open_store(_settings(ctx)) as store:
        blocks = list(store.iter_block_cids())
        total = sum(store.block_size(c) for c in blocks)
        t0 = time.perf_counter()
        bad = store.verify()
        seconds = time.perf_counter() - t0
    data = {
        "ok": not bad,
        "checked": len(blocks),
        "bytes": total,
        "corrupt": [str(c) for c in bad],
        "seconds": seconds,
    }
    if bad:
        human = "\n".join(
            [f"{len(bad)} corrupt block(s) of {len(blocks)} (moved to quarantine):"]
            + [f"  {c}" for c in bad]
        )
    else:
        human = f"all {len(blocks)} block(s) verified ({output.human_size(total)})"
    output.emit(data, human)
    if bad:
        raise typer.Exit(StoreError.exit_code)


def _meta_row(meta: ObjectMeta, pins: dict[str, str]) -> dict[str, Any]:
    return {
        "cid": str(meta.cid),
        "kind": meta.kind,
        "size": meta.size,
        "created": meta.created,
        "name": meta.name,
        "layer": meta.layer,
        "domain": meta.domain,
        "author": meta.author,
        "parent": meta.parent,
        "pin": pins.get(str(meta.cid)),
    }


@store_app.command("ls")
def store_ls(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option("--kind", help="Only objects of this kind.")] = None,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain.")] = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """List the objects the index knows, with their metadata and pins."""
    output.set_json(json_out)
    with open_store(_settings(ctx)) as store:
        pins = {str(c): mode for c, mode in store.pins().items()}
        metas = store.query(kind=kind, domain=domain)
    rows = sorted((_meta_row(m, pins) for m in metas), key=lambda r: (r["created"], r["cid"]))
    if output.STATE.json:
        output.emit({"objects": rows, "pins": pins})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("cid", "kind", "size", "name", "layer", "domain", "pin"):
        table.add_column(col, no_wrap=col == "cid")
    for r in rows:
        # Cells are rich markup: a name like "notes[v2].txt" (or a peer's metadata) is text.
        table.add_row(
            r["cid"],
            escape(r["kind"]),
            output.human_size(r["size"]),
            escape(r["name"] or ""),
            escape(r["layer"] or ""),
            escape(r["domain"] or ""),
            r["pin"] or "",
        )
    output.emit({}, table if rows else "(no objects)")
