"""``p2phier node run|status|round|stop``, ``p2phier peers|trust|publish|fetch``.

Owns the commands that run a node or talk to a running one.  ``node run``
resolves a :class:`~p2phier.config.NodeConfig` (file < environment < flags),
checks the learning plan and its data file when learning is on (a bad one is a
one-line config error before anything starts), loads or creates the node's
identity (mode 0600), opens its store and runs the daemon until SIGTERM/SIGINT;
when the node is up it prints one JSON line ``{"event": "ready", ...}`` on
stdout (what scripts and tests wait for).  The other commands are clients of
the node's control socket (:mod:`p2phier.node.controlwire`); they import
neither trio nor libp2p.  Every command takes ``--home`` and ``--config`` after
its name as well as before it (:data:`~p2phier.cli.config.HomeOption`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from p2phier.cli import output
from p2phier.cli.config import (
    CLIContext,
    ConfigOption,
    HomeOption,
    resolve_config_file,
    resolve_home,
)

node_app = typer.Typer(
    help="Run a p2phier node, or ask a running one its status.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
SocketOpt = Annotated[
    Path | None,
    typer.Option("--socket", help="Control socket of the node (default <home>/control.sock)."),
]


def _cli(ctx: typer.Context) -> CLIContext:
    cli = ctx.find_object(CLIContext)
    assert cli is not None, "the root callback sets the context"
    return cli


def control_socket(ctx: typer.Context, flag: Path | None) -> Path:
    """Where the node of this home listens: --socket, else [control] socket, else the default."""
    if flag is not None:
        return flag.expanduser().absolute()
    settings = _cli(ctx).settings()
    name: str = "control.sock"
    if settings.config_file is not None:
        from p2phier.config import read_toml  # size-capped; ConfigError naming the file

        doc = read_toml(settings.config_file)
        value = (
            doc.get("control", {}).get("socket") if isinstance(doc.get("control"), dict) else None
        )
        if isinstance(value, str) and value:
            name = value
    path = Path(name).expanduser()
    return path if path.is_absolute() else settings.home / path


def _call(
    ctx: typer.Context, socket: Path | None, cmd: str, args: dict[str, Any], timeout: float = 60.0
) -> Any:
    from p2phier.node.controlwire import call

    return call(control_socket(ctx, socket), cmd, args, timeout=timeout)


#: The daemon class ``node run`` starts; the devnet's attacker processes
#: (:mod:`p2phier.devnet.attacker`) run the same command with a modified one.
DAEMON_CLASS: Any = None


@node_app.command("run")
def node_run(
    ctx: typer.Context,
    *,
    config: ConfigOption = None,
    home: HomeOption = None,
    listen: Annotated[
        list[str] | None, typer.Option("--listen", help="Multiaddr to listen on (repeatable).")
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option("--bootstrap", help="Peer to join through, .../p2p/<id> (repeatable)."),
    ] = None,
    layer: Annotated[
        str | None, typer.Option("--layer", help="master, language, domain, subdomain or device.")
    ] = None,
    domain: Annotated[
        str | None, typer.Option("--domain", help="Domain path, e.g. en/news.")
    ] = None,
) -> None:
    """Run a node until SIGTERM/SIGINT (prints a JSON ready line when up)."""
    from p2phier.config import load_config
    from p2phier.learnplan import check_plan

    cli = _cli(ctx)
    flags: dict[str, Any] = {
        "home": str(cli.home_flag) if cli.home_flag else None,
        "layer": layer,
        "domain": domain,
        "listen": list(listen) if listen else None,
        "bootstrap": list(bootstrap) if bootstrap else None,
    }
    # the same file the CLI reads: --config, $P2PHIER_CONFIG, else <home>/config.toml (it
    # was only --config, so a node run as NODE.md's "Joining" says ignored its config.toml)
    home_dir = resolve_home(cli.home_flag, os.environ)
    cfg = load_config(resolve_config_file(home_dir, cli.config_flag, os.environ), flags=flags)
    if cfg.learn_enabled:
        # Before the key, the store and the network: the learner reads these files only once
        # the node is up, where a bad one would stop the node as an internal error.
        check_plan(cfg.learn_plan)

    import trio

    from p2phier.identity import Identity
    from p2phier.node.daemon import NodeDaemon, open_node_store

    if cli.verbose < 2:
        # py-libp2p logs through its own loggers (some via the root): keep it to errors.
        logging.getLogger("libp2p").setLevel(logging.ERROR)
    logging.getLogger("p2phier").setLevel(
        logging.DEBUG
        if cli.verbose >= 2
        else logging.INFO
        if cli.verbose
        else getattr(logging, cfg.log_level.upper())
    )
    cfg.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if cfg.key_file.exists() or cfg.key_file.is_symlink():
        identity = Identity.load(cfg.key_file)
    else:
        identity = Identity.generate()
        identity.save(cfg.key_file)
        sys.stderr.write(f"created identity {identity.peer_id} in {cfg.key_file}\n")
    store = open_node_store(cfg)

    def ready(status: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps({"event": "ready", **status}) + "\n")
        sys.stdout.flush()

    daemon_class: type[NodeDaemon] = DAEMON_CLASS or NodeDaemon

    async def serve() -> None:
        async with daemon_class.open(cfg, identity, store) as daemon:
            await daemon.run(on_ready=ready)

    try:
        trio.run(serve)
    finally:
        store.close()


@node_app.command("status")
def node_status(
    ctx: typer.Context,
    socket: SocketOpt = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Layer, domain, parent, children, head CID, peers and addresses of the running node."""
    output.set_json(json_out)
    st = _call(ctx, socket, "status", {})
    human = "\n".join(
        [
            f"peer      {st['peer_id']}",
            f"layer     {st['layer']}  domain {st['domain'] or '(root)'}",
            f"parent    {st['parent'] or '-'}",
            f"children  {len(st['children'])}",
            f"head      {st['head'] or '-'}",
            f"peers     {len(st['peers'])} connected, {st['records']} records",
            *[f"address   {a}" for a in st["addresses"]],
        ]
    )
    output.emit(st, human)


@node_app.command("round")
def node_round(
    ctx: typer.Context,
    round_: Annotated[int, typer.Argument(metavar="N", help="The round to run (>= 1).")],
    socket: SocketOpt = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Ask the running node to run learning round N (needs \\[learn] enabled)."""
    output.set_json(json_out)
    out = _call(ctx, socket, "learn.round", {"round": round_})
    output.emit(out, f"round {out['requested']} requested (last done: {out['done']})")


@node_app.command("stop")
def node_stop(
    ctx: typer.Context,
    socket: SocketOpt = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Ask the running node to shut down (as SIGTERM would)."""
    output.set_json(json_out)
    output.emit(_call(ctx, socket, "stop", {}), "stopping")


def peers_command(
    ctx: typer.Context,
    layer: Annotated[str | None, typer.Option("--layer", help="Only this layer.")] = None,
    domain: Annotated[
        str | None, typer.Option("--domain", help="Only this domain path and below.")
    ] = None,
    socket: SocketOpt = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """List the nodes the running node knows (signed, unexpired records)."""
    output.set_json(json_out)
    peers = _call(ctx, socket, "peers", {"layer": layer, "domain": domain})
    lines = [f"{p['peer_id']}  {p['layer']:<9} {p['domain'] or '(root)'}" for p in peers]
    output.emit({"peers": peers}, "\n".join(lines) or "no peers known")


def trust_command(
    ctx: typer.Context,
    socket: SocketOpt = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """What the running node saw each peer do: trust scores, evidence, proofs, isolations."""
    output.set_json(json_out)
    view = _call(ctx, socket, "trust", {})
    lines = [
        f"{peer}  {p['score']:>8.2f}"
        + (f"  ISOLATED: {p['reason']}" if p["isolated_until"] else "")
        for peer, p in sorted(view["peers"].items(), key=lambda kv: kv[1]["score"])
    ]
    standing = view.get("standing", {})
    lines += [
        f"{peer}  DISTRUSTED: distrust {standing[peer]['distrust']:.3g} against global trust "
        f"{standing[peer]['trust']:.3g} ({standing[peer]['against']} reporter(s) against)"
        for peer in view.get("distrusted", [])
    ]
    output.emit(view, "\n".join(lines) or "no evidence about any peer yet")


def publish_command(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="Artifact CID (in the node's store).")],
    to: Annotated[str, typer.Option("--to", help="parent or children.")],
    socket: SocketOpt = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Pin, provide and announce an artifact to the parent or the children."""
    output.set_json(json_out)
    result = _call(ctx, socket, "publish", {"cid": cid, "to": to})
    output.emit(result, f"announced {result['cid']} on {result['topic']}")


def fetch_command(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="CID of any object.")],
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds.")] = 120.0,
    socket: SocketOpt = None,
    json_out: JsonFlag = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Fetch an object by CID from the network (DHT providers and connected peers)."""
    output.set_json(json_out)
    result = _call(ctx, socket, "fetch", {"cid": cid, "timeout": timeout}, timeout=timeout + 30)
    output.emit(result, f"fetched {result['cid']} in {result['seconds']} s")
