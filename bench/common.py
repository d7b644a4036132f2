"""Helpers shared by the bench scripts: timing and the machine's measured dense matmul peak.

DESIGN 9: model FLOP utilisation is achieved FLOP/s over the dense matmul FLOP/s measured on the
same machine in the same run, so every script that reports an MFU calls `matmul_peak_flops`.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import statistics
import tempfile
import time
from typing import Callable, Iterator, Sequence


class MatmulPeak:
    """Dense matmul FLOP/s of JAX's default device: jnp.dot of two n x n matrices (2 n^3 FLOPs).

    `sample()` times a few calls and returns the best; `best` is the best over all samples. On a
    shared machine, sampling between the timed steps shows the load they ran under.
    """

    def __init__(self, n: int = 2048, dtype: str = "float32"):
        import jax
        import jax.numpy as jnp

        ka, kb = jax.random.split(jax.random.key(0))
        self.a = jax.random.normal(ka, (n, n), getattr(jnp, dtype))
        self.b = jax.random.normal(kb, (n, n), getattr(jnp, dtype))
        self.dot = jax.jit(jnp.dot)
        self.dot(self.a, self.b).block_until_ready()   # compile + first run
        self.flops = 2.0 * n ** 3
        self.samples: list[float] = []
        self.cpu_samples: list[float] = []

    def sample(self, repeats: int = 3) -> float:
        """Best wall-clock FLOP/s of `repeats` calls (also records FLOPs per CPU-second)."""
        walls, cpus = time_calls_cpu(lambda: self.dot(self.a, self.b).block_until_ready(),
                                     repeats, warmup=0)
        self.samples.append(self.flops / min(walls))
        self.cpu_samples.append(self.flops / min(cpus))
        return self.samples[-1]

    @property
    def best(self) -> float:
        """Best wall-clock FLOP/s over all samples: the machine's dense matmul peak."""
        return max(self.samples)

    @property
    def best_per_cpu_second(self) -> float:
        """Best FLOPs per process CPU-second (all threads): the peak work rate of one core-second.

        Unlike wall time, CPU time barely changes when other processes share the cores, so
        (model FLOPs / CPU seconds) / this is a load-independent efficiency.
        """
        return max(self.cpu_samples)


def matmul_peak_flops(n: int = 2048, repeats: int = 7, dtype: str = "float32") -> float:
    """Best dense matmul FLOP/s of JAX's default device over `repeats` calls after a warm-up."""
    return MatmulPeak(n, dtype).sample(repeats)


def torch_matmul_peak_flops(n: int = 2048, repeats: int = 7) -> float:
    """The same measurement with torch (float32, CPU) for reference."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time_once(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def _time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(fn: Callable[[], object], steps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `steps` calls of `fn` after `warmup` untimed calls.

    `fn` must block until its work is done (e.g. end with jax.block_until_ready).
    """
    for _ in range(warmup):
        fn()
    return [_time_once(fn) for _ in range(steps)]


def time_calls_cpu(fn: Callable[[], object], steps: int,
                   warmup: int = 1) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each of `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def fmt_times(xs: Sequence[float]) -> str:
    """'median (min..max, n=k)' in seconds."""
    return f"{median(xs):.3f} s ({min(xs):.3f}..{max(xs):.3f}, n={len(xs)})"


def hlo_stack_frames(hlo: str) -> dict[int, list[str]]:
    """stack_frame_id -> function names, innermost first, from the HLO text's tables."""
    table, funcs, locs, frames = None, {}, {}, {}
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            table = line
            continue
        m = re.match(r"(\d+) (.*)$", line)
        if not m or table is None:
            table = None if not line.strip() else table
            continue
        i, rest = int(m.group(1)), m.group(2)
        if table == "FunctionNames":
            funcs[i] = rest.strip('"')
        elif table == "FileLocations":
            locs[i] = int(re.search(r"function_name_id=(\d+)", rest).group(1))
        elif table == "StackFrames":
            frames[i] = (int(re.search(r"file_location_id=(\d+)", rest).group(1)),
                         int(re.search(r"parent_frame_id=(\d+)", rest).group(1)))
    out = {}
    for i in frames:
        names, j, seen = [], i, set()
        while j in frames and j not in seen:
            seen.add(j)
            loc, parent = frames[j]
            names.append(funcs.get(locs.get(loc), ""))
            j = parent
        out[i] = names
    return out


_INSTR = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(")


def hlo_instructions(hlo: str) -> Iterator[tuple[str, str, str, list[str]]]:
    """(name, opcode, 'shape op_name', Python function names innermost first) per HLO instruction
    of a compiled program's text; the names come from its metadata's stack frame."""
    frames = hlo_stack_frames(hlo)
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        what = f"{m.group(2).split('{')[0]} {op_name.group(1) if op_name else ''}"
        sf = re.search(r"stack_frame_id=(\d+)", line)
        yield m.group(1), m.group(3), what, (frames.get(int(sf.group(1)), []) if sf else [])


def trace_op_times(run: Callable[[], object]) -> dict[str, float]:
    """Milliseconds per HLO op (event name) spent while `run()` executes under the profiler.

    XLA:CPU records one event per executed op (thunk); an op inside a loop sums its iterations.
    Callers map the names to the compiled program's instructions (`compiled.as_text()`) and
    leave out loop/call ops, whose time is their body's.
    """
    import jax

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_trace_") as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        try:
            run()
        finally:
            jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{tmp}/**/*.json.gz", recursive=True))[-1]
        trace = json.load(gzip.open(path))
    for e in trace["traceEvents"] if isinstance(trace, dict) else trace:
        if e.get("ph") == "X" and "name" in e:
            times[e["name"]] = times.get(e["name"], 0.0) + e.get("dur", 0) / 1e3
    return times

