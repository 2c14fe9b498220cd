"""Encoder throughput against timm, and FlexiViT throughput against patch size, in one run.

    python experiments/bench_encoders.py [--batch 32] [--repeat 3]

1. For each memret encoder with a timm counterpart of the same configuration, inference
   images/s (fp32, CPU, eval, ``torch.inference_mode``) of memret's ``enc(x)`` and timm's
   ``model.forward_head(model.forward_features(x), pre_logits=True)``, timed alternately;
   ratio = memret / timm.
2. FlexiViT-S (240x240 input): images/s and token count at each listed patch size;
   table plus ``<out>/flexivit_patch_sweep.png``.
Writes ``<out>/bench_encoders.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import memret.encoders as E

PAIRS = [  # memret name, timm name, input size
    ("vit_tiny", "vit_tiny_patch16_224", 224),
    ("vit_small", "vit_small_patch16_224", 224),
    ("xcit_nano_12_p16", "xcit_nano_12_p16_224", 224),
    ("resmlp_12", "resmlp_12_224", 224),
    ("resnet18", "resnet18", 224),
]


def images_per_s(fn, x: torch.Tensor, repeat: int) -> float:
    best = float("inf")
    with torch.inference_mode():
        fn(x)  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t0)
    return x.shape[0] / best


def main() -> None:
    import timm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    torch.manual_seed(0)
    res: dict = {"threads": torch.get_num_threads(), "pairs": [], "flexivit": []}
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")

    for ours_name, timm_name, size in PAIRS:
        ours = E.create(ours_name).eval()
        ref = timm.create_model(timm_name, pretrained=False, num_classes=0).eval()
        x = torch.randn(args.batch, 3, size, size)
        ips_ref = ips_ours = 0.0
        for _ in range(2):  # alternate
            ips_ref = max(ips_ref, images_per_s(lambda t: ref.forward_head(ref.forward_features(t), pre_logits=True),
                                                x, args.repeat))
            ips_ours = max(ips_ours, images_per_s(ours, x, args.repeat))
        row = {"memret": ours_name, "timm": timm_name, "timm_img_s": ips_ref, "memret_img_s": ips_ours,
               "ratio": ips_ours / ips_ref}
        res["pairs"].append(row)
        print(f"{ours_name:<18} vs {timm_name:<22} timm {ips_ref:7.1f} img/s  memret {ips_ours:7.1f} img/s  "
              f"ratio {row['ratio']:.3f}", flush=True)

    flexi = E.create("flexivit_small").eval()
    x = torch.randn(args.batch, 3, 240, 240)
    print("\nFlexiViT-S, 240x240: patch  tokens  img/s")
    for p in flexi.patch_sizes:
        if p < 10:  # 900 tokens: minutes on 2 cores, and the trend is clear without it
            continue
        ips = images_per_s(lambda t: flexi(t, patch_size=p), x, args.repeat)
        tokens = (240 // p) ** 2
        res["flexivit"].append({"patch": p, "tokens": tokens, "img_s": ips})
        print(f"{'':>19}{p:>6}{tokens:>8}{ips:>7.1f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_encoders.json").write_text(json.dumps(res, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ps = [r["patch"] for r in res["flexivit"]]
    ax.plot(ps, [r["img_s"] for r in res["flexivit"]], "o-", label="images/s")
    ax.set_xlabel("patch size")
    ax.set_ylabel("images/s (2 CPU cores, fp32)")
    ax2 = ax.twinx()
    ax2.plot(ps, [r["tokens"] for r in res["flexivit"]], "s--", color="tab:orange", label="tokens")
    ax2.set_ylabel("tokens per image")
    ax.set_title("FlexiViT-S: one model, any patch size")
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.88))
    fig.tight_layout()
    fig.savefig(out / "flexivit_patch_sweep.png", dpi=120)
    print(f"plot: {out / 'flexivit_patch_sweep.png'}")


if __name__ == "__main__":
    main()
