"""Snapshot persistence under attack: concurrent saves and loads (threads and processes), hostile or
damaged manifests, user files in the folder, a full disk, crash clean-up, fsync order, atomic_write."""

import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

import memret.persist as persist
from memret import CorruptSnapshotError, DenseIndex
from conftest import synthetic

KIND = "memret.DenseIndex"


def small_index(n: int, seed: int, ids=None, factory: str = "Flat") -> DenseIndex:
    idx = DenseIndex(16, factory, "l2")
    idx.add(np.arange(n) if ids is None else ids, synthetic(n, 16, seed=seed))
    return idx


def manifest(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def write_manifest(folder: Path, m: dict) -> None:
    (folder / "meta.json").write_text(json.dumps(m))


def rehash(folder: Path, m: dict, role: str) -> None:
    f = folder / m["files"][role]["name"]
    m["files"][role].update(size=f.stat().st_size, sha256=persist.sha256_file(f))


# ============ 1. saves to one folder serialise; loads beside saves get the old or the new snapshot ============
def test_concurrent_saves_and_loads_threads(tmp_path):
    """Two saver threads on one folder, a loader beside them: every load succeeds and is one of the saves."""
    folder = tmp_path / "ix"
    indexes = [small_index(300 + 100 * i, seed=i) for i in range(2)]
    indexes[0].save(folder)
    sizes = {len(ix) for ix in indexes}
    errors, loads = [], []
    done = threading.Event()

    def saver(ix):
        try:
            for _ in range(25):
                ix.save(folder)
        except Exception as e:  # surfaced below
            errors.append(e)

    def loader():
        while not done.is_set():
            try:
                loads.append(len(DenseIndex.load(folder)))
            except Exception as e:
                errors.append(e)

    savers = [threading.Thread(target=saver, args=(ix,)) for ix in indexes]
    reader = threading.Thread(target=loader)
    reader.start()
    for t in savers:
        t.start()
    for t in savers:
        t.join()
    done.set()
    reader.join()
    assert not errors, errors[:3]
    assert loads and set(loads) <= sizes
    assert len(DenseIndex.load(folder)) in sizes


def test_load_interleaved_with_a_save_gets_old_or_new(tmp_path, monkeypatch):
    """A save completes between a load's manifest read and its reading of the files (deterministic)."""
    folder = tmp_path / "ix"
    old, new = small_index(50, seed=1), small_index(80, seed=2)
    old.save(folder)
    real_read = faiss.read_index
    calls = []

    def read_after_a_save(*args):
        if not calls:
            calls.append(1)
            new.save(folder)  # another writer commits while this load is mid-way
        return real_read(*args)

    monkeypatch.setattr(faiss, "read_index", read_after_a_save)
    back = DenseIndex.load(folder)
    assert len(back) in (50, 80)
    monkeypatch.undo()
    assert len(DenseIndex.load(folder)) == 80


def _save_worker(folder: str, seed: int, rounds: int, delay: float) -> None:
    """Child process: save ``rounds`` snapshots whose writers are slow, so saves overlap."""
    def slow(payload: bytes):
        def write(f: str) -> None:
            time.sleep(delay)
            Path(f).write_bytes(payload)
        return write

    for r in range(rounds):
        payload = f"{seed}:{r}".encode() * 100
        persist.write_snapshot(folder, "test.blob", {"seed": seed, "round": r},
                               {"a": (".bin", slow(payload)), "b": (".bin", slow(payload))})


def _check_blob(folder: Path) -> tuple[int, int]:
    m, files = persist.read_snapshot(folder, "test.blob")
    a, b = files["a"].read_bytes(), files["b"].read_bytes()
    expect = f"{m['seed']}:{m['round']}".encode() * 100
    assert a == b == expect, "a snapshot mixes two saves"
    return m["seed"], m["round"]


def test_concurrent_saves_across_processes(tmp_path):
    """Three processes save to one folder (slow writers: the saves would overlap); the parent loads throughout."""
    folder = tmp_path / "blob"
    _save_worker(str(folder), seed=9, rounds=1, delay=0)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_save_worker, args=(str(folder), s, 6, 0.02)) for s in range(3)]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        seen.add(_check_blob(folder))  # never an error, never a mix
        time.sleep(0.002)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert _check_blob(folder)[1] == 5
    # nothing but the last two generations, the lock and the manifest is left
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 + 2 * 2, names


def _crash_mid_save(folder: str) -> None:
    def die(f: str) -> None:
        Path(f).write_bytes(b"half")
        os._exit(3)  # a kill -9 / power cut: no clean-up runs

    persist.write_snapshot(folder, "test.blob", {"seed": 0, "round": 0},
                           {"a": (".bin", lambda f: Path(f).write_bytes(b"x")), "b": (".bin", die)})


def test_crashed_save_leftovers_are_cleaned_user_files_kept(tmp_path):
    folder = tmp_path / "blob"
    _save_worker(str(folder), seed=1, rounds=1, delay=0)
    user = ["model-deadbeefcafe.bin", "a-0123456789ab.bin", "meta.json.0123456789ab.tmp", "notes.txt"]
    for name in user:
        (folder / name).write_text("mine")
    p = mp.get_context("spawn").Process(target=_crash_mid_save, args=(str(folder),))
    p.start()
    p.join(60)
    assert p.exitcode == 3
    assert _check_blob(folder) == (1, 0)  # the crash left the previous save loadable
    leftovers = {f.name for f in folder.iterdir()} - set(user)
    _save_worker(str(folder), seed=2, rounds=2, delay=0)
    names = {f.name for f in folder.iterdir()}
    assert set(user) <= names  # user files survive, whatever their names
    for name in user:
        assert (folder / name).read_text() == "mine"
    m = manifest(folder)
    ours = {f["name"] for f in m["files"].values()} | set(m["retained"]) | {"meta.json", ".lock"}
    assert names == set(user) | ours, sorted(names - set(user) - ours)  # the crash's files are gone
    assert leftovers - names  # (there were some)


# ============ 2. the manifest is not trusted ============
def test_manifest_names_cannot_leave_the_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    small_index(20, seed=1).save(a)
    small_index(30, seed=2).save(b)
    mb = manifest(b)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 12345)
    (a / "link.faiss").symlink_to(b / mb["files"]["index"]["name"])
    hostile = {
        "absolute": str(secret),
        "dotdot": "../b/" + mb["files"]["index"]["name"],
        "separator": "sub/x.faiss",
        "symlink": "link.faiss",
        "dots": "..",
        "not a string": 7,
    }
    for case, name in hostile.items():
        m = manifest(a)
        m["files"]["index"]["name"] = name
        if case in ("dotdot", "symlink"):  # another folder's real index, with matching size and digest
            m["files"]["index"].update(size=mb["files"]["index"]["size"], sha256=mb["files"]["index"]["sha256"])
        write_manifest(a, m)
        with pytest.raises(CorruptSnapshotError) as err:
            DenseIndex.load(a)
        assert "12345" not in str(err.value), case  # no size of an outside file leaks


def test_save_deletes_only_its_own_files(tmp_path, monkeypatch):
    folder = tmp_path / "ix"
    folder.mkdir()
    user = ["model-deadbeefcafe.bin", "index-0123456789ab.faiss", "meta.json.0123456789ab.tmp", "x.txt"]
    for name in user:
        (folder / name).write_text("mine")
    idx = small_index(20, seed=1)
    for _ in range(3):
        idx.save(folder)
    assert all((folder / n).read_text() == "mine" for n in user)
    # save("") is refused, and saving into the working directory never touches its other files
    monkeypatch.chdir(folder)
    with pytest.raises(ValueError, match="non-empty"):
        idx.save("")
    idx.save(".")
    idx.save(".")
    assert all((folder / n).read_text() == "mine" for n in user)
    assert len(DenseIndex.load(".")) == 20


def _deep(n: int) -> str:
    return "[" * n + "]" * n


BAD_FIELDS = {
    "missing format_version": (lambda m: m.pop("format_version"), "format_version"),
    "missing dim": (lambda m: m.pop("dim"), "dim"),
    "missing factory": (lambda m: m.pop("factory"), "factory"),
    "missing metric": (lambda m: m.pop("metric"), "metric"),
    "missing id_type": (lambda m: m.pop("id_type"), "id_type"),
    "missing next_iid": (lambda m: m.pop("next_iid"), "next_iid"),
    "missing count": (lambda m: m.pop("count"), "count"),
    "missing generation": (lambda m: m.pop("generation"), "generation"),
    "missing files": (lambda m: m.pop("files"), "files"),
    "files is a list": (lambda m: m.update(files=[]), "files"),
    "files is empty": (lambda m: m.update(files={}), "files"),
    "a role is missing": (lambda m: m["files"].pop("tombstones"), "files"),
    "a file entry is a list": (lambda m: m["files"].update(index=[]), "files.index"),
    "size is a string": (lambda m: m["files"]["index"].update(size="12"), "files.index.size"),
    "size is a bool": (lambda m: m["files"]["keys"].update(size=True), "files.keys.size"),
    "sha256 is an int": (lambda m: m["files"]["index"].update(sha256=5), "files.index.sha256"),
    "dim is a bool": (lambda m: m.update(dim=True), "dim"),
    "dim is a string": (lambda m: m.update(dim="16"), "dim"),
    "dim disagrees with the file": (lambda m: m.update(dim=32), "dim"),
    "unknown metric": (lambda m: m.update(metric="dot"), "metric"),
    "metric disagrees with the file": (lambda m: m.update(metric="ip"), "metric"),
    "factory is a list": (lambda m: m.update(factory=["Flat"]), "factory"),
    "factory disagrees with the file": (lambda m: m.update(factory="HNSW32"), "factory"),
    "factory FAISS cannot build": (lambda m: m.update(factory="Bogus99"), "factory"),
    "id_type unknown": (lambda m: m.update(id_type="float"), "id_type"),
    "huge next_iid": (lambda m: m.update(next_iid=10**30), "next_iid"),
    "next_iid over 2**62": (lambda m: m.update(next_iid=2**62 + 1), "next_iid"),
    "next_iid below the ids": (lambda m: m.update(next_iid=3), "next_iid"),
    "negative next_iid": (lambda m: m.update(next_iid=-1), "next_iid"),
    "next_iid is a float": (lambda m: m.update(next_iid=40.0), "next_iid"),
    "wrong count": (lambda m: m.update(count=39), "count"),
    "format_version 2": (lambda m: m.update(format_version=2), "format_version"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_well_formed_but_wrong_manifest_names_the_field(tmp_path, case):
    folder = tmp_path / "ix"
    small_index(40, seed=3).save(folder)
    m = manifest(folder)
    mutate, field = BAD_FIELDS[case]
    mutate(m)
    write_manifest(folder, m)
    with pytest.raises(CorruptSnapshotError, match=field.replace(".", r"\.")):
        DenseIndex.load(folder)


@pytest.mark.parametrize("case", ["deep nesting", "a bare list", "not UTF-8"])
def test_unparseable_manifest_is_corrupt(tmp_path, case):
    folder = tmp_path / "ix"
    small_index(10, seed=3).save(folder)
    text = {"deep nesting": '{"kind": "memret.DenseIndex", "x": ' + _deep(100_000) + "}",
            "a bare list": "[1, 2]", "not UTF-8": None}[case]
    if text is None:
        (folder / "meta.json").write_bytes(b'{"kind": "\xff\xfe"}')
    else:
        (folder / "meta.json").write_text(text)
    with pytest.raises(CorruptSnapshotError):
        DenseIndex.load(folder)


@pytest.mark.parametrize("case", ["keys shorter than iids", "keys hold -1", "iids repeat", "string keys not strings"])
def test_data_files_that_disagree_are_corrupt(tmp_path, case):
    folder = tmp_path / "ix"
    ids = [f"d{i}" for i in range(30)] if case == "string keys not strings" else None
    small_index(30, seed=4, ids=ids).save(folder)
    m = manifest(folder)
    keys, iids = folder / m["files"]["keys"]["name"], folder / m["files"]["iids"]["name"]
    if case == "keys shorter than iids":
        np.save(keys, np.arange(29, dtype=np.int64))
    elif case == "keys hold -1":
        np.save(keys, np.r_[np.arange(29), -1].astype(np.int64))
    elif case == "iids repeat":
        np.save(iids, np.r_[np.arange(29), 0].astype(np.int64))
    else:
        keys.write_text(json.dumps(list(range(30))))
    rehash(folder, m, "keys")
    rehash(folder, m, "iids")
    write_manifest(folder, m)
    with pytest.raises(CorruptSnapshotError):
        DenseIndex.load(folder)


# ============ 3. a full disk, fsync order, atomic_write ============
@pytest.mark.parametrize("how", ["faiss write error", "numpy ENOSPC"])
def test_full_disk_is_a_clear_error_and_the_previous_save_loads(tmp_path, monkeypatch, how):
    folder = tmp_path / "ix"
    idx = small_index(30000, seed=5)  # large enough that FAISS's own write to /dev/full fails mid-file
    idx.save(folder)
    idx.remove(np.arange(100))
    if how == "faiss write error":
        real = faiss.write_index
        monkeypatch.setattr(faiss, "write_index", lambda index, _target: real(index, "/dev/full"))
    else:
        def enospc(*a, **k):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(np, "save", enospc)
    with pytest.raises(OSError, match="previous save there is intact") as err:
        idx.save(folder)
    assert isinstance(err.value, persist.SnapshotWriteError)
    monkeypatch.undo()
    assert len(DenseIndex.load(folder)) == 30000


def test_folder_is_fsynced_after_data_files_before_manifest_swap(tmp_path, monkeypatch):
    events = []
    real_fsync_dir, real_replace = persist._fsync_dir, os.replace
    monkeypatch.setattr(persist, "_fsync_dir", lambda p: (events.append(("fsync_dir", Path(p).name)),
                                                          real_fsync_dir(p)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(b).name)), real_replace(a, b)))
    folder = tmp_path / "snap"
    persist.write_snapshot(folder, "t", {}, {"a": (".bin", lambda f: (events.append(("data", "a")),
                                                                      Path(f).write_bytes(b"1")))})
    swap = events.index(("replace", "meta.json"))
    data = events.index(("data", "a"))
    assert ("fsync_dir", "snap") in events[data:swap], events


def test_atomic_write_temp_names_are_unique_per_thread(tmp_path):
    target = tmp_path / "out.bin"
    barrier = threading.Barrier(3)
    errors = []

    def write(tag: bytes):
        def fill(f):
            f.write(tag * 1000)
            barrier.wait(timeout=10)  # all three writers hold their temp files at once
        try:
            persist.atomic_write(target, fill)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in (b"a", b"b", b"c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert target.read_bytes() in (b"a" * 1000, b"b" * 1000, b"c" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temp file left
