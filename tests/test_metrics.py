import math

import numpy as np
import pytest

from memret.metrics import (average_incremental_accuracy, bwt, evaluate, forgetting, last_accuracy,
                            per_query, seen_accuracy)

R = np.array([[0.9, np.nan, np.nan],
              [0.6, 0.8, np.nan],
              [0.5, 0.7, 0.9]])


def test_continual_metrics_on_hand_made_matrix():
    np.testing.assert_allclose(seen_accuracy(R), [0.9, 0.7, 0.7])
    assert average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7 + 0.7) / 3)
    assert last_accuracy(R) == pytest.approx(0.7)
    assert forgetting(R) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert bwt(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert forgetting(np.array([[0.5]])) == 0.0
    with pytest.raises(ValueError, match="square"):
        bwt(np.zeros((2, 3)))


def test_ndcg_by_hand():
    qrels = {"q": {"a": 1, "c": 2}}
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    m = evaluate(qrels, run, ks=[3, 1])
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg_cut_3"] == pytest.approx(dcg / idcg)
    assert m["recall_1"] == pytest.approx(0.5) and m["recall_cap_1"] == pytest.approx(1.0)
    assert m["recip_rank_3"] == 1.0 and m["P_3"] == pytest.approx(2 / 3)


def test_matches_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec_eval is the reference; pip install memret[text]")
    g = np.random.default_rng(0)
    qrels, run = {}, {}
    for q in range(30):
        docs = [f"d{i}" for i in range(60)]
        qrels[f"q{q}"] = {d: int(g.integers(1, 3)) for d in g.choice(docs, int(g.integers(1, 6)), replace=False)}
        run[f"q{q}"] = {d: float(g.normal()) for d in g.choice(docs, 40, replace=False)}
    run["q0"]["d0"] = run["q0"]["d1"] = 5.0  # a tie, broken the trec_eval way
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10", "recall.5,10,100", "P.10", "map_cut.10"})
    ref = ev.evaluate(run)
    ours = per_query(qrels, run, ks=[1, 3, 5, 10, 100])
    for qid in qrels:
        for name in ["ndcg_cut_1", "ndcg_cut_3", "ndcg_cut_10", "recall_5", "recall_100", "P_10", "map_cut_10"]:
            assert ours[qid][name] == pytest.approx(ref[qid][name], abs=1e-4), (qid, name)
