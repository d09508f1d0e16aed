"""The store's SQLite index: pins and object metadata.

Owns the schema (versioned with SQLite's ``user_version`` and an ordered list
of migrations), pin rows and :class:`ObjectMeta` rows.  Blocks themselves live
elsewhere (a dict or files); this module never touches block bytes.

On disk the index is ``index.sqlite`` in WAL mode with ``synchronous=FULL``:
a pin or metadata row is committed only after the blocks it names were made
durable by the caller, so after a crash a row never names a torn object.  A
database written by a newer build (higher ``user_version``) is refused rather
than guessed at.  Every row read back is re-validated (CIDs re-parsed, fields
re-checked): the file is input like any other.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from p2phier.cid import CID
from p2phier.errors import CIDError, StoreError, StoreIOError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PIN_RECURSIVE = "recursive"
PIN_DIRECT = "direct"
PIN_MODES = (PIN_RECURSIVE, PIN_DIRECT)

MAX_KIND_LEN = 64
MAX_FIELD_LEN = 1024


#: the most the index's write-ahead log keeps on disk after a checkpoint
WAL_LIMIT_BYTES = 256 << 10


class InvalidMetaError(StoreError, ValueError):
    """Object metadata is malformed (empty kind, overlong field, negative size...)."""


class IndexSchemaError(StoreError):
    """The index database has a schema this build cannot use."""


def _check_text(name: str, value: str | None, limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidMetaError(
            f"metadata field {name!r} must be a string, not {type(value).__name__}"
        )
    if len(value) > limit:
        raise InvalidMetaError(
            f"metadata field {name!r} is {len(value)} characters; at most {limit}"
        )
    if "\0" in value:
        raise InvalidMetaError(f"metadata field {name!r} contains a NUL character")


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the index knows about one stored object (a UnixFS file root)."""

    cid: CID
    kind: str
    size: int
    created: float
    layer: str | None = None
    domain: str | None = None
    author: str | None = None
    parent: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cid, CID):
            raise InvalidMetaError(f"ObjectMeta.cid must be a CID, not {type(self.cid).__name__}")
        if not isinstance(self.kind, str) or not self.kind:
            raise InvalidMetaError("ObjectMeta.kind must be a non-empty string")
        _check_text("kind", self.kind, MAX_KIND_LEN)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidMetaError(f"ObjectMeta.size must be a non-negative int, not {self.size!r}")
        if not isinstance(self.created, int | float) or not math.isfinite(self.created):
            raise InvalidMetaError(
                f"ObjectMeta.created must be a finite number, not {self.created!r}"
            )
        for field in ("layer", "domain", "author", "parent", "name"):
            _check_text(field, getattr(self, field), MAX_FIELD_LEN)


_META_COLUMNS = ("cid", "kind", "size", "created", "layer", "domain", "author", "parent", "name")

# Each migration brings the schema from version i to i + 1 (index i in this list).
# Add-only: never edit a released migration, append a new one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pins (
        cid  TEXT PRIMARY KEY,
        mode TEXT NOT NULL CHECK (mode IN ('recursive', 'direct'))
    ) WITHOUT ROWID;
    CREATE TABLE objects (
        cid     TEXT PRIMARY KEY,
        kind    TEXT NOT NULL,
        size    INTEGER NOT NULL,
        created REAL NOT NULL,
        layer   TEXT,
        domain  TEXT,
        author  TEXT,
        parent  TEXT,
        name    TEXT
    ) WITHOUT ROWID;
    CREATE INDEX objects_kind ON objects (kind);
    CREATE INDEX objects_domain ON objects (domain);
    CREATE INDEX objects_author ON objects (author);
    CREATE INDEX objects_parent ON objects (parent);
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

T = TypeVar("T")


class Index:
    """Pins and metadata in one SQLite database (a file, or ``":memory:"``).

    Thread-safe: one connection guarded by a lock (SQLite serialises writers
    anyway; other processes coordinate through SQLite's own file locks).
    """

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self._path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreIOError(f"cannot open the store index {self._path}: {exc}") from exc
        self._closed = False
        self.created_fresh = False

        def configure(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA busy_timeout = 30000")
            if self._path != ":memory:":
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = FULL")
                # The write-ahead log is reused, never shrunk, after each checkpoint: without a
                # limit it stays at its largest (about 4 MiB at SQLite's default checkpoint),
                # and a long-running node's store would never look settled.  Checkpoint every
                # 256 pages and truncate the log to 256 KiB afterwards.
                db.execute("PRAGMA wal_autocheckpoint = 256")
                db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES:d}")

        try:
            self._run("open it (is it an SQLite database?)", configure)
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    # --- plumbing --------------------------------------------------------------------------------
    def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                msg = f"store index {self._path}: cannot {what}: {exc}"
                if isinstance(exc, sqlite3.OperationalError):
                    # disk full, read-only file system, permission denied, locked
                    raise StoreIOError(msg + " (check free space and permissions)") from exc
                raise StoreError(msg) from exc

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _migrate(self) -> None:
        def go(db: sqlite3.Connection) -> None:
            with self._transaction(db):
                (version,) = db.execute("PRAGMA user_version").fetchone()
                #: the index was created just now (missing, or an empty file): it
                #: knows no pin, whatever the store holds (see DiskStore's pin journal)
                self.created_fresh = version == 0
                if version > SCHEMA_VERSION:
                    raise IndexSchemaError(
                        f"store index {self._path} has schema version {version}, newer than "
                        f"this build supports ({SCHEMA_VERSION}); upgrade p2phier"
                    )
                for target in range(version, SCHEMA_VERSION):
                    log.info("migrating store index %s to schema %d", self._path, target + 1)
                    for statement in _MIGRATIONS[target].split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {target + 1:d}")

        self._run("migrate the schema", go)

    def schema_version(self) -> int:
        row = self._run(
            "read the schema version", lambda db: db.execute("PRAGMA user_version").fetchone()
        )
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # --- pins ------------------------------------------------------------------------------------
    def set_pin(self, cid: CID, mode: str) -> None:
        """Pin ``cid``; a recursive pin is never downgraded to direct."""
        if mode not in PIN_MODES:
            raise StoreError(f"unknown pin mode {mode!r}; expected one of {PIN_MODES}")

        def go(db: sqlite3.Connection) -> None:
            with self._transaction(db):
                row = db.execute("SELECT mode FROM pins WHERE cid = ?", (str(cid),)).fetchone()
                if row is not None and row[0] == PIN_RECURSIVE:
                    return
                db.execute(
                    "INSERT OR REPLACE INTO pins (cid, mode) VALUES (?, ?)", (str(cid), mode)
                )

        self._run("write a pin", go)

    def remove_pin(self, cid: CID) -> bool:
        cur = self._run(
            "remove a pin", lambda db: db.execute("DELETE FROM pins WHERE cid = ?", (str(cid),))
        )
        return cur.rowcount > 0

    def pin_mode(self, cid: CID) -> str | None:
        row = self._run(
            "read a pin",
            lambda db: db.execute("SELECT mode FROM pins WHERE cid = ?", (str(cid),)).fetchone(),
        )
        return None if row is None else str(row[0])

    def pins(self) -> dict[CID, str]:
        rows = self._run(
            "list pins", lambda db: db.execute("SELECT cid, mode FROM pins").fetchall()
        )
        out: dict[CID, str] = {}
        for text, mode in rows:
            try:
                cid = CID.parse(text)
            except (CIDError, TypeError):
                log.warning("store index: ignoring pin row with an invalid CID %r", text)
                continue
            if mode in PIN_MODES:
                out[cid] = str(mode)
        return out

    # --- metadata --------------------------------------------------------------------------------
    def record(self, meta: ObjectMeta) -> None:
        values = (
            str(meta.cid),
            meta.kind,
            meta.size,
            float(meta.created),
            meta.layer,
            meta.domain,
            meta.author,
            meta.parent,
            meta.name,
        )
        placeholders = ", ".join("?" for _ in _META_COLUMNS)
        sql = f"INSERT OR REPLACE INTO objects ({', '.join(_META_COLUMNS)}) VALUES ({placeholders})"
        self._run("record metadata", lambda db: db.execute(sql, values))

    def get(self, cid: CID) -> ObjectMeta | None:
        sql = f"SELECT {', '.join(_META_COLUMNS)} FROM objects WHERE cid = ?"
        row = self._run("read metadata", lambda db: db.execute(sql, (str(cid),)).fetchone())
        return None if row is None else self._row_to_meta(row)

    def query(
        self,
        *,
        kind: str | None = None,
        layer: str | None = None,
        domain: str | None = None,
        domain_prefix: str | None = None,
        author: str | None = None,
        parent: str | None = None,
    ) -> list[ObjectMeta]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("kind", kind),
            ("layer", layer),
            ("domain", domain),
            ("author", author),
            ("parent", parent),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if domain_prefix is not None:
            # substr, not LIKE: a prefix containing % or _ must match literally.
            clauses.append("substr(domain, 1, ?) = ?")
            params.extend((len(domain_prefix), domain_prefix))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {', '.join(_META_COLUMNS)} FROM objects{where} ORDER BY created, cid"
        rows = self._run("query metadata", lambda db: db.execute(sql, params).fetchall())
        out = []
        for row in rows:
            meta = self._row_to_meta(row)
            if meta is not None:
                out.append(meta)
        return out

    def forget(self, cids: Sequence[CID]) -> None:
        """Drop the metadata rows of ``cids`` (objects that are gone)."""

        def go(db: sqlite3.Connection) -> None:
            with self._transaction(db):
                db.executemany("DELETE FROM objects WHERE cid = ?", [(str(c),) for c in cids])

        if cids:
            self._run("delete metadata", go)

    @staticmethod
    def _row_to_meta(row: Sequence[Any]) -> ObjectMeta | None:
        try:
            return ObjectMeta(
                cid=CID.parse(row[0]),
                kind=row[1],
                size=row[2],
                created=row[3],
                layer=row[4],
                domain=row[5],
                author=row[6],
                parent=row[7],
                name=row[8],
            )
        except (CIDError, InvalidMetaError, TypeError) as exc:
            log.warning("store index: ignoring a malformed metadata row (%s)", exc)
            return None
