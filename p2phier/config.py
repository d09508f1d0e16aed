"""The node daemon's configuration: TOML file < environment < flags (pure, reads one file).

Owns :class:`NodeConfig` (every setting ``p2phier node run`` needs, frozen and
validated) and :func:`load_config`, which resolves each setting from, lowest
precedence first:

1. the built-in default (:data:`DEFAULTS`);
2. the TOML file (``--config``; see the annotated ``node/node.example.toml``);
3. the environment: ``P2PHIER_<SECTION>_<KEY>`` (e.g. ``P2PHIER_NODE_LAYER``,
   ``P2PHIER_NETWORK_LISTEN``), except ``node.home`` which is ``P2PHIER_HOME``
   like the rest of the CLI; lists are comma-separated, booleans
   ``true/false/1/0/yes/no/on/off``;
4. flags: a mapping of ``"section.key"`` (or a flag name of :data:`FLAG_KEYS`,
   e.g. ``"listen"``) to a value; ``None`` means "flag not given".

Every value is hostile input: the file is size-capped before it is read, unknown
sections and keys are refused (a typo must not silently become a default), and
each bad value raises :class:`~p2phier.errors.ConfigError` naming the field and
where it came from (``node.layer: 'boss' is not one of ... (from environment
variable P2PHIER_NODE_LAYER)``).  Relative paths: ``node.home`` is relative to the
config file's directory (from the file) or the working directory (environment,
flags); ``control.socket`` is relative to the home.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2phier.errors import ConfigError, InvalidPeerIdError, P2PHierError
from p2phier.fields import Choice, FieldError, Int, Str
from p2phier.fsutil import load_toml
from p2phier.hierarchy import HierarchyConfig, HierarchyError
from p2phier.identity import PeerId, parse_network_peer_id
from p2phier.records import (
    MAX_RECORD_LIFETIME_MS,
    HardwareClass,
    Layer,
    RecordError,
    check_layer_domain,
    validate_addr,
    validate_base_model_id,
    validate_domain,
)

MAX_CONFIG_BYTES = 1 << 20
MAX_LIST = 64
ENV_PREFIX = "P2PHIER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
STORE_NAME = "store"
KEY_NAME = "identity.key"

#: Flag names of ``p2phier node run`` and the setting each overrides.
FLAG_KEYS = {
    "home": "node.home",
    "layer": "node.layer",
    "domain": "node.domain",
    "listen": "network.listen",
    "bootstrap": "network.bootstrap",
    "log_level": "log.level",
}
_FLAG_NAMES = {v: k for k, v in FLAG_KEYS.items()}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_RATE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?(?:/s)?\s*", re.IGNORECASE)
_RATE_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


# --- value kinds: a FieldError is a value's problem, before the field and source are known ---

_str = Str()


def _path(value: Any) -> Path:
    if isinstance(value, os.PathLike):  # flags from typer arrive as Path objects
        value = os.fspath(value)
    text = _str(value).strip()
    if not text or len(text) > 4096 or "\0" in text:
        raise FieldError("must be a non-empty path")
    return Path(text).expanduser()


def _checked(check: Callable[[str], object]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        text = _str(value).strip()
        try:
            check(text)
        except P2PHierError as exc:
            raise FieldError(str(exc)) from None
        return text

    return parse


def _layer(value: Any) -> Layer:
    try:
        return Layer.parse(_str(value))
    except RecordError as exc:
        raise FieldError(str(exc)) from None


def _hardware(value: Any) -> HardwareClass:
    try:
        return HardwareClass.parse(_str(value))
    except RecordError as exc:
        raise FieldError(str(exc)) from None


def _count(value: Any) -> int:
    n = _uint(value)
    if n < 1:
        raise FieldError("must be at least 1")
    return n


def _uint(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip().replace("_", ""))
        except ValueError:
            raise FieldError(f"{value!r:.40} is not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise FieldError(f"must be a whole number >= 0, not {value!r:.40}")
    return value


def _rate(value: Any) -> int:
    """Bytes per second: an integer, or a string like ``8MB/s``, ``8 MiB``, ``500k``."""
    if isinstance(value, str):
        m = _RATE_RE.fullmatch(value)
        if not m:
            raise FieldError(f'{value!r:.40} is not a rate (e.g. 8000000, "8MB/s", "8 MiB")')
        value = int(float(m.group(1)) * _RATE_UNITS[(m.group(2) or "").lower()])
    return _uint(value)


def parse_byte_size(value: Any) -> int:
    """A size in bytes: an integer, or a string like ``64GiB``, ``500 MB``, ``8k``
    (ConfigError otherwise).  The one parser of sizes and rates for every setting."""
    try:
        return _rate(value)
    except FieldError as exc:
        raise ConfigError(str(exc).replace("a rate", "a size")) from None


def _seconds(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise FieldError(f"{value!r:.40} is not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(f"must be a number of seconds, not {value!r:.40}")
    if not math.isfinite(value) or not 0 < value <= 86_400 * 365:
        raise FieldError(f"must be a positive number of seconds, not {value!r:.40}")
    return float(value)


def _nice(value: Any) -> int:
    """A niceness increment, 0 (normal priority) to 19 (only idle CPU)."""
    return Int(0, 19)(_uint(value))


def _seconds_or_zero(value: Any) -> float:
    """Like seconds, but 0 means "never" (e.g. rounds only on request); from the
    environment or a flag it arrives as text ("0", "0.0")."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return _seconds(value)  # its error names the value
        if number == 0:
            return 0.0
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return _seconds(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise FieldError(f"must be true or false, not {value!r:.40}")


def _level(value: Any) -> str:
    return Choice(LOG_LEVELS)(_str(value).strip().lower())


def _list(value: Any) -> list[Any]:
    if isinstance(value, str):  # the environment: comma-separated
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise FieldError("must be a list")
    if len(value) > MAX_LIST:
        raise FieldError(f"lists at most {MAX_LIST} entries")
    return list(value)


def _unique(value: Any, check: Callable[[str], object]) -> tuple[str, ...]:
    """A list of distinct strings, each passing ``check`` (which raises a P2PHierError)."""
    out: list[str] = []
    for item in _list(value):
        text = _str(item).strip()
        try:
            check(text)
        except P2PHierError as exc:
            raise FieldError(f"{text!r}: {exc}") from None
        if text in out:
            raise FieldError(f"lists {text!r} twice")
        out.append(text)
    return tuple(out)


def _addrs(value: Any) -> tuple[str, ...]:
    return _unique(value, validate_addr)


def _bootstrap(value: Any) -> tuple[str, ...]:
    addrs = _addrs(value)
    for addr in addrs:
        head, sep, peer = addr.rpartition("/p2p/")
        if not sep or not head or "/" in peer:
            raise FieldError(
                f"{addr!r} must end with /p2p/<peer id> (the peer to expect there), e.g. "
                "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW..."
            )
        try:
            parse_network_peer_id(peer)  # any key type: an IPFS node may be a bootstrap peer
        except InvalidPeerIdError as exc:
            raise FieldError(f"{addr!r}: {exc}") from None
    return addrs


def _anchors(value: Any) -> tuple[str, ...]:
    return _unique(value, PeerId.parse)  # p2phier nodes: they sign records, so Ed25519 keys


def _domains(value: Any) -> tuple[str, ...]:
    return _unique(value, validate_domain)


# --- the schema -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    parse: Callable[[Any], Any]
    default: Any
    env: str | None = None  # overrides the P2PHIER_<SECTION>_<KEY> name
    is_list: bool = False  # a TOML array in the file; comma-separated in the environment


_SCHEMA: dict[str, _Field] = {
    "node.home": _Field(_path, None, env="P2PHIER_HOME"),
    "node.layer": _Field(_layer, None),
    "node.domain": _Field(_checked(validate_domain), ""),
    "node.base_model": _Field(_checked(validate_base_model_id), DEFAULT_BASE_MODEL),
    "node.hardware": _Field(_hardware, HardwareClass.CPU),
    "node.ram_bytes": _Field(_uint, 0),
    "node.max_params": _Field(_uint, 0),
    "network.listen": _Field(_addrs, ("/ip4/0.0.0.0/tcp/4001",), is_list=True),
    "network.advertise": _Field(_addrs, (), is_list=True),
    "network.bootstrap": _Field(_bootstrap, (), is_list=True),
    "network.upload_rate_limit": _Field(_rate, 0),
    "network.max_handshakes": _Field(_count, 128),
    "network.max_handshakes_per_ip": _Field(_count, 16),
    "network.max_inbound_per_ip": _Field(_count, 256),
    "control.socket": _Field(_path, "control.sock"),
    "gossip.heartbeat_s": _Field(_seconds, 1.0),
    "timeouts.dial_s": _Field(_seconds, 10.0),
    "timeouts.stream_s": _Field(_seconds, 30.0),
    "timeouts.block_s": _Field(_seconds, 10.0),
    "timeouts.shutdown_s": _Field(_seconds, 10.0),
    "records.ttl_s": _Field(_seconds, 3600.0),
    "records.refresh_s": _Field(_seconds, 600.0),
    "hierarchy.child_ttl_s": _Field(_seconds, 90.0),
    "hierarchy.register_interval_s": _Field(_seconds, 30.0),
    "hierarchy.parent_timeout_s": _Field(_seconds, 30.0),
    "hierarchy.lost_backoff_s": _Field(_seconds, 60.0),
    "hierarchy.max_children": _Field(_uint, 1024),
    "hierarchy.admit_domains": _Field(_domains, (), is_list=True),
    "trust.anchors": _Field(_anchors, (), is_list=True),
    "trust.report_interval_s": _Field(_seconds, 30.0),
    "trust.global_interval_s": _Field(_seconds, 5.0),
    "log.level": _Field(_level, "info"),
    "learn.enabled": _Field(_bool, False),
    "learn.round_interval_s": _Field(_seconds_or_zero, 3600.0),
    "learn.follow_parent": _Field(_bool, True),
    "learn.plan": _Field(_path, "learn/plan.json"),
    "learn.worker_nice": _Field(_nice, 10),
    "retention.gc_interval_s": _Field(_seconds_or_zero, 600.0),
    "retention.keep_versions": _Field(_count, 2),
}

#: Every setting's default (``node.home`` None = the platform data directory).
DEFAULTS: dict[str, Any] = {k: f.default for k, f in _SCHEMA.items()}


def env_name(key: str) -> str:
    """The environment variable that overrides setting ``key`` (``"section.key"``)."""
    spec = _SCHEMA.get(key)
    if spec is None:
        raise KeyError(key)
    return spec.env or ENV_PREFIX + key.replace(".", "_").upper()


def settings() -> list[str]:
    """Every setting name, ``"section.key"``, in schema order."""
    return list(_SCHEMA)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Every setting of a node, resolved and validated."""

    home: Path
    config_file: Path | None
    layer: Layer
    domain: str
    base_model_id: str
    hardware: HardwareClass
    ram_bytes: int  # 0: measure at start
    max_params: int  # 0: not stated
    listen: tuple[str, ...]
    advertise: tuple[str, ...]  # empty: advertise the listen addresses
    bootstrap: tuple[str, ...]
    upload_rate_limit: int  # bytes/s, 0 = unlimited
    max_handshakes: int  # inbound connections in their handshake at once
    max_handshakes_per_ip: int  # ... from one IP
    max_inbound_per_ip: int  # live inbound connections from one IP
    control_socket: Path
    gossip_heartbeat_s: float
    dial_timeout_s: float
    stream_timeout_s: float
    block_timeout_s: float
    shutdown_timeout_s: float
    record_ttl_s: float
    record_refresh_s: float
    hierarchy: HierarchyConfig
    #: peer ids of nodes the operator knows (e.g. the network's real master); empty: the
    #: bootstrap peers are the anchors
    trust_anchors: tuple[str, ...]
    trust_report_interval_s: float  # how often this node gossips its trust report
    #: the global view (trust, distrust, standing) is recomputed at most this often
    trust_global_interval_s: float
    log_level: str
    learn_enabled: bool
    learn_round_interval_s: float
    #: a node with a parent runs a round on each new version of its parent (its own timer
    #: then drives nothing: only the root's does)
    learn_follow_parent: bool
    learn_plan: Path
    learn_worker_nice: int
    #: seconds between garbage collections (the node's unneeded pins released first); 0: never
    retention_gc_interval_s: float
    #: artifacts kept pinned per (author, topic) the hierarchy may still ask for
    retention_keep_versions: int
    # "section.key" -> "default" | "file" | "env" | "flag": where each value came from
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def store_path(self) -> Path:
        return self.home / STORE_NAME

    @property
    def key_file(self) -> Path:
        return self.home / KEY_NAME

    @property
    def anchors(self) -> frozenset[PeerId]:
        """The peers this node trusts from the start: ``trust.anchors``, or else the
        bootstrap peers the operator named (those that are p2phier, i.e. Ed25519, nodes)."""
        if self.trust_anchors:
            return frozenset(PeerId.parse(p) for p in self.trust_anchors)
        out = set()
        for addr in self.bootstrap:
            try:
                out.add(PeerId.parse(addr.rpartition("/p2p/")[2]))
            except InvalidPeerIdError:
                continue  # an IPFS node (RSA, secp256k1) signs no records: no parent
        return frozenset(out)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view keyed by setting name, plus where each came from."""
        h = self.hierarchy
        values: dict[str, Any] = {
            "node.home": str(self.home),
            "node.layer": self.layer.label,
            "node.domain": self.domain,
            "node.base_model": self.base_model_id,
            "node.hardware": self.hardware.value,
            "node.ram_bytes": self.ram_bytes,
            "node.max_params": self.max_params,
            "network.listen": list(self.listen),
            "network.advertise": list(self.advertise),
            "network.bootstrap": list(self.bootstrap),
            "network.upload_rate_limit": self.upload_rate_limit,
            "network.max_handshakes": self.max_handshakes,
            "network.max_handshakes_per_ip": self.max_handshakes_per_ip,
            "network.max_inbound_per_ip": self.max_inbound_per_ip,
            "control.socket": str(self.control_socket),
            "gossip.heartbeat_s": self.gossip_heartbeat_s,
            "timeouts.dial_s": self.dial_timeout_s,
            "timeouts.stream_s": self.stream_timeout_s,
            "timeouts.block_s": self.block_timeout_s,
            "timeouts.shutdown_s": self.shutdown_timeout_s,
            "records.ttl_s": self.record_ttl_s,
            "records.refresh_s": self.record_refresh_s,
            "hierarchy.child_ttl_s": h.child_ttl_s,
            "hierarchy.register_interval_s": h.register_interval_s,
            "hierarchy.parent_timeout_s": h.parent_timeout_s,
            "hierarchy.lost_backoff_s": h.lost_backoff_s,
            "hierarchy.max_children": h.max_children,
            "hierarchy.admit_domains": list(h.admit_domains),
            "trust.anchors": list(self.trust_anchors),
            "trust.report_interval_s": self.trust_report_interval_s,
            "trust.global_interval_s": self.trust_global_interval_s,
            "log.level": self.log_level,
            "learn.enabled": self.learn_enabled,
            "learn.round_interval_s": self.learn_round_interval_s,
            "learn.follow_parent": self.learn_follow_parent,
            "learn.plan": str(self.learn_plan),
            "learn.worker_nice": self.learn_worker_nice,
            "retention.gc_interval_s": self.retention_gc_interval_s,
            "retention.keep_versions": self.retention_keep_versions,
        }
        return {
            "config_file": str(self.config_file) if self.config_file else None,
            "settings": values,
            "sources": dict(self.sources),
        }


# --- loading ------------------------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """Read and parse a config file, capped at :data:`MAX_CONFIG_BYTES` (ConfigError)."""
    return load_toml(path, MAX_CONFIG_BYTES, "config file", ConfigError)


#: Sections of the same file that belong to the CLI (p2phier.cli.config checks them).
CLI_SECTIONS = frozenset({"store", "identity", "artifact"})


def _flatten(doc: Mapping[str, Any], origin: str) -> dict[str, Any]:
    sections = sorted({k.split(".")[0] for k in _SCHEMA})
    out: dict[str, Any] = {}
    for section, table in doc.items():
        if section in CLI_SECTIONS:
            continue  # one config file serves the node and the CLI
        if section not in sections:
            raise ConfigError(
                f"{origin}: unknown section [{section}] (known: {', '.join(sections)})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        for key, value in table.items():
            name = f"{section}.{key}"
            if name not in _SCHEMA:
                known = [k.split(".")[1] for k in _SCHEMA if k.startswith(section + ".")]
                raise ConfigError(
                    f"{origin}: unknown key {key!r} in [{section}] (known: {', '.join(known)})"
                )
            out[name] = value
    return out


def _describe(key: str, source: str, config_file: Path | None) -> str:
    if source == "file":
        return f"from config file {config_file}"
    if source == "env":
        return f"from environment variable {env_name(key)}"
    if source == "flag":
        flag = _FLAG_NAMES.get(key)
        return f"from flag --{flag.replace('_', '-')}" if flag else f"from flag {key}"
    return "the default"


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> NodeConfig:
    """Resolve a :class:`NodeConfig`: defaults < file ``path`` < ``environ`` < ``flags``.

    ``environ`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
    """
    env = os.environ if environ is None else environ
    base = (cwd or Path.cwd()).absolute()
    config_file = Path(path).expanduser().absolute() if path is not None else None

    raw: dict[str, tuple[Any, str]] = {k: (f.default, "default") for k, f in _SCHEMA.items()}
    if config_file is not None:
        for key, value in _flatten(read_toml(config_file), str(config_file)).items():
            raw[key] = (value, "file")
    for key in _SCHEMA:
        var = env_name(key)
        if var in env:
            raw[key] = (env[var], "env")
    for name, value in (flags or {}).items():
        key = FLAG_KEYS.get(name, name)
        if key not in _SCHEMA:
            raise ConfigError(f"unknown flag setting {name!r}")
        if value is not None:
            raw[key] = (list(value) if isinstance(value, tuple) else value, "flag")

    values: dict[str, Any] = {}
    for key, (value, source) in raw.items():
        if value is None:  # only defaults are None: resolved below
            values[key] = None
            continue
        try:
            if source == "file" and _SCHEMA[key].is_list and not isinstance(value, list):
                raise FieldError('must be a list (a TOML array, e.g. ["/ip4/0.0.0.0/tcp/4001"])')
            values[key] = _SCHEMA[key].parse(value)
        except FieldError as exc:
            where = _describe(key, source, config_file)
            raise ConfigError(f"{key}: {exc.problem} ({where})") from None
    sources = {k: s for k, (_, s) in raw.items()}

    def fail(keys: tuple[str, ...], problem: str) -> ConfigError:
        where = "; ".join(f"{k} {_describe(k, sources[k], config_file)}" for k in keys)
        return ConfigError(f"{', '.join(keys)}: {problem} ({where})")

    # Paths: home relative to where it was written; the socket relative to the home.
    home = values["node.home"]
    if home is None:
        import platformdirs  # only when no home is given

        home = Path(platformdirs.user_data_dir("p2phier"))
    elif not home.is_absolute():
        anchor = config_file.parent if sources["node.home"] == "file" and config_file else base
        home = anchor / home
    plan = values["learn.plan"]
    socket = values["control.socket"]
    if not socket.is_absolute():
        socket = home / socket
    # A Unix socket path is limited to ~107 bytes by the kernel.
    if len(os.fsencode(str(socket))) > 100:
        raise fail(("control.socket", "node.home"), f"socket path {socket} is over 100 bytes")

    if values["node.layer"] is None:
        raise ConfigError(
            "node.layer is required: set it in the config file ([node] layer = ...), "
            f"with {env_name('node.layer')} or with --layer "
            f"({', '.join(layer.label for layer in Layer)})"
        )
    try:
        check_layer_domain(values["node.layer"], values["node.domain"], ConfigError)
    except ConfigError as exc:
        raise fail(("node.layer", "node.domain"), str(exc)) from None
    if not values["network.listen"]:
        raise fail(("network.listen",), "a node must listen on at least one address")
    ttl, refresh = values["records.ttl_s"], values["records.refresh_s"]
    if ttl * 1000 > MAX_RECORD_LIFETIME_MS:
        raise fail(("records.ttl_s",), f"a record lives at most {MAX_RECORD_LIFETIME_MS // 1000} s")
    if refresh >= ttl:
        raise fail(
            ("records.refresh_s", "records.ttl_s"),
            "records must be refreshed before they expire (refresh_s < ttl_s)",
        )
    try:
        hierarchy = HierarchyConfig(
            child_ttl_s=values["hierarchy.child_ttl_s"],
            register_interval_s=values["hierarchy.register_interval_s"],
            parent_timeout_s=values["hierarchy.parent_timeout_s"],
            lost_backoff_s=values["hierarchy.lost_backoff_s"],
            max_children=values["hierarchy.max_children"],
            admit_domains=values["hierarchy.admit_domains"],
        )
    except HierarchyError as exc:
        raise fail(tuple(k for k in _SCHEMA if k.startswith("hierarchy.")), str(exc)) from None

    return NodeConfig(
        home=home,
        config_file=config_file,
        layer=values["node.layer"],
        domain=values["node.domain"],
        base_model_id=values["node.base_model"],
        hardware=values["node.hardware"],
        ram_bytes=values["node.ram_bytes"],
        max_params=values["node.max_params"],
        listen=values["network.listen"],
        advertise=values["network.advertise"],
        bootstrap=values["network.bootstrap"],
        upload_rate_limit=values["network.upload_rate_limit"],
        max_handshakes=values["network.max_handshakes"],
        max_handshakes_per_ip=values["network.max_handshakes_per_ip"],
        max_inbound_per_ip=values["network.max_inbound_per_ip"],
        control_socket=socket,
        gossip_heartbeat_s=values["gossip.heartbeat_s"],
        dial_timeout_s=values["timeouts.dial_s"],
        stream_timeout_s=values["timeouts.stream_s"],
        block_timeout_s=values["timeouts.block_s"],
        shutdown_timeout_s=values["timeouts.shutdown_s"],
        record_ttl_s=ttl,
        record_refresh_s=refresh,
        hierarchy=hierarchy,
        trust_anchors=values["trust.anchors"],
        trust_report_interval_s=values["trust.report_interval_s"],
        trust_global_interval_s=values["trust.global_interval_s"],
        log_level=values["log.level"],
        learn_enabled=values["learn.enabled"],
        learn_round_interval_s=values["learn.round_interval_s"],
        learn_follow_parent=values["learn.follow_parent"],
        learn_plan=plan if plan.is_absolute() else home / plan,
        learn_worker_nice=values["learn.worker_nice"],
        retention_gc_interval_s=values["retention.gc_interval_s"],
        retention_keep_versions=values["retention.keep_versions"],
        sources=sources,
    )
