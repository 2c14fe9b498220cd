"""``memret.incremental.run``: a class-incremental experiment end to end.

    res = memret.incremental.run("cifar10", tasks=5, method=["mtn", "knn", "icarl", "replay"], memory=2000)
    res = memret.incremental.run("imagenet1k", tasks=10, root="/data/imagenet")   # 100 classes a task, 20/class

Steps: load the data set; build the stream with Avalanche (iCaRL class order from
``seed``, equal classes per task; initialisations and shuffles come from ``init_seed``);
encode every image once with the frozen encoder (the label-free ``kmeans_patches`` and ``patch_dictionary`` are
fitted on the first task's training images only; any
``memret.encoders`` name with ``checkpoint=`` loads weights), or, with
``train_encoder=True``, train the encoder on the stream task by task
(:mod:`memret.incremental.backbone`); then, for each method, learn task by task
with an :class:`~memret.ExemplarBank`, evaluating on all classes seen after each task. Writes ``<out>/results.json``,
``<out>/accuracy.png`` and per-task checkpoints; rerunning with the same
arguments resumes after the last finished task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from memret.incremental.backbone import FrozenFeatures, TrainedEncoder
from memret.incremental.data import LabelledData, load_dataset
from memret.incremental.features import build_encoder, encoder_blocks, extract_features, resolved_encoder_kw
from memret.incremental.catalog import METHODS, make_method
from memret.incremental.streams import make_tasks
from memret.incremental.training import TrainConfig
from memret.incremental.views import cached_views, mean_views
from memret.memory import ExemplarBank
from memret.metrics import summarize
from memret.persist import atomic_write

log = logging.getLogger(__name__)
__all__ = ["MethodResult", "RunResult", "cached_views", "extract_features", "feature_cache_file", "mean_views",
           "plot_accuracy", "run"]


@dataclass
class MethodResult:
    accuracy_matrix: list[list[float]]     # R[i][j]: accuracy on task j after task i (NaN for j > i)
    seen_accuracy: list[float]             # top-1 on all classes seen, after each task
    seen_top5: list[float] | None
    task_seconds: list[float]
    summary: dict[str, float]
    task_info: list[dict] = field(default_factory=list)  # what each task's learn() reported (loss, ridge, shrinkage)


@dataclass
class RunResult:
    dataset: str
    tasks: int
    classes_per_task: int
    memory: str
    encoder: str
    methods: dict[str, MethodResult] = field(default_factory=dict)
    out: str = ""
    class_order: list[int] = field(default_factory=list)   # the stream's classes, task by task (from ``seed``)
    seed: int | None = None                                # class order
    init_seed: int | None = None                           # initialisation and shuffles

    def table(self) -> str:
        rows = [f"{'method':<10}{'avg inc acc':>12}{'last acc':>10}{'forgetting':>12}{'BWT':>8}{'s/task':>8}"]
        for name, r in self.methods.items():
            s = r.summary
            rows.append(f"{name:<10}{100 * s['average_incremental_accuracy']:>12.2f}{100 * s['last_accuracy']:>10.2f}"
                        f"{100 * s['forgetting']:>12.2f}{100 * s['bwt']:>8.2f}{np.mean(r.task_seconds):>8.1f}")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return asdict(self)


# ============ evaluation and checkpoints ============
def _evaluate(scores: np.ndarray, y: np.ndarray, seen: Sequence[int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample top-1 and top-5 hits, predictions restricted to the classes seen so far."""
    masked = np.full_like(scores, -np.inf)
    masked[:, list(seen)] = scores[:, list(seen)]
    top1 = masked.argmax(1) == y
    k = min(5, len(seen))
    topk = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    return top1, (topk == y[:, None]).any(1)


def run(
    dataset: str | LabelledData = "cifar10",
    tasks: int = 5,
    method: str | Sequence[str] = "mtn",
    encoder: str | torch.nn.Module | None = None,
    memory: int | None = 2000,
    per_class: int | None = None,
    policy: str = "herding",
    seed: int = 1993,
    init_seed: int | None = None,
    root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    config: TrainConfig | None = None,
    encoder_kw: dict | None = None,
    device: str = "cpu",
    resume: bool = True,
    plot: bool = True,
    cache_dir: str | os.PathLike = "indices",
    train_encoder: bool = False,
) -> RunResult:
    """Run a class-incremental experiment; see the module docstring.

    Args:
        dataset: "cifar10", "cifar100", "imagenet1k", "digits", or a :class:`LabelledData`.
        tasks: number of tasks (equal classes per task).
        method: one of ``finetune, joint, replay, icarl, knn, mtn, ranpac, slda, mtn_ranpac, mtn_slda`` or a list
            (compared on one stream; the features are encoded once and shared). ``ranpac`` / ``slda`` are the
            analytic heads of :mod:`memret.heads` (no exemplars read; the bank still fills, for the table);
            ``mtn_ranpac`` / ``mtn_slda`` are the MTN over RanPAC / SLDA: the MTN's fused prediction with the
            head's scores (scaled) in place of the linear classifier's (:mod:`memret.incremental.analytic`).
        encoder: a ``memret.encoders`` name, or any module with ``embed_dim`` and ``forward -> (B, D)``;
            default (None): ``kmeans_patches`` for images under 64 pixels (CIFAR, digits: unchanged), and
            ``patch_dictionary`` at stride 4 for larger ones (ImageNet-1k at 224 pixels: ~10-12 images/s on one
            core, ~4x the 400-centroid k-means encoder's rate; stride 2 would be 4x dearer);
            frozen unless ``train_encoder``. ``kmeans_patches`` with ``encoder_kw={"layers": 2, ...}`` adds a second
            label-free layer; its two blocks of features then get one SLDA each in ``slda`` and ``mtn_slda``
            (``TrainConfig.slda_blocks``, read from the encoder by :func:`~memret.incremental.features.encoder_blocks`).
        memory: total exemplar budget (the quota per class shrinks as classes arrive), or
        per_class: a fixed number per class (iCaRL protocol: 20). ``imagenet1k`` defaults to 20 per class.
        policy: exemplar selection (``herding``, ``random``, ``closest``, ``reservoir``).
        seed: the class order, ``np.random.RandomState(seed).permutation(n_classes)`` (iCaRL's 1993).
        init_seed: every initialisation and shuffle (encoder weights, the k-means fit, heads, MTN,
            minibatch order, random exemplar selection); default ``seed``, which reproduces the runs made
            before the two were separate. Rerun one class order with several ``init_seed`` for error bars.
        root: data folder (see :mod:`memret.incremental.data`).
        out: run folder (default ``runs/<dataset>-<tasks>t-<hash>``).
        config: training knobs (:class:`TrainConfig`).
        encoder_kw: keyword arguments of the encoder constructor (e.g. ``checkpoint=PATH``).
        resume: continue after the last checkpointed task of an identical earlier run.
        cache_dir: where encoded features are cached (keyed by the data's content or files,
            :meth:`LabelledData.fingerprint`, the encoder, the stream and ``init_seed``).
        train_encoder: train the encoder on the stream, end to end with each method's classifier
            (from scratch, or fine-tuning ``encoder_kw={"checkpoint": ...}``); each method trains its own
            copy. See :mod:`memret.incremental.backbone`. Under ``torchrun`` training is data parallel.
    """
    methods = [method] if isinstance(method, str) else list(method)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if dataset == "imagenet1k" and memory == 2000 and per_class is None:
        memory, per_class = None, 20
    cfg = config or TrainConfig()
    encoder_kw = dict(encoder_kw or {})
    init_seed = seed if init_seed is None else int(init_seed)

    # ============ data, stream, features ============
    data = load_dataset(dataset, root)
    if encoder is None:
        encoder = "kmeans_patches" if data.image_size < 64 else "patch_dictionary"
        if encoder == "patch_dictionary":
            encoder_kw = {"stride": 4, **encoder_kw}
    if cfg.slda_blocks is None:  # an encoder with several blocks of features (kmeans_patches, layers=2): one SLDA each
        blocks = encoder_blocks(encoder, encoder_kw)
        if blocks and len(blocks) > 1:
            cfg = replace(cfg, slda_blocks=blocks)
    ytr, yte = np.asarray(data.train.targets), np.asarray(data.test.targets)
    stream = make_tasks(ytr, yte, tasks, seed)
    enc_name = encoder if isinstance(encoder, str) else type(encoder).__name__
    # where the data came from, not just its name: two data sets called "tiny" never share features or runs
    fingerprint = data.fingerprint()
    run_id = _run_id(data.name, fingerprint, tasks, encoder, encoder_kw, memory, per_class, policy, seed, init_seed,
                     cfg, train_encoder)
    out = Path(out or f"runs/{data.name}-{tasks}t-{run_id}")
    main = _is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    feat_file = feature_cache_file(data, enc_name, encoder_kw, tasks, seed, init_seed, cache_dir, fingerprint)
    if train_encoder and (cfg.mirror_views or cfg.shift_views):
        raise ValueError("mirror_views and shift_views are for frozen encoders; a trained encoder sees mirrors and "
                         "shifts through cfg.augment")
    if train_encoder:
        enc, enc_name = build_encoder(encoder, data, stream[0], encoder_kw, init_seed)

        def representation():
            return TrainedEncoder(enc, data, data.n_classes, cfg, init_seed, device)
    else:
        # mirror_views / shift_views: each image's feature is the mean of its views' (flip- and shift-invariant)
        Ftr, Fte = mean_views(data, encoder, encoder_kw, stream[0], init_seed, feat_file, cfg.mirror_views,
                              device, write=main, shift=cfg.shift_views)

        def representation():
            return FrozenFeatures(Ftr, Fte)

    budget = f"{per_class}/class" if per_class else f"{memory} total"
    result = RunResult(data.name, tasks, data.n_classes // tasks, budget,
                       enc_name + (" (trained)" if train_encoder else " (frozen)"), out=str(out),
                       class_order=[c for t in stream for c in t.classes], seed=seed, init_seed=init_seed)
    # ============ methods, task by task ============
    for name in methods:
        result.methods[name] = _run_method(name, stream, representation(), ytr, yte, data.n_classes, memory,
                                           per_class, policy, cfg, init_seed, out / "ckpt" / name, run_id, resume)
    if main:
        atomic_write(out / "results.json", lambda f: f.write(json.dumps(result.to_json(), indent=2,
                                                                         default=float).encode()))
        if plot:
            plot_accuracy(result, out / "accuracy.png")
    return result


def feature_cache_file(data: LabelledData, enc_name: str, encoder_kw: dict, tasks: int, seed: int, init_seed: int,
                       cache_dir: str | os.PathLike = "indices", fingerprint: str | None = None) -> Path:
    """Where :func:`run` caches the frozen features of ``data`` (an npz with ``train`` and ``test`` arrays).

    Features depend on the data, the encoder, its seeded init and (for encoders fitted on the first task)
    the stream: runs that differ only in methods, memory or training share them. ``fingerprint``:
    ``data.fingerprint()`` when the caller has it already (it hashes every pixel or file path). The key holds
    the label-free encoders' every keyword, defaults filled in (:func:`resolved_encoder_kw`).
    """
    kw = resolved_encoder_kw(enc_name, encoder_kw)
    feat_key = json.dumps([data.name, fingerprint or data.fingerprint(), len(data.train.targets),
                           len(data.test.targets), enc_name, sorted(kw.items(), key=str), tasks, seed,
                           init_seed], default=str)
    return Path(cache_dir) / f"features-{data.name}-{hashlib.sha256(feat_key.encode()).hexdigest()[:12]}.npz"


def _run_id(name, fingerprint, tasks, encoder, encoder_kw, memory, per_class, policy, seed, init_seed, cfg,
            train_encoder) -> str:
    """What ``resume`` matches a checkpoint by. The label-free encoders' keywords enter with their defaults filled
    in (:func:`resolved_encoder_kw`): after a default changes, a run is a new run."""
    enc_name = encoder if isinstance(encoder, str) else type(encoder).__name__
    enc_kw = sorted(resolved_encoder_kw(encoder, encoder_kw).items(), key=str)
    key = json.dumps([name, fingerprint, tasks, enc_name, enc_kw, memory, per_class, policy, seed, init_seed,
                      asdict(cfg)] + (["train_encoder"] if train_encoder else []), default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def _is_main() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _run_method(name, stream, rep, ytr, yte, n_classes, memory, per_class, policy, cfg, seed, ckpt: Path,
                run_id: str, resume: bool) -> MethodResult:
    from tqdm.auto import tqdm

    T = len(stream)
    main = _is_main()
    bank = ExemplarBank(rep.dim, per_class=per_class, total=None if per_class else memory, policy=policy,
                        seed=seed)
    m = make_method(name, rep.dim, n_classes, bank, cfg, seed)
    R = np.full((T, T), np.nan)
    seen_acc, seen_top5, secs, info = [], [], [], []
    start = 0
    progress = ckpt / "progress.json"
    if resume and progress.is_file():
        p = json.loads(progress.read_text())
        if p["run_id"] == run_id:
            start = p["done"] + 1
            R = np.asarray(p["R"], dtype=float)
            seen_acc, seen_top5, secs = p["seen_acc"], p["seen_top5"], p["secs"]
            info = p.get("info", [{}] * len(secs))
            m.load_state_dict(torch.load(ckpt / "method.pt", weights_only=True))
            m.bank = bank = ExemplarBank.load(ckpt / "bank")
            if rep.trains:
                rep.load_state_dict(torch.load(ckpt / "encoder.pt", weights_only=True))
    for t in tqdm(range(start, T), desc=name, initial=start, total=T, leave=False, disable=not main):
        task = stream[t]
        t0 = time.perf_counter()
        seen_rows = np.concatenate([stream[j].train_rows for j in range(t + 1)])
        rep.fit(m, task, seen_rows, ytr)          # trains the encoder (no-op when frozen)
        rep.refresh(m.bank)                       # exemplars re-encoded by the updated encoder
        out = m.learn(t, rep.train_features(task.train_rows), ytr[task.train_rows], task.train_rows,
                      fit=not rep.trains) or {}
        secs.append(time.perf_counter() - t0)
        info.append({k: float(v) for k, v in out.items() if isinstance(v, (int, float, np.floating, np.integer))})
        test_rows = np.concatenate([stream[j].test_rows for j in range(t + 1)])
        top1, top5 = _evaluate(m.scores(rep.test_features(test_rows)), yte[test_rows], m.seen, n_classes)
        owner = np.concatenate([np.full(len(stream[j].test_rows), j) for j in range(t + 1)])
        for j in range(t + 1):
            R[t, j] = float(top1[owner == j].mean())
        seen_acc.append(float(top1.mean()))
        seen_top5.append(float(top5.mean()))
        # ============ checkpoint: state first, then the progress marker that points at it ============
        if not main:
            continue
        ckpt.mkdir(parents=True, exist_ok=True)
        atomic_write(ckpt / "method.pt", lambda f: torch.save(m.state_dict(), f))
        if rep.trains:
            atomic_write(ckpt / "encoder.pt", lambda f: torch.save(rep.state_dict(), f))
        m.bank.save(ckpt / "bank")
        atomic_write(progress, lambda f: f.write(json.dumps(
            {"run_id": run_id, "done": t, "R": np.nan_to_num(R, nan=-1).tolist(), "seen_acc": seen_acc,
             "seen_top5": seen_top5, "secs": secs, "info": info}).encode()))
    R = np.where(R < 0, np.nan, R)
    summary = summarize(R)
    summary["top5_last"] = seen_top5[-1]
    return MethodResult(np.where(np.isnan(R), None, R).tolist(), seen_acc,
                        seen_top5 if n_classes > 10 else None, secs, summary, info)


def plot_accuracy(result: RunResult, path: Path) -> None:
    """Accuracy on all classes seen against the number of classes seen, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in result.methods.items():
        xs = [result.classes_per_task * (i + 1) for i in range(len(r.seen_accuracy))]
        ax.plot(xs, [100 * a for a in r.seen_accuracy], "o-", label=f"{name} (last {100 * r.seen_accuracy[-1]:.1f})")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 accuracy on seen classes (%)")
    ax.set_title(f"{result.dataset}, {result.tasks} tasks, memory {result.memory}, encoder {result.encoder}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
