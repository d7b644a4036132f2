"""Token weights of a policy on a mesh are computed data-parallel (issue 15, item 1).

In a subprocess with 8 simulated CPU devices, the policy is loaded as pair building loads it
(`load_policy_model`: `model.tensor` devices per replica, replicas over the rest). MuSC kl
weights and reference log-probs computed on that mesh equal the single-device values (float32,
atol 1e-5, the tolerance of the float64 check in test_weights.py), and the compiled scoring
program does 1/replicas of the single-device FLOPs per device: each replica scores its own rows
instead of all of them. The model's activation layout is restored afterwards (generation keeps
its own).
"""

from __future__ import annotations

import json

from subproc import run_python

CODE = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from musc_jax import scoring
from musc_jax.data.policy import load_policy_model
from musc_jax.data.weights import WeightConfig, compute_token_weights
from musc_jax.models import from_pretrained, load_tokenizer
from trainer_fixtures import model_dir
from pathlib import Path
import tempfile

path = model_dir(Path(tempfile.mkdtemp()) / "m")
import torch, transformers
hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
with torch.no_grad():   # sharper distributions: KL statistics far from 0 (no float32 cancellation)
    hf.lm_head.weight.mul_(8.0)
hf.save_pretrained(path)
rng = np.random.default_rng(0)
words = "river castle garden quiet bright long old tall green warm seven north apple".split()
sent = lambda n: " ".join(rng.choice(words, n))
rows = [{"prompt": [{"role": "user", "content": sent(int(rng.integers(3, 9))) + " in lowercase"}],
         "rejected_prompt": [{"role": "user", "content": "7 + 12 = ? !! ### 99 ::: TIGER"}],
         "chosen": sent(int(rng.integers(2, 12))), "rejected": sent(int(rng.integers(2, 12))).upper()}
        for _ in range(11)]          # 11 rows, batches of 6: padded to 8 rows (data=8) / 8 (data=4)
cfg = WeightConfig(kind="kl", ref_logps=True, batch_size=6, max_length=128,
                   max_prompt_length=64)
tok = load_tokenizer(path)
single = from_pretrained(path)
want, want_stats = compute_token_weights(rows, tok, cfg, single)

import contextlib
placed = []              # rows of every batch compute_token_weights puts on the mesh
split_rows = scoring.split_rows


@contextlib.contextmanager
def recording(model):
    with split_rows(model) as place:
        yield lambda batch: (placed.append(len(batch["chosen_ids"])), place(batch))[1]


scoring.split_rows = recording
out = {}
for tensor in (1, 2):
    model, _, mesh = load_policy_model(path, "float32", tensor)
    placed.clear()
    got, stats = compute_token_weights(rows, tok, cfg, model)
    assert model.activation_sharding is None, "activation layout not restored"
    a, b = stats.to_dict(), want_stats.to_dict()
    for k in ("rows", "weighted", "dropped", "no_rejected_prompt", "zero_contrast", "tokens"):
        assert a[k] == b[k], (k, a[k], b[k])
    gap = {}
    for field in ("chosen_weights", "rejected_weights", "ref_chosen_token_logps",
                  "ref_rejected_token_logps"):
        gap[field] = max(float(np.max(np.abs(np.asarray(a[field]) - np.asarray(b[field]))))
                         for a, b in zip(got, want))
    # FLOPs per device of the compiled scoring program: split over the replicas, or not.
    ids = np.asarray(rng.integers(1, 200, (8, 64)), np.int32)
    mask = np.ones_like(ids); resp = (np.arange(64)[None] >= 16).astype(np.float32) * mask

    def flops(model, batch):
        fn, state = scoring._jitted("score", scoring.response_token_logps, model, chunk=128)
        cost = fn.lower(state, *batch).compile().cost_analysis()
        return float((cost[0] if isinstance(cost, list) else cost)["flops"])

    whole = flops(model, [jnp.asarray(a) for a in (ids, mask, resp)])
    with split_rows(model) as place:
        b = place({"ids": ids, "mask": mask, "resp": resp})
        split = flops(model, [b["ids"], b["mask"], b["resp"]])
        shards = {int(s.data.shape[0]) for s in b["ids"].addressable_shards}
    out[tensor] = {"replicas": mesh.shape["data"], "gap": gap, "flops_ratio": whole / split,
                   "rows_per_device": sorted(shards), "placed": list(placed)}
print("RESULT " + json.dumps(out))
'''


def test_token_weights_split_over_replicas():
    line = [ln for ln in run_python(CODE, devices=8).splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    for tensor, r in out.items():
        replicas = 8 // int(tensor)
        assert r["replicas"] == replicas
        for field, gap in r["gap"].items():
            assert gap < 1e-5, (tensor, field, gap)
        assert r["rows_per_device"] == [8 // replicas], r
        # 11 rows in batches of 6, rounded up to 8 (a multiple of 8 and of 4 replicas): two
        # batches for the weights and two for the reference log-probs, all placed row-split.
        assert r["placed"] == [8, 8, 8, 8], r
        # Each device computes its 1/replicas of the rows (the FLOPs of the replicated program
        # over the split one; tensor-parallel dots are the same in both).
        assert r["flops_ratio"] > 0.75 * replicas, r
