"""Where the CLI keeps its state and how its settings are resolved.

Owns the home directory rule and the settings precedence of every command:

* home: ``--home`` flag, else ``$P2PHIER_HOME``, else ``platformdirs.user_data_dir("p2phier")``;
* ``--home`` and ``--config`` are declared once here (:data:`HomeOption`, :data:`ConfigOption`)
  and accepted before the command (``p2phier --home D node status``) and after it by every command
  that uses the home (``p2phier node status --home D``); given in both places, the later wins;
* config file: ``--config`` flag, else ``$P2PHIER_CONFIG``, else ``<home>/config.toml`` when it
  exists (an explicitly named file that does not exist is an error, a missing default is not);
* each setting: built-in default < config file < environment ``P2PHIER_<SECTION>_<KEY>`` < flag
  (flags are applied by the commands themselves, on top of :class:`Settings`).

The config file is hostile input like any other: it is size-capped before it is read, unknown
sections or keys are refused (a typo must not silently fall back to a default), and every value is
type-checked.  Relative paths in the file are relative to the file's directory; relative paths in
the environment are relative to the working directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from p2phier.errors import ConfigError, P2PHierError
from p2phier.fields import Choice, FieldError

if TYPE_CHECKING:
    from p2phier.identity import Identity
    from p2phier.store import DiskStore

ENV_PREFIX = "P2PHIER_"
ENV_HOME = "P2PHIER_HOME"
ENV_CONFIG = "P2PHIER_CONFIG"
ENV_DEBUG = "P2PHIER_DEBUG"
CONFIG_NAME = "config.toml"
KEY_NAME = "identity.key"
STORE_NAME = "store"

LOG_LEVELS = ("debug", "info", "warning", "error")
#: store.max_object_size by default: far above any model tier or update, far below what
#: a DAG that fans in to a few blocks can declare (a 1.5 MB one declared 16 TiB)
DEFAULT_MAX_OBJECT_SIZE = 64 << 30
ENCODINGS = ("fp32", "fp16", "int8", "int8-delta", "topk-delta")

# (section, key) -> kind.  "path" values default to a place under the home directory.
_SCHEMA: dict[tuple[str, str], str] = {
    ("store", "path"): "path",
    ("store", "max_object_size"): "size",
    ("identity", "key_file"): "path",
    ("identity", "auto_create"): "bool",
    ("log", "level"): "level",
    ("artifact", "encoding"): "encoding",
    ("artifact", "base_model"): "str",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``[section] key``."""
    return f"{ENV_PREFIX}{section}_{key}".upper()


def debug_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(ENV_DEBUG, "").strip().lower() in _TRUE


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting a command may need, fully resolved (flags excepted)."""

    home: Path
    config_file: Path | None
    store_path: Path
    #: the most bytes `store cat` / `store get` will materialise from one object
    store_max_object_size: int
    key_file: Path
    auto_create_identity: bool
    log_level: str
    artifact_encoding: str | None
    artifact_base_model: str | None
    # "section.key" -> "default" | "config" | "env": where each value came from.
    sources: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "config_file": str(self.config_file) if self.config_file else None,
            "store.path": str(self.store_path),
            "store.max_object_size": self.store_max_object_size,
            "identity.key_file": str(self.key_file),
            "identity.auto_create": self.auto_create_identity,
            "log.level": self.log_level,
            "artifact.encoding": self.artifact_encoding,
            "artifact.base_model": self.artifact_base_model,
            "sources": dict(self.sources),
        }


def default_home() -> Path:
    import platformdirs  # imported here: only needed when no home is given

    return Path(platformdirs.user_data_dir("p2phier"))


def resolve_home(flag: Path | None, environ: Mapping[str, str]) -> Path:
    if flag is not None:
        return flag.expanduser().absolute()
    env = environ.get(ENV_HOME, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    return default_home()


def _node_keys() -> set[tuple[str, str]]:
    """Settings of the node daemon (p2phier.config validates them when a node runs)."""
    from p2phier.config import settings as node_settings

    return {(k.split(".")[0], k.split(".")[1]) for k in node_settings()}


def _flatten(doc: Mapping[str, Any], origin: Path) -> dict[tuple[str, str], Any]:
    # One config file serves the CLI and the node: the node's sections and keys are
    # skipped here (p2phier.config checks them); anything neither knows is an error.
    node_keys = _node_keys()
    node_sections = {s for s, _ in node_keys}
    known_sections = sorted({s for s, _ in _SCHEMA} | node_sections)
    out: dict[tuple[str, str], Any] = {}
    for section, table in doc.items():
        if section not in known_sections:
            raise ConfigError(
                f"{origin}: unknown section [{section}] (known: {', '.join(known_sections)})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        for key, value in table.items():
            if (section, key) in node_keys and (section, key) not in _SCHEMA:
                continue
            if (section, key) not in _SCHEMA:
                known = sorted(k for s, k in set(_SCHEMA) | node_keys if s == section)
                raise ConfigError(
                    f"{origin}: unknown key {key!r} in [{section}] (known: {', '.join(known)})"
                )
            out[(section, key)] = value
    return out


def _coerce(kind: str, name: str, value: Any, base: Path) -> Any:
    """Check one value's type; ``name`` says where it came from for the error message."""
    if kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty path string")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path).absolute()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind in ("level", "encoding"):
        check = Choice(LOG_LEVELS if kind == "level" else ENCODINGS)
        try:
            return check(value.lower() if kind == "level" and isinstance(value, str) else value)
        except FieldError as exc:
            raise ConfigError(f"{name}: {exc.problem}") from None
    if kind == "size":
        from p2phier.config import parse_byte_size

        return parse_byte_size(value)
    if kind == "str":
        if not isinstance(value, str) or not value.strip() or len(value) > 512:
            raise ConfigError(f"{name} must be a non-empty string of at most 512 characters")
        return value
    raise AssertionError(f"unknown setting kind {kind}")  # pragma: no cover - schema bug


def resolve_config_file(home: Path, flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file every command reads (the CLI's settings and ``node run``'s alike):
    ``--config``, else ``$P2PHIER_CONFIG``, else ``<home>/config.toml`` when it exists."""
    if flag is not None:
        return flag.expanduser().absolute()
    if environ.get(ENV_CONFIG, "").strip():
        return Path(environ[ENV_CONFIG]).expanduser().absolute()
    candidate = home / CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_settings(
    home_flag: Path | None = None,
    config_flag: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting from defaults, the config file and the environment."""
    env = os.environ if environ is None else environ
    home = resolve_home(home_flag, env)
    config_file = resolve_config_file(home, config_flag, env)

    values: dict[tuple[str, str], Any] = {
        ("store", "path"): home / STORE_NAME,
        ("store", "max_object_size"): DEFAULT_MAX_OBJECT_SIZE,
        ("identity", "key_file"): home / KEY_NAME,
        ("identity", "auto_create"): True,
        ("log", "level"): "warning",
        # None: packing chooses (fp32 for a full adapter, int8-delta for a delta).
        ("artifact", "encoding"): None,
        ("artifact", "base_model"): None,
    }
    sources = {f"{s}.{k}": "default" for s, k in values}

    if config_file is not None:
        from p2phier.config import read_toml  # the one reader of the file (size-capped)

        for (section, key), raw in _flatten(read_toml(config_file), config_file).items():
            name = f"{config_file}: [{section}] {key}"
            values[(section, key)] = _coerce(_SCHEMA[(section, key)], name, raw, config_file.parent)
            sources[f"{section}.{key}"] = "config"

    cwd = Path.cwd()
    for (section, key), kind in _SCHEMA.items():
        var = env_name(section, key)
        if var in env:
            values[(section, key)] = _coerce(kind, f"${var}", env[var], cwd)
            sources[f"{section}.{key}"] = "env"

    return Settings(
        home=home,
        config_file=config_file,
        store_path=values[("store", "path")],
        store_max_object_size=values[("store", "max_object_size")],
        key_file=values[("identity", "key_file")],
        auto_create_identity=values[("identity", "auto_create")],
        log_level=values[("log", "level")],
        artifact_encoding=values[("artifact", "encoding")],
        artifact_base_model=values[("artifact", "base_model")],
        sources=sources,
    )


# --- the per-invocation context the commands share ------------------------------------


@dataclass(slots=True)
class CLIContext:
    """Global flags of one invocation; settings are resolved on first use (not for ``--help``)."""

    home_flag: Path | None = None
    config_flag: Path | None = None
    verbose: int = 0
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.home_flag, self.config_flag)
        return self._settings

    def use(self, *, home: Path | None = None, config: Path | None = None) -> None:
        """A ``--home`` or ``--config`` given (again) after the command: it wins."""
        if home is not None:
            self.home_flag = home
        if config is not None:
            self.config_flag = config
        self._settings = None

    def log_level(self) -> int:
        """The p2phier loggers' level: ``-v``/``-vv``, else the configured ``log.level``."""
        if self.verbose:
            return logging.DEBUG if self.verbose >= 2 else logging.INFO
        try:
            name = self.settings().log_level
        except P2PHierError:
            # Reported properly by the command that needs the settings; a broken config must
            # not stop `id new` (which needs no settings but the key's path).
            name = "warning"
        return int(getattr(logging, name.upper()))


def _given(ctx: typer.Context, *, home: Path | None = None, config: Path | None = None) -> None:
    # Runs where the option appears: before the command (the root callback has not run yet and
    # there is no CLIContext: this creates it) or after it (the root callback set the log level
    # from the first home and config; the new one may configure another).
    if ctx.resilient_parsing or (home is None and config is None):
        return
    cli = ctx.ensure_object(CLIContext)
    cli.use(home=home, config=config)
    if ctx.parent is not None:
        logging.getLogger("p2phier").setLevel(cli.log_level())


def _home_given(ctx: typer.Context, value: Path | None) -> None:
    _given(ctx, home=value)


def _config_given(ctx: typer.Context, value: Path | None) -> None:
    _given(ctx, config=value)


#: ``--home``, for the root and for every command that uses the home.  The value goes to the
#: invocation's :class:`CLIContext` (read it with ``cli.settings()`` or ``cli.home_flag``), never
#: to the command function: a command declares ``home: HomeOption = None`` only to accept it.
HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="State directory (store, identity.key, config.toml). Env: P2PHIER_HOME.",
        show_default=False,
        callback=_home_given,
        expose_value=False,
    ),
]
#: ``--config``, like :data:`HomeOption`.
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=(
            "TOML config file (default $P2PHIER_CONFIG, else <home>/config.toml if present; "
            "node run reads only the file named here)."
        ),
        show_default=False,
        callback=_config_given,
        expose_value=False,
    ),
]


def signing_identity(settings: Settings) -> tuple[Identity, bool]:
    """The node's key for signing; ``(identity, created)``.

    Policy (documented in README-cli.md): a command that signs creates the key on first use when
    ``identity.auto_create`` is true (the default) and says so on stderr; otherwise it fails with a
    hint to run ``p2phier id new``.  An existing key is always loaded strictly (a key file readable
    by group or others is refused, never "fixed").
    """
    from p2phier.errors import KeyFileError
    from p2phier.identity import Identity

    path = settings.key_file
    if path.exists() or path.is_symlink():
        return Identity.load(path), False
    if not settings.auto_create_identity:
        raise KeyFileError(
            f"no identity key at {path}; create one with `p2phier id new` "
            f"(or set identity.auto_create = true)"
        )
    ident = Identity.generate()
    ident.save(path)
    return ident, True


def open_store(settings: Settings) -> DiskStore:
    """The node's on-disk content store (created on first use)."""
    from p2phier.store import DiskStore

    return DiskStore(settings.store_path)
