"""CPU kernels for the decode engine, as XLA FFI custom calls compiled on first use.

The continuous engine's decode step uses them when it runs on CPU in float32 without a mesh:

* `decode_attention` over the slot cache. XLA:CPU's version (`slot_cache._decode_attention`)
  must read every slot up to the longest live row and streams the cache at 4-5 GB/s; the kernel
  (`kernels/decode_attention.cc`) streams each (slot, kv head) once up to its own position, at
  the machine's memory bandwidth (`bench/decode_attention.py`).
* `packed_matmul`: the few rows of a decode step times a weight matrix packed once per model
  (`pack`) into contiguous column panels (`kernels/packed_matmul.cc`). XLA:CPU's library dots
  repack the weights on every call; at 8-16 rows they read them at about half the machine's
  bandwidth (`bench/decode_floor.py`).
* `largest_threshold`: the sampler's top-k / top-p cut (`sampling._largest_threshold`) by a
  three-pass radix select per row (`kernels/largest_threshold.cc`) instead of 32 bisection
  passes over the logits.
* `gumbel_argmax`: the sampler's draw, jax's threefry Gumbel noise (the same bits) added to the
  logits and the argmax taken in one vectorised pass (`kernels/gumbel_argmax.cc`); XLA:CPU
  runs threefry as a scalar loop.

The sources are compiled with the system's C++ compiler (`CXX`, else `g++`) against jaxlib's
FFI headers into one library in a per-user cache, keyed by the sources, the flags, jaxlib's
version and this CPU, then registered with XLA once per process. Without a compiler, or with
MUSC_JAX_CPU_KERNELS=0, decoding keeps XLA's ops and a warning says so once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

KERNELS = Path(__file__).with_name("kernels")
SOURCES = (KERNELS / "decode_attention.cc", KERNELS / "packed_matmul.cc",
           KERNELS / "largest_threshold.cc", KERNELS / "gumbel_argmax.cc")
HEADERS = (KERNELS / "parallel_for.h",)
TARGET = "musc_decode_attention"
MATMUL_TARGET = "musc_packed_matmul"
THRESHOLD_TARGET = "musc_largest_threshold"
GUMBEL_TARGET = "musc_gumbel_argmax"
PANEL = 64                      # columns per packed panel (kPanel in packed_matmul.cc)
# FFI target -> the handler symbol its source defines
_SYMBOLS = {TARGET: "MuscDecodeAttention", MATMUL_TARGET: "MuscPackedMatmul",
            THRESHOLD_TARGET: "MuscLargestThreshold", GUMBEL_TARGET: "MuscGumbelArgmax"}
FLAGS = ("-O3", "-march=native", "-ffast-math", "-std=c++17", "-fPIC", "-shared", "-w")
ENV_SWITCH = "MUSC_JAX_CPU_KERNELS"
ENV_CACHE = "MUSC_JAX_KERNEL_CACHE"


class KernelBuildError(RuntimeError):
    """The kernel's source did not compile or load."""


def _cpu_signature() -> str:
    """The CPU's model and feature flags (`-march=native` code runs only on a CPU like this)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _cache_dir() -> Path:
    base = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "musc_jax", "kernels")
    return Path(base)


def build(compiler: str | None = None) -> Path:
    """Compile the kernel library (once per sources, flags, jaxlib and CPU) and return its path.
    Raises KernelBuildError with the compiler's message when it fails."""
    compiler = compiler or os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler '{compiler}' on PATH (set CXX or install g++)")
    import jaxlib

    include = jax.ffi.include_dir()
    texts = [f.read_text() for f in (*SOURCES, *HEADERS)]
    key = hashlib.sha256("\0".join([*texts, compiler, *FLAGS, jaxlib.__version__,
                                    _cpu_signature()]).encode()).hexdigest()[:20]
    out = _cache_dir() / f"musc_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # compile to a private name, then rename: processes building at once never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, f"-I{include}", *map(str, SOURCES), "-o", tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            names = ", ".join(f.name for f in SOURCES)
            raise KernelBuildError(f"{compiler} failed on {names}:\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.lru_cache(maxsize=None)
def _load() -> None:
    """Build, load and register the kernels with XLA, once per process."""
    lib = ctypes.cdll.LoadLibrary(str(build()))
    for target, symbol in _SYMBOLS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")


@functools.lru_cache(maxsize=None)
def _register() -> bool:
    """Whether the kernels are registered; False (with one warning) when they are switched off
    or cannot be built."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    try:
        _load()
    except (KernelBuildError, OSError, AttributeError) as err:
        warnings.warn(f"musc_jax: the CPU decode kernels are not available ({err}); decoding "
                      f"uses XLA's ops, several times slower on long caches. "
                      f"{ENV_SWITCH}=0 silences this.", RuntimeWarning, stacklevel=3)
        return False
    return True


def _require(target: str) -> None:
    if not _register():
        raise KernelBuildError(f"{target} is not available on this process (see the warning)")


def decode_kernels_available(dtype) -> bool:
    """Whether decode programs on this process's default backend should use the kernels: CPU,
    float32 compute and cache, and the kernels built (compiled here on the first call)."""
    return (jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32
            and _register())


def decode_attention(q: jax.Array, kc: jax.Array, vc: jax.Array, positions: jax.Array, *,
                     scale: float, window: int | None) -> jax.Array:
    """The kernel's decode attention; the same contract as `slot_cache._decode_attention`:
    q [R, 1, H, D] over kc/vc [R, KV, L, D] (float32) at `positions` [R, 1] (>= L: idle slot,
    zeros out). Returns [R, 1, H * D]."""
    _require(TARGET)
    r, _, h, d = q.shape
    out = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((r, h, d), jnp.float32))(
        q[:, 0].astype(jnp.float32) * scale, kc, vc, positions[:, 0].astype(jnp.int32),
        window=np.int64(window or 0))
    return out.astype(q.dtype).reshape(r, 1, h * d)


def pack(w: jax.Array) -> jax.Array:
    """w [K, N] as `packed_matmul`'s panels [ceil(N / PANEL), K, PANEL] (float32; columns past
    N are zero): wp[p, k, j] = w[k, p * PANEL + j]."""
    k, n = w.shape
    panels = -(-n // PANEL)
    w = jnp.pad(w.astype(jnp.float32), ((0, 0), (0, panels * PANEL - n)))
    return w.reshape(k, panels, PANEL).transpose(1, 0, 2)


def packed_matmul(x: jax.Array, wp: jax.Array, n: int) -> jax.Array:
    """x [M, K] @ w [K, n] (float32) with w given as `pack(w)`. Returns [M, n] float32."""
    _require(MATMUL_TARGET)
    return jax.ffi.ffi_call(MATMUL_TARGET, jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32))(
        x.astype(jnp.float32), wp, n=np.int64(n))


def largest_threshold(keys: jax.Array, target: jax.Array,
                      weights: jax.Array | None = None) -> jax.Array:
    """Per row of keys [R, V] (uint32) the largest t with sum(weights[keys >= t]) >= target [R]
    (weights None: each key counts 1), 0 when no t reaches it. Returns [R, 1] uint32."""
    _require(THRESHOLD_TARGET)
    r = keys.shape[0]
    counts = weights is None
    w = jnp.zeros((1, 1), jnp.float32) if counts else weights.astype(jnp.float32)
    t = jnp.broadcast_to(jnp.asarray(target, jnp.float32).reshape(-1), (r,))
    out = jax.ffi.ffi_call(THRESHOLD_TARGET, jax.ShapeDtypeStruct((r,), jnp.uint32))(
        keys, w, t, counts=np.int64(counts))
    return out[:, None]


def gumbel_argmax(logits: jax.Array, key_data: jax.Array) -> jax.Array:
    """Per row of logits [R, V] (float32) the index of the largest logits + Gumbel noise, the
    noise `jax.random.gumbel(key, (V,))` draws for the row's threefry key data [R, 2] (uint32;
    partitionable threefry, "low" mode). Returns [R] int32."""
    _require(GUMBEL_TARGET)
    return jax.ffi.ffi_call(GUMBEL_TARGET, jax.ShapeDtypeStruct((logits.shape[0],), jnp.int32))(
        logits.astype(jnp.float32), key_data.astype(jnp.uint32))
