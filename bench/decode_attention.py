"""Decode attention over the slot cache, one layer: XLA's blocked version vs the CPU kernel.

The shapes of `bench_32m` (4 kv heads of 2 queries, head_dim 64) in the engine's layout
[slots, kv, L, D], float32. Cases: every slot at one position (as `bench/decode_profile.py`),
and slots at positions spread over the cache (as in the mixed workload, where XLA's version
reads every slot up to the longest row and the kernel each slot up to its own). Reports the
median of `--repeats` timed calls in ms and the rate at which the kernel reads the keys and
values it needs (GB/s; the machine streams about 20 GB/s, `bench/decode_floor.py`).

    python bench/decode_attention.py [--repeats 20] [--out docs/results/bench/decode_attention.txt]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import median, time_calls  # noqa: E402
from musc_jax.engine import cpu_kernels, slot_cache  # noqa: E402
from musc_jax.models import ModelConfig  # noqa: E402

# (label, slots, cache length L, positions: "all at P" or "spread over 16..P")
CASES = (("64 slots, all at 250", 64, 640, 250, False),
         ("64 slots, spread 16..600", 64, 1024, 600, True),
         ("16 slots, all at 128", 16, 512, 128, False),
         ("8 slots, spread 16..600", 8, 1024, 600, True))


def needed_bytes(pos: np.ndarray, kv: int, dim: int) -> int:
    """Bytes of keys and values at positions 0..pos of every slot (float32)."""
    return int(np.sum(pos + 1)) * kv * dim * 4 * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="", help="also write the report here")
    args = parser.parse_args()
    if not cpu_kernels.decode_kernels_available(jnp.float32):
        sys.exit("the CPU decode kernels are not available here (see the warning)")
    c = ModelConfig.preset("bench_32m")
    kv, g, d = c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim
    lines = [f"decode attention, one layer of bench_32m ({kv} kv heads x {g} queries, head_dim "
             f"{d}), float32; jax {jax.__version__}, {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f} at start; "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; median of "
             f"{args.repeats} calls",
             f"  {'case':<28} {'xla ms':>8} {'kernel ms':>10} {'speed-up':>9} {'kernel GB/s':>12}"]
    rng = np.random.default_rng(0)
    for label, r, length, p, spread in CASES:
        q = jnp.asarray(rng.normal(size=(r, 1, kv * g, d)), jnp.float32)
        kc = jnp.asarray(rng.normal(size=(r, kv, length, d)), jnp.float32)
        vc = jnp.asarray(rng.normal(size=(r, kv, length, d)), jnp.float32)
        pos = rng.integers(16, p + 1, size=r) if spread else np.full(r, p)
        positions = jnp.asarray(pos[:, None], jnp.int32)
        times = {}
        for name, fn in (("xla", slot_cache._decode_attention),
                         ("kernel", cpu_kernels.decode_attention)):
            f = jax.jit(lambda *a, fn=fn: fn(*a, scale=d ** -0.5, window=None))
            times[name] = median(time_calls(lambda f=f: f(q, kc, vc, positions).block_until_ready(),
                                            args.repeats, warmup=2))
        rate = needed_bytes(pos, kv, d) / times["kernel"] / 1e9
        lines.append(f"  {label:<28} {times['xla'] * 1e3:8.2f} {times['kernel'] * 1e3:10.2f} "
                     f"{times['xla'] / times['kernel']:8.1f}x {rate:12.1f}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
