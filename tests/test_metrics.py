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
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        judged = g.choice(docs, int(g.integers(1, 8)), replace=False)
        qrels[f"q{q}"] = {d: int(g.integers(0, 3)) for d in judged}  # grades 0, 1, 2: 0 is judged not relevant
        run[f"q{q}"] = {d: float(g.normal()) for d in g.choice(docs, 40, replace=False)}
    qrels["q1"] = {d: 0 for d in docs[:5]}  # judged, nothing relevant
    for d in docs[:5]:
        run["q1"][d] = 10.0 + g.random()
    qrels["q2"] = {"d0": 0, "d1": 1, "d2": 2}  # a 0-grade document ranked first
    run["q2"].update({"d0": 9.0, "d1": 8.0, "d2": 1.0})
    run["q0"]["d0"] = run["q0"]["d1"] = 5.0  # a tie, broken the trec_eval way
    qrels["q0"].update({"d0": 0, "d1": 1})
    assert max(sum(r > 0 for r in rels.values()) for rels in qrels.values()) > 5  # so R_cap@5 != recall@5 somewhere
    names = ["ndcg_cut_1", "ndcg_cut_3", "ndcg_cut_10", "recall_5", "recall_100", "P_10", "map_cut_10"]
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10", "recall.5,10,100", "P.5,10,100", "map_cut.10",
                                                "num_rel"})
    ref = ev.evaluate(run)
    # MRR@10 and capped recall (BEIR's R_cap) are not trec_eval measures; their references are built from
    # trec_eval's: recip_rank over each run's top 10, and P_k * k / min(num_rel, k)
    top10 = {q: dict(sorted(r.items(), key=lambda t: (t[1], t[0]), reverse=True)[:10]) for q, r in run.items()}
    rr10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    ours = per_query(qrels, run, ks=[1, 3, 5, 10, 100])
    assert set(ours) == set(ref) == set(qrels)
    for qid in qrels:
        for name in names:
            assert ours[qid][name] == pytest.approx(ref[qid][name], abs=1e-4), (qid, name)
        n_rel = ref[qid]["num_rel"]
        for k in (5, 100):
            cap = ref[qid][f"P_{k}"] * k / min(n_rel, k) if n_rel else 0.0
            assert ours[qid][f"recall_cap_{k}"] == pytest.approx(cap, abs=1e-4), (qid, k)
        assert ours[qid]["recip_rank_10"] == pytest.approx(rr10[qid]["recip_rank"], abs=1e-4), qid
    assert ours["q1"]["recall_cap_100"] == ours["q1"]["recip_rank_10"] == ours["q1"]["ndcg_cut_10"] == 0.0
    assert ours["q2"]["recip_rank_10"] == 0.5  # the 0-grade document at rank 1 is not a hit
