"""``p2phier id``: create and show the node's Ed25519 identity.

The key lives at ``<home>/identity.key`` (setting ``identity.key_file``), mode 0600, in the libp2p
``PrivateKey`` protobuf form go-libp2p uses.  A key readable by group or others is refused, never
silently re-permissioned: the user must decide whether it leaked.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from p2phier.cli import output
from p2phier.cli.config import CLIContext, ConfigOption, HomeOption

if TYPE_CHECKING:
    from p2phier.identity import Identity

id_app = typer.Typer(help="Node identity (Ed25519 key, libp2p peer id).", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def identity_info(ident: Identity, path: Path) -> dict[str, Any]:
    from p2phier.identity import public_key_protobuf

    raw = ident.public_raw
    return {
        "peer_id": str(ident.peer_id),
        "public_key_hex": raw.hex(),
        "public_key_b64": base64.b64encode(raw).decode("ascii"),
        # libp2p PublicKey protobuf, base64: the form kubo and go-libp2p print.
        "public_key_protobuf_b64": base64.b64encode(public_key_protobuf(raw)).decode("ascii"),
        "key_file": str(path),
    }


def _human(info: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"peer id     {info['peer_id']}",
            f"public key  {info['public_key_hex']} (hex)",
            f"            {info['public_key_b64']} (base64)",
            f"key file    {info['key_file']}",
        ]
    )


@id_app.command("new")
def id_new(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the key (default <home>/identity.key)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing key (its identity is lost).")
    ] = False,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Generate a new Ed25519 identity and write it with mode 0600."""
    output.set_json(json_out)
    from p2phier.identity import Identity

    cli = ctx.find_object(CLIContext)
    assert cli is not None
    path = (out.expanduser().absolute()) if out is not None else cli.settings().key_file
    ident = Identity.generate()
    # Identity.save refuses to overwrite unless asked, and writes atomically with 0600.
    ident.save(path, overwrite=force)
    info = {**identity_info(ident, path), "created": True}
    output.emit(info, _human(info))


@id_app.command("show")
def id_show(
    ctx: typer.Context,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="Key file to read (default <home>/identity.key)."),
    ] = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Show the peer id and public key of the node's identity."""
    output.set_json(json_out)
    from p2phier.identity import Identity

    cli = ctx.find_object(CLIContext)
    assert cli is not None
    path = key.expanduser().absolute() if key is not None else cli.settings().key_file
    ident = Identity.load(path)
    info = identity_info(ident, path)
    output.emit(info, _human(info))
