"""Chunked log-probs on a mesh: LM head gathered, its gradient reduce-scattered, once per step.

Compiled on 4 simulated CPU devices (subprocess): FSDP over 4, and FSDP 2 x tensor 2 (logits
sharded over the vocabulary). Log-probs and gradients equal the single-device values (float32,
5e-5 absolute), and no collective on an LM-head-sized array sits inside a loop of the compiled
train step (before the fix GSPMD all-reduced the full head gradient in every 128-token chunk), and
the head's gradient leaves the step reduce-scattered to the FSDP shards, never all-reduced whole.
"""

from __future__ import annotations

from subproc import run_python

CODE = r'''
import re
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from musc_jax.models import ModelConfig, init_model
from musc_jax.scoring import response_token_logps
from musc_jax.sharding import make_mesh, state_shardings

cfg = ModelConfig.preset("tiny", vocab_size=1024, num_layers=1)
rng = np.random.default_rng(0)
B, T = 4, 300                                 # 3 chunks of 128 (the last one padded)
ids = jnp.asarray(rng.integers(1, 1024, (B, T)), jnp.int32)
mask = jnp.asarray(np.arange(T)[None] < np.array([[T], [T - 9], [200], [T]]), jnp.int32)
resp = jnp.asarray(np.arange(T)[None] >= 40, jnp.float32) * mask


def loss_and_grads(model):
    gd, params = nnx.split(model)
    f = lambda p: jnp.sum(response_token_logps(nnx.merge(gd, p), ids, mask, resp)) / 1000.0
    return jax.jit(jax.value_and_grad(f)), params


base = init_model(cfg, seed=0)
f, params = loss_and_grads(base)
ref_loss, ref_grads = f(params)

for fsdp, tensor in ((4, 1), (2, 2)):
    mesh = make_mesh(fsdp=fsdp, tensor=tensor)
    model = init_model(cfg, seed=0, mesh=mesh)
    model.activation_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, None))
    f, params = loss_and_grads(model)
    loss, grads = f(params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)
    hlo = f.lower(params).compile().as_text()
    comps, cur = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m:
            cur = m.group(1); comps[cur] = []
        elif cur:
            comps[cur].append(line)
    calls = {c: set(re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", "\n".join(ls)))
             for c, ls in comps.items()}
    inloop, todo = set(), list(set(re.findall(r"body=%?([\w.\-]+)", hlo)))
    while todo:
        c = todo.pop()
        if c not in inloop:
            inloop.add(c); todo.extend(calls.get(c, ()))
    head = {64 * 1024 // k for k in (1, 2, 4)}   # element counts of the head or a shard of it
    bad = []
    for c in inloop:
        for line in comps.get(c, ()):
            if re.search(r" (all-gather|all-reduce|reduce-scatter)(-start)?\(", line):
                dims = re.findall(r"f32\[([\d,]+)\]", line.split("=")[1])
                if any(int(np.prod([int(x) for x in d.split(",")])) in head for d in dims):
                    bad.append(line.strip()[:160])
    assert not bad, (fsdp, tensor, bad)
    # Anywhere: the head's gradient [E, V / tensor] is reduce-scattered to the FSDP shards
    # (the transpose of the all-gather before the chunk loop); no all-reduce carries a full copy
    # of it (the embedding's own gradient is [V, E] and is told apart by its shape).
    full = f"f32[64,{1024 // tensor}]"
    for line in hlo.splitlines():
        m = re.search(r"= (.*?) all-reduce(-start)?\(", line)
        if m and full + "{" in m.group(1):
            bad.append(line.strip()[:160])
    assert not bad, (fsdp, tensor, "full head gradient all-reduced", bad)
    assert re.search(rf"= f32\[{64 // fsdp},{1024 // tensor}\]\S* reduce-scatter\(", hlo), (fsdp, tensor)
    print("ok", fsdp, tensor, len(inloop))
'''


def test_lm_head_gathered_once_and_vocab_sharded_logits():
    out = run_python(CODE, devices=4)
    assert "ok 4 1" in out and "ok 2 2" in out, out
