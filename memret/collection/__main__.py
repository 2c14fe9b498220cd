"""Command line for collections.

    python -m memret.collection create PATH [--factory Flat] [--metric cosine] [--no-encoder --dim D]
    python -m memret.collection add PATH FILE.jsonl|FILE.csv|- [--upsert] [--id-field id] [--text-field text]
                                    [--title-field title] [--batch-size 256]
    python -m memret.collection search PATH "query" [-k 10] [--mode hybrid] [--where '{"year": {"$gte": 2020}}']
    python -m memret.collection delete PATH ID [ID ...]
    python -m memret.collection stats PATH [--check]
    python -m memret.collection serve PATH [--host 127.0.0.1] [--port 8000] [--api-key KEY | $MEMRET_API_KEY]

JSONL rows are objects with the id and text fields; every other field becomes metadata (a
``metadata`` object is merged in; a ``vector`` list is used instead of encoding). CSV rows likewise,
all values as strings. Output is JSON on stdout; errors go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Iterator

from memret.collection.store import Collection
from memret.jsonl import iter_json_objects


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL or CSV file (``-`` = JSONL on stdin), with their line numbers in errors."""
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)
        return
    for _, row in iter_json_objects("<stdin>" if path == "-" else path, sys.stdin.buffer if path == "-" else None):
        yield row


def to_doc(row: dict[str, Any], id_field: str, text_field: str, title_field: str | None) -> tuple:
    if id_field not in row or text_field not in row:
        raise ValueError(f"row {str(row)[:80]} lacks the {id_field!r} or {text_field!r} field")
    row = dict(row)
    doc_id, text = str(row.pop(id_field)), row.pop(text_field)
    if title_field and row.get(title_field):
        text = f"{row[title_field]} {text}"
    meta = row.pop("metadata", None) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"document {doc_id!r}: metadata must be an object")
    vector = row.pop("vector", None)
    return doc_id, str(text), {**row, **meta}, vector


def ingest(col: Collection, rows: Iterator[dict], batch_size: int, upsert: bool, id_field: str, text_field: str,
           title_field: str | None, progress: bool = True) -> int:
    """Add rows in batches of ``batch_size`` (one atomic transaction each), with a progress bar."""
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(unit="doc", desc="ingest", file=sys.stderr)
        except ImportError:
            pass
    done, batch = 0, []

    def flush() -> None:
        nonlocal done, batch
        if not batch:
            return
        ids, texts, metas, vecs = zip(*batch)
        vectors = None if any(v is None for v in vecs) else list(vecs)
        (col.upsert if upsert else col.add)(list(ids), list(texts), list(metas), vectors=vectors)
        done += len(batch)
        if bar is not None:
            bar.update(len(batch))
        batch = []

    for row in rows:
        batch.append(to_doc(row, id_field, text_field, title_field))
        if len(batch) >= batch_size:
            flush()
    flush()
    if bar is not None:
        bar.close()
    return done


def _open(args: argparse.Namespace) -> Collection:
    if args.cmd != "create" and not os.path.exists(os.path.join(args.path, "collection.sqlite")):
        raise FileNotFoundError(f"no collection at {args.path} (create it with: python -m memret.collection "
                                f"create {args.path})")
    encoder: Any = None
    if getattr(args, "model", None):
        from memret.collection.embed import OnnxEncoder

        encoder = OnnxEncoder(args.model)
    elif getattr(args, "no_encoder", False):
        encoder = False
    kw = {}
    if args.cmd == "create":
        kw = dict(factory=args.factory, metric=args.metric, dim=args.dim)
    return Collection.open(args.path, encoder=encoder, **kw)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m memret.collection", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help)
        q.add_argument("path", help="the collection folder")
        q.add_argument("--model", help="a sentence-transformers folder to encode with (default: the packaged "
                                       "all-MiniLM-L6-v2, or the collection's own)")
        return q

    c = command("create", "create a collection")
    c.add_argument("--factory", default="Flat", help="FAISS factory string (default Flat)")
    c.add_argument("--metric", default="cosine", choices=["cosine", "ip", "l2"])
    c.add_argument("--dim", type=int, help="vector dimension (with --no-encoder)")
    c.add_argument("--no-encoder", action="store_true", help="vectors only: documents bring their own vectors")
    a = command("add", "add documents from JSONL or CSV")
    a.add_argument("file", help="a .jsonl or .csv file, or - for JSONL on stdin")
    a.add_argument("--upsert", action="store_true", help="replace documents whose id exists")
    a.add_argument("--id-field", default="id")
    a.add_argument("--text-field", default="text")
    a.add_argument("--title-field", help="a field prepended to the text (e.g. BEIR's title)")
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    s = command("search", "search")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--mode", default="hybrid", choices=["dense", "bm25", "hybrid"])
    s.add_argument("--where", type=json.loads, help="a JSON filter")
    d = command("delete", "delete documents by id")
    d.add_argument("ids", nargs="+")
    st = command("stats", "counts and settings")
    st.add_argument("--check", action="store_true", help="run the full integrity check")
    v = command("serve", "serve the HTTP API and search page")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key", default=os.environ.get("MEMRET_API_KEY"), help="default: $MEMRET_API_KEY")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        col = _open(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out: Any
    try:
        if args.cmd == "create":
            out = col.stats()
        elif args.cmd == "add":
            n = ingest(col, read_rows(args.file), args.batch_size, args.upsert, args.id_field, args.text_field,
                       args.title_field, progress=not args.quiet)
            out = {"written": n, "documents": len(col)}
        elif args.cmd == "search":
            hits = col.search(args.query, k=args.k, where=args.where, mode=args.mode)
            out = [{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in hits]
        elif args.cmd == "delete":
            out = {"deleted": col.delete(args.ids), "documents": len(col)}
        elif args.cmd == "stats":
            out = col.stats()
            if args.check:
                out["problems"] = col.check()
        else:
            return serve(col, args)
    except (ValueError, KeyError, TypeError, OSError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    finally:
        col.close()
    print(json.dumps(out, indent=1))
    return 0 if not (args.cmd == "stats" and out.get("problems")) else 1


def serve(col: Collection, args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("error: uvicorn is needed to serve: pip install 'memret[app]'", file=sys.stderr)
        return 2
    from memret.collection.http import create_app

    auth = "API key required" if args.api_key else "no API key (open to anyone who can reach it)"
    print(f"serving {col.path} on http://{args.host}:{args.port}/ ({auth})", file=sys.stderr)
    uvicorn.run(create_app(col, api_key=args.api_key), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
