"""Loading BEIR-format data sets: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
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


def _jsonl(path: Path, required: tuple[str, ...]):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            missing = [k for k in required if k not in obj]
            if not isinstance(obj, dict) or missing:
                raise ValueError(f"{path}:{n}: missing field(s) {missing}")
            yield obj


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[:2] == ["query-id", "corpus-id"]:
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}:{n}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                                 f"got {len(parts)}")
            try:
                score = int(float(parts[2]))
            except ValueError:
                raise ValueError(f"{path}:{n}: score {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def load_beir(folder: str | os.PathLike, split: str = "test") -> BeirData:
    """Load a BEIR folder.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message says how to get it).
        ValueError: a malformed line, with file and line number.
    """
    root = Path(folder)
    need = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"]
    missing = [str(p.relative_to(root)) for p in need if not p.is_file()]
    if not root.is_dir() or missing:
        have = sorted(p.name for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise FileNotFoundError(
            f"no BEIR data set at {root}: missing {missing or [str(root)]}"
            + (f" (qrels splits here: {have})" if have else "")
            + f". Get one with: python -c \"import memret.beir as b; b.download('{root.name}', '{root.parent}')\"")
    corpus = {str(d["_id"]): {"title": d.get("title") or "", "text": d.get("text") or ""}
              for d in _jsonl(need[0], ("_id",))}
    all_queries = {str(q["_id"]): q.get("text") or "" for q in _jsonl(need[1], ("_id", "text"))}
    qrels = load_qrels(need[2])
    unknown = [q for q in qrels if q not in all_queries]
    if unknown:
        raise ValueError(f"{need[2]}: {len(unknown)} query id(s) not in queries.jsonl, e.g. {unknown[:3]}")
    if not corpus:
        raise ValueError(f"{need[0]} holds no documents")
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
