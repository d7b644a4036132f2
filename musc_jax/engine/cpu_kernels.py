"""CPU kernels for the decode engine, as XLA FFI custom calls compiled on first use.

`decode_attention` is the continuous engine's decode attention over the slot cache when it
runs on CPU in float32 without a mesh. XLA:CPU's version (`slot_cache._decode_attention`) must
read every slot up to the longest live row and streams the cache at 4-5 GB/s; the kernel
(`kernels/decode_attention.cc`) streams each (slot, kv head) once up to its own position, at
the machine's memory bandwidth (`bench/decode_attention.py`).

The source is compiled with the system's C++ compiler (`CXX`, else `g++`) against jaxlib's FFI
headers into a per-user cache, keyed by the source, the flags, jaxlib's version and this CPU,
then registered with XLA once per process. Without a compiler, or with MUSC_JAX_CPU_KERNELS=0,
decoding keeps the XLA version and a warning says so once.
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

SOURCE = Path(__file__).with_name("kernels") / "decode_attention.cc"
TARGET = "musc_decode_attention"
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
    """Compile the kernel library (once per source, flags, jaxlib and CPU) and return its path.
    Raises KernelBuildError with the compiler's message when it fails."""
    compiler = compiler or os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler '{compiler}' on PATH (set CXX or install g++)")
    import jaxlib

    include = jax.ffi.include_dir()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, *FLAGS, jaxlib.__version__,
                                    _cpu_signature()]).encode()).hexdigest()[:20]
    out = _cache_dir() / f"decode_attention-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # compile to a private name, then rename: processes building at once never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, f"-I{include}", str(SOURCE), "-o", tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelBuildError(f"{compiler} failed on {SOURCE.name}:\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.lru_cache(maxsize=None)
def _load() -> None:
    """Build, load and register the kernel with XLA, once per process."""
    lib = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.MuscDecodeAttention),
                                platform="cpu")


@functools.lru_cache(maxsize=None)
def _register() -> bool:
    """Whether the kernel is registered; False (with one warning) when it is switched off or
    cannot be built."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    try:
        _load()
    except (KernelBuildError, OSError, AttributeError) as err:
        warnings.warn(f"musc_jax: the CPU decode-attention kernel is not available ({err}); "
                      f"decoding uses XLA's version, several times slower on long caches. "
                      f"{ENV_SWITCH}=0 silences this.", RuntimeWarning, stacklevel=3)
        return False
    return True


def decode_attention_available(dtype) -> bool:
    """Whether decode programs on this process's default backend should use the kernel: CPU,
    float32 cache, and the kernel built (compiled here on the first call)."""
    return (jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32
            and _register())


def decode_attention(q: jax.Array, kc: jax.Array, vc: jax.Array, positions: jax.Array, *,
                     scale: float, window: int | None) -> jax.Array:
    """The kernel's decode attention; the same contract as `slot_cache._decode_attention`:
    q [R, 1, H, D] over kc/vc [R, KV, L, D] (float32) at `positions` [R, 1] (>= L: idle slot,
    zeros out). Returns [R, 1, H * D]."""
    if not _register():
        raise KernelBuildError(f"{TARGET} is not available on this process (see the warning)")
    r, _, h, d = q.shape
    out = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((r, h, d), jnp.float32))(
        q[:, 0].astype(jnp.float32) * scale, kc, vc, positions[:, 0].astype(jnp.int32),
        window=np.int64(window or 0))
    return out.astype(q.dtype).reshape(r, 1, h * d)
