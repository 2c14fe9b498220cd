import threading

import numpy as np
import pytest

import memret
from memret import DenseIndex, exact_search
from conftest import synthetic

METRICS = ["ip", "l2", "cosine"]
SEARCH_PARAMS = {"HNSW32": {"efSearch": 64}, "IVF16,Flat": {"nprobe": 16}}


def build(factory, metric, xb, ids=None, **kw):
    idx = DenseIndex(xb.shape[1], factory, metric, **kw)
    idx.train(xb)
    idx.add(np.arange(len(xb)) if ids is None else ids, xb)
    return idx


@pytest.mark.parametrize("metric", METRICS)
def test_flat_matches_exact_oracle(data, metric):
    xb, xq = data
    idx = build("Flat", metric, xb)
    D, I = idx.search(xq, 10)
    De, Ie = exact_search(xb, xq, 10, metric)
    np.testing.assert_allclose(D, De, rtol=1e-4, atol=1e-3)
    # ids may differ only where scores tie
    assert (I == Ie).mean() > 0.99


@pytest.mark.parametrize("factory,params,min_recall", [
    ("HNSW32", {"efSearch": 64}, 0.95), ("IVF16,Flat", {"nprobe": 8}, 0.9),
    ("IVF16,PQ16x4", {"nprobe": 8}, 0.5), ("SQ8", None, 0.95)])
@pytest.mark.parametrize("metric", METRICS)
def test_approximate_recall_against_oracle(data, factory, params, min_recall, metric):
    xb, xq = data
    idx = build(factory, metric, xb, search_params=params)
    _, I = idx.search(xq, 10)
    _, Ie = exact_search(xb, xq, 10, metric)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ie)])
    assert recall >= min_recall, recall


def test_string_ids_and_padding(data):
    xb, xq = data
    ids = [f"doc-{i}" for i in range(5)]
    idx = build("Flat", "ip", xb[:5], ids)
    D, I = idx.search(xq[:2], 8)
    assert I.dtype == object and I.shape == (2, 8)
    assert set(I[0, :5]) == set(ids) and list(I[0, 5:]) == [None] * 3
    assert np.isneginf(D[:, 5:]).all()
    idx_int = build("Flat", "l2", xb[:3])
    D, I = idx_int.search(xq[:1], 5)
    assert list(I[0, 3:]) == [-1, -1] and np.isposinf(D[0, 3:]).all()


def test_duplicate_unknown_and_upsert(data):
    xb, _ = data
    idx = build("Flat", "ip", xb[:10])
    with pytest.raises(KeyError, match="already in the index"):
        idx.add([3], xb[:1])
    with pytest.raises(KeyError, match="repeat"):
        idx.add([100, 100], xb[:2])
    with pytest.raises(KeyError, match="unknown"):
        idx.remove([999])
    assert len(idx) == 10  # failed calls changed nothing
    idx.upsert([3, 50], xb[20:22])
    assert len(idx) == 11
    _, I = idx.search(xb[20:21], 1)
    assert I[0, 0] == 3
    np.testing.assert_allclose(idx.get_vectors([3]), xb[20:21], rtol=1e-6)


def test_type_and_shape_errors(data):
    xb, _ = data
    idx = DenseIndex(32)
    with pytest.raises(ValueError, match="dimension 16"):
        idx.add([0], np.zeros((1, 16)))
    with pytest.raises(ValueError, match="2-D"):
        idx.add([0], np.zeros(32))
    with pytest.raises(TypeError, match="real numeric"):
        idx.add([0], np.array([["a"] * 32]))
    bad = xb[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 row"):
        idx.add([0, 1, 2], bad)
    with pytest.raises(ValueError, match="3 ids for 2"):
        idx.add([0, 1, 2], xb[:2])
    idx.add([0, 1], xb[:2])
    with pytest.raises(TypeError, match="int ids"):
        idx.add(["x"], xb[:1])
    with pytest.raises(TypeError, match="all ints or all strings"):
        DenseIndex(32).add([1, "a"], xb[:2])
    with pytest.raises(ValueError, match="metric"):
        DenseIndex(32, metric="dot")
    with pytest.raises(ValueError, match="factory"):
        DenseIndex(32, factory="NotAnIndex99")
    with pytest.raises(ValueError, match="k must be"):
        idx.search(xb[:1], 0)


def test_untrained_index_refuses_add(data):
    xb, _ = data
    idx = DenseIndex(32, "IVF16,Flat")
    with pytest.raises(RuntimeError, match="not trained"):
        idx.add(np.arange(10), xb[:10])
    assert len(idx) == 0


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_remove_and_compact(data, factory):
    xb, xq = data
    idx = build(factory, "l2", xb, search_params=SEARCH_PARAMS.get(factory))
    gone = list(range(0, 800, 2))
    assert idx.remove(gone) == 400
    assert len(idx) == 400
    assert idx.supports_remove == (factory != "HNSW32")
    _, I = idx.search(xq, 20)
    assert not set(I.ravel().tolist()) & set(gone)
    _, Ie = exact_search(xb[1::2], xq, 5, "l2")
    _, I5 = idx.search(xq, 5)
    recall = np.mean([len(set(a) & set((2 * b + 1).tolist())) / 5 for a, b in zip(I5, Ie)])
    assert recall > 0.9
    if factory == "HNSW32":
        assert idx.n_tombstones == 400
        assert idx.compact() == 400 and idx.n_tombstones == 0
        _, I2 = idx.search(xq, 20)
        assert not set(I2.ravel().tolist()) & set(gone)
    assert idx.remove([0, 1], missing="skip") == 1


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_filtered_search(data, factory):
    xb, xq = data
    idx = build(factory, "ip", xb, search_params=SEARCH_PARAMS.get(factory))
    allowed = list(range(100, 200))
    D, I = idx.search(xq, 5, allowed=allowed)
    assert set(I.ravel().tolist()) <= set(allowed)
    De, Ie = exact_search(xb[100:200], xq, 5, "ip")
    assert np.mean(I == Ie + 100) > 0.9
    idx.remove([Ie[0, 0] + 100])
    _, I = idx.search(xq[:1], 5, allowed=allowed)
    assert Ie[0, 0] + 100 not in I[0]


def test_filter_on_explicit_int_ids_follows_adds_removes_and_upserts():
    """Out-of-order int ids (the explicit map): a filter's allowed ids are translated in one vectorised
    lookup whose sorted keys must follow every add, remove and upsert; brute force is the reference."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(10**6)[:300]           # scattered, out of order: not the identity fast path
    vecs = {int(i): v for i, v in zip(ids, rng.standard_normal((300, 16)).astype(np.float32))}
    idx = DenseIndex(16, metric="ip")
    idx.add(ids, np.stack(list(vecs.values())))
    xq = rng.standard_normal((4, 16)).astype(np.float32)

    def check(allowed):
        _, got = idx.search(xq, 5, allowed=allowed)
        keys = [k for k in vecs if k in set(int(a) for a in allowed)]
        ref = np.asarray(keys)[np.argsort(-(xq @ np.stack([vecs[k] for k in keys]).T), axis=1)[:, :5]]
        np.testing.assert_array_equal(got, ref)

    allowed = np.concatenate([ids[:200], [-5, 10**6 + 7]])   # unknown ids are ignored
    check(allowed)
    idx.remove(ids[:50].tolist())                              # removed after the first filtered search
    for i in ids[:50].tolist():
        del vecs[i]
    check(allowed)
    with pytest.raises(KeyError, match="unknown"):            # removed ids are unknown to every lookup
        idx.remove(ids[:50].tolist())
    new = np.asarray([10**6 + 7, 10**6 + 9])                    # added ids, one of them already allowed
    for i, v in zip(new.tolist(), rng.standard_normal((2, 16)).astype(np.float32)):
        vecs[i] = v * 10                                       # large norms: they must win when allowed
    idx.add(new, np.stack([vecs[i] for i in new.tolist()]))
    check(allowed)
    vecs[int(ids[60])] = -vecs[int(ids[60])]                   # an upsert moves a key to a new internal id
    idx.upsert([int(ids[60])], vecs[int(ids[60])][None])
    check(allowed)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,PQ16x4"])
def test_save_load_round_trip(tmp_path, data, factory):
    xb, xq = data
    ids = [f"d{i}" for i in range(len(xb))]
    idx = build(factory, "cosine", xb, ids)
    idx.remove(["d1", "d2"])
    idx.save(tmp_path / "ix")
    back = DenseIndex.load(tmp_path / "ix")
    assert len(back) == len(idx) and back.factory == factory and back.metric == "cosine"
    D1, I1 = idx.search(xq, 7)
    D2, I2 = back.search(xq, 7)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2)
    back.add(["new"], xb[:1])  # ids keep working after load
    assert "new" in back and "d1" not in back


def test_corrupt_and_truncated_files_raise(tmp_path, data):
    xb, _ = data
    idx = build("Flat", "ip", xb)
    idx.save(tmp_path / "ix")
    faiss_file = next((tmp_path / "ix").glob("index-*.faiss"))
    raw = faiss_file.read_bytes()
    faiss_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(memret.CorruptSnapshotError, match="truncated"):
        DenseIndex.load(tmp_path / "ix")
    faiss_file.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])
    with pytest.raises(memret.CorruptSnapshotError, match="SHA-256"):
        DenseIndex.load(tmp_path / "ix")
    (tmp_path / "ix" / "meta.json").write_text('{"kind": "memret.DenseIndex", "fil')
    with pytest.raises(memret.CorruptSnapshotError, match="not valid JSON"):
        DenseIndex.load(tmp_path / "ix")
    with pytest.raises(FileNotFoundError, match="no memret snapshot"):
        DenseIndex.load(tmp_path / "nothing")


def test_interrupted_save_keeps_previous(tmp_path, data, monkeypatch):
    xb, xq = data
    idx = build("Flat", "ip", xb[:100])
    idx.save(tmp_path / "ix")
    expected = idx.search(xq, 3)
    idx.add(np.arange(100, 200), xb[100:200])

    import faiss

    def crash(index, target):  # die as a full disk would (the data file is already open)
        raise OSError(28, "No space left on device")

    before = sorted(p.name for p in (tmp_path / "ix").iterdir())
    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="No space.*previous save there is intact"):
        idx.save(tmp_path / "ix")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == before  # the half-written files are gone
    back = DenseIndex.load(tmp_path / "ix")
    assert len(back) == 100
    np.testing.assert_array_equal(back.search(xq, 3)[1], expected[1])
    for _ in range(3):  # each save keeps the previous generation (for concurrent readers), no more
        idx.save(tmp_path / "ix")
        assert len(list((tmp_path / "ix").glob("index-*.faiss"))) == 2
    assert len(DenseIndex.load(tmp_path / "ix")) == 200


def test_concurrent_searches_while_writing(data):
    xb = synthetic(4000, 32, seed=5)
    xq = synthetic(50, 32, seed=6)
    idx = build("Flat", "l2", xb[:1000])
    errors, results = [], []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                D, I = idx.search(xq, 5)
                # every returned id must be a live id with its own vector's distance
                assert (I >= 0).all()
                results.append(int(I.max()))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    removed = []
    for start in range(1000, 4000, 250):
        idx.add(np.arange(start, start + 250), xb[start : start + 250])
        idx.remove(np.arange(start - 1000, start - 900))
        removed.extend(range(start - 1000, start - 900))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results, "readers never ran"
    assert len(idx) == 4000 - 1200
    live = np.setdiff1d(np.arange(4000), removed)
    D, I = idx.search(xq, 5)
    De, Ie = exact_search(xb[live], xq, 5, "l2")
    np.testing.assert_array_equal(I, live[Ie])


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_id_map_transitions_and_readd(tmp_path, data, factory):
    xb, xq = data
    idx = DenseIndex(32, factory, "l2")
    idx.add(np.arange(10), xb[:10])          # row-number ids: the identity fast path
    idx.remove([3])
    idx.save(tmp_path / "a")
    assert DenseIndex.load(tmp_path / "a").ids() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    idx.add([3], xb[50:51])                  # a removed id comes back with a new vector
    idx.add([1000, 20], xb[10:12])           # out of order: the explicit map takes over
    assert len(idx) == 12 and 3 in idx and 1000 in idx and 11 not in idx
    _, I = idx.search(xb[50:51], 1)
    assert I[0, 0] == 3
    _, I = idx.search(xb[10:11], 1)
    assert I[0, 0] == 1000
    idx.save(tmp_path / "b")
    back = DenseIndex.load(tmp_path / "b")
    np.testing.assert_array_equal(back.search(xq, 5)[1], idx.search(xq, 5)[1])
    assert sorted(back.ids()) == sorted(idx.ids())


# ============ issue 8 §2: inputs rejected before anything changes ============
def state(idx, xq):
    D, I = idx.search(xq, 5)
    return sorted(idx.ids(), key=str), idx.n_tombstones, I.tolist(), D.tolist()


@pytest.mark.parametrize("ids", [["a", "b", "c"], [10, 11, 12]])
def test_remove_with_a_repeated_id_changes_nothing(data, ids):
    xb, xq = data
    idx = build("Flat", "ip", xb[:3], ids)
    before = state(idx, xq)
    with pytest.raises(KeyError, match="repeat"):
        idx.remove([ids[0], ids[0]])
    assert state(idx, xq) == before and ids[0] in idx
    assert idx.remove([ids[0], ids[1]]) == 2 and len(idx) == 1


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_every_rejected_call_changes_nothing(data, factory):
    xb, xq = data
    idx = build(factory, "l2", xb[:50], search_params=SEARCH_PARAMS.get(factory))
    idx.remove([7])
    before = state(idx, xq)
    nan = xb[:2].copy()
    nan[1, 0] = np.nan
    bad_calls = [
        lambda: idx.add([100, 101], nan), lambda: idx.add([100, 100], xb[:2]), lambda: idx.add([100, 3], xb[:2]),
        lambda: idx.upsert([100, 100], xb[:2]), lambda: idx.upsert([3, 4], xb[:3]), lambda: idx.add([-1], xb[:1]),
        lambda: idx.add([2**63], xb[:1]), lambda: idx.remove([3, 999]), lambda: idx.remove([3, 3]),
        lambda: idx.remove([3], missing="bogus"), lambda: idx.remove(["x"]), lambda: idx.search(xq, True),
        lambda: idx.search(xq, 10**9), lambda: idx.search(xq, 5, allowed=["x"]),
        lambda: idx.set_search_params(efSearch=99, bogus=1) if factory == "HNSW32" else idx.set_search_params(bogus=1),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises((KeyError, ValueError, TypeError)):
            call()
        assert state(idx, xq) == before, i
    if factory == "HNSW32":
        assert idx.faiss_index.hnsw.efSearch == 64


def test_int_ids_outside_int64_and_the_padding_id_are_rejected(data):
    xb, xq = data
    idx = DenseIndex(32)
    for bad in ([2**63], [np.uint64(2**63)], np.array([2**64 - 1], dtype=np.uint64), [-(2**63) - 1], [10**30]):
        with pytest.raises(ValueError, match="int64"):
            idx.add(bad, xb[:1])
    with pytest.raises(ValueError, match="padding"):
        idx.add([5, -1], xb[:2])
    assert len(idx) == 0
    idx.add([2**63 - 1, -5], xb[:2])  # the extremes that do fit still work
    assert idx.search(xb[:1], 1)[1][0, 0] == 2**63 - 1
    with pytest.raises(ValueError, match="int64"):
        idx.remove([2**64])


def test_bad_k_missing_and_dim_are_clear_errors(data):
    xb, xq = data
    idx = build("Flat", "ip", xb)
    with pytest.raises(TypeError, match="k must be"):
        idx.search(xq, True)
    with pytest.raises(TypeError, match="k must be"):
        idx.search(xq, 3.0)
    with pytest.raises(ValueError, match="stored vectors"):
        idx.search(xq, 10**9)
    with pytest.raises(ValueError, match="stored vectors"):
        idx.search(xq, 5000)
    assert idx.search(xq, 800)[1].shape == (25, 800)  # up to every stored vector
    D, I = build("Flat", "ip", xb[:3]).search(xq[:2], np.int64(4096))  # small index: padded up to 4096
    assert I.shape == (2, 4096) and (I[:, 3:] == -1).all()
    with pytest.raises(ValueError, match="missing"):
        idx.remove([1], missing="bogus")
    for dim in (True, 0, -3, 32.0, "32"):
        with pytest.raises(ValueError, match="dim must be a positive int"):
            DenseIndex(dim)
    with pytest.raises(TypeError, match="factory"):
        DenseIndex(32, factory=5)


@pytest.mark.parametrize("ids", [None, [f"s{i}" for i in range(800)]])
def test_search_with_zero_queries_returns_empty_k_columns(data, ids):
    xb, _ = data
    idx = build("HNSW32", "cosine", xb, ids)
    D, I = idx.search(np.zeros((0, 32), np.float32), 7)
    assert D.shape == I.shape == (0, 7) and D.dtype == np.float32
    assert I.dtype == (object if ids else np.int64)
    D, I = idx.search(np.zeros((0, 32)), 3, allowed=idx.ids()[:5])
    assert I.shape == (0, 3)


def fake_gpu(monkeypatch):
    """A stand-in for FAISS's GPU cloner on a CPU machine: 'GPU' indexes are clones it remembers."""
    on_gpu = []

    class Options:
        shard = False

    def to_gpus(index, co=None, **kw):
        on_gpu.append(faiss.clone_index(index))
        return on_gpu[-1]

    import faiss
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: faiss.clone_index(index), raising=False)
    return on_gpu


@pytest.mark.parametrize("factory", ["HNSW32", "Flat"])
def test_compact_on_gpu_keeps_the_index_on_gpu(tmp_path, data, monkeypatch, factory):
    xb, xq = data
    on_gpu = fake_gpu(monkeypatch)
    idx = build(factory, "l2", xb, search_params=SEARCH_PARAMS.get(factory)).to_gpu()
    idx._tombstone_mode = True  # as when FAISS's GPU index cannot remove_ids: tombstones
    idx.remove(np.arange(0, 800, 2))
    assert idx.compact() == 400
    assert any(idx.faiss_index is g for g in on_gpu), "compact() left a CPU index behind a GPU flag"
    _, I = idx.search(xq, 5)
    _, Ie = exact_search(xb[1::2], xq, 5, "l2")
    assert np.mean([len(set(a) & set((2 * b + 1).tolist())) / 5 for a, b in zip(I, Ie)]) > 0.9
    idx.save(tmp_path / "g")
    assert len(DenseIndex.load(tmp_path / "g")) == 400


def test_hnsw_compact_keeps_callers_ids_stable(data):
    """compact() renumbers HNSW's internal ids (positions) from 0; callers' ids keep their vectors."""
    xb, xq = data
    ids = np.arange(1000, 1800)
    idx = build("HNSW32", "l2", xb, ids, search_params={"efSearch": 64})
    idx.remove(ids[:300])
    idx.compact()
    assert idx.faiss_index.ntotal == 500 and idx.n_tombstones == 0
    np.testing.assert_array_equal(idx.get_vectors(ids[300:]), xb[300:])
    idx.add([1000], xb[:1])  # a removed id comes back with a fresh internal id
    assert idx.search(xb[:1], 1)[1][0, 0] == 1000
    _, I = idx.search(xq, 3)
    assert set(I.ravel().tolist()) <= set(ids[300:].tolist()) | {1000}
