"""The Collection's HTTP API and page through real HTTP on 127.0.0.1, the CLI, and the page in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from memret.collection import Collection  # noqa: E402
from memret.collection.__main__ import main as cli  # noqa: E402
from memret.collection.http import create_app  # noqa: E402

ROOT = str(Path(__file__).resolve().parents[1])
KEY = "s3cret-key"


class Toy:
    """A tiny deterministic encoder (letter counts), so the API tests need no model."""

    identity, embed_dim = "toy-letters", 26

    def encode_passages(self, texts):
        out = np.full((len(texts), 26), 0.01, np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out

    encode_queries = encode_passages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real uvicorn server on 127.0.0.1 in a thread, with an API key."""
    col = Collection.open(tmp_path_factory.mktemp("http") / "c", encoder=Toy())
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(col, api_key=KEY), host="127.0.0.1", port=port,
                                        log_level="error"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and th.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", col
    srv.should_exit = True
    th.join(10)
    col.close()


def client(base, key=KEY):
    return httpx.Client(base_url=base, headers={"X-API-Key": key} if key else {}, timeout=30)


DOCS = [{"id": "a", "text": "apples and pears", "metadata": {"year": 2021, "kind": "fruit"}},
        {"id": "b", "text": "zebra crossing", "metadata": {"year": 2019, "kind": "road"}},
        {"id": "c", "text": "pear tree orchard", "metadata": {"year": 2023, "kind": "fruit"}}]


def test_crud_search_and_errors_over_http(server):
    base, col = server
    with client(base) as c:
        r = c.post("/documents", json={"documents": DOCS})
        assert r.status_code == 201 and r.json() == {"written": 3, "documents": 3}
        assert c.post("/documents", json={"documents": DOCS[:1]}).status_code == 409
        r = c.post("/search", json={"query": "pear", "k": 5, "mode": "bm25"})
        assert r.status_code == 200 and {h["id"] for h in r.json()["hits"]} == {"a", "c"}
        r = c.post("/search", json={"query": "pear", "k": 5, "where": {"year": {"$gte": 2022}}})
        assert [h["id"] for h in r.json()["hits"]] == ["c"]
        r = c.post("/search", json={"query": "zebra crossing", "k": 1, "mode": "dense"})
        assert r.json()["hits"][0]["id"] == "b" and isinstance(r.json()["hits"][0]["score"], float)
        assert c.get("/documents/a").json()["metadata"]["kind"] == "fruit"
        assert c.get("/documents/zz").status_code == 404
        r = c.put("/documents", json={"documents": [{"id": "a", "text": "kiwi", "metadata": {}}]})
        assert r.status_code == 200 and c.get("/documents/a").json()["text"] == "kiwi"
        assert c.post("/documents/get", json={"ids": ["a", "nope"]}).json()[1] is None
        assert c.delete("/documents/b").json() == {"deleted": 1}
        assert c.delete("/documents/b").status_code == 404
        assert c.post("/documents/delete", json={"ids": ["c", "x"]}).json() == {"deleted": 1}
        assert c.get("/stats").json()["documents"] == 1
        # Validation: 422 with a message, never 5xx.
        for body, frag in [({"query": "x", "where": {"$bogus": 1}}, "bad filter"), ({"query": "x", "k": 0}, ""),
                           ({"query": ""}, ""), ({"query": "x", "mode": "magic"}, ""), ({"q": "x"}, "")]:
            r = c.post("/search", json=body)
            assert r.status_code == 422 and frag in json.dumps(r.json())
        bad_vec = {"documents": [{"id": "v", "text": "t", "vector": [1.0, 2.0]}]}
        r = c.post("/documents", json=bad_vec)
        assert r.status_code == 422 and "dimension" in r.json()["detail"]
        r = c.post("/documents", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        r = c.post("/documents", json={"documents": [DOCS[0], DOCS[0]]})
        assert r.status_code == 422 and "more than once" in r.json()["detail"]


def test_api_key_required(server):
    base, _ = server
    with client(base, key=None) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200 and "<form" in c.get("/").text
        assert c.post("/search", json={"query": "x"}).status_code == 401
        assert c.get("/stats", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/stats", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        schema = c.get("/openapi.json").json()
        assert {"/search", "/documents", "/documents/{doc_id}"} <= set(schema["paths"])


def test_schemathesis_fuzz_no_5xx(tmp_path):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings

    col = Collection.open(tmp_path / "fz", encoder=Toy())
    col.add([d["id"] for d in DOCS], [d["text"] for d in DOCS], [d["metadata"] for d in DOCS])
    app = create_app(col)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    from hypothesis import given

    failures = []

    def fuzz(operation):
        # One hypothesis test per operation; the operation is bound by closure, not a default argument
        # (@given refuses functions with defaults).
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            response = case.call()
            if response.status_code >= 500:
                failures.append((operation.label, case.body, response.status_code, response.text[:300]))

        run()

    for op in schema.get_all_operations():
        fuzz(op.ok())
    col.close()
    assert not failures, failures[:3]


def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "memret.collection", *args], input=stdin, capture_output=True,
                       text=True, env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_cli_roundtrip(tmp_path, capsys):
    path = str(tmp_path / "cli")
    assert cli(["create", path, "--no-encoder", "--dim", "3"]) == 0
    rows = tmp_path / "docs.jsonl"
    rows.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t, "year": 2020 + i, "vector": [1.0, i, 0.5]})
                              for i, t in enumerate(["red apple", "green apple", "blue sky"])))
    assert cli(["add", path, str(rows), "--quiet"]) == 0
    csvf = tmp_path / "more.csv"
    csvf.write_text("id,text,lang\nc1,apple pie,en\n")
    assert cli(["add", path, str(csvf), "--quiet"]) == 2  # no vectors and no encoder: a clear error
    assert "no encoder" in capsys.readouterr().err
    capsys.readouterr()
    assert cli(["search", path, "apple", "--mode", "bm25", "--where", '{"year": {"$gt": 2020}}']) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hits] == ["d1"]
    assert cli(["delete", path, "d0", "zz"]) == 0 and json.loads(capsys.readouterr().out)["deleted"] == 1
    assert cli(["stats", path, "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []
    assert cli(["stats", str(tmp_path / "nothing")]) == 2
    assert "no collection" in capsys.readouterr().err
    assert cli(["search", path, "x", "--mode", "bm25", "--where", '{"$x": 1}']) == 2
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'\xef\xbb\xbf{"id": "b1", "text": "t", "vector": [1, 0, 0]}\n\n[1, 2]\n')
    assert cli(["add", path, str(bad), "--quiet"]) == 2  # memret.jsonl's rules: file:line and what is wrong
    assert "bad.jsonl:3: expected a JSON object, got a list" in capsys.readouterr().err


def test_cli_serve_starts_with_one_command(tmp_path):
    path = str(tmp_path / "srv")
    assert run_cli("create", path, "--no-encoder", "--dim", "2")[0] == 0
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, MEMRET_API_KEY=KEY)
    proc = subprocess.Popen([sys.executable, "-m", "memret.collection", "serve", path, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/stats").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/stats", headers={"X-API-Key": KEY}).json()["dim"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_page_in_headless_chromium(server):
    base, col = server
    with client(base) as c:
        c.put("/documents", json={"documents": DOCS})
    url = f"{base}/?" + urllib.parse.urlencode({"q": "pear", "mode": "bm25", "key": KEY,
                                               "where": json.dumps({"kind": "fruit"})})
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'class="hit" data-id="c"' in dom and 'data-id="b"' not in dom
    assert "hit(s) in" in dom and 'class="score"' in dom
    bad = f"{base}/?" + urllib.parse.urlencode({"q": "pear", "key": "wrong"})
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", bad], capture_output=True, text=True, timeout=120).stdout
    assert "error 401" in dom
