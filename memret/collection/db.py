"""The SQLite side of a Collection: schema, connections, and write transactions that never report "locked".

SQLite is the collection's source of truth. One database file holds the documents, their metadata
(JSON text), their vectors (float32 BLOBs), an FTS5 full-text index kept in step by triggers (so BM25
changes commit or roll back with the documents), and a change counter ``seq``:

- every write transaction bumps ``seq`` once and stamps the rows it writes with it;
- deleted rows leave their rowid in ``deleted`` with the deleting ``seq``;
- rowids are never reused (``AUTOINCREMENT``), so a rowid names one version of one document forever.

A derived vector index at ``seq`` S is brought to the current state by removing the rowids in
``deleted`` with seq > S and upserting the rows of ``docs`` with seq > S, an idempotent replay.

Several processes share the file through WAL mode: readers never block writers or each other, and
writers queue on SQLite's write lock. Write transactions start with ``BEGIN IMMEDIATE`` (so a
transaction never has to upgrade a read lock, the case ``busy_timeout`` cannot wait out) and are
retried with backoff while the lock is busy, up to a deadline, so "database is locked" never reaches
the caller; past the deadline a :class:`StoreBusyError` says how long it waited.
"""

from __future__ import annotations

import random
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

FORMAT_VERSION = 1
DB_FILE = "collection.sqlite"
IN_CHUNK = 500  # values per SQL IN (...) list (SQLite allows 32,766 parameters)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state(one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL,
                                 prune_seq INTEGER NOT NULL);
INSERT OR IGNORE INTO state VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS docs(
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS docs_seq ON docs(seq);
-- Filters scan this covering index (metadata + rowid, ~50 rows a page) instead of the wide docs rows.
CREATE INDEX IF NOT EXISTS docs_meta ON docs(metadata);
CREATE TABLE IF NOT EXISTS deleted(rid INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deleted_seq ON deleted(seq);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, content='docs', content_rowid='rid',
                                                  tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS docs_ai AFTER INSERT ON docs BEGIN
    INSERT INTO fts(rowid, text) VALUES (new.rid, new.text);
END;
CREATE TRIGGER IF NOT EXISTS docs_ad AFTER DELETE ON docs BEGIN
    INSERT INTO fts(fts, rowid, text) VALUES ('delete', old.rid, old.text);
    INSERT INTO deleted(rid, seq) VALUES (old.rid, (SELECT seq FROM state));
END;
CREATE TRIGGER IF NOT EXISTS docs_au AFTER UPDATE OF text ON docs BEGIN
    INSERT INTO fts(fts, rowid, text) VALUES ('delete', old.rid, old.text);
    INSERT INTO fts(rowid, text) VALUES (new.rid, new.text);
END;
"""


class StoreBusyError(TimeoutError):
    """Another process held the collection's write lock for longer than the configured timeout."""


class StoreCorruptError(RuntimeError):
    """The collection's database file is damaged or not a memret collection; the message names the file."""


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def connect(path: Path, timeout: float, durability: str = "full") -> sqlite3.Connection:
    """Open one connection to the database at ``path`` (WAL, busy timeout, foreign-key-free, autocommit).

    Raises:
        StoreCorruptError: the file is not a SQLite database or is damaged.
    """
    try:
        con = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
        # journal_mode=WAL is persistent in the file; setting it again is a cheap no-op but itself
        # needs the lock briefly, so retry it like any write.
        _retry(lambda: con.execute("PRAGMA journal_mode=WAL").fetchone(), timeout)
        con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        # FULL: a committed transaction survives power loss too (NORMAL would survive a killed process only).
        con.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
            raise
        raise StoreCorruptError(f"{path}: cannot open the collection database ({e}); the file is damaged or "
                                "not a memret collection. Restore it from a backup.") from e
    return con


def _retry(fn, timeout: float):
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise
            if time.monotonic() > deadline:
                raise StoreBusyError(f"the collection stayed locked by another writer for {timeout:.0f} s "
                                     "(raise timeout= in Collection.open)") from e
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)


@contextmanager
def write_txn(con: sqlite3.Connection, timeout: float) -> Iterator[int]:
    """A write transaction: ``BEGIN IMMEDIATE`` (retried while busy), bump ``seq``, yield it, commit.

    Any exception rolls the whole transaction back, so the database is left as it was.
    """
    _retry(lambda: con.execute("BEGIN IMMEDIATE"), timeout)
    try:
        con.execute("UPDATE state SET seq = seq + 1")
        seq = con.execute("SELECT seq FROM state").fetchone()[0]
        yield seq
        _retry(lambda: con.execute("COMMIT"), timeout)
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


@contextmanager
def read_txn(con: sqlite3.Connection, timeout: float) -> Iterator[None]:
    """A read transaction: every SELECT inside sees one snapshot of the database (WAL).

    Reentrant: inside a transaction already open on ``con`` it adds nothing.
    """
    if con.in_transaction:
        yield
        return
    _retry(lambda: con.execute("BEGIN"), timeout)
    try:
        yield
    finally:
        if con.in_transaction:
            con.execute("COMMIT")


def init_schema(con: sqlite3.Connection, timeout: float, meta: dict[str, str]) -> dict[str, str]:
    """Create the tables if needed and store ``meta`` for keys not yet set; return the stored meta.

    Raises:
        StoreCorruptError: the file is damaged or was written by a newer memret.
    """
    try:
        _retry(lambda: con.execute("BEGIN IMMEDIATE"), timeout)
        try:
            # executescript() would COMMIT first; run the statements one by one inside this transaction.
            for stmt in _statements(SCHEMA):
                con.execute(stmt)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            for key, value in meta.items():
                con.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        stored = dict(con.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
            raise
        raise StoreCorruptError(f"cannot read the collection database: {e}. Restore it from a backup.") from e
    if int(stored["format_version"]) > FORMAT_VERSION:
        raise StoreCorruptError(f"collection format {stored['format_version']} is newer than this memret "
                                f"reads ({FORMAT_VERSION}): upgrade memret")
    return stored


def _statements(script: str) -> list[str]:
    """Split SCHEMA into statements (triggers contain ';' inside BEGIN ... END)."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf)
        if sqlite3.complete_statement(text):
            out.append(text)
            buf = []
    return out


def set_meta(con: sqlite3.Connection, key: str, value: str) -> None:
    """Set one meta value (inside the caller's write transaction)."""
    con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value))


def execute_in(con: sqlite3.Connection, head: str, column: str, values: Sequence) -> list[tuple]:
    """The rows of ``{head} WHERE {column} IN (values)`` (a SELECT; a DELETE returns none), the values
    bound ``IN_CHUNK`` to a statement."""
    rows: list[tuple] = []
    for s in range(0, len(values), IN_CHUNK):
        part = list(values[s : s + IN_CHUNK])
        rows += con.execute(f"{head} WHERE {column} IN ({','.join('?' * len(part))})", part).fetchall()
    return rows
