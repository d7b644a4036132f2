"""Where a decode step of the continuous engine spends its time, per op, from a profiler trace.

Runs the engine's compiled decode segment (`lax.while_loop` of decode steps, sampling included)
on `bench_32m` for `--steps` steps with 16 live slots at position `--pos` (top-p 0.9 sampling,
the fixed workload's cache length), under `jax.profiler.trace` (perfetto JSON). XLA:CPU records
one event per executed HLO op (thunk); each op is put in a category by the Python functions in
its HLO metadata (stack frames: `_decode_attention` -> attention over the cache, `MLP.__call__`
-> MLP dots, `sample`/`top_p_filter` -> sampling, ...). Loop ops (while) are not summed: their
time is their body's ops; "loop and runtime overhead" is the wall time per step minus the ops.

    python bench/decode_profile.py [--steps 40] [--pos 128] [--slots 16] [--length L]

Prints the table (ms per step and share of the op time). On a shared machine absolute times
scale with the load; the shares are what to compare.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from common import hlo_instructions, trace_op_times  # noqa: E402
from musc_jax.engine import continuous  # noqa: E402
from musc_jax.engine.buckets import bucket_length, stop_id_array  # noqa: E402
from musc_jax.engine.sampling import SamplingMode  # noqa: E402
from musc_jax.models import ModelConfig, init_model  # noqa: E402

# innermost matching Python function -> category (first match wins, innermost frame first)
CATEGORIES = (
    (("_decode_attention", "_prefill_attention", "decode_attention"), "attention over the cache"),
    (("sample", "filter_logits", "top_p_filter", "top_k_filter", "argmax", "is_stop",
      "_largest_threshold", "largest_threshold", "_sortable"), "sampling (top-p, Gumbel, argmax)"),
    (("project_logits", "DecoderLM.logits", "packed_logits"), "LM head"),
    (("MLP.__call__", "_packed_mlp"), "MLP dots (gate/up/down)"),
    (("Attention._project", "_packed_qkv"), "q/k/v projections"),
    (("apply_rope", "rope_cos_sin"), "rope"),
    (("RMSNorm.__call__",), "norms"),
)


_PACKED = re.compile(r'%(\S+) = f32\[\d+,(\d+)\]\S* custom-call\(.*?custom_call_target='
                     r'"musc_packed_matmul", operand_layout_constraints=\{f32\[\d+,(\d+)\]')


def packed_matmul_kinds(hlo: str, config) -> dict[str, str]:
    """Category of each CPU packed-matmul call, from its [K] -> [N] shape (its metadata carries
    only the kernel's own frame, not the model function that called it)."""
    c = config
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    out = {}
    for name, n, k in _PACKED.findall(hlo):
        n, k = int(n), int(k)
        out[name] = ("LM head" if n == c.vocab_size else "q/k/v projections" if n == qkv
                     else "MLP dots (gate/up/down)" if c.intermediate_size in (k, n // 2)
                     else "o projection")
    return out


def categorize(hlo: str, vocab: int, attn_shape: str, config=None) -> dict[str, tuple[str, str, str]]:
    """HLO instruction name -> (opcode, category, 'shape op_name'). `attn_shape`: the shape
    prefix of the attention loop's carried state (its init ops carry no metadata); `config`:
    the model's (to place the CPU kernel's matmuls)."""
    out = {}
    packed = packed_matmul_kinds(hlo, config) if config is not None else {}
    for name, opcode, what, names in hlo_instructions(hlo):
        if name in packed:
            out[name] = (opcode, packed[name], what)
            continue
        cat = "other (embedding, bookkeeping, copies)"
        for funcs, label in CATEGORIES:
            if any(f in funcs for f in names):
                cat = label
                break
        else:
            if "rtkgd,rksd" in what or "rkgts,rksd" in what:   # the einsum attention before
                cat = CATEGORIES[0][1]
            elif "_attend" in names:
                cat = "cache writes (scatter)" if "scatter" in what else "o projection"
            elif "while/body/while/body" in what or what.startswith(attn_shape):
                # ops of an inner loop carry no Python stack frames: the sampler's bisection
                # works on [.., vocab] rows (inside where/closed_call), attention on cache blocks
                cat = (CATEGORIES[1][1] if "closed_call" in what or f",{vocab}]" in what
                       else CATEGORIES[0][1])
        out[name] = (opcode, cat, what)
    return out


def decode_program(model, max_new: int, mode: SamplingMode, kernel: bool):
    """The engine's jitted decode segment, its parameters and packed weights. `kernel`: the
    decode step by the CPU kernels (as the engine does on one CPU device), else XLA's ops."""
    graphdef, params = nnx.split(model)
    st = continuous._Static(mode, max_new, decode_kernel=kernel)
    fn = jax.jit(functools.partial(continuous._decode, graphdef, st=st, shardings=None),
                 donate_argnums=2)
    packed = continuous.decode_weights(graphdef, params) if kernel else None
    return functools.partial(fn, params, packed), fn, params, packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pos", type=int, default=128, help="cache position of every slot")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--length", type=int, default=0,
                        help="cache length L (default: the engine's bucket for pos + new tokens)")
    parser.add_argument("--xla-ops", action="store_true",
                        help="XLA's attention and dots instead of the CPU kernels the engine uses")
    parser.add_argument("--top", type=int, default=12, help="also list the N costliest ops")
    args = parser.parse_args()

    model = init_model(ModelConfig.preset("bench_32m"), seed=0)
    max_new = 4 * args.steps + 8
    length = args.length or bucket_length(args.pos + max_new, minimum=continuous.MIN_CACHE_BUCKET)
    kernel = not args.xla_ops and continuous.use_decode_kernel(model, None)
    mode = SamplingMode(False, False, True, kernel)      # top-p, cut as generate() makes it
    call, fn, params, packed = decode_program(model, max_new, mode, kernel)
    scalars = (stop_id_array(None), np.int32(0), np.float32(1.0), np.int32(0), np.float32(0.9))

    def fresh():
        s = continuous._empty_state(model, args.slots, length, max_new, None)
        full = lambda v: jnp.full((args.slots,), v, jnp.int32)  # noqa: E731
        return s._replace(pos=full(args.pos), count=full(1), budget=full(max_new),
                          active=jnp.ones((args.slots,), bool))

    def run(steps: int) -> tuple[float, float]:
        """(wall, process CPU) seconds of one decode segment of `steps` steps."""
        state = fresh()
        jax.block_until_ready(state)
        c0, t0 = time.process_time(), time.perf_counter()
        out = call(state, *scalars, np.int32(steps), np.int32(0))
        jax.block_until_ready(out)
        assert int(out[1]) == steps
        return time.perf_counter() - t0, time.process_time() - c0

    run(args.steps)                                   # compile
    untraced = [run(args.steps) for _ in range(3)]
    hlo = fn.lower(params, packed, fresh(), *scalars, np.int32(1),
                   np.int32(0)).compile().as_text()
    c = model.config
    kinds = categorize(hlo, c.vocab_size,
                       f"f32[{args.slots},{c.num_kv_heads},{c.num_heads // c.num_kv_heads}", c)
    traced = {}

    def traced_run():
        traced["wall"] = run(args.steps)[0]

    op_ms = trace_op_times(traced_run)
    wall = traced["wall"]
    per_cat: collections.Counter = collections.Counter()
    per_op: collections.Counter = collections.Counter()
    for name, ms in op_ms.items():
        kind = kinds.get(name)
        if kind and kind[0] not in ("while", "conditional", "call"):
            per_cat[kind[1]] += ms / args.steps                           # ms per step
            per_op[(name, *kind)] += ms / args.steps
    ops = sum(per_cat.values())
    step = wall * 1e3 / args.steps
    print(f"decode step: {args.slots} slots at position {args.pos}, cache length {length}, "
          f"top-p 0.9; {args.steps} steps traced; attention and dots by "
          f"{'the CPU kernels' if kernel else 'XLA'}; jax {jax.__version__}")
    print(f"wall {step:.2f} ms per step (traced run), ops {ops:.2f} ms; untraced (best of 3): "
          f"wall {min(w for w, _ in untraced) * 1e3 / args.steps:.2f} ms, process CPU "
          f"{min(c for _, c in untraced) * 1e3 / args.steps:.2f} ms per step")
    for cat, ms in per_cat.most_common():
        print(f"  {cat:<42} {ms:8.2f} ms  {100 * ms / ops:5.1f}%")
    print(f"  {'loop and runtime overhead (wall - ops)':<42} {step - ops:8.2f} ms")
    if args.top:
        print("costliest ops (ms per step; an op inside an inner loop sums its iterations):")
        for (name, opcode, cat, what), ms in per_op.most_common(args.top):
            print(f"  {ms:7.2f} ms  {name:<22} {cat:<34} {what[:90]}")


if __name__ == "__main__":
    main()
