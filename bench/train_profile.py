"""Where our DPO train step spends its time, per op category, from a profiler trace.

The step of `bench/train_step.py` (bench_32m, 8 pairs x (64 prompt + 192 response) tokens,
DPO, AdamW), reference online or precomputed, compiled once and run `--steps` times under
`jax.profiler.trace`. XLA:CPU records one event per executed HLO op; each op is put in a
category by the innermost Python function of its HLO metadata (the backward pass's ops carry
the frames of the forward code they differentiate): MLP dots, q/k/v and o projections,
attention, LM head with its log-softmax, norms, rope, loss, optimizer (clip + AdamW).

    python bench/train_profile.py [--reference online|precompute] [--steps 3] [--top 12]
        [--attention auto|xla|einsum]

On a shared machine absolute times scale with the load; the shares are what to compare.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from common import hlo_instructions, trace_op_times  # noqa: E402
from musc_jax import scoring  # noqa: E402
from musc_jax.models import ModelConfig, init_model  # noqa: E402
from train_step import PAIRS, OursRunner, make_pairs  # noqa: E402

# innermost matching Python function -> category (first match wins, innermost frame first)
CATEGORIES = (
    (("MLP.__call__",), "MLP dots (gate/up/down) and SiLU"),
    (("Attention._project",), "q/k/v projections"),
    (("_dpa", "xla_attention", "_grouped_block", "einsum_attention", "allowed_mask",
      "splash_attention"), "attention (scores, softmax, PV)"),
    (("Attention.__call__",), "o projection"),
    (("_target_logps", "project_logits", "_chunked_target_logps", "token_logps"),
     "LM head and log-softmax"),
    (("RMSNorm.__call__",), "norms"),
    (("apply_rope", "rope_cos_sin"), "rope"),
    (("preference_loss", "dpo_terms", "sequence_logps"), "loss"),
    (("update_fn", "apply_updates", "global_norm", "clip_by_global_norm", "scale_by_adam",
      "_opt_count"), "optimizer (clip + AdamW)"),
)
OTHER = "other (embedding, gathers, copies, bookkeeping)"


def categorize(hlo: str) -> dict[str, tuple[str, str, str]]:
    """HLO instruction name -> (opcode, category, 'shape op_name')."""
    out = {}
    for name, opcode, what, names in hlo_instructions(hlo):
        cat = OTHER
        for fn in names:
            hit = next((label for funcs, label in CATEGORIES if fn in funcs), None)
            if hit:
                cat = hit
                break
        out[name] = (opcode, cat, what)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", choices=("online", "precompute"), default="online")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12, help="also list the N costliest ops")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--category", default="", help="list only the costliest ops of this category "
                    "(a prefix of its name)")
    args = ap.parse_args()

    cfg = ModelConfig.preset("bench_32m")
    model = init_model(cfg, seed=0, attention=args.attention)
    batch = {k: jnp.asarray(v) for k, v in make_pairs(cfg.vocab_size, seed=0).items()}
    graphdef, params = nnx.split(model)
    ref = jax.tree.map(jnp.copy, params)
    if args.reference == "precompute":
        for side in ("chosen", "rejected"):
            batch[f"ref_{side}_token_logps"] = scoring.score(
                model, batch[f"{side}_ids"], batch[f"{side}_mask"], batch[f"{side}_response_mask"])
        ref = None
    runner = OursRunner(graphdef, params, ref, batch, args.reference, total_steps=100)
    runner()                                                   # warm-up
    untraced = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        runner()
        untraced.append(time.perf_counter() - t0)
    kinds = categorize(runner.step.as_text())
    walls = []

    def traced():
        for _ in range(args.steps):
            t0 = time.perf_counter()
            runner()
            walls.append(time.perf_counter() - t0)

    op_ms = trace_op_times(traced)
    per_cat: collections.Counter = collections.Counter()
    per_op: collections.Counter = collections.Counter()
    for name, ms in op_ms.items():
        kind = kinds.get(name)
        if kind and kind[0] not in ("while", "conditional", "call"):
            per_cat[kind[1]] += ms / args.steps
            per_op[(name, *kind)] += ms / args.steps
    ops = sum(per_cat.values())
    step = 1e3 * min(walls)
    print(f"train step ({args.reference} reference): bench_32m, {PAIRS} pairs x 256 tokens; "
          f"{args.steps} steps traced; jax {jax.__version__}")
    print(f"wall {step:.0f} ms per step (traced, best), ops {ops:.0f} ms; untraced best "
          f"{1e3 * min(untraced):.0f} ms")
    for cat, ms in per_cat.most_common():
        print(f"  {cat:<48} {ms:8.1f} ms  {100 * ms / ops:5.1f}%")
    if args.top:
        print("costliest ops (ms per step):")
        for (name, opcode, cat, what), ms in per_op.most_common(args.top):
            if args.category and not cat.startswith(args.category):
                continue
            print(f"  {ms:7.1f} ms  {name:<28} {cat[:30]:<30} {what[:100]}")


if __name__ == "__main__":
    main()
