"""The BEIR loader accepts what BEIR's own GenericDataLoader reads (plus a BOM and blank lines) and rejects
everything else with file:line."""

import json
from pathlib import Path

import pytest

from memret.beir import load_beir, load_qrels

CORPUS = [{"_id": "d1", "title": "Solar", "text": "Panels make power."},
          {"_id": "d2", "title": "Wind", "text": "Turbines make power."},
          {"_id": "d3", "title": "", "text": "Coffee has caffeine."}]
QUERIES = [{"_id": "q1", "text": "solar power"}, {"_id": "q2", "text": "caffeine"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\n"


def make(root: Path, corpus=None, queries=None, qrels: str = QRELS, raw_corpus: bytes | None = None,
         raw_queries: bytes | None = None, raw_qrels: bytes | None = None) -> Path:
    """A tiny BEIR folder; ``raw_*`` replace a file's bytes outright."""
    (root / "qrels").mkdir(parents=True)
    lines = lambda recs: "".join(json.dumps(r) + "\n" for r in recs).encode()  # noqa: E731
    (root / "corpus.jsonl").write_bytes(raw_corpus if raw_corpus is not None else lines(corpus or CORPUS))
    (root / "queries.jsonl").write_bytes(raw_queries if raw_queries is not None else lines(queries or QUERIES))
    (root / "qrels" / "test.tsv").write_bytes(raw_qrels if raw_qrels is not None else qrels.encode())
    return root


def test_reference_folder(tmp_path):
    d = load_beir(make(tmp_path / "ok"))
    assert list(d.corpus) == ["d1", "d2", "d3"] and d.corpus["d1"] == {"title": "Solar", "text": "Panels make power."}
    assert d.queries == {"q1": "solar power", "q2": "caffeine"}
    assert d.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}


# ------------------------------------------------------------------ accepted, read as BEIR reads them
def _loaded_and_reference(tmp_path, name, **files):
    """``(what the folder ``name`` written with ``files`` loads as, what the reference folder loads as)``."""
    ref = load_beir(make(tmp_path / "ref"))
    got = load_beir(make(tmp_path / name, **files))
    return (got.corpus, got.queries, got.qrels), (ref.corpus, ref.queries, ref.qrels)


def test_bom_in_every_file(tmp_path):
    bom = b"\xef\xbb\xbf"
    got, ref = _loaded_and_reference(
        tmp_path, "bom", raw_corpus=bom + "".join(json.dumps(r) + "\n" for r in CORPUS).encode(),
        raw_queries=bom + "".join(json.dumps(r) + "\n" for r in QUERIES).encode(), raw_qrels=bom + QRELS.encode())
    assert got == ref


def test_blank_lines_crlf_and_whole_decimal_grades(tmp_path):
    qrels = "query-id\tcorpus-id\tscore\r\n\r\nq1\td1\t1.0\r\n  \r\nq2\td3\t2\r\nq2\td3\t2\r\n\n\n"
    corpus = "\n".join(json.dumps(r) for r in CORPUS).replace("\n", "\n\n  \n").encode() + b"\n\n"
    got, ref = _loaded_and_reference(tmp_path, "blank", qrels=qrels, raw_corpus=corpus)
    assert got == ref


def test_integer_ids_and_null_fields(tmp_path):
    corpus = [{"_id": 7, "title": None, "text": "seven"}, {"_id": "d1", "text": "no title"}]
    d = load_beir(make(tmp_path / "ints", corpus=corpus, queries=[{"_id": 1, "text": "q"}],
                       qrels="1\t7\t1\n1\td1\t0\n"))
    assert d.corpus == {"7": {"title": "", "text": "seven"}, "d1": {"title": "", "text": "no title"}}
    assert d.queries == {"1": "q"}
    assert d.qrels == {"1": {"7": 1, "d1": 0}}  # no header: the first line is a judgement, kept


def test_csv_quoting_as_beir(tmp_path):
    d = load_beir(make(tmp_path / "quoted", qrels='query-id\tcorpus-id\tscore\n"q1"\t"d1"\t"1"\n'))
    assert d.qrels == {"q1": {"d1": 1}}


def test_unknown_documents_in_qrels(tmp_path):
    root = make(tmp_path / "stray", qrels=QRELS + "q1\td9\t1\n")
    with pytest.warns(UserWarning, match=r"test.tsv:4: 1 judgement\(s\) name documents not in corpus.jsonl"):
        d = load_beir(root)
    assert d.qrels["q1"] == {"d1": 1, "d9": 1}  # kept, as BEIR keeps them: they lower recall
    assert load_beir(root, unknown_docs="drop").qrels["q1"] == {"d1": 1}
    with pytest.raises(ValueError, match=r"test.tsv:4: .*'d9'"):
        load_beir(root, unknown_docs="error")


# ------------------------------------------------------------------ rejected with file:line
CORPUS_LINES = "".join(json.dumps(r) + "\n" for r in CORPUS)
QUERY_LINES = "".join(json.dumps(r) + "\n" for r in QUERIES)

BAD = {
    "corpus number": (dict(raw_corpus=(CORPUS_LINES + "5\n").encode()),
                      r"corpus.jsonl:4: expected a JSON object, got a number"),
    "corpus null": (dict(raw_corpus=("null\n" + CORPUS_LINES).encode()), r"corpus.jsonl:1: .*got null"),
    "corpus list": (dict(raw_corpus=(CORPUS_LINES + "[1]\n").encode()), r"corpus.jsonl:4: .*got a list"),
    "latin-1 corpus": (dict(raw_corpus=CORPUS_LINES.encode() + b'{"_id": "d4", "text": "caf\xe9"}\n'),
                       r"corpus.jsonl:4: not UTF-8 \(byte 0xe9"),
    "latin-1 qrels": (dict(raw_qrels=QRELS.encode() + b"q1\td\xe9\t1\n"), r"test.tsv:4: not UTF-8"),
    "duplicate doc": (dict(raw_corpus=(CORPUS_LINES + json.dumps({"_id": "d2", "text": "x"}) + "\n").encode()),
                      r"corpus.jsonl:4: duplicate _id 'd2' \(first on line 2\)"),
    "duplicate query": (dict(raw_queries=(QUERY_LINES + json.dumps({"_id": "q1", "text": "x"}) + "\n").encode()),
                        r"queries.jsonl:3: duplicate _id 'q1' \(first on line 1\)"),
    "null id": (dict(corpus=CORPUS + [{"_id": None, "text": "x"}]), r"corpus.jsonl:4: _id must be .*got null"),
    "empty id": (dict(corpus=CORPUS + [{"_id": "", "text": "x"}]), r"corpus.jsonl:4: _id .*empty string"),
    "boolean id": (dict(corpus=CORPUS + [{"_id": True, "text": "x"}]), r"corpus.jsonl:4: _id .*boolean"),
    "missing id": (dict(corpus=CORPUS + [{"text": "x"}]), r"corpus.jsonl:4: missing field\(s\) \['_id'\]"),
    "list text": (dict(corpus=CORPUS + [{"_id": "d4", "text": ["a", "b"]}]),
                  r"corpus.jsonl:4: field 'text' must be a string or null, got a list"),
    "number title": (dict(corpus=CORPUS + [{"_id": "d4", "title": 3, "text": "x"}]),
                     r"corpus.jsonl:4: field 'title' .*got a number"),
    "null query text": (dict(queries=QUERIES + [{"_id": "q3", "text": None}]),
                        r"queries.jsonl:3: field 'text' must be a string, got null"),
    "fractional grade": (dict(qrels=QRELS + "q1\td2\t0.5\n"), r"test.tsv:4: score '0.5' is not an integer"),
    "word grade": (dict(qrels=QRELS + "q1\td2\thigh\n"), r"test.tsv:4: score 'high'"),
    "conflicting grades": (dict(qrels=QRELS + "\nq2\td3\t1\n"),
                           r"test.tsv:5: \('q2', 'd3'\) judged 1 here but 2 on line 3"),
    "two columns": (dict(qrels=QRELS + "q1 d2\t1\n"), r"test.tsv:4: expected 3 tab-separated columns"),
    "unknown query": (dict(qrels=QRELS + "q9\td2\t1\n"), r"test.tsv:4: query id 'q9' is not in queries.jsonl"),
    "empty doc id": (dict(qrels=QRELS + "q1\t\t1\n"), r"test.tsv:4: empty corpus-id"),
    "no judgements": (dict(qrels="query-id\tcorpus-id\tscore\n\n"), r"test.tsv holds no judgements"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_rejected_with_file_and_line(tmp_path, case):
    files, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        load_beir(make(tmp_path / "bad", **files))


def test_load_qrels_alone(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq\td\t1\n\n")
    assert load_qrels(path) == {"q": {"d": 1}}
    with pytest.raises(ValueError, match="unknown_docs"):
        load_beir(make(tmp_path / "x"), unknown_docs="ignore")
