"""The README's first command, ``python -m memret.demo``, end to end on a tiny budget (``--smoke``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")
pytest.importorskip("sklearn", reason="pip install memret[dev]")

ROOT = Path(__file__).resolve().parents[1]


def test_demo_smoke_runs_every_stage(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MEMRET_DEMO_SMOKE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "memret.demo", "--out", str(tmp_path / "demo")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert res["smoke"] is True
    # 1. the memory core on digits
    d = res["digits"]
    assert d["knn5_accuracy_Flat"] > 0.9 and d["knn5_accuracy_HNSW32"] > 0.9  # digits: ~0.98
    assert d["filtered_search_respects_filter"] is True and d["reload_identical"] is True
    assert d["bank_size"] == 10 * 20
    for name in ("ncm", "knn_vote"):
        assert d[name]["last_accuracy"] > 0.8 and 0 <= d[name]["forgetting"] <= 1
    # 2. the class-incremental comparison, written by memret.incremental.run into the demo folder
    inc = res["incremental"]["digits"]
    assert set(inc) == {"replay", "icarl", "knn", "mtn"}
    saved = json.loads((tmp_path / "demo" / "incremental-digits" / "results.json").read_text())
    for name, summary in inc.items():
        assert summary == pytest.approx(saved["methods"][name]["summary"])
        assert summary["last_accuracy"] > 0.5, name  # 10 classes (chance 0.1), a 16-centroid encoder
    assert (tmp_path / "demo" / "incremental-digits" / "accuracy.png").stat().st_size > 0
    # 3. retrieval on the generated corpus, or the printed reason it was skipped
    r = res["retrieval"]
    if "skipped" in r:
        assert "skipped" in proc.stdout
    else:
        assert set(r["metrics"]) == {"bm25", "dense", "hybrid"}
        for name, m in r["metrics"].items():
            assert m["ndcg_cut_10"] > 0.5, name  # six topics with disjoint vocabularies
    assert "== results:" in proc.stdout
    assert not (tmp_path / "indices").exists()  # the smoke run keeps its caches inside its folder
