"""Pair building and evaluation on 2 processes x 4 simulated CPU devices equal 1 process x 8.

The microworld base model builds MuSC and SPaR pairs (a few seeds, short outputs) and answers a
few eval items with sampling (temperature > 0, so the per-batch seeds matter, not only greedy
argmaxes). The same script runs once as one process with 8 devices and once as two processes
(jax.distributed, coordinator on 127.0.0.1) with 4 devices each; the pairs, the statistics and
the eval result must be identical. Per-process ownership and resume are checked in-process
(a scripted builder, jax's process index patched), which needs no model.

The equality tests are marked slow: the three interpreters compile every generation shape on
4- and 8-device meshes (the one-process run alone takes 52 s of CPU; the whole module took 8 to
15 minutes wall on the shared, overloaded 2-core machine, 10.4 with the continuous engine);
run them with `pytest -m slow tests/test_multiprocess_pairs.py`. The same check through the CLIs
and launch/local_multiprocess.sh: scripts/multiprocess_pairs_check.sh.
"""

import json
import shutil

import pytest

from subproc import run_python
from test_multihost import _two_processes

WORKER = r"""
import json, pathlib, sys
import jax
from musc_jax.distributed import maybe_initialize
from musc_jax.config import base_config
import musc_jax.microworld  # registers the microworld seed source (where the package does)
from musc_jax.microworld.assets import BASE_MODEL, EVAL_SET, WORLD_SEED
from musc_jax.data.builders.run import base_pairs_config, build_pairs, load_model_policy
from musc_jax.data.policy import load_policy_model
from musc_jax.eval import evaluate, load_eval_items

root = pathlib.Path(sys.argv[1])
maybe_initialize(base_config())


class Recording:  # the model policy, recording every call (conversations, seed, replies)

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def chat(self, conversations, sampling, seed=0):
        out = self.inner.chat(conversations, sampling, seed)
        self.calls += [json.dumps([c, seed, o]) for c, o in zip(conversations, out)]
        return out


def config(method):
    c = base_pairs_config(method)
    c.seed = 3
    c.model.path = str(BASE_MODEL)
    c.model.batch_size = 8
    c.data.update(source="microworld", path="", num_seeds=2, levels=(2, 3), world_seed=WORLD_SEED)
    c.pairs.update(out_dir=str(root / method), shard_size=1, progress=False)
    if method == "musc":
        c.musc.update(decomposer="given", max_new_tokens=16)
        c.weights.update(kind="kl", batch_size=4, max_length=256, max_prompt_length=192, bucket=64)
    else:
        c.spar = dict(samples=2, max_new_tokens=16, judge="verifier", branch=2, keep=1,
                      max_depth=1)
        c.weights.kind = "none"
    return c

out = {}
for method in ("musc", "spar"):
    c = config(method)
    policy = Recording(load_model_policy(c.model))
    res = build_pairs(c, policy, model=policy.inner.model, tokenizer=policy.inner.tokenizer)
    out[method] = res.stats["shards"]
    (root / f"calls-{method}-{jax.process_index()}.json").write_text(json.dumps(policy.calls))
model, tok, mesh = load_policy_model(BASE_MODEL)
items = load_eval_items(EVAL_SET)[:4]
res = evaluate(model, tok, items, max_new_tokens=12, temperature=0.8, batch_size=2, seed=5,
               mesh=mesh)
if jax.process_index() == 0:
    (root / "eval.json").write_text(json.dumps(res.to_dict(per_item=True), sort_keys=True))
    out["devices"] = [jax.process_count(), jax.local_device_count()]
    print(json.dumps(out))
"""


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _shards(run_dir):
    """{shard name: (pairs.jsonl text, shard_stats.json dict)} of a pairs run."""
    out = {}
    for d in sorted((run_dir / "pairs").glob("shard-*")):
        rows = d / "pairs.jsonl"
        out[d.name] = (rows.read_text() if rows.is_file() else "",
                       json.loads((d / "shard_stats.json").read_text()))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    single, multi = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("multi")
    s = _summary(run_python(WORKER.replace("sys.argv[1]", repr(str(single))), devices=8,
                            timeout=900))
    m = _summary(_two_processes(WORKER, [str(multi)], timeout=900))
    assert s["devices"] == [1, 8] and m["devices"] == [2, 4]
    return single, multi, s, m


@pytest.mark.slow
@pytest.mark.parametrize("method", ["musc", "spar"])
def test_two_processes_build_the_pairs_one_builds(runs, method):
    single, multi, s, m = runs
    assert s[method] == m[method] == {"total": 2, "built": 2, "resumed": 0}
    a, b = _shards(single / method), _shards(multi / method)
    assert list(a) == ["shard-00000", "shard-00001"]
    assert a == b
    sa, sb = (json.loads((d / method / "stats.json").read_text()) for d in (single, multi))
    for st in (sa, sb):
        st.pop("pairs_dir")
    assert sa == sb
    # every text the policy wrote (all stages: responses, judgements, refinements), same seeds
    calls = [[c for f in sorted(d.glob(f"calls-{method}-*.json")) for c in json.loads(f.read_text())]
             for d in (single, multi)]
    assert sorted(calls[0]) == sorted(calls[1]) and calls[0]
    assert all(json.loads(f.read_text()) for f in multi.glob(f"calls-{method}-*.json"))
    assert len(list(multi.glob(f"calls-{method}-*.json"))) == 2     # both processes wrote
    # not vacuous: the model wrote something every shard built on (MuSC: pairs; SPaR: samples)
    if method == "musc":
        assert sa["pairs"] > 0 and sa["weights"]["rows"] == sa["pairs"]
    else:
        assert sa["builder"]["samples"] == 4 and sa["builder"]["roots"] > 0


@pytest.mark.slow
def test_eval_on_two_processes_equals_one(runs):
    single, multi, _, _ = runs
    a, b = ((d / "eval.json").read_text() for d in (single, multi))
    assert a == b
    responses = [it["response"] for it in json.loads(a)["items"]]
    assert len(responses) == 4 and sum(bool(r.strip()) for r in responses) >= 2


def scripted_builder(seeds, policy, cfg, seed):
    """A stand-in builder: one row per seed, recording the shard seed it was given."""
    rows = [{"prompt": s.prompt, "chosen": f"yes {seed}", "rejected": "no", "method": "fake"}
            for s in seeds]
    return rows, {"pairs": len(rows), "judge_agreement": 0.5}


def test_each_process_builds_and_resumes_only_its_own_shards(monkeypatch, tmp_path):
    """Round-robin ownership and per-process resume, in-process (no model, no jax.distributed):
    process 1 of 2 rebuilds only its own lost shards, and process 0 then writes the stats with
    the counts every process reports."""
    import jax

    from musc_jax.data import pairs_io
    from musc_jax.data.builders import run as run_mod
    from musc_jax.data.policy import ScriptedPolicy

    monkeypatch.setitem(run_mod.METHODS, "random", ("test_multiprocess_pairs", "scripted_builder"))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"Describe item {i}."}) + "\n" for i in range(5)))
    c = run_mod.base_pairs_config("random")
    c.data.update(source="jsonl", path=str(seeds), num_seeds=0)
    c.pairs.update(out_dir=str(tmp_path / "run"), shard_size=1, progress=False)
    c.weights.kind = "none"
    policy = ScriptedPolicy(lambda conv, k, seed: "unused")
    first = run_mod.build_pairs(c, policy)
    pairs_dir = first.pairs_dir
    rows = pairs_io.read_pairs(pairs_dir)
    mtimes = {p.name: (p / "shard_stats.json").stat().st_mtime_ns for p in pairs_dir.iterdir()}
    for name in ("shard-00001", "shard-00003"):       # process 1's shards (1, 3 of 0..4)
        shutil.rmtree(pairs_dir / name)

    built, gathered, barriers = [], [], []
    monkeypatch.setattr(run_mod, "barrier", barriers.append)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for pid, others in ((1, 0), (0, 2)):
        monkeypatch.setattr(jax, "process_index", lambda pid=pid: pid)
        monkeypatch.setattr(run_mod, "allgather_json",
                            lambda n, pid=pid, o=others: gathered.append(n) or
                            ([n, o] if pid == 0 else [o, n]))
        stats_before = (first.out_dir / "stats.json").stat().st_mtime_ns
        res = run_mod.build_pairs(c, policy)
        built.append(sorted(p.name for p in pairs_dir.iterdir()
                            if (p / "shard_stats.json").stat().st_mtime_ns != mtimes[p.name]))
        if pid == 1:   # not process 0: no stats.json written, the one on disk read back
            assert (first.out_dir / "stats.json").stat().st_mtime_ns == stats_before
    assert built == [["shard-00001", "shard-00003"]] * 2    # process 0 rebuilt nothing
    assert gathered == [2, 0] and len(barriers) == 2
    assert res.stats["shards"] == {"total": 5, "built": 2, "resumed": 3}
    assert pairs_io.read_pairs(pairs_dir) == rows
    assert {k: v for k, v in res.stats.items() if k != "shards"} == \
        {k: v for k, v in first.stats.items() if k != "shards"}


def test_owned_policy_mesh_and_dtype(monkeypatch):
    import jax
    import jax.numpy as jnp

    from musc_jax.data.policy import policy_mesh, resolve_dtype
    from musc_jax.multiprocess import allgather_json, owned

    assert owned(10, 1, 3) == [1, 4, 7] and owned(2, 2, 3) == []
    assert sorted(sum((owned(11, i, 4) for i in range(4)), [])) == list(range(11))
    with pytest.raises(ValueError, match="not in"):
        owned(4, 2, 2)
    assert allgather_json({"a": (1, 2)}) == [{"a": [1, 2]}]     # one process: itself, as JSON
    mesh = policy_mesh()
    assert dict(mesh.shape) == {"data": jax.local_device_count(), "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="must divide"):
        policy_mesh(tensor=jax.local_device_count() + 1)
    assert resolve_dtype("auto") == jnp.float32                # CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_dtype("auto") == jnp.bfloat16 and resolve_dtype("float32") == jnp.float32
    with pytest.raises(ValueError, match="auto"):
        resolve_dtype("float99")
