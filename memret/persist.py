"""Crash-safe snapshots: a folder of data files committed by one atomic manifest.

A snapshot is a folder holding generation-tagged data files
(``index-<gen>.faiss``, ``ids-<gen>.npy``, ...) and one ``meta.json`` manifest
that names the files of the current generation with their sizes and SHA-256
digests. A save, holding the folder's lock file ``.lock`` (``flock``: saves to
one folder serialise across threads and processes):

1. writes a journal ``meta.json.<gen>.pending`` naming the files it is about to write;
2. writes and fsyncs the new generation's files, then fsyncs the folder;
3. swaps the manifest in with ``os.replace`` (atomic on POSIX) and fsyncs the folder;
4. deletes the generation *before* the previous one and the journal.

The previous generation stays until the next save, so a reader that read the
old manifest just before the swap still finds its files; readers also re-read
the manifest and retry when a file vanished because a save moved on. A crash
or a full disk before the swap leaves the previous manifest and its files
untouched; the next save deletes what the crashed save's journal names.
Clean-up deletes only files a manifest or a journal of this store names, never
other files in the folder, whatever their names.

Loading validates the manifest (names must be plain file names inside the
folder, fields of the right types) and checks every named file's size and
digest, so damage raises :class:`CorruptSnapshotError` instead of producing a
wrong object. No pickle is used anywhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

MANIFEST = "meta.json"
LOCK = ".lock"
_PENDING = re.compile(r"^meta\.json\.([0-9a-f]{12})\.pending$")
_JOURNAL_KIND = "memret.pending-save"
_MAX_MANIFEST_BYTES = 64 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")
# Names this store writes: ``<role>-<gen><suffix>`` data files and ``meta.json.<gen>.tmp`` manifests.
# Clean-up deletes a file only if a manifest or journal names it AND it has one of these forms.
_OURS = re.compile(r"^(\w+-[0-9a-f]{12}[^/\\]*|meta\.json\.[0-9a-f]{12}\.tmp)$")
T = TypeVar("T")


class CorruptSnapshotError(ValueError):
    """A snapshot folder is missing, truncated, corrupt or of the wrong kind."""


class SnapshotWriteError(OSError):
    """A save failed (full disk, I/O error); the previous save in the folder is intact."""


# ---------------------------------------------------------------------- small helpers
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_root(path: str | os.PathLike) -> Path:
    if path is None or os.fspath(path) == "":
        raise ValueError("a snapshot path must be a non-empty folder path (got an empty one)")
    return Path(path)


def is_plain_name(name: Any) -> bool:
    """True for a file name that stays inside its folder: no separator, no ``..``, not absolute."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and os.path.basename(name) == name and not os.path.isabs(name))


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Any], None]) -> Path:
    """Write one file atomically: ``write_fn(binary file)`` fills a temp file beside ``path``, which is
    fsynced and renamed over ``path``; a crash leaves the old file (or none), never half a file.

    The temp name is unique per call (process, thread and a random tag), so concurrent writers of one
    path never share a temp file: the last rename wins with a complete file.
    """
    path = _check_root(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


@contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``root/.lock``: one save per folder at a time, across threads and processes.

    (``flock`` locks belong to the open file description, so two threads of one process that each open
    the lock file exclude each other too.)
    """
    import fcntl  # POSIX only; imported here so the module still imports elsewhere

    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ---------------------------------------------------------------------- writing
def _names_in(manifest: Any, key: str) -> set[str]:
    """Plain file names a (possibly damaged) manifest or journal lists under ``key``; never raises."""
    if not isinstance(manifest, dict):
        return set()
    value = manifest.get(key)
    if key == "files":
        value = [f.get("name") for f in value.values() if isinstance(f, dict)] if isinstance(value, dict) else []
    return {n for n in value if is_plain_name(n) and _OURS.match(n)} if isinstance(value, list) else set()


def _read_small_file(path: Path) -> bytes:
    """The bytes of ``path``, refusing a symlink (``OSError``) or a file too big to be a manifest."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size > _MAX_MANIFEST_BYTES:
            raise CorruptSnapshotError(f"{path} is over {_MAX_MANIFEST_BYTES >> 20} MiB: not a memret manifest")
        return f.read()


def _read_json_quietly(path: Path) -> Any:
    try:
        return json.loads(_read_small_file(path))
    except (OSError, ValueError, RecursionError, MemoryError):
        return None


def _unlink_all(root: Path, names: Iterable[str]) -> None:
    for name in names:
        p = root / name
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)


def _clean_crashed_saves(root: Path, keep: set[str]) -> None:
    """Delete what journals of saves that died before committing name (we hold the lock: none is live)."""
    for child in root.iterdir():
        if not _PENDING.match(child.name):
            continue
        journal = _read_json_quietly(child)
        if isinstance(journal, dict) and journal.get("kind") == _JOURNAL_KIND:
            _unlink_all(root, _names_in(journal, "names") - keep)
            child.unlink(missing_ok=True)


def _new_generation(root: Path, roles: Mapping[str, tuple[str, Any]]) -> tuple[str, dict[str, str]]:
    while True:  # never write over a file that is already there (a user's, or an older generation's)
        gen = uuid.uuid4().hex[:12]
        names = {role: f"{role}-{gen}{suffix}" for role, (suffix, _) in roles.items()}
        extra = [f"{MANIFEST}.{gen}.tmp", f"{MANIFEST}.{gen}.pending"]
        if not any(os.path.lexists(root / n) for n in [*names.values(), *extra]):
            return gen, names


def _is_disk_error(e: BaseException) -> bool:
    # FAISS reports a failed fwrite (e.g. ENOSPC) as RuntimeError("... write error ...").
    return isinstance(e, (OSError, RuntimeError))


def write_snapshot(
    path: str | os.PathLike,
    kind: str,
    meta: Mapping[str, Any],
    writers: Mapping[str, tuple[str, Callable[[str], None]]],
) -> Path:
    """Atomically replace the snapshot at ``path`` (see the module docstring for the protocol).

    Args:
        path: snapshot folder (created if missing); must not be empty.
        kind: what the snapshot holds, e.g. ``"memret.DenseIndex"``; checked on load.
        meta: JSON-serialisable metadata stored in the manifest.
        writers: ``{role: (suffix, write_fn)}``; ``write_fn(filename)`` writes the
            file for that role, e.g. ``{"index": (".faiss", lambda f: faiss.write_index(ix, f))}``.

    Returns:
        The snapshot folder.

    Raises:
        ValueError: an empty path, or a role that is not a plain word.
        SnapshotWriteError: writing failed (e.g. disk full); the previous save is intact.
    """
    root = _check_root(path)
    for role, (suffix, _) in writers.items():
        if not re.fullmatch(r"\w+", role) or not is_plain_name(f"x{suffix}"):
            raise ValueError(f"snapshot role {role!r} / suffix {suffix!r} must be a word / a plain file suffix")
    root.mkdir(parents=True, exist_ok=True)
    with folder_lock(root):
        # ============ 1. what the committed manifest names stays; crashed saves' files go ============
        old = _read_json_quietly(root / MANIFEST)
        old_files, old_retained = _names_in(old, "files"), _names_in(old, "retained")
        _clean_crashed_saves(root, keep=old_files | old_retained)
        gen, names = _new_generation(root, writers)
        tmp = root / f"{MANIFEST}.{gen}.tmp"
        journal = root / f"{MANIFEST}.{gen}.pending"
        # ============ 2. the new generation's files, then the folder entry ============
        try:
            atomic_write(journal, lambda f: f.write(json.dumps(
                {"kind": _JOURNAL_KIND, "names": [*names.values(), tmp.name]}).encode()))
            files: dict[str, dict[str, Any]] = {}
            for role, (_, write_fn) in writers.items():
                target = root / names[role]
                write_fn(str(target))
                _fsync_file(target)
                files[role] = {"name": names[role], "size": target.stat().st_size, "sha256": sha256_file(target)}
            _fsync_dir(root)
            # ============ 3. commit: swap the manifest in ============
            manifest = {**meta, "kind": kind, "generation": gen, "files": files,
                        "retained": sorted(old_files)}  # the previous generation: readers may still be on it
            with open(tmp, "x") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, root / MANIFEST)
        except BaseException as e:
            _unlink_all(root, [*names.values(), tmp.name])
            journal.unlink(missing_ok=True)
            if _is_disk_error(e):
                raise SnapshotWriteError(
                    getattr(e, "errno", None) or errno.EIO,
                    f"saving to {root} failed ({e}); the previous save there is intact and still loads") from e
            raise
        _fsync_dir(root)
        # ============ 4. the generation before the previous one is no longer anyone's ============
        _unlink_all(root, old_retained - old_files - set(names.values()))
        journal.unlink(missing_ok=True)
    return root


# ---------------------------------------------------------------------- reading
def _field(cond: bool, root: Path, field: str, what: str) -> None:
    if not cond:
        raise CorruptSnapshotError(f"{root}/{MANIFEST}: field {field!r} {what}")


def _parse_manifest(root: Path, kind: str, roles: Iterable[str] | None) -> dict[str, Any]:
    mpath = root / MANIFEST
    if not os.path.lexists(mpath):
        raise FileNotFoundError(f"no memret snapshot at {root}: {MANIFEST} is missing")
    try:
        text = _read_small_file(mpath)
    except OSError as e:  # ELOOP (a symlink), EISDIR, EACCES
        raise CorruptSnapshotError(f"{mpath} is not a readable regular file "
                                   f"({errno.errorcode.get(e.errno, e.errno)})") from None
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError, MemoryError) as e:  # JSONDecodeError/UnicodeDecodeError are ValueErrors
        raise CorruptSnapshotError(f"{mpath} is not valid JSON (truncated, corrupt or nested too deep): "
                                   f"{type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        got = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise CorruptSnapshotError(f"{root} holds {str(got)[:100]!r}, expected {kind!r}")
    _field(isinstance(manifest.get("generation"), str), root, "generation", "is missing or not a string")
    files = manifest.get("files")
    _field(isinstance(files, dict) and len(files) > 0, root, "files", "must be a non-empty object")
    if roles is not None:
        _field(set(files) == set(roles), root, "files", f"must name exactly the roles {sorted(roles)}")
    for role, info in files.items():
        f = f"files.{role}"
        _field(isinstance(info, dict), root, f, "must be an object")
        _field(is_plain_name(info.get("name")), root, f"{f}.name", "must be a plain file name inside the folder")
        size = info.get("size")
        _field(type(size) is int and size >= 0, root, f"{f}.size", "must be a non-negative int")
        _field(isinstance(info.get("sha256"), str) and bool(_SHA.match(info["sha256"])), root,
               f"{f}.sha256", "must be a 64-digit hex digest")
    return manifest


def _check_file(root: Path, role: str, info: dict[str, Any], verify: bool) -> Path:
    """Size (and digest) of one named file; a symlink or non-regular file counts as corrupt."""
    fpath = root / info["name"]
    try:
        fd = os.open(fpath, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise CorruptSnapshotError(f"{root}: data file {info['name']} ({role}) is missing") from None
    except OSError as e:  # ELOOP: a symlink
        raise CorruptSnapshotError(f"{root}: data file {info['name']} ({role}) is not a regular file "
                                   f"inside the folder ({errno.errorcode.get(e.errno, e.errno)})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CorruptSnapshotError(f"{root}: data file {info['name']} ({role}) is not a regular file")
        if st.st_size != info["size"]:
            raise CorruptSnapshotError(f"{fpath} is {st.st_size} bytes, the manifest says {info['size']}: "
                                       "truncated or overwritten")
        if verify:
            h = hashlib.sha256()
            while block := fh.read(1 << 22):
                h.update(block)
            if h.hexdigest() != info["sha256"]:
                raise CorruptSnapshotError(f"{fpath} fails its SHA-256 check: the file is corrupt")
    return fpath


def current_generation(path: str | os.PathLike) -> str | None:
    """The generation ``path``'s manifest names now (None if unreadable)."""
    m = _read_json_quietly(Path(path) / MANIFEST)
    return m.get("generation") if isinstance(m, dict) else None


def read_snapshot(path: str | os.PathLike, kind: str, verify: bool = True,
                  roles: Iterable[str] | None = None, attempts: int = 5) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read, validate and check a snapshot's manifest.

    A file that fails its check while a concurrent save has moved the manifest on is
    not corruption: the manifest is read again (up to ``attempts`` times).

    Args:
        path: snapshot folder.
        kind: the kind the snapshot must hold.
        verify: also check SHA-256 digests (sizes are always checked).
        roles: if given, the exact set of roles the manifest must name.

    Returns:
        ``(manifest, {role: file path})``, every file checked.

    Raises:
        FileNotFoundError: no snapshot at ``path``.
        CorruptSnapshotError: the manifest is damaged or invalid (the message names the field), a data file
            is missing, truncated or corrupt, or the snapshot holds something other than ``kind``.
    """
    root = _check_root(path)
    roles = None if roles is None else list(roles)
    for attempt in range(attempts):
        manifest = _parse_manifest(root, kind, roles)
        try:
            return manifest, {role: _check_file(root, role, info, verify) for role, info in manifest["files"].items()}
        except CorruptSnapshotError:
            if attempt + 1 == attempts or current_generation(root) == manifest["generation"]:
                raise
    raise AssertionError("unreachable")


def load_snapshot(path: str | os.PathLike, kind: str, parse: Callable[[dict[str, Any], dict[str, Path]], T],
                  verify: bool = True, roles: Iterable[str] | None = None, attempts: int = 5) -> T:
    """``parse(*read_snapshot(...))``, retried when it fails because a concurrent save moved the manifest on.

    ``parse`` reads the files and should raise :class:`CorruptSnapshotError` on anything wrong.
    """
    for attempt in range(attempts):
        manifest, files = read_snapshot(path, kind, verify, roles, attempts)
        try:
            return parse(manifest, files)
        except (CorruptSnapshotError, FileNotFoundError):
            if attempt + 1 == attempts or current_generation(path) == manifest["generation"]:
                raise
    raise AssertionError("unreachable")
