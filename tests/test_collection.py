"""memret.collection.Collection: CRUD, filters vs a brute-force reference, persistence, damage, search modes."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memret.collection import Collection, FilterError, StoreCorruptError
from memret.collection import search as search_mod
from memret.collection.filters import compile_where, matches

DIM = 8


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def col(tmp_path):
    c = Collection.open(tmp_path / "c", encoder=False, dim=DIM)
    yield c
    c.close()


TEXTS = ["the cat sat on the mat", "dogs running in the park", "a cat and a dog play",
         "quantum physics of cold atoms", "cooking pasta with tomato sauce"]
METAS = [{"year": 2020, "lang": "en"}, {"year": 2018, "lang": "en"}, {"year": 2022, "lang": "fr"},
         {"year": 2021, "tags": {"primary": "sci"}}, {"year": 2019.5, "lang": "it", "ok": True}]


def filled(c: Collection) -> Collection:
    c.add([f"d{i}" for i in range(5)], TEXTS, METAS, vectors=vecs(5))
    return c


# ---------------------------------------------------------------------- CRUD
def test_add_get_upsert_delete(col):
    filled(col)
    assert len(col) == 5 and "d1" in col and "zz" not in col
    assert col.get(["d2", "nope"])[0].metadata == {"year": 2022, "lang": "fr"}
    assert col.get(["nope"]) == [None]
    with pytest.raises(KeyError, match="already stored"):
        col.add(["d9", "d0"], ["x", "y"], vectors=vecs(2, 1))
    assert len(col) == 5 and "d9" not in col  # the failed add changed nothing, not even d9
    col.upsert(["d0", "d9"], ["birds in trees", "new"], [{"year": 1}, None], vectors=vecs(2, 2))
    assert len(col) == 6 and col.get(["d0"])[0].text == "birds in trees"
    np.testing.assert_array_equal(col.get_vectors(["d0"]), vecs(2, 2)[:1])
    assert [h.id for h in col.search("birds", mode="bm25")] == ["d0"]
    assert col.search("cat sat mat", mode="bm25")[0].id != "d0"  # the old text left the BM25 index
    assert col.delete(["d0", "missing"]) == 1 and len(col) == 5
    with pytest.raises(KeyError, match="not stored"):
        col.delete(["d1", "missing"], missing="raise")
    assert "d1" in col
    assert col.search("birds", mode="bm25") == []
    q = col.get_vectors(["d9"])[0]
    assert col.search(q, k=1, mode="dense")[0].id == "d9"


@pytest.mark.parametrize("bad, err", [
    (dict(ids="abc"), TypeError), (dict(ids=["a", "a"]), ValueError), (dict(ids=[""]), TypeError),
    (dict(ids=[1]), TypeError), (dict(texts=[3]), TypeError), (dict(metadata=[{"x": float("nan")}]), ValueError),
    (dict(metadata=[{"x": object()}]), ValueError), (dict(metadata=["s"]), TypeError),
    (dict(vectors=np.full((1, DIM), np.nan)), ValueError), (dict(vectors=np.ones((1, 3))), ValueError),
    (dict(vectors=np.zeros((1, DIM))), ValueError), (dict(texts=["\ud800"]), ValueError),
])
def test_bad_input_raises_and_changes_nothing(col, bad, err):
    filled(col)
    args = dict(ids=["new"], texts=["t"], metadata=None, vectors=vecs(1, 9)) | bad
    with pytest.raises(err):
        col.add(**args)
    assert len(col) == 5 and "new" not in col


def test_search_modes_and_validation(col):
    filled(col)
    q = vecs(5)[3]
    assert col.search(q, k=1, mode="dense")[0].id == "d3"
    assert col.search("cat", k=5, mode="bm25")[0].id in ("d0", "d2")
    with pytest.raises(ValueError, match="no encoder"):
        col.search("cat", mode="hybrid")
    with pytest.raises(ValueError, match="text query"):
        col.search(q, mode="bm25")
    for bad in (dict(k=0), dict(k=True), dict(mode="nope")):
        with pytest.raises(ValueError):
            col.search(q, **({"mode": "dense"} | bad))
    with pytest.raises(ValueError, match="shape"):
        col.search(np.ones(3), mode="dense")
    assert col.search("the of and", mode="bm25") == []  # only stop words


def test_hybrid_is_rrf_of_dense_and_bm25(tmp_path):
    class Enc:  # a toy encoder: bag of two words
        identity, embed_dim = "toy-2", 2

        def encode_passages(self, texts):
            return np.array([[t.count("cat") + 0.1, t.count("dog") + 0.1] for t in texts], np.float32)

        encode_queries = encode_passages

    c = Collection.open(tmp_path / "h", encoder=Enc())
    c.add([f"d{i}" for i in range(5)], TEXTS, METAS)
    dense = [h.id for h in c.search("cat", k=5, mode="dense")]
    sparse = [h.id for h in c.search("cat", k=5, mode="bm25")]
    fused = {}
    for run in (dense, sparse):
        for r, d in enumerate(run, 1):
            fused[d] = fused.get(d, 0) + 1 / (60 + r)
    hyb = c.search("cat", k=5, mode="hybrid")
    assert [h.id for h in hyb] == sorted(fused, key=lambda d: (-fused[d], d))[:5]
    assert hyb[0].score == pytest.approx(max(fused.values()))
    c.close()
    with pytest.raises(ValueError, match="built with encoder 'toy-2'"):
        Collection.open(tmp_path / "h", encoder=type("E", (), {"identity": "other", "embed_dim": 2})())


# ---------------------------------------------------------------------- filters
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from([1.5, -0.5, 2.0]),
                    st.sampled_from(["en", "fr", "", "zz", "é"]))
FIELDS = st.sampled_from(["a", "b", "n.x"])
COND = st.one_of(
    SCALARS,
    st.dictionaries(st.sampled_from(["$eq", "$ne"]), SCALARS, min_size=1),
    st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
                    st.one_of(st.integers(-5, 5), st.sampled_from(["en", "fr", "m"])), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["$in", "$nin"]), st.lists(SCALARS, max_size=3), min_size=1),
    st.dictionaries(st.just("$exists"), st.booleans(), min_size=1),
)
LEAF = st.dictionaries(FIELDS, COND, min_size=1, max_size=2)
WHERE = st.recursive(LEAF, lambda sub: st.one_of(
    st.builds(lambda xs: {"$and": xs}, st.lists(sub, min_size=1, max_size=3)),
    st.builds(lambda xs: {"$or": xs}, st.lists(sub, min_size=1, max_size=3)),
    st.builds(lambda x: {"$not": x}, sub)), max_leaves=6)
@pytest.fixture(scope="module")
def filter_col(tmp_path_factory):
    g = np.random.default_rng(0)
    pool = [None, True, False, 0, 1, -3, 2, 1.5, -0.5, 2.0, "en", "fr", "", "zz", "é", "m"]
    metas = []
    for i in range(300):
        m = {}
        for f in ("a", "b"):
            if g.random() < 0.8:
                m[f] = pool[g.integers(len(pool))]
        if g.random() < 0.1:
            m["b"] = [1, 2]
        if g.random() < 0.7:
            m["n"] = {"x": pool[g.integers(len(pool))]} if g.random() < 0.7 else pool[g.integers(len(pool))]
        metas.append(m)
    c = Collection.open(tmp_path_factory.mktemp("f"), encoder=False)
    c.add([f"d{i}" for i in range(len(metas))], [f"word{i % 7} common" for i in range(len(metas))], metas,
          vectors=vecs(len(metas), 3))
    yield c, metas
    c.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=WHERE)
def test_filters_match_brute_force(filter_col, where):
    c, metas = filter_col
    expect = [f"d{i}" for i, m in enumerate(metas) if matches(where, m)]
    assert c.ids(where) == expect
    # Filters apply before ranking: k hits come back whenever k documents match.
    k = 7
    hits = c.search(vecs(1, 5)[0], k=k, where=where, mode="dense")
    assert len(hits) == min(k, len(expect)) and {h.id for h in hits} <= set(expect)
    assert len(c.search("common", k=k, where=where, mode="bm25")) == min(k, len(expect))


def test_filtered_dense_search_is_exact_on_both_paths(filter_col, monkeypatch):
    c, metas = filter_col
    where = {"a": {"$ne": None}}
    allowed = [i for i, m in enumerate(metas) if matches(where, m)]
    X = vecs(len(metas), 3)[allowed]
    q = vecs(1, 11)[0]
    sims = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    expect = [f"d{allowed[i]}" for i in np.argsort(-sims)[:10]]
    monkeypatch.setattr(search_mod, "EXACT_RATIO", 0)  # force the exact path (vectors read from SQLite)
    assert [h.id for h in c.search(q, k=10, where=where, mode="dense")] == expect
    monkeypatch.setattr(search_mod, "EXACT_MAX", 0)  # force the DenseIndex(allowed=...) path
    assert [h.id for h in c.search(q, k=10, where=where, mode="dense")] == expect


def test_cached_filter_results_follow_every_write(tmp_path):
    c = Collection.open(tmp_path / "c", encoder=False, dim=2)
    other = Collection.open(tmp_path / "c", encoder=False)  # a second handle, as another process would hold
    c.add(["a", "b"], ["x", "y"], [{"t": 1}, {"t": 2}], vectors=[[1, 0], [0, 1]])
    w = {"t": {"$gte": 2}}
    q = np.array([0.6, 0.8])
    assert [h.id for h in c.search(q, k=5, where=w, mode="dense")] == ["b"]
    assert [h.id for h in c.search(q, k=5, where=w, mode="dense")] == ["b"]  # served from the cache
    other.upsert(["a"], ["x"], [{"t": 3}], vectors=[[1, 0]])
    assert [h.id for h in c.search(q, k=5, where=w, mode="dense")] == ["b", "a"]
    c.delete(["b"])
    assert [h.id for h in c.search(q, k=5, where=w, mode="dense")] == ["a"]
    assert [h.id for h in other.search(q, k=5, where=w, mode="dense")] == ["a"]
    c.close()
    other.close()


def test_returned_rows_follow_every_write(tmp_path):
    c = Collection.open(tmp_path / "c", encoder=False, dim=2)
    other = Collection.open(tmp_path / "c", encoder=False)  # another process's handle
    c.add(["a", "b"], ["old text", "y"], [{"t": 1}, {"t": 2}], vectors=[[1, 0], [0, 1]])
    q = np.array([1.0, 0.1])
    for _ in range(2):  # the second search is served from the row cache
        assert [(h.id, h.text, h.metadata) for h in c.search(q, k=1, mode="dense")] == [("a", "old text", {"t": 1})]
    other.upsert(["a"], ["new text"], [{"t": 5}], vectors=[[1, 0]])  # same rowid, rewritten in place
    assert [(h.id, h.text, h.metadata) for h in c.search(q, k=1, mode="dense")] == [("a", "new text", {"t": 5})]
    assert [(h.id, h.text) for h in c.search("text", k=1, mode="bm25")] == [("a", "new text")]
    hit = c.search(q, k=1, mode="dense")[0]
    hit.metadata["t"] = 99  # a caller changing its hit changes nothing stored or cached
    assert c.search(q, k=1, mode="dense")[0].metadata == {"t": 5}
    c.close()
    other.close()


@pytest.mark.parametrize("bad", [{"$foo": 1}, {"a": {"$gt": None}}, {"a": {"$in": 3}}, {"$or": []},
                                 {'a"b': 1}, {"a": {"$eq": [1]}}, {"a": {"$gt": True}}, {"a": {"$exists": 1}},
                                 {"a": {"$eq": 1, "b": 2}}, [1], {"a": float("inf")}, {"$and": {"a": 1}}])
def test_bad_filters_raise(bad):
    with pytest.raises(FilterError):
        compile_where(bad)


def test_filter_sql_is_parameterised():
    sql, params = compile_where({"a'); DROP TABLE docs; --": "x' OR 1=1"})
    assert "DROP" not in sql and "1=1" not in sql and params[-1] == "x' OR 1=1"


def test_reader_snapshot_older_than_the_index_neither_reloads_nor_reports_damage(tmp_path):
    # A reader thread whose read snapshot began before another thread's write was applied to the shared
    # vector index used to roll the index back: a reload from disk or a rebuild from SQLite, reported as damage.
    from memret.collection import db

    c = filled(Collection.open(tmp_path / "c", encoder=False, dim=DIM))
    reader = db.connect(c.path / db.DB_FILE, 5.0)  # another thread's connection
    reader.execute("BEGIN")
    seq = reader.execute("SELECT seq FROM state").fetchone()[0]
    c.add(["new"], ["fresh text"], vectors=vecs(1, 9))  # committed and applied: the index is at seq + 1
    c.checkpoint()  # the saved label too
    vc = c._vectors
    index = vc.index
    assert vc.sync(reader, seq) is None  # "take a newer snapshot"
    assert vc.index is index and vc.seq == seq + 1 and c.damage == []
    reader.execute("COMMIT")
    assert vc.sync(reader, seq + 1) is index
    reader.close()
    c.close()


@pytest.mark.parametrize("ahead", [1, 99])
def test_search_retries_or_falls_back_when_the_index_is_past_its_snapshot(col, monkeypatch, ahead):
    filled(col)
    q = vecs(5)[3]
    want = [h.id for h in col.search(q, k=3, mode="dense")]
    want_f = [h.id for h in col.search(q, k=3, mode="dense", where={"year": {"$gte": 2020}})]
    real, calls = type(col._vectors).sync, []

    def sync(self, con, seq=None):  # the first `ahead` calls find the index past the snapshot
        calls.append(seq)
        return None if len(calls) <= ahead else real(self, con, seq)

    monkeypatch.setattr(type(col._vectors), "sync", sync)
    assert [h.id for h in col.search(q, k=3, mode="dense")] == want
    assert len(calls) == min(ahead + 1, search_mod.SNAPSHOT_TRIES)  # retried, else exact search from SQLite
    assert [h.id for h in col.search(q, k=3, mode="dense", where={"year": {"$gte": 2020}})] == want_f


# ---------------------------------------------------------------------- persistence and damage
def test_reopen_keeps_everything_and_catches_up(tmp_path):
    path = tmp_path / "p"
    c = filled(Collection.open(path, encoder=False))
    c.close()
    c = Collection.open(path)
    assert len(c) == 5 and c.dim == DIM
    writer = Collection.open(path)  # a second handle (same or other process) writes; the first sees it
    writer.add(["x"], ["extra words"], vectors=vecs(1, 7))
    writer.delete(["d1"])
    assert c.search(vecs(1, 7)[0], k=1, mode="dense")[0].id == "x"
    assert "d1" not in {h.id for h in c.search(vecs(5)[1], k=10, mode="dense")}
    writer.close()  # no close of `c`: the next open must still see everything
    c2 = Collection.open(path)
    assert sorted(c2.ids()) == sorted(["d0", "d2", "d3", "d4", "x"]) and c2.check() == []
    c2.close()


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage_label"])
def test_damaged_vector_index_is_rebuilt_and_reported(tmp_path, damage):
    path = tmp_path / "d"
    c = filled(Collection.open(path, encoder=False))
    c.close()
    faiss_file = next((path / "vectors").glob("index-*.faiss"))
    if damage == "truncate":
        faiss_file.write_bytes(faiss_file.read_bytes()[:50])
    elif damage == "delete":
        faiss_file.unlink()
    else:
        (path / "vectors.json").write_text("{not json")
    c = Collection.open(path)
    assert c.damage and "rebuilt from the documents" in c.damage[0]
    assert c.search(vecs(5)[2], k=1, mode="dense")[0].id == "d2" and len(c) == 5
    c.close()


def test_damaged_database_says_so(tmp_path):
    path = tmp_path / "bad"
    filled(Collection.open(path, encoder=False)).close()
    db = path / "collection.sqlite"
    db.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreCorruptError, match="collection.sqlite"):
        Collection.open(path)


def test_full_disk_rolls_back_and_keeps_committed(tmp_path):
    path = tmp_path / "full"
    c = filled(Collection.open(path, encoder=False))
    pages = c._con().execute("PRAGMA page_count").fetchone()[0]
    c._con().execute(f"PRAGMA max_page_count={pages + 2}")  # SQLite's own 'disk full' (SQLITE_FULL)
    big = ["x" * 20000] * 20
    with pytest.raises(sqlite3.OperationalError, match="full"):
        c.add([f"big{i}" for i in range(20)], big, vectors=vecs(20, 4))
    assert len(c) == 5 and c.ids() == [f"d{i}" for i in range(5)]
    assert len(c.search(vecs(1)[0], k=10, mode="dense")) == 5  # the vector index did not take the rows
    c.close()
    c = Collection.open(path)
    assert len(c) == 5 and c.check() == []
    c.close()


def test_stats_and_json_metadata_roundtrip(col):
    meta = {"nested": {"list": [1, "two", None], "unicode": "日本"}, "big": 2**62}
    col.add(["m"], ["t"], [meta], vectors=vecs(1))
    assert col.get(["m"])[0].metadata == meta
    s = col.stats()
    assert s["documents"] == 1 and s["dim"] == DIM and json.dumps(s)
    assert col.count({"nested.unicode": "日本"}) == 1 and col.count({"big": 2**62}) == 1
