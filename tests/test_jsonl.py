"""The one JSON Lines reader (memret.jsonl) that BEIR, the Collection CLI and retriever training share."""

import io

import pytest

from memret.jsonl import iter_json_objects


def _read(tmp_path, raw: bytes):
    p = tmp_path / "f.jsonl"
    p.write_bytes(raw)
    return list(iter_json_objects(p))


def test_objects_with_line_numbers_bom_dropped_blank_lines_skipped(tmp_path):
    raw = b'\xef\xbb\xbf{"a": 1}\n\n   \n{"b": "\xc3\xa9"}\r\n'
    assert _read(tmp_path, raw) == [(1, {"a": 1}), (4, {"b": "é"})]


@pytest.mark.parametrize("raw, message", [
    (b'{"a": 1}\n[1, 2]\n', r"f.jsonl:2: expected a JSON object, got a list"),
    (b'{"a": 1}\n\n7\n', r"f.jsonl:3: expected a JSON object, got a number"),
    (b'{"a": 1\n', r"f.jsonl:1: not valid JSON \(Expecting"),
    (b'{"a": "caf\xe9"}\n', r"f.jsonl:1: not UTF-8 \(byte 0xe9 at column 11\)"),
    (b'\xef\xbb\xbf' + b"[" * 100_000 + b"\n", r"f.jsonl:1: not valid JSON \(nested too deeply\)"),
])
def test_a_bad_line_names_file_line_and_fault(tmp_path, raw, message):
    with pytest.raises(ValueError, match=message):
        _read(tmp_path, raw)


def test_reads_an_open_binary_stream_under_the_given_name():
    fh = io.BytesIO(b'{"x": 1}\nnull\n')
    it = iter_json_objects("<stdin>", fh)
    assert next(it) == (1, {"x": 1})
    with pytest.raises(ValueError, match=r"<stdin>:2: expected a JSON object, got null"):
        next(it)
    assert not fh.closed  # the caller's stream stays open
