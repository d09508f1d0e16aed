"""``p2phier artifact``: pack, verify, inspect, unpack, export and import signed adapter updates.

An artifact is a PEFT LoRA adapter (or a delta against a parent artifact) stored as three UnixFS
files; its CID is the CID of the signed envelope (see :mod:`p2phier.artifact`).  Packing signs
with the node's key (created on first use unless ``identity.auto_create = false``).  Every
command that reads an artifact verifies it fully first: signature, sizes, payload and the whole
lineage back to its full adapter.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from p2phier.cli import output
from p2phier.cli.config import (
    ENCODINGS,
    CLIContext,
    ConfigOption,
    HomeOption,
    Settings,
    open_store,
    signing_identity,
)
from p2phier.errors import P2PHierError, UsageError

if TYPE_CHECKING:
    from p2phier.artifact import Artifact

artifact_app = typer.Typer(
    help="Signed adapter artifacts: pack, verify, inspect, unpack, export.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
CidArg = Annotated[str, typer.Argument(help="Artifact CID.", show_default=False)]
_METRIC_RE = re.compile(r"([^=\s]+)=(.+)")
# What a model id from adapter_config.json must look like to be reused as the manifest's id:
# a hub-style name, never a local path (peers cannot resolve a path on this machine).
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def _settings(ctx: typer.Context) -> Settings:
    cli = ctx.find_object(CLIContext)
    assert cli is not None, "the root callback sets the context"
    return cli.settings()


def parse_metrics(items: list[str]) -> dict[str, float]:
    """``["accuracy=0.93", "loss=0.2"]`` -> ``{"accuracy": 0.93, "loss": 0.2}``."""
    out: dict[str, float] = {}
    for item in items:
        match = _METRIC_RE.fullmatch(item.strip())
        if not match:
            raise UsageError(f"--metric {item!r} must look like name=value (e.g. accuracy=0.93)")
        name, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"--metric {name}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"--metric {name}: the value must be finite")
        if name in out:
            raise UsageError(f"--metric {name} given twice")
        out[name] = value
    return out


def _adapter_base_model(adapter_dir: Path) -> str | None:
    import json

    from p2phier.errors import NotRegularFileError
    from p2phier.fsutil import open_regular

    path = adapter_dir / "adapter_config.json"
    try:
        # Never a plain open(): on a FIFO it would wait for a writer for ever.
        with open(open_regular(path, "adapter config"), "rb") as fh:
            raw = json.loads(fh.read(64 * 1024))
    except NotRegularFileError:
        raise  # the real problem, clearer than the "no base model id" that would follow
    except (OSError, ValueError):
        return None  # pack_adapter reads it again and reports the problem properly
    value = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    if isinstance(value, str) and _HUB_ID_RE.fullmatch(value) and not Path(value).exists():
        return value
    return None


def _pack_summary(art: Artifact, created_key: bool) -> dict[str, Any]:
    m = art.manifest
    return {
        "cid": str(art.cid),
        "bytes": art.stored_bytes,
        "encoding": m.encoding.value,
        "parent": str(m.parent) if m.parent else None,
        "layer": m.layer,
        "domain": m.domain,
        "round": m.round,
        "base_model_id": m.base_model_id,
        "author": str(m.author),
        "payload_bytes": m.tensors.size,
        "payload_raw_bytes": m.tensors_raw_size,
        "created_identity": created_key,
    }


@artifact_app.command("pack")
def artifact_pack(
    ctx: typer.Context,
    *,
    adapter_dir: Annotated[
        Path, typer.Argument(help="PEFT adapter directory (adapter_config.json + safetensors).")
    ],
    layer: Annotated[str, typer.Option("--layer", help="Hierarchy layer, e.g. device.")],
    domain: Annotated[str, typer.Option("--domain", help="Domain path, e.g. en/news.")],
    parent: Annotated[
        str | None, typer.Option("--parent", help="Parent artifact CID: store a delta.")
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(
            "--encoding",
            help=f"One of {', '.join(ENCODINGS)} (default fp32, or int8-delta with --parent).",
        ),
    ] = None,
    round_: Annotated[
        int | None,
        typer.Option("--round", min=0, help="Training round (default: parent's round + 1, or 0)."),
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="name=value, repeatable.")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="Base model id (default: config, parent, adapter)."),
    ] = None,
    json_out: JsonFlag = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Pack a PEFT LoRA adapter directory as a signed artifact; print its CID."""
    output.set_json(json_out)
    from p2phier.artifact import pack_adapter, resolve
    from p2phier.artifact.pack import check_room_for_child
    from p2phier.artifact.verify import BlockSource
    from p2phier.cid import CID

    settings = _settings(ctx)
    src = output.input_dir(adapter_dir)
    enc = encoding or settings.artifact_encoding
    if enc is not None and enc not in ENCODINGS:
        raise UsageError(f"--encoding {enc!r}: use one of {', '.join(ENCODINGS)}")
    metrics = parse_metrics(metric or [])
    with open_store(settings) as store:
        parent_art = None
        if parent is not None:
            lineage = resolve(BlockSource(store).get_block, CID.parse(parent)).chain
            # Refused here too (pack_adapter checks again) so that no key is created for it.
            check_room_for_child(lineage)
            parent_art = lineage[0]
        base_id = (
            base_model
            or settings.artifact_base_model
            or (parent_art.manifest.base_model_id if parent_art else None)
            or _adapter_base_model(src)
        )
        if base_id is None:
            raise UsageError(
                "no base model id: give --base-model (e.g. sentence-transformers/all-MiniLM-L6-v2)"
                " or set [artifact] base_model in config.toml"
            )
        if round_ is None:
            round_ = parent_art.manifest.round + 1 if parent_art else 0
        ident, created = signing_identity(settings)
        if created:
            output.note(f"created a new identity {ident.peer_id} at {settings.key_file}")
        art = pack_adapter(
            store,
            src,
            ident,
            layer=layer,
            domain=domain,
            base_model_id=base_id,
            parent=parent_art.cid if parent_art else None,
            encoding=enc,
            round=round_,
            metrics=metrics,
            now=time.time(),
        )
    info = _pack_summary(art, created)
    output.emit(info, f"{info['cid']}  ({info['encoding']}, {output.human_size(info['bytes'])})")


def _verify_car(path: Path, base_modules: set[str] | None) -> dict[str, Any]:
    """Verify a CAR archive from the file alone: the user's store is not touched."""
    from p2phier.artifact.car import verify_car
    from p2phier.artifact.verify import summarise

    return summarise(verify_car(path, base_modules=base_modules))


BaseWeights = Annotated[
    Path | None,
    typer.Option(
        "--base-weights",
        help="The base model's safetensors weights (a file, or a directory holding "
        "model.safetensors): the adapter must adapt exactly the modules its config "
        "targets there.",
    ),
]


def _base_modules(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    from p2phier.artifact.adapter import module_names_from_file

    if path.is_dir():
        path = path / "model.safetensors"
    return module_names_from_file(path)


@artifact_app.command("verify")
def artifact_verify(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(help="Artifact CID in the store, or a .car file from `export`.")
    ],
    base_weights: BaseWeights = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Fully verify an artifact (signature, content, lineage); exit non-zero if it fails."""
    output.set_json(json_out)
    from p2phier.artifact import inspect

    path = Path(target)
    names_a_file = target.endswith(".car") or "/" in target
    try:
        source = "car" if path.is_file() else "store"
    except OSError as exc:
        if names_a_file:
            raise output.InputFileError(f"{target}: {exc.strerror or exc}") from None
        # ENAMETOOLONG and the like: no file has this name, so it is meant as a CID (a
        # malformed one, which CID.parse below reports with the CID exit code).
        source = "store"
    if source == "store" and names_a_file:
        raise output.InputFileError(f"{target}: no such file")
    try:
        modules = _base_modules(base_weights)
        if source == "car":
            info = _verify_car(path, modules)
        else:
            from p2phier.cid import CID

            cid = CID.parse(target)
            with open_store(_settings(ctx)) as store:
                info = inspect(store, cid, base_modules=modules)
    except P2PHierError as exc:
        # The verdict is the result here: print it in the command's own shape, then fail.
        data = {
            "ok": False,
            "source": source,
            "target": target,
            "error": output.message_for(exc),
            "type": type(exc).__name__,
        }
        if output.STATE.json:
            output.emit(data)
        else:
            output.note(f"error: verification failed: {data['error']}")
        raise typer.Exit(exc.exit_code) from None
    m = info["manifest"]
    assert isinstance(m, dict)
    data = {
        "ok": True,
        "source": source,
        "cid": info["cid"],
        "author": info["signer"],
        "encoding": m["encoding"],
        "parent": m["parent"],
        "lineage": info["lineage"],
        "bytes": info["bytes"],
    }
    output.emit(
        data,
        f"OK {info['cid']}: signed by {info['signer']}, {m['encoding']}, "
        f"lineage of {len(info['lineage'])}",
    )


@artifact_app.command("inspect")
def artifact_inspect(
    ctx: typer.Context,
    cid: CidArg,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Show a verified artifact's manifest, lineage and sizes."""
    output.set_json(json_out)
    from p2phier.artifact import inspect
    from p2phier.cid import CID

    root = CID.parse(cid)
    with open_store(_settings(ctx)) as store:
        info = inspect(store, root)
    if output.STATE.json:
        output.emit(info)
        return
    m = info["manifest"]
    b = info["bytes"]
    assert isinstance(m, dict) and isinstance(b, dict)
    lines = [
        f"artifact   {info['cid']} (verified)",
        f"author     {info['signer']}",
        f"base model {m['base_model_id']}",
        f"layer      {m['layer']}   domain {m['domain'] or '(root)'}   round {m['round']}",
        f"encoding   {m['encoding']}" + (f" (delta of {m['parent']})" if m["parent"] else ""),
        f"lineage    {' <- '.join(info['lineage'])}",  # type: ignore[arg-type]
        f"tensors    {info['tensors']} ({info['parameters']} parameters, rank {info['rank']})",
        f"bytes      {b['stored']} stored "
        f"(payload {b['payload']}, raw {b['payload_decompressed']})",
        f"metrics    {m['metrics'] or '-'}",
    ]
    output.emit(info, "\n".join(lines))


@artifact_app.command("unpack")
def artifact_unpack(
    ctx: typer.Context,
    cid: CidArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PEFT adapter.")],
    base_weights: BaseWeights = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Verify an artifact and write the PEFT adapter directory it stands for."""
    output.set_json(json_out)
    from p2phier.artifact import materialise
    from p2phier.cid import CID

    root = CID.parse(cid)
    dest = out.expanduser().absolute()
    with open_store(_settings(ctx)) as store:
        written = materialise(store, root, dest, base_modules=_base_modules(base_weights))
    files = sorted(p.name for p in written.iterdir() if p.is_file())
    output.emit({"cid": str(root), "path": str(written), "files": files}, f"wrote {written}")


@artifact_app.command("export")
def artifact_export(
    ctx: typer.Context,
    cid: CidArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="CAR file to write.")],
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Write an artifact with its whole lineage as a CARv1 archive."""
    output.set_json(json_out)
    from p2phier.artifact import export_car
    from p2phier.cid import CID

    root = CID.parse(cid)
    dest = out.expanduser().absolute()
    if dest.is_dir():
        raise output.InputFileError(f"{dest} is a directory; give a file name with --out")
    with open_store(_settings(ctx)) as store:
        written = export_car(store, root, dest)
    size = written.stat().st_size
    output.emit({"cid": str(root), "path": str(written), "bytes": size}, f"wrote {written}")


@artifact_app.command("import")
def artifact_import(
    ctx: typer.Context,
    car: Annotated[Path, typer.Argument(help="CAR archive from `artifact export`.")],
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Verify a CAR archive, then store and pin the artifact and its lineage."""
    output.set_json(json_out)
    from p2phier.artifact import import_car

    path = output.input_file(car)
    with open_store(_settings(ctx)) as store:
        cid = import_car(store, path)
    output.emit({"cid": str(cid), "path": str(path)}, str(cid))
