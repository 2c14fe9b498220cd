"""python -m memret.pretrain --objective dino|msn|loca|swav --encoder NAME --data cifar10 --minutes M --out DIR

Writes DIR/checkpoint.pt (loadable by ``memret.encoders.create(NAME, checkpoint=...)``), DIR/train_state.pt
(exact resume: run the same command again), DIR/knn.png (k-NN top-1 per epoch), DIR/result.json, and
prints one JSON line last: objective, encoder, checkpoint, knn_top1 (full train bank -> test split,
k = 20, T = 0.07), knn_top1_random_init (with --compare-random-init: the same encoder at its initial
weights, measured in the same run), linear_top1 (with --linear-probe), epochs, steps, seconds.
Runs under torchrun (DDP, or --sharding fsdp).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m memret.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", required=True, choices=["dino", "msn", "loca", "swav"])
    p.add_argument("--encoder", required=True, help="a memret.encoders name, e.g. vit_tiny_cifar, resnet32_cifar")
    p.add_argument("--encoder-kw", default="{}", help="JSON kwargs for memret.encoders.create")
    p.add_argument("--data", default="cifar10", help="cifar10 | cifar100 | digits | an image folder")
    p.add_argument("--root", default=None, help="where the data set lies")
    p.add_argument("--image-size", type=int, default=32, help="folder images are resized to this")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--minutes", type=float, help="training time budget (evaluation not included)")
    length.add_argument("--epochs", type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW lr per 256 images")
    p.add_argument("--weight-decay", type=float, nargs=2, default=(0.04, 0.4), metavar=("START", "END"))
    p.add_argument("--warmup-frac", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=3.0)
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--local-size", type=int, default=16)
    p.add_argument("--global-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="area range of the global crops (dino, swav; default: the objective's own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="objective keyword, e.g. --set out_dim=2048 --set momentum_teacher=0.99")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--channels-last", action="store_true", help="NHWC tensors (faster convolutions on CPUs)")
    p.add_argument("--sharding", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--knn-every", type=int, default=1, help="epochs between k-NN monitor points (0: end only)")
    p.add_argument("--knn-bank", type=int, default=10000, help="bank size of the per-epoch monitor")
    p.add_argument("--knn-test", type=int, default=2000, help="test images of the per-epoch monitor")
    p.add_argument("--monitor-split", choices=["test", "val"], default="test",
                   help="queries of the per-epoch monitor: test images, or (for choosing hyper-parameters) "
                        "--knn-test training images held out of the monitor's bank (labels used for scoring only)")
    p.add_argument("--final-eval", choices=["full", "monitor"], default="full",
                   help="full: whole train split as bank, whole test split; monitor: the monitor's subsets only")
    p.add_argument("--compare-random-init", action="store_true")
    p.add_argument("--linear-probe", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_encoder(name: str, kw: dict, probe_size: int):
    """``memret.encoders.create(name, **kw)``; a ViT that rejects ``probe_size`` inputs (local crops) is
    rebuilt with ``dynamic_img_size=True`` (same weights, position embeddings resized on the fly)."""
    import torch

    import memret.encoders as E

    enc = E.create(name, **kw)
    try:
        with torch.no_grad():
            enc.eval()(torch.zeros(2, 3, probe_size, probe_size))
    except (AssertionError, RuntimeError, ValueError) as e:
        if "dynamic_img_size" in kw:
            raise ValueError(f"encoder {name} cannot take {probe_size}-px crops: {e}") from e
        kw = {**kw, "dynamic_img_size": True}
        enc = E.create(name, **kw)
    return enc.train(), kw


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import numpy as np
    import torch

    from memret.pretrain import OBJECTIVES, PretrainConfig, knn_accuracy, load_images, pretrain
    from memret.pretrain.evaluate import extract_features, knn_classify, linear_probe
    from memret.train import distributed_session, is_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    plt = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is missing: no knn.png (pip install matplotlib)")
    with distributed_session(args.device) as (rank, world):
        device = torch.device(args.device)
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        # ============ data ============
        train, test = load_images(args.data, args.root, args.image_size)
        if test is None and (args.compare_random_init or args.linear_probe):
            raise ValueError(f"{args.data} has no test split to evaluate on")
        # ============ encoder and objective (seeded init: the same weights on every rank) ============
        torch.manual_seed(args.seed)
        enc, enc_kw = build_encoder(args.encoder, json.loads(args.encoder_kw), args.local_size)
        init_state = copy.deepcopy(enc.state_dict())
        make, views_fn = OBJECTIVES[args.objective]
        crop_kw = {} if args.global_scale is None else {"global_scale": tuple(args.global_scale)}
        if crop_kw and args.objective not in ("dino", "swav"):
            raise ValueError(f"--global-scale applies to dino and swav, not {args.objective}")
        views = views_fn(global_size=args.image_size, local_size=args.local_size, n_local=args.local_crops, **crop_kw)
        objective = make(enc, views=views, **parse_sets(args.set))
        if args.channels_last:
            objective.to(memory_format=torch.channels_last)
        # ============ monitor: k-NN on a fixed subset, every --knn-every epochs ============
        monitor = None
        if (test is not None or args.monitor_split == "val") and args.knn_every >= 0:
            if args.monitor_split == "val":  # bank and queries: disjoint rows of the training split
                if not hasattr(train, "take"):
                    raise ValueError("--monitor-split val needs in-memory images (cifar10, digits)")
                rows = np.random.default_rng(1).permutation(len(train))
                bank = train.take(np.sort(rows[:args.knn_bank]))
                mtest = train.take(np.sort(rows[args.knn_bank:args.knn_bank + args.knn_test]))
            else:
                bank, mtest = train.subset(args.knn_bank, seed=1), test.subset(args.knn_test, seed=2)

            def monitor(encoder):
                return knn_accuracy(encoder, bank, mtest, device=device)
        knn0 = monitor(objective.encoder()) if monitor is not None and not (out / "train_state.pt").is_file() else None
        cfg = PretrainConfig(epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay[0], weight_decay_end=args.weight_decay[1],
                             warmup_frac=args.warmup_frac, clip_grad=args.clip_grad, seed=args.seed,
                             knn_every=args.knn_every, sharding=args.sharding, channels_last=args.channels_last)
        meta = {"encoder": args.encoder, "encoder_kw": enc_kw, "objective": args.objective, "argv": sys.argv[1:]}
        t0 = time.perf_counter()
        res = pretrain(objective, train, cfg, device=device, out_dir=out, monitor=monitor,
                       progress=not args.no_progress, encoder_meta=meta)
        seconds = time.perf_counter() - t0
        # ============ final evaluation: full bank, full test split ============
        summary = {"objective": args.objective, "encoder": args.encoder, "encoder_kw": enc_kw,
                   "checkpoint": str(out / "checkpoint.pt"), "epochs": round(res.epochs, 3), "steps": res.steps,
                   "seconds": round(seconds, 1), "seconds_train": round(res.seconds_train, 1),
                   "images_per_second": round(res.images_per_second, 1), "stopped_by_clock": res.stopped_by_clock,
                   "knn_history": ([(0.0, knn0)] if knn0 is not None else []) + res.knn, "loss_history": [round(v, 4) for v in res.losses]}
        if monitor is not None and args.final_eval == "monitor":
            summary["knn_top1"] = res.knn[-1][1] if res.knn else None
            summary["knn_top1_random_init"] = knn0
            summary["note"] = (f"monitor subsets: {args.knn_bank} bank / {args.knn_test} "
                               f"{'held-out training' if args.monitor_split == 'val' else 'test'} images")
        elif test is not None:
            t1 = time.perf_counter()
            trained = objective.encoder()
            ftr = extract_features(trained, train, device=device)
            fte = extract_features(trained, test, device=device)
            summary["knn_top1"] = float((knn_classify(ftr, train.targets, fte) == test.targets).mean())
            if args.linear_probe:
                summary["linear_top1"] = linear_probe(ftr, train.targets, fte, test.targets)["top1"]
            if args.compare_random_init:
                rand = copy.deepcopy(trained)
                rand.load_state_dict(init_state)
                rtr = extract_features(rand, train, device=device)
                rte = extract_features(rand, test, device=device)
                summary["knn_top1_random_init"] = float((knn_classify(rtr, train.targets, rte) == test.targets).mean())
                if args.linear_probe:
                    summary["linear_top1_random_init"] = linear_probe(rtr, train.targets, rte, test.targets)["top1"]
            summary["seconds_eval"] = round(time.perf_counter() - t1, 1)
        if is_main():
            (out / "result.json").write_text(json.dumps(summary, indent=1))
            if plt is not None and summary["knn_history"]:
                hist = summary["knn_history"]
                fig, ax = plt.subplots(figsize=(5, 3.5))
                ax.plot([e for e, _ in hist], [100 * a for _, a in hist], marker="o", label=args.objective)
                if "knn_top1_random_init" in summary:
                    ax.axhline(100 * summary["knn_top1_random_init"], ls="--", c="grey", label="random init (full bank)")
                ax.set_xlabel("epoch")
                ax.set_ylabel(f"k-NN top-1 % ({args.knn_bank} bank, {args.knn_test} {args.monitor_split})")
                kw = {k: v for k, v in enc_kw.items() if k != "dynamic_img_size"}
                ax.set_title(f"{args.objective} / {args.encoder}" + (f" {json.dumps(kw)}" if kw else ""))
                ax.legend()
                fig.tight_layout()
                fig.savefig(out / "knn.png", dpi=120)
            print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
