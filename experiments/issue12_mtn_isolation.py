"""Issue 12 §3: what the MTN adds, read on a validation split of the training data (never the test set).

    python experiments/issue12_mtn_isolation.py --orders 1993 0 1                 # every variant
    python experiments/issue12_mtn_isolation.py --orders 1993 --variants replay replay_bal mtn
    python experiments/issue12_mtn_isolation.py --encoder kmeans_patches --encoder-kw '{"n_centroids": 1600}' \
        --variants replay replay_bal mtn slda mtn_slda --out runs/issue12/km1600

Split CIFAR-10, 5 tasks, memory 2,000, the frozen features (``--encoder``, default ``patch_dictionary``) that
``experiments/issue12_cifar10_table.py`` cached for each class order (``run()``'s cache in
``indices/``; run that first). Each task's training rows are split by a hash of the row into
90% to learn from and 10% to validate on; after the last task every variant is scored on the
validation rows of all 10 classes. Variants differ in one thing each:

- ``replay`` vs ``replay_bal``: the MTN's class-balanced loss given to replay;
- ``mtn`` (fused, trained with the fused loss) vs ``mtn_clf`` / ``mtn_only`` (trained and read with
  ``fusion="classifier_only"`` / ``"mtn_only"``); each trained ``mtn`` is also read out through its
  classifier alone and its transformer alone (``.clf_readout`` / ``.mtn_readout``, same weights);
- ``ranpac`` vs ``mtn_ranpac`` (the MTN over the analytic head), ``mtn_ranpac_only``; the same for ``slda``
  (each trained ``mtn_<head>`` is also read out through its head alone and its transformer alone);
- design probes: ``mtn_k20`` (20 neighbours), ``mtn_10ep`` / ``mtn_ranpac_10ep`` (run()'s 10 epochs); on ``mtn``
  and on ``mtn_slda`` (``mtn_slda_*``): ``mtn_pc`` (the 2 nearest exemplars of each class in the memory instead
  of the 10 nearest of the whole memory, ``mtn_retrieval="per_class"``), ``mtn_rank`` (a learnt embedding of each
  neighbour's rank, ``mtn_rank``), ``mtn_mem`` (the transformer trained on the memory's contents only,
  ``mtn_train="memory"``).

Writes ``<out>/isolation.json`` (per order and mean +- std over orders).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "replay": ("replay", {}),
    "replay_bal": ("replay", {"balanced_replay": True}),
    "ranpac": ("ranpac", {}),
    "mtn": ("mtn", {"epochs": 3}),
    "mtn_clf": ("mtn", {"epochs": 3, "fusion": "classifier_only"}),
    "mtn_only": ("mtn", {"epochs": 3, "fusion": "mtn_only"}),
    "mtn_ranpac": ("mtn_ranpac", {"epochs": 3}),
    "mtn_ranpac_only": ("mtn_ranpac", {"epochs": 3, "fusion": "mtn_only"}),
    "slda": ("slda", {}),
    "mtn_slda": ("mtn_slda", {"epochs": 3}),
    "mtn_k20": ("mtn", {"epochs": 3, "k": 20}),
    "mtn_10ep": ("mtn", {"epochs": 10}),
    "mtn_ranpac_10ep": ("mtn_ranpac", {"epochs": 10}),
    "mtn_pc": ("mtn", {"epochs": 3, "mtn_retrieval": "per_class"}),
    "mtn_rank": ("mtn", {"epochs": 3, "mtn_rank": True}),
    "mtn_mem": ("mtn", {"epochs": 3, "mtn_train": "memory"}),
    "mtn_slda_pc": ("mtn_slda", {"epochs": 3, "mtn_retrieval": "per_class"}),
    "mtn_slda_rank": ("mtn_slda", {"epochs": 3, "mtn_rank": True}),
    "mtn_slda_mem": ("mtn_slda", {"epochs": 3, "mtn_train": "memory"}),
}


def _acc(scores: np.ndarray, y: np.ndarray, seen: list[int]) -> float:
    masked = np.full_like(scores, -np.inf)
    masked[:, seen] = scores[:, seen]
    return float((masked.argmax(1) == y).mean())


def mtn_alone(m, X: np.ndarray) -> np.ndarray:
    """A trained MTN method's transformer logits alone, retrieving as it was trained to."""
    from memret.incremental.mtn import mtn_scores

    return mtn_scores(m.mtn, m.bank, X, m.cfg.k, proj=m.proj, retrieval=m.cfg.mtn_retrieval,
                      per_class=m.cfg.mtn_per_class)


def one_order(order: int, variants: list[str], cache_dir: str, root: str | None, dataset: str = "cifar10",
              encoder_kw: dict | None = None, memory: int = 2000, encoder: str = "patch_dictionary",
              mirror: bool = False, shift: int = 0, on_result=None) -> dict:
    """Every variant of ``variants`` on class order ``order``, the features read once; ``on_result(name, res)``
    is called as each variant ends (the caller saves it), and all of them come back."""
    import torch

    from memret import ExemplarBank
    from memret.incremental import TrainConfig, load_dataset, make_method, make_tasks
    from memret.incremental.analytic import holdout_rows
    from memret.incremental.run import feature_cache_file, mean_views

    data = load_dataset(dataset, root)
    ytr, yte = np.asarray(data.train.targets), np.asarray(data.test.targets)
    f = feature_cache_file(data, encoder, encoder_kw or {}, 5, order, order, cache_dir)
    if not f.is_file():
        raise FileNotFoundError(f"{f}: run experiments/issue12_cifar10_table.py run --order {order} --encoder "
                                f"{encoder} first")
    stream = make_tasks(ytr, yte, 5, order)
    if mirror or shift:  # the mean over the table run's cached views (write=False: a missing one is encoded)
        F, _ = mean_views(data, encoder, encoder_kw or {}, stream[0], order, f, mirror, write=False, shift=shift)
    else:
        F = np.load(f)["train"]
    parts = []
    for t in stream:
        val = holdout_rows(t.train_rows, seed=1_000_003 + order, fraction=0.1)
        parts.append((t.train_rows[~val], t.train_rows[val]))
    val_rows = np.concatenate([v for _, v in parts])
    out = {}
    for name in variants:
        method, kw = VARIANTS[name]
        cfg = TrainConfig(**kw)
        bank = ExemplarBank(F.shape[1], total=memory, policy="herding", seed=order)
        m = make_method(method, F.shape[1], data.n_classes, bank, cfg, order)
        t0 = time.perf_counter()
        for t, (fit, _) in zip(stream, parts):
            m.learn(t.index, F[fit], ytr[fit], fit)
        Xv, yv = F[val_rows], ytr[val_rows]
        res = {"val_last": _acc(m.scores(Xv), yv, m.seen), "seconds": time.perf_counter() - t0}
        if method == "mtn":
            with torch.no_grad():
                res["clf_readout"] = _acc(m.clf(torch.from_numpy(Xv)).numpy(), yv, m.seen)
            res["mtn_readout"] = _acc(mtn_alone(m, Xv), yv, m.seen)
        if method in ("mtn_ranpac", "mtn_slda"):
            res[f"{method[4:]}_readout"] = _acc(m.head_method.scores(Xv), yv, m.seen)
            res["mtn_readout"] = _acc(mtn_alone(m, Xv), yv, m.seen)
            res["scale"] = float(m.scale.detach())
        out[name] = res
        if on_result is not None:
            on_result(name, res)
        print(f"order {order} {name}: " + "  ".join(f"{k} {100 * v:.2f}" if k != "seconds" and k != "scale"
                                                     else f"{k} {v:.1f}" for k, v in res.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, nargs="+", default=[1993, 0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--root", default=None)
    ap.add_argument("--out", default="runs/issue12")
    ap.add_argument("--dataset", default="cifar10", help="(smoke tests: digits)")
    ap.add_argument("--encoder", default="patch_dictionary", help="the cached run's encoder")
    ap.add_argument("--encoder-kw", default="{}", help="its arguments, as JSON")
    ap.add_argument("--memory", type=int, default=2000)
    ap.add_argument("--views", default="{}", help='the table run\'s views, as JSON: {"mirror_views": true, '
                    '"shift_views": 2} reads the mean over its six cached views')
    a = ap.parse_args()
    from memret.incremental import TrainConfig

    views = TrainConfig(**json.loads(a.views))  # run()'s keywords: a misspelt one raises instead of being ignored
    path = Path(a.out) / "isolation.json"
    allres = json.loads(path.read_text()) if path.is_file() else {"orders": {}}
    for o in a.orders:
        done = allres["orders"].get(str(o), {})
        todo = [v for v in a.variants if v not in done]

        def save(name, res, o=o, done=done):  # each variant saved as it ends
            done[name] = res
            allres["orders"][str(o)] = done
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(allres, indent=2))

        if todo:
            one_order(o, todo, a.cache_dir, a.root, a.dataset, json.loads(a.encoder_kw), a.memory, a.encoder,
                      views.mirror_views, views.shift_views, on_result=save)
        allres["orders"][str(o)] = done
        summary = {}
        for v in VARIANTS:
            vals = [allres["orders"][k][v] for k in allres["orders"] if v in allres["orders"][k]]
            if vals:
                summary[v] = {key: {"mean": float(np.mean([x[key] for x in vals])),
                                    "std": float(np.std([x[key] for x in vals])), "orders": len(vals)}
                              for key in vals[0] if key != "seconds"}
        allres["summary"] = summary
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(allres, indent=2))
    for v, r in allres.get("summary", {}).items():
        print(f"{v:<16}" + "  ".join(f"{k} {100 * x['mean']:.2f}+-{100 * x['std']:.2f} (n={x['orders']})"
                                     for k, x in r.items() if k != "scale"))


if __name__ == "__main__":
    main()
