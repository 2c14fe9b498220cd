"""Worker for test_two_process_runs_match_one_process: one rank of a 2-process gloo group running
``python -m memret.retrieval.train``'s main() twice (MoCo pre-training, then fine-tuning) in one group."""

import json
import sys

import torch.distributed as dist

from memret.retrieval.train.__main__ import main

rank, world, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
dist.init_process_group("gloo", rank=rank, world_size=world)
for argv in runs:  # each run's arguments as a JSON list
    main(json.loads(argv))
# every rank must be done with the collectives before any rank tears gloo down (std::terminate otherwise)
dist.barrier()
dist.destroy_process_group()
