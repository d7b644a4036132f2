"""The CPU decode kernels (XLA FFI custom calls built on first use): attention equal to a float64
softmax over each row's own positions and to XLA's version on the engine's shapes; the packed
matmul equal to a float64 product; the sampler's top-k / top-p cut equal to the bisection's and
its Gumbel draw equal to jax.random's; a decode step on them equal to one on XLA's ops for every
model family; used by the engine only where they apply; a named error or warning when they
cannot be built."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musc_jax.engine import continuous, cpu_kernels, sampling, slot_cache
from musc_jax.engine.sampling import SamplingMode
from musc_jax.models import ModelConfig, init_model

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None,
                                    reason="no C++ compiler to build the kernel")


def _reference(q, kc, vc, pos, scale, window):
    """float64 softmax attention of q [R, 1, H, D] over each row's positions 0..pos (inside
    the window); None for idle rows (pos >= L)."""
    r, _, h, d = q.shape
    kvh, length = kc.shape[1], kc.shape[2]
    g = h // kvh
    out = []
    for i in range(r):
        if pos[i] >= length:
            out.append(None)
            continue
        keep = np.arange(pos[i] + 1)
        if window is not None:
            keep = keep[pos[i] - keep < window]
        row = np.zeros((h, d))
        for k in range(kvh):
            for j in range(g):
                qj = q[i, 0, k * g + j].astype(np.float64)
                s = scale * kc[i, k, keep].astype(np.float64) @ qj
                p = np.exp(s - s.max())
                row[k * g + j] = (p / p.sum()) @ vc[i, k, keep].astype(np.float64)
        out.append(row.reshape(-1))
    return out


@needs_compiler
@pytest.mark.parametrize("window", [None, 5, 200])
def test_kernel_reads_each_row_up_to_its_own_position(window):
    """Rows at positions in the first block, across blocks (block 128), at the cache's end, and
    idle (pos = L, zeros out); every cache entry after a row's own position is NaN, so a read
    beyond it would show. Group of 3 query heads per kv head; float64 reference, 1e-5."""
    rng = np.random.default_rng(0)
    r, kvh, g, d, length = 6, 2, 3, 8, 300
    q = rng.normal(size=(r, 1, kvh * g, d)).astype(np.float32)
    kc = rng.normal(size=(r, kvh, length, d)).astype(np.float32)
    vc = rng.normal(size=(r, kvh, length, d)).astype(np.float32)
    pos = np.array([0, 3, 130, 256, length - 1, length])
    for i, p in enumerate(pos):
        kc[i, :, p + 1:] = np.nan
        vc[i, :, p + 1:] = np.nan
    got = np.asarray(jax.jit(lambda *a: cpu_kernels.decode_attention(
        *a, scale=0.3, window=window))(q, kc, vc, pos[:, None]))
    assert got.shape == (r, 1, kvh * g * d)
    for i, want in enumerate(_reference(q, kc, vc, pos, 0.3, window)):
        if want is None:
            np.testing.assert_array_equal(got[i, 0], 0.0)
        else:
            np.testing.assert_allclose(got[i, 0], want, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_kernel_equals_xla_decode_attention_on_engine_shapes():
    """64 slots at mixed positions, 4 kv heads of 2 queries, head_dim 64, cache 640: the kernel
    and XLA's blocked version agree to 2e-6 (both float32, online softmax in other orders)."""
    rng = np.random.default_rng(1)
    r, kvh, g, d, length = 64, 4, 2, 64, 640
    q = jnp.asarray(rng.normal(size=(r, 1, kvh * g, d)), jnp.float32)
    kc = jnp.asarray(rng.normal(size=(r, kvh, length, d)), jnp.float32)
    vc = jnp.asarray(rng.normal(size=(r, kvh, length, d)), jnp.float32)
    pos = jnp.asarray(rng.integers(0, length, size=(r, 1)), jnp.int32)
    got = jax.jit(lambda *a: cpu_kernels.decode_attention(*a, scale=0.125, window=None))(
        q, kc, vc, pos)
    want = jax.jit(lambda *a: slot_cache._decode_attention(*a, scale=0.125, window=None))(
        q, kc, vc, pos)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=2e-6)


@needs_compiler
def test_engine_uses_the_kernels_only_where_they_apply():
    """One CPU device in float32: the decode program calls both kernels; bfloat16 or a mesh:
    XLA's ops (a custom call cannot be partitioned)."""
    model = init_model(ModelConfig.preset("tiny"), seed=0)
    assert continuous.use_decode_kernel(model, None)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
    assert not continuous.use_decode_kernel(model, mesh)
    assert not cpu_kernels.decode_kernels_available(jnp.bfloat16)
    text = continuous.decode_program_text(model, 4, 64, 8, SamplingMode(True, False, False),
                                          decode_kernel=True)
    assert cpu_kernels.TARGET in text and cpu_kernels.MATMUL_TARGET in text
    text = continuous.decode_program_text(model, 4, 64, 8, SamplingMode(True, False, False))
    assert cpu_kernels.TARGET not in text and cpu_kernels.MATMUL_TARGET not in text


def test_pack_layout():
    """wp[p, k, j] = w[k, p * 64 + j], zero past N."""
    w = np.arange(3 * 130, dtype=np.float32).reshape(3, 130)
    wp = np.asarray(cpu_kernels.pack(jnp.asarray(w)))
    assert wp.shape == (3, 3, cpu_kernels.PANEL)
    for p in range(3):
        for j in range(cpu_kernels.PANEL):
            col = p * cpu_kernels.PANEL + j
            np.testing.assert_array_equal(wp[p, :, j], w[:, col] if col < 130 else 0.0)


@needs_compiler
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (5, 100, 77), (6, 512, 1408), (7, 33, 130),
                                   (16, 512, 1024), (64, 96, 8192)])
def test_packed_matmul_equals_float64_product(m, k, n):
    """Row counts below, at and past the 6-row register block (13 = 2 blocks + 1), N not a
    multiple of the 64-column panel (the last panel is partial) and K not one of the vector
    width; float64 reference, 1e-5 relative to the largest entry."""
    rng = np.random.default_rng(m * 1000 + n)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = rng.normal(size=(k, n)).astype(np.float32)
    got = np.asarray(jax.jit(lambda x, w: cpu_kernels.packed_matmul(x, cpu_kernels.pack(w), n))(
        x, w))
    want = x.astype(np.float64) @ w.astype(np.float64)
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@needs_compiler
@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
def test_decode_step_on_kernels_equals_xla_ops(family, tmp_path):
    """One decode step of 13 slots (one idle) through `slot_forward` + logits: packed weights
    and both kernels vs XLA's ops, for a tied LM head (llama3), q/k/v biases and a partial
    panel (qwen2), q/k norms (qwen3) and a sliding window (mistral); 2e-5 relative."""
    from hf_models import make_hf_model
    from musc_jax.models import from_pretrained

    make_hf_model(family, tmp_path)
    model = from_pretrained(tmp_path)
    c = model.config
    rng = np.random.default_rng(2)
    r, length = 13, 48
    cache = slot_cache.SlotCache(
        keys=tuple(jnp.asarray(rng.normal(size=(r, c.num_kv_heads, length, c.head_dim)),
                               jnp.float32) for _ in range(c.num_layers)),
        values=tuple(jnp.asarray(rng.normal(size=(r, c.num_kv_heads, length, c.head_dim)),
                                 jnp.float32) for _ in range(c.num_layers)))
    tok = jnp.asarray(rng.integers(0, c.vocab_size, size=(r, 1)), jnp.int32)
    pos = jnp.asarray(rng.integers(0, length, size=(r,)), jnp.int32).at[4].set(length)
    packed = slot_cache.pack_decode_weights(model)

    def step(kernel):
        h, new = slot_cache.slot_forward(model, tok, jnp.arange(r), pos, cache, whole=True,
                                         decode_kernel=kernel, packed=packed if kernel else None)
        logits = (slot_cache.packed_logits(h[:, 0], packed, c.vocab_size) if kernel
                  else model.logits(h[:, 0]))
        return logits, new

    (got, got_cache), (want, want_cache) = step(True), step(False)
    live = np.arange(r) != 4          # an idle slot's output is never read (the kernel: zeros)
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.asarray(got)[live], np.asarray(want)[live], rtol=0,
                               atol=2e-5 * scale)
    for a, b in zip(got_cache.keys + got_cache.values, want_cache.keys + want_cache.values):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-5)


@needs_compiler
@pytest.mark.parametrize("scale,ties", [(1.0, False), (8.0, False), (2.0, True)])
def test_threshold_kernel_keeps_what_bisection_keeps(scale, ties):
    """The top-k and top-p cuts by the radix-select kernel keep exactly the tokens the 32-pass
    bisection keeps: flat and peaked rows, rows of tied logits (rounded), rows with -inf
    (already filtered), k from 1 past V, p from 0.05 to 1; 9 rows of 3000."""
    rng = np.random.default_rng(int(scale * 10) + ties)
    logits = rng.normal(size=(9, 3000)) * scale
    logits = np.round(logits) if ties else logits
    logits[3, :2500] = -np.inf
    logits = jnp.asarray(logits, jnp.float32)
    for p in (0.05, 0.5, 0.9, 0.999, 1.0):
        want = jax.jit(lambda x: sampling.top_p_filter(x, p))(logits)
        got = jax.jit(lambda x: sampling.top_p_filter(x, p, kernel=True))(logits)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"top-p {p}")
    for k in (1, 7, 499, 2999, 3000, 5000, 0):
        want = jax.jit(lambda x: sampling.top_k_filter(x, k))(logits)
        got = jax.jit(lambda x: sampling.top_k_filter(x, k, kernel=True))(logits)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"top-k {k}")


@needs_compiler
@pytest.mark.parametrize("r,v,scale", [(300, 8192, 1.0), (200, 77, 3.0), (40, 49152, 0.5)])
def test_gumbel_kernel_draws_what_jax_draws(r, v, scale):
    """The kernel's draw = argmax(logits + jax.random.gumbel(key, (V,))) for every row: the
    same threefry bits, logs within float32 rounding (a flip needs two noisy logits within
    ~1e-6 of each other: about 1 in 10^6 rows). V not a multiple of the 16 lanes (77), rows
    with half the vocabulary at -inf, a real model's vocabulary (49152)."""
    rng = np.random.default_rng(v)
    logits = rng.normal(size=(r, v)) * scale
    logits[5, : v // 2] = -np.inf
    logits = jnp.asarray(logits, jnp.float32)
    keys = jax.random.split(jax.random.key(7), r)
    g = jax.vmap(lambda k: jax.random.gumbel(k, (v,), jnp.float32))(keys)
    want = np.argmax(np.asarray(logits + g), axis=-1)
    got = np.asarray(jax.jit(cpu_kernels.gumbel_argmax)(logits, jax.random.key_data(keys)))
    np.testing.assert_array_equal(got, want)
    assert got[5] >= v // 2


def test_gumbel_kernel_only_for_jax_default_draws():
    """Other key types or the high-dynamic-range Gumbel: the sampler keeps jax.random.gumbel."""
    assert sampling._kernel_draws_like_jax(jax.random.split(jax.random.key(0), 2))
    assert not sampling._kernel_draws_like_jax(
        jax.random.split(jax.random.key(0, impl="rbg"), 2))
    jax.config.update("jax_high_dynamic_range_gumbel", True)
    try:
        assert not sampling._kernel_draws_like_jax(jax.random.split(jax.random.key(0), 2))
    finally:
        jax.config.update("jax_high_dynamic_range_gumbel", False)


def test_packed_weights_are_reused_while_the_parameters_live():
    """Generating again with the same arrays packs nothing; new arrays are packed anew; the
    packed copy goes with the parameters it came from."""
    import gc

    from flax import nnx
    model = init_model(ModelConfig.preset("tiny"), seed=0)
    graphdef, params = nnx.split(model)
    first = continuous.decode_weights(graphdef, params)
    assert continuous.decode_weights(graphdef, params) is first
    params2 = jax.tree.map(lambda a: a + 1, params)
    second = continuous.decode_weights(graphdef, params2)
    assert second is not first
    np.testing.assert_allclose(np.asarray(second.lm_head), np.asarray(first.lm_head) + 1)
    del params, first, model
    gc.collect()
    assert continuous._PACKED[graphdef][1] is second      # the old arrays' end leaves the new
    del params2, second
    gc.collect()
    assert graphdef not in continuous._PACKED


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path))
    with pytest.raises(cpu_kernels.KernelBuildError, match="no C\\+\\+ compiler 'no-such-cxx'"):
        cpu_kernels.build("no-such-cxx")


@needs_compiler
def test_compiler_error_is_reported(monkeypatch, tmp_path):
    """A source that does not compile: the compiler's message, and no library left behind."""
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "SOURCES", (bad,))
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path / "cache"))
    with pytest.raises(cpu_kernels.KernelBuildError, match="failed on bad.cc"):
        cpu_kernels.build()
    assert not list((tmp_path / "cache").iterdir())


_PROBE = """
import warnings
import jax.numpy as jnp
from musc_jax.engine import cpu_kernels
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = cpu_kernels.decode_kernels_available(jnp.float32)
    second = cpu_kernels.decode_kernels_available(jnp.float32)
print(first, second, len(caught), *[str(w.message) for w in caught], sep="|")
"""


@pytest.mark.parametrize("env,want", [({"CXX": "no-such-cxx"}, "False|False|1|"),
                                      ({cpu_kernels.ENV_SWITCH: "0"}, "False|False|0")])
def test_unavailable_kernel_warns_once_and_falls_back(env, want, tmp_path):
    """No compiler: False (the engine keeps XLA's version) and one RuntimeWarning naming the
    kernel and the compiler, not one per call; MUSC_JAX_CPU_KERNELS=0: off without a warning.
    In a fresh process (the kernel is registered once per process)."""
    import subprocess
    import sys
    run_env = dict(os.environ, **env, **{cpu_kernels.ENV_CACHE: str(tmp_path)})
    out = subprocess.run([sys.executable, "-c", _PROBE], env=run_env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out.startswith(want), out
    if "CXX" in env:
        assert "decode kernels are not available (no C++ compiler 'no-such-cxx'" in out
