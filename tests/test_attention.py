"""Attention kernels (musc_jax.models.attention) against the einsum reference.

Tolerance: float32 inputs, outputs agree to 2e-5 absolute (different summation orders of the
same float32 softmax). Every case has padded rows (left or right), grouped-query heads, and is
run with and without a sliding window; the xla path is also run with a small causal block so
that block skipping (and a window spanning blocks) is exercised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musc_jax.models import attention as A

B, T, H, KV, D = 3, 24, 4, 2, 8
TOL = 2e-5


def _inputs(padding: str, seed: int = 0, t: int = T, h: int = H, kv: int = KV, d: int = D):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(k1, (B, t, h, d), jnp.float32)
    k = jax.random.normal(k2, (B, t, kv, d), jnp.float32)
    v = jax.random.normal(k3, (B, t, kv, d), jnp.float32)
    lengths = np.array([t, t - 7, t // 3])
    ar = np.arange(t)[None]
    if padding == "right":
        mask = ar < lengths[:, None]
    else:
        mask = ar >= (t - lengths)[:, None]
    return q, k, v, jnp.asarray(mask), jnp.arange(t)


def _real(out, mask):
    """Outputs on real query positions only (padding queries are unspecified but finite)."""
    assert bool(jnp.all(jnp.isfinite(out)))
    return np.asarray(out)[np.asarray(mask)]


def _numpy_reference(q, k, v, mask, window):
    """float64 numpy attention for one check of the einsum path itself."""
    q, k, v, mask = (np.asarray(a, np.float64) for a in (q, k, v, mask))
    b, t, h, d = q.shape
    g = h // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(d)
            i, j = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
            ok = (j <= i) & (mask[bi][None, :] > 0)
            if window is not None:
                ok &= (i - j) < window
            ok[~ok.any(-1)] = True  # a padding query: any finite row (not compared)
            s = np.where(ok, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[bi, :, hi] = p @ v[bi, :, hi // g]
    return out


@pytest.mark.parametrize("window", [None, 5])
def test_einsum_matches_float64_numpy(window):
    q, k, v, mask, slots = _inputs("left")
    out = A.einsum_attention(q, k, v, mask, slots, window=window, scale=D ** -0.5)
    ref = _numpy_reference(q, k, v, mask, window)
    np.testing.assert_allclose(_real(out, mask), ref[np.asarray(mask)], atol=TOL)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("window,block", [(None, None), (None, 8), (5, 8), (11, 8), (None, 7)])
def test_xla_equals_einsum(padding, window, block):
    q, k, v, mask, slots = _inputs(padding)
    ref = A.einsum_attention(q, k, v, mask, slots, window=window, scale=D ** -0.5)
    out = A.xla_attention(q, k, v, mask, slots, window=window, scale=D ** -0.5, self_keys=True,
                          block=block)
    np.testing.assert_allclose(_real(out, mask), _real(ref, mask), atol=TOL)


def test_xla_gradients_equal_einsum():
    q, k, v, mask, slots = _inputs("right")
    w = jnp.asarray(mask, jnp.float32)[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * w)

    ein = lambda q, k, v: A.einsum_attention(q, k, v, mask, slots, window=9, scale=0.3)
    xla = lambda q, k, v: A.xla_attention(q, k, v, mask, slots, window=9, scale=0.3,
                                          self_keys=True, block=8)
    g_ref = jax.grad(lambda *a: loss(ein, *a), argnums=(0, 1, 2))(q, k, v)
    g_out = jax.grad(lambda *a: loss(xla, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_out, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_bfloat16_scores_in_float32():
    """bf16 inputs: xla and einsum agree to bf16 output precision (scores/softmax are float32)."""
    q, k, v, mask, slots = _inputs("left")
    q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
    ref = A.einsum_attention(q, k, v, mask, slots, window=None, scale=D ** -0.5)
    out = A.xla_attention(q, k, v, mask, slots, window=None, scale=D ** -0.5, self_keys=True,
                          block=8)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(_real(out.astype(jnp.float32), mask),
                               _real(ref.astype(jnp.float32), mask), atol=2e-2)


@pytest.mark.parametrize("window", [None, pytest.param(50, marks=pytest.mark.slow)])
def test_splash_interpret_equals_einsum(window):
    """The TPU splash kernel run by the Pallas interpreter on CPU (T = its 128-token block)."""
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    q, k, v, mask, slots = _inputs("right", t=128, d=128)
    ref = A.einsum_attention(q, k, v, mask, slots, window=window, scale=128 ** -0.5)
    out = A.splash_attention(q, k, v, mask, slots, window=window, scale=128 ** -0.5,
                             self_keys=True, interpret=True)
    np.testing.assert_allclose(_real(out, mask), _real(ref, mask), atol=TOL)


def test_resolve_and_errors():
    assert A.resolve("auto", "cpu") == "xla"
    assert A.resolve("auto", "gpu") == "cudnn"
    assert A.resolve("auto", "tpu") == "splash"
    assert A.resolve("einsum", "tpu") == "einsum"
    with pytest.raises(ValueError, match="model.attention='flash'"):
        A.resolve("flash")
    with pytest.raises(ValueError, match="multiple of 128"):
        A._splash_block(200)


@pytest.mark.slow  # minutes on a loaded 2-core machine (the TPU compiler)
def test_splash_compiles_for_tpu_with_fsdp_and_tensor():
    """Splash inside the model's gradient, sharded (fsdp 2 x tensor 2, scanned layers, remat),
    compiled for a v5p:2x2x1 slice by libtpu on this CPU machine (skipped without libtpu)."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install -e .[tpu-aot])")
    from subproc import run_python

    out = run_python('''
import os
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from musc_jax.models import ModelConfig, hf
from musc_jax.scoring import response_token_logps
from musc_jax.sharding import state_shardings

devs = topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu").devices
mesh = Mesh(np.array(devs).reshape(1, 2, 2), ("data", "fsdp", "tensor"))
cfg = ModelConfig.preset("tiny", hidden_size=256, head_dim=128, vocab_size=1024)
model = hf._abstract_model(cfg, jnp.float32, jnp.bfloat16, "save_qkv_proj", attention="splash",
                           scan_layers=True)
model.activation_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, None))
gd, params = nnx.split(model)
ps = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params,
                  state_shardings(params, mesh))
rows = NamedSharding(mesh, P(("data", "fsdp"), None))
ids = jax.ShapeDtypeStruct((4, 256), jnp.int32, sharding=rows)
rm = jax.ShapeDtypeStruct((4, 256), jnp.float32, sharding=rows)
loss = lambda p, i, m, r: jnp.sum(response_token_logps(nnx.merge(gd, p), i, m, r))
compiled = jax.jit(jax.value_and_grad(loss)).lower(ps, ids, ids, rm).compile()
print("splash" in compiled.as_text(), compiled.memory_analysis().temp_size_in_bytes > 0)
''', devices=1)
    assert out.strip().splitlines()[-1] == "True True", out
