"""Reading JSON Lines: one JSON object a line, the one reader every memret input goes through.

BEIR corpora and queries, the Collection CLI's input and the retriever-training corpora and pairs all read
``.jsonl`` files with the same rules, so a bad file gets the same message wherever it is read::

    for n, obj in iter_json_objects("corpus.jsonl"):
        ...   # n is the 1-based line number, obj a dict

Rules: UTF-8 (a leading byte-order mark is dropped), blank lines skipped, every other line a JSON object.
A line that breaks a rule raises ``ValueError("<file>:<line>: <what is wrong>")``.
"""

from __future__ import annotations

import json
import os
from typing import IO, Iterator

_BOM = b"\xef\xbb\xbf"


def kind(value) -> str:
    """The JSON type of ``value`` in words, for error messages ("a number", "an object", ...)."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def iter_lines(path: str | os.PathLike, fh: IO[bytes] | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of a UTF-8 file (or of the binary stream ``fh``, named ``path``
    in messages); a leading BOM is dropped, a byte that is not UTF-8 is an error naming the file and line."""
    f = open(path, "rb") if fh is None else fh
    try:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                                 ) from None
    finally:
        if fh is None:
            f.close()


def iter_json_objects(path: str | os.PathLike, fh: IO[bytes] | None = None) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines file.

    Raises:
        ValueError: ``"<file>:<line>: not UTF-8 ..."``, ``"... not valid JSON (...)"`` or
            ``"... expected a JSON object, got a list"``.
    """
    for n, line in iter_lines(path, fh):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise ValueError(f"{path}:{n}: not valid JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {kind(obj)}")
        yield n, obj
