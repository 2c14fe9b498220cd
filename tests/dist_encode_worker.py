"""Worker for test_distributed_encoding: one rank of a 2-process gloo group encoding a text list."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from memret.retrieval import TextEncoder

model, out, rank, world = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dist.init_process_group("gloo", rank=rank, world_size=world)
texts = json.loads((out / "texts.json").read_text())
emb = TextEncoder(model, device="cpu", batch_size=4).encode(texts)
np.save(out / f"emb{rank}.npy", emb)
# every rank must be done with the collectives before any rank tears gloo down: destroying the
# group while a peer is still inside all_gather_object aborts in gloo's C++ threads (std::terminate)
dist.barrier()
dist.destroy_process_group()
# skip interpreter finalisation: gloo's C++ threads can still hold Python objects then and abort the process
# ("terminate called without an active exception"; pytorch/pytorch#179291), seen once in ~20 CI runs after the
# embeddings above were saved; the assertions are on those files
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)

