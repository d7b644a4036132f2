"""How fast `bench/generate.py`'s workloads could possibly run here: a dense-only floor.

Issue 15 asks for 3x transformers `generate` on the fixed workload and 8x on the mixed one.
This script bounds what any engine built on the dot kernels available on this machine can
reach, by timing only the part of decoding no engine can skip: streaming every dense weight
matrix of `bench_32m` once per decode step for the rows still alive, and the prompts' dense
pass (prefill). Attention, sampling, embedding, norms, the loop and the host are left out
(counted as free), so the real engines can only be slower than the floor.

* dense step(b): for every layer x @ W_qkv, (x_q) @ W_o, x @ W_gate, x @ W_up, h @ W_down, then
  the LM head, for b rows (shapes of `ModelConfig.preset("bench_32m")`, float32, random
  weights), timed with XLA:CPU's default dots, with Eigen's dots (`EIGEN_DOTS`: only
  reductions in YNNPACK), with torch (`F.linear`, all cores) and with our CPU kernel on
  weights packed once (`cpu_kernels.packed_matmul`, gate|up fused, as the engine decodes;
  column "packed", left out where the kernel cannot be built); the floor takes the
  fastest at each b, and the lower monotone envelope over b (a step for more rows never
  costs less than one for fewer), so noise can only lower it.
* prefill: the same layers (no LM head) over 512 prompt rows at once, per token, times the
  workload's prompt tokens.
* fixed: 128 steps at 16 rows + prefill of 16 x 64 tokens. mixed: one step per position up to
  the longest output, each at the number of outputs still running (perfect continuous batching,
  no idle slots), + prefill of every prompt.

Each floor is compared with transformers `generate` timed in the same run (as in
`bench/generate.py`, `--repeats` calls, median): the highest speedup an engine could show is
hf_s / floor_s. `--skip-hf` reads transformers' times from the committed generate_*.txt
instead (said so in the output).

    python bench/decode_floor.py [--repeats 3] [--skip-hf]     # ~6 min on 2 cores

writes docs/results/bench/decode_floor.txt (`--out ''`: nowhere); the last line is:

    decode_floor: fixed_floor_s=<f> fixed_hf_s=<f> fixed_max_vs_hf=<f> mixed_floor_s=<f> mixed_hf_s=<f> mixed_max_vs_hf=<f>
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import median  # noqa: E402
from generate import FIXED, MIXED, time_hf, workloads  # noqa: E402
from musc_jax.engine import cpu_kernels  # noqa: E402
from musc_jax.models import ModelConfig, init_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "bench"
BATCHES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
PREFILL_ROWS = 512
# XLA:CPU with only reductions in YNNPACK: lone dots go to Eigen (the decode engine's setting for
# programs of <= 32 slots until the CPU attention kernel made it no faster, 2026-12-01)
EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def dense_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per-layer dense matrices [in, out] of `cfg` (q/k/v fused as the engine's Attention.qkv)."""
    rng = np.random.default_rng(seed)
    e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * d

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02)

    n = cfg.num_layers
    return {"qkv": [w(e, qkv) for _ in range(n)], "o": [w(cfg.num_heads * d, e) for _ in range(n)],
            "gate": [w(e, f) for _ in range(n)], "up": [w(e, f) for _ in range(n)],
            "down": [w(f, e) for _ in range(n)], "head": [w(e, cfg.vocab_size)]}


def jax_dense(ws, x, head: bool):
    """x [b, E] -> the dense pass; the attention output is stood in for by q (same shape)."""
    hq = ws["o"][0].shape[0]
    for wqkv, wo, wg, wu, wd in zip(ws["qkv"], ws["o"], ws["gate"], ws["up"], ws["down"]):
        x = x + (x @ wqkv)[:, :hq] @ wo
        x = x + (jax.nn.silu(x @ wg) * (x @ wu)) @ wd
    return x @ ws["head"][0] if head else x


def pack_dense(ws) -> dict:
    """The weights in the CPU kernel's panels, gate|up side by side (as `pack_decode_weights`)."""
    pack = jax.jit(cpu_kernels.pack)
    return {"qkv": [pack(w) for w in ws["qkv"]], "o": [pack(w) for w in ws["o"]],
            "gate_up": [pack(jnp.concatenate([g, u], 1)) for g, u in zip(ws["gate"], ws["up"])],
            "down": [pack(w) for w in ws["down"]], "head": [pack(ws["head"][0])]}


def packed_dense(pws, x, head: bool, shapes: tuple):
    """`jax_dense` by `cpu_kernels.packed_matmul`; shapes = (qkv width, E, MLP width, vocab)."""
    n_qkv, e, f, vocab = shapes
    mm = cpu_kernels.packed_matmul
    for wqkv, wo, wgu, wd in zip(pws["qkv"], pws["o"], pws["gate_up"], pws["down"]):
        x = x + mm(mm(x, wqkv, n_qkv)[:, :wo.shape[1]], wo, e)
        gu = mm(x, wgu, 2 * f)
        x = x + mm(jax.nn.silu(gu[:, :f]) * gu[:, f:], wd, e)
    return mm(x, pws["head"][0], vocab) if head else x


def torch_dense(ws, x, head: bool):
    import torch.nn.functional as F

    hq = ws["o"][0].shape[1]
    for wqkv, wo, wg, wu, wd in zip(ws["qkv"], ws["o"], ws["gate"], ws["up"], ws["down"]):
        x = x + F.linear(F.linear(x, wqkv)[:, :hq], wo)
        x = x + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
    return F.linear(x, ws["head"][0]) if head else x


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def dense_times(cfg: ModelConfig, ws: dict[str, list[np.ndarray]], rows: list[int], head: bool,
                repeats: int) -> dict:
    """{rows: {library: seconds}} for one dense pass over `rows` rows with the weights `ws`."""
    import torch

    torch.set_num_threads(os.cpu_count())
    jws = jax.tree.map(jnp.asarray, ws)
    tws = {k: [torch.from_numpy(np.ascontiguousarray(m.T)) for m in v] for k, v in ws.items()}
    variants = {"xla": (jax.jit(jax_dense, static_argnums=2), jws),
                "xla_eigen": (jax.jit(jax_dense, static_argnums=2,
                                      compiler_options=dict(EIGEN_DOTS)), jws)}
    if cpu_kernels.decode_kernels_available(jnp.float32):
        shapes = (ws["qkv"][0].shape[1], cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size)
        variants["packed"] = (jax.jit(lambda p, x, h: packed_dense(p, x, h, shapes),
                                      static_argnums=2), pack_dense(jws))
    out = {}
    for b in rows:
        x = np.random.default_rng(b).standard_normal((b, cfg.hidden_size), dtype=np.float32)
        jx, tx = jnp.asarray(x), torch.from_numpy(x)
        row = {name: median_time(lambda f=f, w=w: jax.block_until_ready(f(w, jx, head)), repeats)
               for name, (f, w) in variants.items()}
        with torch.no_grad():
            row["torch"] = median_time(lambda: torch_dense(tws, tx, head), repeats)
        out[b] = row
    return out


def envelope(step: dict[int, dict[str, float]]) -> dict[int, float]:
    """Fastest library per row count, then the lower monotone envelope (non-decreasing in b)."""
    best = {b: min(t.values()) for b, t in step.items()}
    rows = sorted(best)
    return {b: min(best[c] for c in rows if c >= b) for b in rows}


def step_floor(env: dict[int, float], live: int) -> float:
    """Floor of a decode step for `live` rows: the envelope at the largest measured b <= live."""
    return env[max(b for b in env if b <= live)]


def live_rows(budgets: list[int]) -> list[int]:
    """Rows still running at each output position (row i runs budgets[i] steps)."""
    return [sum(n > s for n in budgets) for s in range(max(budgets))]


def floor_seconds(env: dict[int, float], prefill_s_per_token: float, budgets: list[int],
                  prompt_tokens: int) -> float:
    """Floor of one call: a decode step per output position at the rows still running there
    (row i runs budgets[i] steps), plus the prompts' dense pass."""
    return (sum(step_floor(env, b) for b in live_rows(budgets))
            + prefill_s_per_token * prompt_tokens)


def committed_hf(name: str) -> float:
    text = (RESULTS / f"generate_{name}.txt").read_text()
    return float(re.search(r"transformers \(torch\)\s+([\d.]+) s", text).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dense-repeats", type=int, default=15, help="timings per dense pass")
    ap.add_argument("--skip-hf", action="store_true",
                    help="take transformers' times from the committed generate_*.txt")
    ap.add_argument("--out", default=str(RESULTS / "decode_floor.txt"))
    args = ap.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    cfg = ModelConfig.preset("bench_32m")
    fixed, mixed, budgets = workloads(cfg.vocab_size)
    say(f"decode floor, bench_32m; jax {jax.__version__}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at start; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    ws = dense_weights(cfg)
    step = dense_times(cfg, ws, list(BATCHES), True, args.dense_repeats)
    pre = dense_times(cfg, ws, [PREFILL_ROWS], False, args.dense_repeats)[PREFILL_ROWS]
    pre_tok = min(pre.values()) / PREFILL_ROWS
    env = envelope(step)
    weight_mb = sum(m.nbytes for v in ws.values() for m in v) / 1e6
    say(f"dense step (all {weight_mb:.0f} MB of dense weights read once, LM head included), "
        f"ms; floor = fastest library, lower monotone envelope:")
    say(f"  {'rows':>4} {'xla':>8} {'xla_eigen':>9} {'torch':>8} {'packed':>8} {'floor':>8}  GB/s"
        f"  GFLOP/s")
    flops_row = 2 * weight_mb * 1e6 / 4
    for b, t in step.items():
        packed = f"{1e3 * t['packed']:8.2f}" if "packed" in t else f"{'-':>8}"
        say(f"  {b:>4} {1e3 * t['xla']:8.2f} {1e3 * t['xla_eigen']:9.2f} {1e3 * t['torch']:8.2f} "
            f"{packed} {1e3 * env[b]:8.2f} {weight_mb / 1e3 / env[b]:5.1f} "
            f"{b * flops_row / 1e9 / env[b]:8.1f}")
    say(f"  prefill (no LM head), {PREFILL_ROWS} rows: " + ", ".join(
        f"{k} {1e3 * v:.1f} ms" for k, v in pre.items()) + f"; floor {1e6 * pre_tok:.1f} us/token")

    fixed_floor = floor_seconds(env, pre_tok, [FIXED["new"]] * FIXED["batch"],
                                sum(map(len, fixed)))
    mixed_floor = floor_seconds(env, pre_tok, budgets, sum(map(len, mixed)))
    live = live_rows(budgets)
    if args.skip_hf:
        hf_fixed, hf_mixed = committed_hf("fixed"), committed_hf("mixed")
        source = "committed generate_fixed.txt / generate_mixed.txt (not this run)"
    else:
        model = init_model(cfg, seed=0)
        hf_fixed = median(time_hf(model, fixed, [FIXED["new"]] * FIXED["batch"], FIXED["batch"],
                                  args.repeats)[0])
        hf_mixed = median(time_hf(model, mixed, budgets, MIXED["hf_batch"], args.repeats)[0])
        source = f"this run, median of {args.repeats}"
    say(f"transformers generate ({source}): fixed {hf_fixed:.3f} s, mixed {hf_mixed:.3f} s")
    for name, floor, hf, target in (("fixed", fixed_floor, hf_fixed, 3.0),
                                    ("mixed", mixed_floor, hf_mixed, 8.0)):
        say(f"{name}: floor {floor:.3f} s -> at most {hf / floor:.2f}x transformers "
            f"(issue 15's target {target:.0f}x needs {hf / target:.3f} s)")
    say(f"  mixed: {len(live)} decode steps, live rows per step mean {np.mean(live):.1f}, "
        f"{sum(b <= 8 for b in live)} steps with <= 8 rows")
    say(f"decode_floor: fixed_floor_s={fixed_floor:.4f} fixed_hf_s={hf_fixed:.4f} "
        f"fixed_max_vs_hf={hf_fixed / fixed_floor:.3f} mixed_floor_s={mixed_floor:.4f} "
        f"mixed_hf_s={hf_mixed:.4f} mixed_max_vs_hf={hf_mixed / mixed_floor:.3f}")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
