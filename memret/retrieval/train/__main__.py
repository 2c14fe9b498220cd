"""Train a dense retriever from the command line.

    python -m memret.retrieval.train --mode unsupervised|finetune --data DIR --model MODEL --out DIR [--minutes M]

``unsupervised``: Contriever pre-training on a corpus alone (a BEIR folder, JSONL or .txt files, streamed):
independent cropping + word deletion, MoCo (``--objective moco``, default) or in-batch negatives.
``finetune``: (query, positive) pairs from a BEIR folder's ``qrels/<split>.tsv`` or a JSONL file, in-batch
negatives plus hard negatives mined with BM25 or the starting model, known positives excluded.
The output folder loads with ``memret.retrieval.TextEncoder(DIR)`` and transformers; it also holds
``checkpoint.pt`` (rerunning the same command resumes), ``log.jsonl``, ``loss.png`` and ``train_config.json``.
Under ``torchrun --nproc_per_node N`` the global batch is split over N processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from memret.train import distributed_session, is_main, rank_world


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m memret.retrieval.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["unsupervised", "finetune"], required=True)
    ap.add_argument("--data", required=True, help="corpus (unsupervised) or BEIR folder / pairs JSONL (finetune)")
    ap.add_argument("--model", required=True, help="starting checkpoint (hub name or local folder)")
    ap.add_argument("--out", required=True, help="output folder (resumed from if it holds checkpoint.pt)")
    ap.add_argument("--minutes", type=float, help="time budget; sizes the schedule when --steps/--epochs are absent")
    ap.add_argument("--steps", type=int, help="optimizer steps")
    ap.add_argument("--epochs", type=float, help="finetune: passes over the training queries")
    ap.add_argument("--batch-size", type=int, default=32, help="global batch (split over torchrun processes)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (unsupervised 5e-5, finetune 2e-5)")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of steps warming up")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--clip", type=float, default=None, help="gradient-norm clipping")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--pooling", choices=["mean", "cls"], help="default: the model folder's, else mean")
    ap.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                    help="L2-normalise embeddings (default: the model folder's, else off)")
    ap.add_argument("--max-length", type=int, help="passage max tokens in training (default: the model's, else "
                    "512); the exported folder keeps the model's own length for evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--export-every", type=int, default=None,
                    help="also export the encoder to OUT/step-N every N steps (finetune: 0 = every epoch)")
    g = ap.add_argument_group("unsupervised")
    g.add_argument("--objective", choices=["moco", "inbatch"], default="moco")
    g.add_argument("--queue-size", type=int, default=131_072)
    g.add_argument("--momentum", type=float, default=0.9995)
    g.add_argument("--ratio-min", type=float, default=0.05)
    g.add_argument("--ratio-max", type=float, default=0.5)
    g.add_argument("--delete", type=float, default=0.1, help="word-deletion probability")
    g.add_argument("--chunk-length", type=int, default=256)
    g.add_argument("--shuffle-buffer", type=int, default=10_000)
    f = ap.add_argument_group("finetune")
    f.add_argument("--split", default="train", help="qrels split of a BEIR folder")
    f.add_argument("--negatives", choices=["bm25", "dense", "none"], default="bm25",
                   help="hard-negative miner: BM25, or the starting model")
    f.add_argument("--hard-negatives", type=int, default=1, help="hard negatives per query and step")
    f.add_argument("--depth", type=int, default=30, help="mined negatives per query to draw from")
    f.add_argument("--skip", type=int, default=0, help="skip the top mined ranks (possible false negatives)")
    f.add_argument("--holdout", type=float, default=0.0, help="fraction of queries held out for validation")
    f.add_argument("--query-max-length", type=int, default=64)
    f.add_argument("--cache", default="indices", help="where the BM25 index for mining is kept")
    return ap


def _slice(rows: list, rank: int, world: int) -> list:
    if len(rows) % world:
        raise ValueError(f"a global batch of {len(rows)} does not split over {world} processes")
    n = len(rows) // world
    return rows[rank * n:(rank + 1) * n]


def _finetune_data(args, encoder, tokenizer, max_length, device):
    from memret.retrieval.train.finetune import (FinetuneBatches, holdout, mine, pairs_from_beir,
                                                 pairs_from_jsonl, write_pairs_info)

    pairs = pairs_from_jsonl(args.data) if str(args.data).endswith(".jsonl") else pairs_from_beir(args.data, args.split)
    pairs, held = holdout(pairs, args.holdout, args.seed)
    if args.hard_negatives and args.negatives != "none":
        given = pairs.negatives
        if args.negatives == "bm25":  # rank 0 mines; the others receive its lists
            box = [None]
            if is_main():
                from memret.retrieval import BM25Retriever

                box = [mine(pairs, BM25Retriever(cache_dir=args.cache), args.depth + args.skip)]
            if rank_world()[1] > 1:
                torch.distributed.broadcast_object_list(box, 0)
            mined = box[0]
        else:  # the starting model itself; every rank encodes a share of the corpus
            from memret.retrieval import DenseRetriever, TextEncoder

            enc = TextEncoder(args.model, pooling=encoder.pooling, normalize=encoder.normalize,
                              passage_max_length=max_length, query_max_length=args.query_max_length,
                              device=str(device))
            mined = mine(pairs, DenseRetriever(enc, cache_dir=None, show_progress=is_main()), args.depth + args.skip)
        pairs.negatives = {q: given.get(q, []) + [d for d in mined.get(q, []) if d not in given.get(q, [])]
                           for q in pairs.queries}
    if is_main():
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_pairs_info(Path(args.out) / "pairs.json", pairs, held)
    hard = args.hard_negatives if any(pairs.negatives.values()) else 0
    source = FinetuneBatches(pairs, args.batch_size, hard, args.depth, args.skip, args.seed)

    def batches(start: int):
        s = start
        while True:
            yield source.batch(s)
            s += 1

    def to_inputs(batch: dict) -> dict:
        rank, world = rank_world()
        tok = lambda texts, n: tokenizer(texts, truncation=True, max_length=n, padding=True,  # noqa: E731
                                         return_tensors="pt").to(device)
        q = tok(_slice(batch["q"], rank, world), args.query_max_length)
        k = tok(_slice(batch["k"], rank, world), max_length)
        out = {"q_ids": q["input_ids"], "q_mask": q["attention_mask"], "k_ids": k["input_ids"],
               "k_mask": k["attention_mask"],
               "exclude": torch.from_numpy(np.stack(_slice(list(batch["exclude"]), rank, world))).to(device)}
        if batch["n"]:
            n = tok(_slice(batch["n"], rank, world), max_length)
            out.update(n_ids=n["input_ids"], n_mask=n["attention_mask"])
        return out

    steps = args.steps or (int(round(args.epochs * source.steps_per_epoch)) if args.epochs else None)
    if args.export_every == 0:
        args.export_every = source.steps_per_epoch
    return batches, to_inputs, steps, {"train_queries": len(pairs), "holdout_queries": len(held),
                                       "steps_per_epoch": source.steps_per_epoch, "hard_negatives": hard}


def _unsupervised_data(args, tokenizer, device):
    from memret.retrieval.train.corpus import CropPairs, pad

    source = CropPairs(args.data, tokenizer, args.chunk_length, args.ratio_min, args.ratio_max, args.delete,
                       args.seed, args.shuffle_buffer)

    def to_inputs(batch: dict) -> dict:
        rank, world = rank_world()
        q_ids, q_mask = pad(_slice(batch["q"], rank, world), tokenizer.pad_token_id)
        k_ids, k_mask = pad(_slice(batch["k"], rank, world), tokenizer.pad_token_id)
        return {"q_ids": q_ids.to(device), "q_mask": q_mask.to(device), "k_ids": k_ids.to(device),
                "k_mask": k_mask.to(device)}

    return (lambda start: source.batches(args.batch_size, start)), to_inputs, args.steps, {}


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.steps is None and args.epochs is None and args.minutes is None:
        sys.exit("give --steps, --epochs (finetune) or --minutes")
    from memret.retrieval.train.encoder import load_encoder, save_encoder
    from memret.retrieval.train.loop import LoopConfig, fit
    from memret.retrieval.train.moco import InBatch, MoCo

    with distributed_session(str(device)) as (rank, world):
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        encoder, tokenizer, model_max_length = load_encoder(args.model, args.pooling, args.normalize)
        max_length = args.max_length or model_max_length  # training truncation (a speed knob)
        if args.mode == "finetune":
            batches, to_inputs, steps, info = _finetune_data(args, encoder, tokenizer, max_length, device)
            model = InBatch(encoder, args.temperature, args.label_smoothing)
            lr = args.lr or 2e-5
        else:
            batches, to_inputs, steps, info = _unsupervised_data(args, tokenizer, device)
            model = (MoCo(encoder, args.queue_size, args.momentum, args.temperature, args.label_smoothing)
                     if args.objective == "moco" else InBatch(encoder, args.temperature, args.label_smoothing))
            lr = args.lr or 5e-5
        model.to(device)
        cfg = LoopConfig(lr=lr, warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, steps=steps,
                         minutes=args.minutes, checkpoint_every=args.checkpoint_every,
                         export_every=args.export_every or None, seed=args.seed,
                         device=str(device), amp=not args.no_amp)
        out = Path(args.out)
        if is_main():
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_config.json").write_text(json.dumps({**vars(args), "lr": lr, "world_size": world,
                                                               "pooling": encoder.pooling, "normalize":
                                                               encoder.normalize, "max_length": max_length,
                                                               "model_max_length": model_max_length,
                                                               **info}, indent=2))
        summary = fit(model, batches, to_inputs, cfg, out,
                      lambda d: save_encoder(model.encoder, tokenizer, d, model_max_length))
    if rank == 0:
        print(json.dumps({**summary, "out": str(out)}))
    return summary


if __name__ == "__main__":
    main()
