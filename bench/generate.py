"""Sampling throughput: the continuous engine vs the static engine vs transformers `generate`.

Model: `bench_32m` (hidden 512, 8 layers, 8 heads / 4 KV heads, MLP 1408, vocab 8192), random
weights, float32, sampling at temperature 1 with top-p 0.9 (top-k off).

* fixed: 16 prompts of 64 random tokens, 128 new tokens each, no EOS.
* mixed: 64 prompts of 16..96 tokens; each row's output length drawn log-uniformly from
  16..512 (many short answers, a few long ones; fixed seed). Ours and the static engine get the
  lengths as per-prompt budgets (`max_new_tokens=[...]`; the static engine takes one budget, so
  it runs every row to the longest, which is what it does when rows end early at EOS).
  transformers runs batches of 32, each to its longest row (what `generate` costs when rows end
  at EOS: finished rows are decoded as padding until the batch's last row ends). Throughput
  counts useful tokens only (sum of the drawn lengths: 9067). Size: the issue's pair-building
  batch (64 prompts of 16..96 tokens) with the 16..512 spread; one call is ~9k useful tokens for
  ours, 64 x 511 slot-steps for the static engine and 2 batches x ~500 steps for transformers,
  measured on 2 quiet cores: ours 40 s a call (warm-up 71 s), the static engine 231 s,
  transformers 126 s, so the mixed workload takes about 25 min with 3 repeats and the fixed
  one under 2 min.

Engines: ours = `generate(..., engine="continuous")` (default slots), old = `engine="static"`
(the engine before continuous batching), transformers = LlamaForCausalLM (torch CPU float32,
`torch.set_num_threads(<cores>)`) on the same weights. Each is timed `--repeats` times after a
warm-up call (compilation); the median is reported, ratios from the same run. Ours is also timed
with XLA's decode attention and dots instead of the CPU kernels (`musc_jax/engine/cpu_kernels.py`:
decode attention and the packed-weight matmul), which the engine uses on one CPU device in
float32: what the kernels gain (`--skip-xla-ops` leaves it out).

"finished work" is the share of decode slot-steps spent on rows that had already ended (static
engine and transformers: padding rows of the batch); "idle" (ours) the share spent on slots
holding no row in the tail.

Where a decode step goes (fixed workload, per step, median of jitted micro-timings): the model
step (embed + layers + logits) and the sampler (top-p), for the static engine's cache
([B, S, kv, D], written by dynamic_update_slice) and ours (slot cache), and how many
cache-sized copy/transpose ops the compiled decode loop runs per step (from the HLO). The
per-op breakdown is `bench/decode_profile.py` (docs/results/bench/decode_profile.md).

    python bench/generate.py            # both workloads, 3 repeats (median); ~27 min, 2 cores

writes each workload's report to docs/results/bench/generate_fixed.txt and generate_mixed.txt
(`--out-dir ''` writes nothing; `--only fixed|mixed`, `--skip-hf`, `--skip-static`,
`--skip-profile`, `--repeats N` for quick looks). The workloads' last lines are machine-readable:

    generate_fixed: ours_tok_s=<f> static_tok_s=<f> hf_tok_s=<f> vs_static=<f> vs_hf=<f>
    generate_mixed: ours_tok_s=<f> static_tok_s=<f> hf_tok_s=<f> vs_static=<f> vs_hf=<f>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from common import fmt_times, median, time_calls  # noqa: E402
from musc_jax import generate as gen  # noqa: E402
from musc_jax.engine import continuous, hlo, static  # noqa: E402
from musc_jax.engine.sampling import SamplingMode, sample  # noqa: E402
from musc_jax.engine.slot_cache import init_slot_cache, packed_logits, slot_forward  # noqa: E402
from musc_jax.models import ModelConfig, init_model, save_pretrained  # noqa: E402

TOP_P, TEMPERATURE = 0.9, 1.0
FIXED = dict(batch=16, prompt=64, new=128)
MIXED = dict(prompts=64, prompt_lo=16, prompt_hi=96, new_lo=16, new_hi=512, hf_batch=32)


def workloads(vocab: int):
    rng = np.random.default_rng(0)
    fixed = rng.integers(0, vocab, (FIXED["batch"], FIXED["prompt"])).tolist()
    lens = rng.integers(MIXED["prompt_lo"], MIXED["prompt_hi"] + 1, MIXED["prompts"])
    mixed = [rng.integers(0, vocab, n).tolist() for n in lens]
    budgets = np.exp(rng.uniform(np.log(MIXED["new_lo"]), np.log(MIXED["new_hi"]),
                                 MIXED["prompts"])).astype(int).tolist()
    return fixed, mixed, budgets


def time_ours(model, prompts, budgets, engine, repeats):
    seed = iter(range(1000))
    last = {}

    def call():
        b = budgets if engine == "continuous" else max(budgets)
        out = gen.generate(model, prompts, b, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
                           seed=next(seed), engine=engine)
        assert np.all(out.lengths == (np.array(budgets) if engine == "continuous" else b))
        last["out"] = out

    traces = sum(gen.TRACE_COUNTS.values())
    t0 = time.perf_counter()
    call()                                               # warm-up: compiles every bucket
    warmup = time.perf_counter() - t0
    compiled = sum(gen.TRACE_COUNTS.values()) - traces
    times = time_calls(call, repeats, warmup=0)
    assert sum(gen.TRACE_COUNTS.values()) == traces + compiled, f"{engine} recompiled"
    return times, last["out"], f"warm-up call {warmup:.1f} s ({compiled} programs compiled)"


def time_hf(model, prompts, budgets, batch, repeats):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        save_pretrained(model, Path(tmp) / "model")
        hf = transformers.LlamaForCausalLM.from_pretrained(Path(tmp) / "model",
                                                           dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None   # rows run to their batch's longest budget
    hf.generation_config.pad_token_id = 0

    def run(n_cap=None):
        for s in range(0, len(prompts), batch):
            ps, n = prompts[s:s + batch], max(budgets[s:s + batch])
            n = n if n_cap is None else min(n, n_cap)
            t = max(map(len, ps))
            ids = torch.tensor([[0] * (t - len(p)) + p for p in ps])
            mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in ps])
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                  temperature=TEMPERATURE, top_p=TOP_P, top_k=0, max_new_tokens=n)
            assert out.shape == (len(ps), t + n)

    run(8)  # warm-up
    times = time_calls(run, repeats, warmup=0)
    steps = sum(len(prompts[s:s + batch]) * max(budgets[s:s + batch])
                for s in range(0, len(prompts), batch))
    return times, torch.__version__, torch.get_num_threads(), steps


def time_ours_xla_ops(model, prompts, budgets, repeats):
    """`time_ours` of the continuous engine with XLA's decode attention and dots instead of the
    CPU kernels (`cpu_kernels`): what the kernels gain, in the same run."""
    use = continuous.use_decode_kernel
    continuous.use_decode_kernel = lambda model, mesh: False
    continuous._JIT.clear()
    try:
        return time_ours(model, prompts, budgets, "continuous", repeats)[0]
    finally:
        continuous.use_decode_kernel = use
        continuous._JIT.clear()


def xla_ops_line(tokens, ours, xla) -> str:
    if not xla:
        return ""
    return (f"  ours with XLA's attention and dots {fmt_times(xla)}  "
            f"{tokens / median(xla):9.1f} useful tok/s; the CPU kernels speed it up "
            f"{median(xla) / median(ours):.2f}x\n")


def step_profile(model, say, repeats: int = 5) -> None:
    """Per decode step, fixed workload: model step and sampler, static cache vs slot cache."""
    b, s = FIXED["batch"], FIXED["prompt"] + FIXED["new"]
    graphdef, params = nnx.split(model)
    tok = jnp.zeros((b,), jnp.int32)
    keys = jax.random.split(jax.random.key(0), b)
    kernel = continuous.use_decode_kernel(model, None)    # as the engine decodes
    mode = SamplingMode(False, False, True, kernel)       # top-p, cut as generate() makes it
    packed = continuous.decode_weights(graphdef, params) if kernel else None

    def old_step(params, cache, tok):
        m = nnx.merge(graphdef, params)
        h, cache = m.hidden_states(tok[:, None], jnp.ones((b, 1), jnp.int32), cache=cache)
        return m.logits(h[:, 0]), cache

    def new_step(params, cache, tok, pos):
        m = nnx.merge(graphdef, params)
        h, cache = slot_forward(m, tok[:, None], jnp.arange(b), pos, cache, whole=True,
                                decode_kernel=kernel, packed=packed)
        logits = (m.logits(h[:, 0]) if packed is None
                  else packed_logits(h[:, 0], packed, m.config.vocab_size))
        return logits, cache

    old = jax.jit(old_step, donate_argnums=1)
    new = jax.jit(new_step, donate_argnums=1)
    sampler = jax.jit(lambda logits: sample(logits, keys, 5, TEMPERATURE, 0, TOP_P, mode))
    old_cache = model.init_cache(b, s)._replace(index=jnp.int32(FIXED["prompt"] + 64),
                                                 lengths=jnp.full((b,), 100, jnp.int32),
                                                 mask=jnp.ones((b, s), bool))
    length = gen.bucket_length(s, minimum=continuous.MIN_CACHE_BUCKET)   # the engine's L
    new_cache = init_slot_cache(model.config, b, length, model.dtype)
    pos = jnp.full((b,), FIXED["prompt"] + 64, jnp.int32)
    box = {"old": old_cache, "new": new_cache}

    def run_old():
        logits, box["old"] = old(params, box["old"], tok)
        logits.block_until_ready()

    def run_new():
        logits, box["new"] = new(params, box["new"], tok, pos)
        logits.block_until_ready()

    logits = jax.random.normal(jax.random.key(1), (b, model.config.vocab_size))
    t_old = median(time_calls(run_old, repeats * 4, warmup=2)) * 1e3
    t_new = median(time_calls(run_new, repeats * 4, warmup=2)) * 1e3
    t_samp = median(time_calls(lambda: sampler(logits).block_until_ready(), repeats * 4,
                               warmup=2)) * 1e3
    elems = b * model.config.num_kv_heads * FIXED["prompt"] * model.config.head_dim
    c_old = len(hlo.loop_copies(static.decode_program_text(model, b, FIXED["prompt"],
                                                           FIXED["new"], mode), elems))
    c_new = len(hlo.loop_copies(
        continuous.decode_program_text(model, b, length, FIXED["new"], mode), elems))
    say(f"decode step (batch {b}): static-cache model step {t_old:.2f} ms, slot-cache model "
        f"step {t_new:.2f} ms, top-p sampler {t_samp:.2f} ms; cache-sized copies per step in "
        f"the compiled loop: static {c_old}, ours {c_new}")


def report(say, name, tokens, ours, static_, hf, extra=""):
    def tps(times):
        return tokens / median(times) if times else float("nan")

    o, s, h = tps(ours), tps(static_), tps(hf)
    for label, times, v in (("ours (continuous)", ours, o), ("old (static engine)", static_, s),
                            ("transformers (torch)", hf, h)):
        if times:
            say(f"  {label:<22} {fmt_times(times)}  {v:9.1f} useful tok/s")
    if extra:
        say(extra.rstrip("\n"))
    say(f"generate_{name}: ours_tok_s={o:.1f} static_tok_s={s:.1f} hf_tok_s={h:.1f} "
          f"vs_static={o / s:.2f} vs_hf={o / h:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each engine")
    parser.add_argument("--skip-hf", action="store_true", help="no transformers timing")
    parser.add_argument("--skip-static", action="store_true", help="no static-engine timing")
    parser.add_argument("--skip-profile", action="store_true", help="no decode-step profile")
    parser.add_argument("--skip-xla-ops", action="store_true",
                        help="no timing of the engine with XLA's attention and dots")
    parser.add_argument("--only", choices=("fixed", "mixed"), help="one workload only")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent.parent / "docs"
                                                 / "results" / "bench"),
                        help="where generate_<workload>.txt are written ('' for nowhere)")
    args = parser.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    def save(name: str) -> None:
        if args.out_dir:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.out_dir) / f"generate_{name}.txt").write_text("\n".join(lines) + "\n")
        del lines[1:]                                    # keep the header line for the next

    cfg = ModelConfig.preset("bench_32m")
    model = init_model(cfg, seed=0)
    fixed, mixed, budgets = workloads(cfg.vocab_size)
    say(f"model bench_32m ({cfg.num_params() / 1e6:.1f}M params), temperature {TEMPERATURE}, "
        f"top-p {TOP_P}; jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start; "
        f"{args.repeats} timed calls per engine (median)")

    if args.only in (None, "fixed"):
        b, new = FIXED["batch"], FIXED["new"]
        t0 = time.perf_counter()
        say(f"fixed: {b} prompts x {FIXED['prompt']} tokens, {new} new tokens each")
        ours, out, warm = time_ours(model, fixed, [new] * b, "continuous", args.repeats)
        xla = [] if args.skip_xla_ops else time_ours_xla_ops(
            model, fixed, [new] * b, args.repeats)
        old = [] if args.skip_static else time_ours(model, fixed, [new] * b, "static",
                                                    args.repeats)[0]
        hf = [] if args.skip_hf else time_hf(model, fixed, [new] * b, b, args.repeats)[0]
        report(say, "fixed", b * new, ours, old, hf,
               f"  ours: {out.stats.segments} decode segments, finished work "
               f"{out.stats.finished_fraction:.3f}, idle {out.stats.idle_fraction:.3f}; "
               f"{warm}\n" + xla_ops_line(b * new, ours, xla))
        if not args.skip_profile:
            step_profile(model, say)
        say(f"  (fixed section took {time.perf_counter() - t0:.0f} s, load average "
            f"{os.getloadavg()[0]:.1f} at its end)")
        save("fixed")

    if args.only in (None, "mixed"):
        useful = sum(budgets)
        say(f"mixed: {len(mixed)} prompts of {MIXED['prompt_lo']}..{MIXED['prompt_hi']} tokens, "
            f"outputs of {min(budgets)}..{max(budgets)} tokens (mean {np.mean(budgets):.0f}, "
            f"median {np.median(budgets):.0f}), {useful} useful tokens; transformers in "
            f"batches of {MIXED['hf_batch']}")
        t0 = time.perf_counter()
        ours, out, warm = time_ours(model, mixed, budgets, "continuous", args.repeats)
        st = out.stats
        extra = (f"  ours: {st.segments} decode segments, {st.prefill_calls} prefill calls, "
                 f"{st.resizes} resizes; finished work {st.finished_fraction:.3f}, idle "
                 f"{st.idle_fraction:.3f}; {warm}\n")
        if not args.skip_xla_ops:
            extra += xla_ops_line(useful, ours, time_ours_xla_ops(
                model, mixed, budgets, args.repeats))
        old = []
        if not args.skip_static:
            old = time_ours(model, mixed, budgets, "static", args.repeats)[0]
            rows = gen.bucket_batch(len(mixed))
            extra += f"  static: finished work {1 - useful / (rows * max(budgets)):.3f}\n"
        hf = []
        if not args.skip_hf:
            hf, *_, steps = time_hf(model, mixed, budgets, MIXED["hf_batch"], args.repeats)
            extra += f"  transformers: finished work {1 - useful / steps:.3f}\n"
        report(say, "mixed", useful, ours, old, hf, extra)
        say(f"  (mixed section took {time.perf_counter() - t0:.0f} s, load average "
            f"{os.getloadavg()[0]:.1f} at its end)")
        save("mixed")


if __name__ == "__main__":
    main()
