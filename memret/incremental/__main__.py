"""Command line for :func:`memret.incremental.run`, single process or under ``torchrun``.

    python -m memret.incremental --dataset cifar10 --tasks 5 --method mtn replay icarl knn --memory 2000
    python -m memret.incremental --dataset cifar10 --encoder resnet32_cifar --train-encoder --epochs 30
    python -m memret.incremental --dataset cifar10 --method slda --encoder kmeans_patches \\
        --encoder-kw '{"n_centroids": 1600, "encoding": "soft", "layers": 2}' --mirror-views true --shift-views 2
        # the best label-free run: 80.8 +- 0.3% on three class orders, 39-42 min on 2 cores (RESULTS 10.16)
    torchrun --nproc_per_node 8 -m memret.incremental --dataset imagenet1k --root /data/imagenet \\
        --encoder resnet18 --train-encoder --device cuda --epochs 30

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here (NCCL on
GPUs, gloo on CPUs): feature extraction is split across ranks and encoder training is
data parallel; rank 0 writes the checkpoints, ``results.json`` and the plot. The table
goes to stderr and the summary as one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from memret.incremental.catalog import METHODS
from memret.incremental.training import TrainConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m memret.incremental", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", help="cifar10 | cifar100 | imagenet1k | digits")
    ap.add_argument("--root", default=None, help="data folder (default: $MEMRET_DATA, ../shared/data)")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--method", nargs="+", default=["mtn"], choices=METHODS)
    ap.add_argument("--encoder", default=None,
                    help="memret.encoders name (default: kmeans_patches under 64 px, patch_dictionary stride 4 above)")
    ap.add_argument("--checkpoint", default=None, help="encoder weights to start from (timm, DINO or MSN format)")
    ap.add_argument("--encoder-kw", type=json.loads, default={},
                    help='encoder constructor arguments as JSON, e.g. \'{"n_centroids": 1600}\'')
    ap.add_argument("--train-encoder", action="store_true", help="train the encoder on the stream")
    ap.add_argument("--memory", type=int, default=2000, help="total exemplar budget")
    ap.add_argument("--per-class", type=int, default=None, help="fixed exemplars per class instead of --memory")
    ap.add_argument("--policy", default="herding")
    ap.add_argument("--seed", type=int, default=1993, help="class order (iCaRL's 1993)")
    ap.add_argument("--init-seed", type=int, default=None,
                    help="initialisation and shuffles (default: --seed, as before the two were separate)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (under torchrun: the rank's local GPU)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-resume", action="store_true")
    for f in fields(TrainConfig):  # every training knob: --epochs, --lr, --k, --mtn-layers, --encoder-lr, ...
        kind = {"int": int, "float": float, "str": str, "bool": lambda s: s.lower() in ("1", "true", "yes"),
                "tuple[float, ...]": lambda s: tuple(float(v) for v in s.split(",")),  # --slda-shrinkages 1e-3,0.1
                "tuple[int, ...]": lambda s: tuple(int(v) for v in s.split(","))}      # --slda-blocks 12800,6400
        t = str(f.type).replace("| None", "").strip()
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind.get(t, str), default=None, dest=f"cfg_{f.name}")
    args = ap.parse_args(argv)

    import torch

    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1 and not dist.is_initialized():
        # Avalanche builds its default loggers at import and refuses to on non-main ranks once a group exists
        import avalanche.benchmarks.scenarios  # noqa: F401

        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    cfg = TrainConfig(**{f.name: getattr(args, f"cfg_{f.name}") for f in fields(TrainConfig)
                         if getattr(args, f"cfg_{f.name}") is not None})
    from memret.incremental.run import run

    res = run(args.dataset, tasks=args.tasks, method=args.method, encoder=args.encoder,
              memory=None if args.per_class else args.memory, per_class=args.per_class, policy=args.policy,
              seed=args.seed, init_seed=args.init_seed, root=args.root, out=args.out, config=cfg, device=device,
              encoder_kw={**args.encoder_kw, **({"checkpoint": args.checkpoint} if args.checkpoint else {})},
              resume=not args.no_resume, train_encoder=args.train_encoder)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(res.table(), file=sys.stderr)
        print(f"results: {res.out}/results.json", file=sys.stderr)
        print(json.dumps({m: r.summary for m, r in res.methods.items()}))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
