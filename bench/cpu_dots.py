"""XLA:CPU dots for the dense programs: YNNPACK (XLA's default) vs Eigen, measured.

Why this script exists: under load (a SmolLM2 run sharing the 2 cores) the bench train step
compiled with `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK fusions, dots lowered to
Eigen) ran 1.13x faster than with XLA's defaults, which looked like the missing CPU-step speed
of issue 14. On a quiet machine it mostly is not (docs/results/bench/cpu_dots.txt, three runs
the same evening: online step 0.98x, 1.03x, 1.02x; precomputed 1.01x, 1.14x, 1.07x; scoring
0.95x, 1.04x, 1.02x), inside the slow host's run-to-run spread, so musc_jax keeps XLA's
default. YNNPACK's thread pool suffers more from sharing the cores than Eigen's, as torch's
does: one more case of a loaded machine flattering a change. Rerun it on a new host or jaxlib
before changing the default.

The bench train step of `bench/train_step.py` (bench_32m, 8 pairs x 256 tokens, DPO, AdamW)
with the reference online and precomputed, and the teacher-forced scoring pass
(`musc_jax.scoring.response_token_logps`, as in the reference log-probs and KL-weight passes),
each compiled twice in one process: with XLA's defaults and with YNNPACK off
(`jax.jit(..., compiler_options=EIGEN)`). Rounds are interleaved (default, Eigen, default, ...)
so that a change in the machine's load hits both alike; each time is the median of `--rounds`
rounds after one warm-up round. The two variants' losses are printed to show they compute the
same step.

    python bench/cpu_dots.py [--rounds 5]

The last line is machine-readable:

    cpu_dots: online_ynn_s=.. online_eigen_s=.. online_speedup=.. pre_speedup=.. score_speedup=..
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_step as bench  # noqa: E402  (sets the offline environment first)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from common import median  # noqa: E402
from musc_jax import scoring  # noqa: E402
from musc_jax.models import ModelConfig, init_model  # noqa: E402
from musc_jax.scoring import response_token_logps  # noqa: E402

# An empty list of YNNPACK fusion types: no YNNPACK fusions, XLA:CPU's Eigen dots.
EIGEN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if jax.default_backend() != "cpu":
        raise SystemExit(f"cpu_dots compares XLA:CPU options; the backend is {jax.default_backend()}")
    if "ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
        raise SystemExit("XLA_FLAGS sets the YNNPACK option: unset it to compare the defaults")
    print(f"jax {jax.__version__}; Eigen variant: compiler_options={EIGEN}")

    cfg = ModelConfig.preset("bench_32m")
    model = init_model(cfg, seed=0)
    batch = {k: jnp.asarray(v) for k, v in bench.make_pairs(cfg.vocab_size, seed=0).items()}
    graphdef, params = nnx.split(model)
    ref = jax.tree.map(jnp.copy, params)
    batch_pre = dict(batch)
    for side in ("chosen", "rejected"):
        batch_pre[f"ref_{side}_token_logps"] = scoring.score(
            model, batch[f"{side}_ids"], batch[f"{side}_mask"], batch[f"{side}_response_mask"])
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    resp = jnp.concatenate([batch["chosen_response_mask"], batch["rejected_response_mask"]])

    runs = {}
    for name, opts in (("ynn", None), ("eigen", EIGEN)):
        online = bench.OursRunner(graphdef, params, ref, batch, "online", 100, opts)
        pre = bench.OursRunner(graphdef, params, None, batch_pre, "precompute", 100, opts)
        score = jax.jit(lambda p, i, m, r: response_token_logps(nnx.merge(graphdef, p), i, m, r),
                        compiler_options=opts).lower(params, ids, mask, resp).compile()
        runs[name] = {"online": online, "pre": pre,
                      "score": lambda s=score: jax.block_until_ready(s(params, ids, mask, resp))}
        print(f"{name}: compiled (online {online.compile_s:.1f} s, precomputed {pre.compile_s:.1f} s)")
    times = {(n, k): [] for n in runs for k in ("online", "pre", "score")}
    for r in range(args.rounds + 1):   # round 0: warm-up
        for name, fns in runs.items():
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                if r:
                    times[(name, k)].append(time.perf_counter() - t)
    for k in ("online", "pre"):
        losses = [float(runs[n][k].metrics[-1]["loss"]) for n in runs]
        print(f"{k}: last loss ynn {losses[0]:.7f} eigen {losses[1]:.7f}")
    print(f"{'program':<28s} {'ynn (XLA default)':>20s} {'eigen':>14s} {'speedup':>8s}")
    med = {key: median(v) for key, v in times.items()}
    for k, label in (("online", "train step, ref online"), ("pre", "train step, ref precomputed"),
                     ("score", "scoring forward (16 x 256)")):
        print(f"{label:<28s} {med[('ynn', k)]:>18.3f} s {med[('eigen', k)]:>12.3f} s "
              f"{med[('ynn', k)] / med[('eigen', k)]:>7.2f}x")
    paired = {k: median([a / b for a, b in zip(times[("ynn", k)], times[("eigen", k)])])
              for k in ("online", "pre", "score")}
    print("per-round ratios (default / Eigen, measured back to back), median: " +
          ", ".join(f"{k} {v:.3f}" for k, v in paired.items()))
    print(f"cpu_dots: online_ynn_s={med[('ynn', 'online')]:.4f} "
          f"online_eigen_s={med[('eigen', 'online')]:.4f} "
          f"online_speedup={med[('ynn', 'online')] / med[('eigen', 'online')]:.3f} "
          f"pre_speedup={med[('ynn', 'pre')] / med[('eigen', 'pre')]:.3f} "
          f"score_speedup={med[('ynn', 'score')] / med[('eigen', 'score')]:.3f}")


if __name__ == "__main__":
    main()
