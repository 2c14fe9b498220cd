"""Integrity checks for a Collection: what is damaged, said plainly."""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from memret.collection import db
from memret.index import DenseIndex
from memret.persist import CorruptSnapshotError

if TYPE_CHECKING:
    from memret.collection.store import Collection


def check(col: "Collection") -> list[str]:
    """Run every check; return a list of problems, each naming the damaged part ([] = sound).

    - SQLite's own ``integrity_check`` over the database file;
    - the FTS5 index against the documents (``integrity-check`` with rank 1);
    - every stored vector has the collection's dimension;
    - the saved vector index (if any) loads with matching digests, and the live one holds every document.
    """
    problems: list[str] = []
    con = col._con()
    dbfile = col.path / db.DB_FILE
    try:
        rows = [r for (r,) in con.execute("PRAGMA integrity_check")]
        if rows != ["ok"]:
            problems.append(f"{dbfile}: SQLite integrity check failed: {'; '.join(rows[:5])}")
        with db.write_txn(con, col.timeout):
            con.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as e:
        problems.append(f"{dbfile}: {e}")
        return problems
    if col.dim is not None:
        bad = con.execute("SELECT count(*) FROM docs WHERE length(vector) != ?", (4 * col.dim,)).fetchone()[0]
        if bad:
            problems.append(f"{dbfile}: {bad} stored vector(s) do not have dimension {col.dim}")
        vectors = col._vectors_for(col.dim)
        index = vectors.sync(con)
        n = con.execute("SELECT count(*) FROM docs").fetchone()[0]
        if len(index) != n:
            problems.append(f"vector index holds {len(index)} vectors for {n} documents")
        if vectors.label.exists():
            try:
                json.loads(vectors.label.read_text())["seq"]
                DenseIndex.load(vectors.folder)
            except (CorruptSnapshotError, FileNotFoundError, ValueError, KeyError, OSError) as e:
                problems.append(f"saved vector index {vectors.folder}: {e} (derived data: the next open rebuilds it)")
    return problems
