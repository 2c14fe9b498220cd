"""Embedded BM25 over SQLite FTS5: no JVM, transactional with the documents.

The collection's ``fts`` table (Porter stemmer over Unicode word tokens, diacritics folded) is
kept in step with ``docs`` by triggers, so a document and its postings commit together. A query
becomes an OR of its quoted word tokens minus Lucene's English stop words (the analyser Pyserini's
BM25 uses drops them at index time; FTS5 keeps them, so dropping them from the query gives the same
matching). Ranking is FTS5's ``bm25()`` (k1 = 1.2, b = 0.75, fixed by SQLite); the scores returned
are its negation, so higher is better.
"""

from __future__ import annotations

import re
import sqlite3

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, as used by Anserini's default analyser.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split())
_WORD = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for free text: quoted tokens joined by OR; None if nothing is left."""
    terms = [t for t in _WORD.findall(text.lower()) if t not in STOP_WORDS]
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def search(con: sqlite3.Connection, text: str, k: int, where_sql: str = "1",
           where_params: list | None = None) -> list[tuple[int, float]]:
    """Top-k ``(rowid, score)`` by BM25 among documents matching the SQL condition ``where_sql``.

    The filter is applied inside the same query, before the LIMIT, so k rows come back whenever
    k documents match both the filter and at least one query term.
    """
    match = fts_query(text)
    if match is None:
        return []
    params: list = [match]
    sql = "SELECT rowid, bm25(fts) AS s FROM fts WHERE fts MATCH ?"
    if where_sql != "1":
        sql += f" AND rowid IN (SELECT rid FROM docs WHERE {where_sql})"
        params += list(where_params or [])
    sql += " ORDER BY s, rowid LIMIT ?"
    params.append(int(k))
    return [(rid, -score) for rid, score in con.execute(sql, params)]
