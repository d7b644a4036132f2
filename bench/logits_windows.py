"""What `data.logits_windows` saves: LM-head FLOPs of the bench step, and positions on real pairs.

    python bench/logits_windows.py [--pairs DIR_OR_JSONL --tokenizer DIR] [--parts 1 2 4 8]

1. The `bench/train_step.py` DPO step (bench_32m, 8 pairs of 64 prompt + 192 response tokens,
   reference online), compiled for each n: XLA's own FLOP count (`cost_analysis`), compile time.
2. With `--pairs`: the share of LM-head positions a run over that dataset keeps (batches of
   `--batch-size` as the Trainer's loader cuts them, max_length 512, bucket 64, 8 lengths), and
   the (length, window) shapes it would compile. Each window beyond the first at a length is one
   more compile of the train step, which a short run may not earn back.
No timing here: see bench/train_step.py --logits-windows N for that (on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import train_step as bench  # noqa: E402
from musc_jax.data.batching import BatchingConfig, PairLoader, logits_window, tokenize_pairs  # noqa: E402
from musc_jax.models import ModelConfig, init_model  # noqa: E402


def step_flops(parts_list: list[int]) -> None:
    cfg = ModelConfig.preset("bench_32m")
    graphdef, params = nnx.split(init_model(cfg, seed=0))
    batch = {k: jnp.asarray(v) for k, v in bench.make_pairs(cfg.vocab_size, seed=0).items()}
    base = None
    for parts in parts_list:
        window = logits_window([bench.PROMPT] * 2 * bench.PAIRS, bench.LENGTH, parts)
        t0 = time.perf_counter()
        runner = bench.OursRunner(graphdef, params, params, batch, "online", 100, window=window)
        cost = runner.step.cost_analysis()
        flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
        base = base or flops
        print(f"bench step, logits_windows={parts}: LM head over {window or bench.LENGTH - 1} of "
              f"{bench.LENGTH - 1} positions; XLA FLOPs {flops / 1e9:.1f} G ({flops / base:.3f}x); "
              f"compile {time.perf_counter() - t0:.1f} s")


def dataset_share(path: str, tokenizer: str, parts_list: list[int], batch_size: int) -> None:
    from transformers import AutoTokenizer

    from musc_jax.data import pairs_io
    tok = AutoTokenizer.from_pretrained(tokenizer)
    data = tokenize_pairs(pairs_io.read_pairs(path).rows, tok,
                          BatchingConfig(max_length=512, max_prompt_length=256))
    print(f"{path}: {len(data.examples)} pairs, batches of {batch_size}")
    for parts in parts_list:
        full = kept = 0
        shapes = set()
        loader = PairLoader(data, batch_size=batch_size, seed=0, bucket=64, max_length=512,
                            max_buckets=8, num_epochs=1, logits_windows=parts)
        for b in loader:
            t = b["chosen_ids"].shape[1]
            w = int(b["logits_window"]) or t - 1
            full, kept = full + t - 1, kept + w
            shapes.add((t, w))
        print(f"  logits_windows={parts}: LM-head positions kept {kept / full:.3f}; "
              f"(length, window) shapes {sorted(shapes)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--pairs", help="a pairs dataset (Arrow dir, JSONL or shard dir)")
    ap.add_argument("--tokenizer", help="the tokenizer (an HF model dir) for --pairs")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()}")
    step_flops(args.parts)
    if args.pairs:
        dataset_share(args.pairs, args.tokenizer, args.parts, args.batch_size)


if __name__ == "__main__":
    main()
