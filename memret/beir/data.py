"""Loading BEIR-format data sets: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from memret.jsonl import iter_json_objects, iter_lines, kind

log = logging.getLogger(__name__)
_INT = re.compile(r"[+-]?[0-9]+")
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


@dataclass
class BeirData:
    """One BEIR data set split: ``corpus[docid] = {"title", "text"}``, ``queries[qid] = text``,
    ``qrels[qid][docid] = relevance`` (only queries with judgements are kept, as BEIR does)."""

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(repr=False)

    def __repr__(self) -> str:
        return f"BeirData({self.name!r}, docs={len(self.corpus)}, queries={len(self.queries)})"


def _jsonl(path: Path, text_fields: tuple[str, ...], need_text: bool):
    """``(line number, id, {field: str})`` for each record of a BEIR ``.jsonl`` file, checked.

    ``_id`` must be a non-empty string or an integer (kept as its decimal string); each of ``text_fields`` must be
    a string or null/absent (read as ""), except ``text`` when ``need_text``, which must be a string.
    """
    for n, obj in iter_json_objects(path):
        missing = [k for k in ("_id",) + (("text",) if need_text else ()) if k not in obj]
        if missing:
            raise ValueError(f"{path}:{n}: missing field(s) {missing}")
        did = obj["_id"]
        if isinstance(did, int) and not isinstance(did, bool):
            did = str(did)
        if not isinstance(did, str) or not did:
            got = "an empty string" if did == "" else kind(did)
            raise ValueError(f"{path}:{n}: _id must be a non-empty string, got {got}")
        fields = {}
        for k in text_fields:
            v = obj.get(k)
            if v is None and not (need_text and k == "text"):
                v = ""
            if not isinstance(v, str):
                allowed = "a string" if need_text and k == "text" else "a string or null"
                raise ValueError(f"{path}:{n}: field {k!r} must be {allowed}, got {kind(v)}")
            fields[k] = v
        yield n, did, fields


def _unique(path: Path, records):
    """``{id: fields}`` from ``_jsonl`` records; a repeated id is an error naming both lines."""
    out: dict = {}
    for n, did, fields in records:
        if did in out:
            first = next(m for m, d, _ in _jsonl(path, (), False) if d == did)
            raise ValueError(f"{path}:{n}: duplicate _id {did!r} (first on line {first})")
        out[did] = fields
    return out


def _score(s: str) -> int | None:
    """A relevance grade: an integer, or a decimal with a whole value ("2.0"); None otherwise."""
    s = s.strip()
    if _INT.fullmatch(s):
        return int(s)
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


def _read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], int]]:
    """Qrels and the line each judgement was read from."""
    qrels: dict[str, dict[str, int]] = {}
    where: dict[tuple[str, str], int] = {}
    numbered = iter_lines(path)
    line_no = [0]

    def texts():
        for n, text in numbered:
            line_no[0] = n
            yield text

    # csv with BEIR's own dialect, so quoted fields read as BEIR reads them
    for row in csv.reader(texts(), delimiter="\t", quoting=csv.QUOTE_MINIMAL):
        n = line_no[0]
        if not row or not "".join(row).strip():
            continue  # blank line
        if len(row) != 3:
            raise ValueError(f"{path}:{n}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                             f"got {len(row)}")
        qid, did, raw = row
        score = _score(raw)
        if score is None:
            if not where and not qrels:
                continue  # the header (BEIR skips the first line unconditionally; a judgement there is kept)
            raise ValueError(f"{path}:{n}: score {raw!r} is not an integer relevance grade")
        if not qid or not did:
            raise ValueError(f"{path}:{n}: empty {'query-id' if not qid else 'corpus-id'}")
        old = qrels.setdefault(qid, {}).get(did)
        if old is not None and old != score:
            raise ValueError(f"{path}:{n}: ({qid!r}, {did!r}) judged {score} here but {old} on line "
                             f"{where[qid, did]}")
        qrels[qid][did] = score
        where.setdefault((qid, did), n)
    return qrels, where


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read a BEIR ``qrels/<split>.tsv``: ``{query-id: {corpus-id: grade}}``.

    Accepts what BEIR's ``GenericDataLoader`` accepts (an optional header line, CRLF line ends, csv quoting) and
    also a UTF-8 BOM and blank lines. Raises ``ValueError`` with file:line for anything else: a line without
    exactly 3 tab-separated columns, a grade that is not a whole number, an empty id, not-UTF-8 bytes, and
    one (query, document) pair judged twice with different grades.
    """
    return _read_qrels(Path(path))[0]


def load_beir(folder: str | os.PathLike, split: str = "test",
              unknown_docs: Literal["warn", "error", "drop"] = "warn") -> BeirData:
    """Load a BEIR folder.

    Args:
        folder: holds ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: the qrels file to read.
        unknown_docs: what to do with judgements naming a document that is not in the corpus (BEIR's own
            ArguAna has 5): ``"warn"`` keeps them, as BEIR does (they count as relevant documents no
            retriever can return), and warns; ``"error"`` raises; ``"drop"`` removes them.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message says how to get it).
        ValueError: a malformed line, a duplicate id, a judged query missing from ``queries.jsonl``
            (with file and line number).
    """
    if unknown_docs not in ("warn", "error", "drop"):
        raise ValueError(f"unknown_docs must be 'warn', 'error' or 'drop', got {unknown_docs!r}")
    root = Path(folder)
    need = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"]
    missing = [str(p.relative_to(root)) for p in need if not p.is_file()]
    if not root.is_dir() or missing:
        have = sorted(p.name for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise FileNotFoundError(
            f"no BEIR data set at {root}: missing {missing or [str(root)]}"
            + (f" (qrels splits here: {have})" if have else "")
            + f". Get one with: python -c \"import memret.beir as b; b.download('{root.name}', '{root.parent}')\"")
    corpus = _unique(need[0], _jsonl(need[0], ("title", "text"), need_text=False))
    if not corpus:
        raise ValueError(f"{need[0]} holds no documents")
    all_queries = {q: f["text"] for q, f in _unique(need[1], _jsonl(need[1], ("text",), need_text=True)).items()}
    qrels, where = _read_qrels(need[2])
    if not qrels:
        raise ValueError(f"{need[2]} holds no judgements")
    unknown = [(q, d) for q, docs in qrels.items() for d in docs if q not in all_queries]
    if unknown:
        q, d = unknown[0]
        raise ValueError(f"{need[2]}:{where[q, d]}: query id {q!r} is not in queries.jsonl "
                         f"({len({q for q, _ in unknown})} such query id(s))")
    stray = [(q, d) for q, docs in qrels.items() for d in docs if d not in corpus]
    if stray:
        q, d = stray[0]
        msg = (f"{need[2]}:{where[q, d]}: {len(stray)} judgement(s) name documents not in corpus.jsonl, "
               f"e.g. {d!r} for query {q!r}")
        if unknown_docs == "error":
            raise ValueError(msg)
        if unknown_docs == "warn":
            warnings.warn(msg + " (kept, as BEIR keeps them; load_beir(..., unknown_docs='drop') removes them)",
                          stacklevel=2)
        else:
            for q, d in stray:
                del qrels[q][d]
            qrels = {q: docs for q, docs in qrels.items() if docs}
    queries = {q: all_queries[q] for q in qrels}
    return BeirData(root.name, corpus, queries, qrels)


def download(name: str, dest: str | os.PathLike = "data/beir", timeout: float = 30) -> Path:
    """Download and unzip BEIR's public ``<name>.zip`` into ``dest/<name>`` (atomically).

    Raises:
        ConnectionError: no network; the message says where to put the files by hand.
    """
    dest = Path(dest)
    target = dest / name
    if (target / "corpus.jsonl").is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url = BEIR_URL.format(name=name)
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{name}-") as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(zpath, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise ConnectionError(f"cannot download {url} ({e}). Without network, unzip BEIR's {name}.zip "
                                  f"so that {target}/corpus.jsonl exists, then pass --data {target}") from e
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        os.replace(Path(tmp) / name, target)
    return target
