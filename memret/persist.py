"""Crash-safe snapshots: a folder of data files committed by one atomic manifest.

A snapshot is a folder holding generation-tagged data files
(``index-<gen>.faiss``, ``ids-<gen>.npy``, ...) and one ``meta.json`` manifest
that names the files of the current generation with their sizes and SHA-256
digests. Saving writes and fsyncs the new generation's files first, then swaps
the manifest in with ``os.replace`` (atomic on POSIX) and only then deletes the
previous generation. A crash or a full disk at any point before the swap leaves
the previous manifest and the files it names untouched, so the last complete
save stays loadable; a crash after it leaves the new save complete.

Loading checks every named file's size and digest, so a truncated or corrupt
file raises :class:`CorruptSnapshotError` instead of producing a wrong index.
No pickle is used anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

MANIFEST = "meta.json"
_OURS = re.compile(r"^(\w+-[0-9a-f]{12}\..+|meta\.json\.[0-9a-f]{12}\.tmp)$")


class CorruptSnapshotError(ValueError):
    """A snapshot folder is missing, truncated, corrupt or of the wrong kind."""


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


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Any], None]) -> Path:
    """Write one file atomically: ``write_fn(binary file)`` fills a temp file beside ``path``, which is
    fsynced and renamed over ``path``; a crash leaves the old file (or none), never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_snapshot(
    path: str | os.PathLike,
    kind: str,
    meta: Mapping[str, Any],
    writers: Mapping[str, tuple[str, Callable[[str], None]]],
) -> Path:
    """Atomically replace the snapshot at ``path``.

    Args:
        path: snapshot folder (created if missing).
        kind: what the snapshot holds, e.g. ``"memret.DenseIndex"``; checked on load.
        meta: JSON-serialisable metadata stored in the manifest.
        writers: ``{role: (suffix, write_fn)}``; ``write_fn(filename)`` writes the
            file for that role, e.g. ``{"index": (".faiss", lambda f: faiss.write_index(ix, f))}``.

    Returns:
        The snapshot folder.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    gen = uuid.uuid4().hex[:12]
    files: dict[str, dict[str, Any]] = {}
    for role, (suffix, write_fn) in writers.items():
        name = f"{role}-{gen}{suffix}"
        target = root / name
        write_fn(str(target))
        _fsync_file(target)
        files[role] = {"name": name, "size": target.stat().st_size, "sha256": sha256_file(target)}
    manifest = {"kind": kind, "generation": gen, "files": files, **meta}
    tmp = root / f"{MANIFEST}.{gen}.tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    _fsync_dir(root)
    # The new generation is committed; anything else in the folder is garbage
    # from an older save or from a save that crashed before its commit.
    keep = {MANIFEST} | {f["name"] for f in files.values()}
    for child in root.iterdir():
        if child.name not in keep and child.is_file() and _OURS.match(child.name):
            child.unlink(missing_ok=True)
    return root


def read_snapshot(path: str | os.PathLike, kind: str, verify: bool = True) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read and check a snapshot's manifest.

    Returns:
        ``(manifest, {role: file path})``, every file checked for size (and
        SHA-256 when ``verify``).

    Raises:
        FileNotFoundError: no snapshot at ``path``.
        CorruptSnapshotError: the manifest or a data file is damaged, or the
            snapshot holds something other than ``kind``.
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"no memret snapshot at {root}: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptSnapshotError(f"{mpath} is not valid JSON (truncated or corrupt): {e}") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        got = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise CorruptSnapshotError(f"{root} holds {got!r}, expected {kind!r}")
    out: dict[str, Path] = {}
    for role, info in manifest.get("files", {}).items():
        fpath = root / info["name"]
        if not fpath.is_file():
            raise CorruptSnapshotError(f"{root}: data file {info['name']} ({role}) is missing")
        size = fpath.stat().st_size
        if size != info["size"]:
            raise CorruptSnapshotError(
                f"{fpath} is {size} bytes, the manifest says {info['size']}: truncated or overwritten"
            )
        if verify and sha256_file(fpath) != info["sha256"]:
            raise CorruptSnapshotError(f"{fpath} fails its SHA-256 check: the file is corrupt")
        out[role] = fpath
    return manifest, out
