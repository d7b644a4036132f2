"""DPO train step: musc_jax vs TRL's DPOTrainer, and model FLOP utilisation (DESIGN 9).

The 32M-parameter `bench_32m` model (hidden 512, 8 layers, 8 heads / 4 KV heads, MLP 1408,
vocab 8192) with random weights; one batch of 8 preference pairs, each 64 prompt + 192 response
tokens (length 256 on both sides, no padding); DPO sigmoid loss (beta 0.1), AdamW (lr 1e-6, no
weight decay, constant schedule) behind global-norm clipping at 1.0.

* ours, reference online: the jitted `make_train_step` with StepConfig(loss=dpo,
  reference="online") (a frozen copy of the weights is evaluated inside the step);
* ours, reference precomputed: StepConfig(reference="precompute"), reference token log-probs in
  the batch;
* TRL: DPOTrainer (torch, CPU, float32) on the same weights (saved with `save_pretrained`, loaded
  as LlamaForCausalLM) and the same token ids, with an explicit ref_model and
  precompute_ref_log_probs=False, timed from on_step_begin to on_step_end (forward policy on
  chosen+rejected, forward reference, backward, clipping, AdamW update, zero_grad).

Timing: both of our steps are compiled and warmed up first; TRL runs `--warmup` untimed steps.
Then the timed rounds are interleaved, so that a change in the machine's load (it is shared)
hits every configuration alike: after each timed TRL step, one matmul-peak sample, one online
and one precomputed step of ours. Every time is the median over the rounds; the JAX step blocks
on its outputs. The table also gives each step's process CPU time (all threads), which moves far
less than wall time when other processes compete for the cores.

MFU = analytic model FLOPs per step / median step time / dense float32 matmul FLOP/s measured
here (jnp.dot of 2048 x 2048, best of 3, sampled before every timed round so that it sees the
same load as the steps; the median of those samples). The table also shows the MFU against the
best sample of the whole run. The last line is machine-readable (speedup = trl_s / ours_s with
the reference online, pre_speedup = trl_s / pre_s with it precomputed; mfu of the online step):

    train_step: ours_s=<float> trl_s=<float> speedup=<float> pre_s=<float> pre_speedup=<float> mfu=<fraction>

    python bench/train_step.py [--steps 3] [--warmup 1] [--skip-trl] [--breakdown]
        [--attention auto|xla|einsum] [--scan-layers] [--remat none|full|dots_saveable|save_qkv_proj]
        [--micro-batches N]

`--micro-batches N` makes both sides accumulate each step's gradient over N micro-batches of
8 / N pairs (ours: `optim.grad_accum`, a `lax.scan` over micro-batches; TRL:
`gradient_accumulation_steps`): the same optimizer step on the same batch, with smaller
activations. On these 2 cores that helps XLA more than torch: at N = 4 (4 sequences of 256
tokens per micro-batch) our step's working set fits the caches.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from common import (MatmulPeak, fmt_times, median, time_calls, time_calls_cpu,  # noqa: E402
                    torch_matmul_peak_flops)
from musc_jax import scoring  # noqa: E402
from musc_jax import train_step as ts  # noqa: E402
from musc_jax.losses import LossConfig  # noqa: E402
from musc_jax.models import ModelConfig, init_model, save_pretrained  # noqa: E402
from musc_jax.optim import make_optimizer  # noqa: E402
from musc_jax.config import base_config  # noqa: E402
from musc_jax.data.batching import logits_window  # noqa: E402
from musc_jax.train_step import StepConfig, make_train_step  # noqa: E402

PAIRS, PROMPT, RESPONSE = 8, 64, 192
LENGTH = PROMPT + RESPONSE
BETA, LR = 0.1, 1e-6


# ------------------------------------------------------------------------------------ FLOPs

def forward_flops(cfg: ModelConfig, seqs: int, length: int) -> dict[str, float]:
    """Model FLOPs of one teacher-forced forward over `seqs` sequences of `length` tokens.

    Matmuls count 2 FLOPs per multiply-add: the non-embedding weights on every token, the
    attention scores and the probability-value product over the full T x T square per head
    (2 * 2 * T^2 * heads * head_dim per layer and sequence), and the LM head on the T - 1
    positions that predict a next token (both implementations project exactly those).
    Norms, rope, softmax and the embedding lookup are not counted.
    """
    e, h, kv, d, m, v, n = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                            cfg.intermediate_size, cfg.vocab_size, cfg.num_layers)
    layer_weights = e * h * d + 2 * e * kv * d + h * d * e + 3 * e * m
    dense = 2.0 * seqs * length * n * layer_weights
    attention = 2.0 * 2.0 * seqs * n * length * length * h * d
    lm_head = 2.0 * seqs * (length - 1) * e * v
    return {"dense": dense, "attention": attention, "lm_head": lm_head,
            "total": dense + attention + lm_head}


# ------------------------------------------------------------------------------------ data

def make_pairs(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """8 pairs: a shared 64-token prompt, 192-token responses ending in EOS (id vocab - 1)."""
    rng = np.random.default_rng(seed)
    eos = vocab - 1
    prompt = rng.integers(1, eos, (PAIRS, PROMPT))
    out = {}
    for side in ("chosen", "rejected"):
        resp = np.concatenate([rng.integers(1, eos, (PAIRS, RESPONSE - 1)),
                               np.full((PAIRS, 1), eos)], axis=1)
        out[f"{side}_ids"] = np.concatenate([prompt, resp], axis=1).astype(np.int32)
        out[f"{side}_mask"] = np.ones((PAIRS, LENGTH), np.int32)
        rm = np.zeros((PAIRS, LENGTH), np.float32)
        rm[:, PROMPT:] = 1.0
        out[f"{side}_response_mask"] = rm
    return out


def optimizer(total_steps: int):
    return make_optimizer(SimpleNamespace(
        lr=LR, warmup_steps=0, schedule="constant", final_lr_ratio=0.0, weight_decay=0.0,
        b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0, grad_accum=1), total_steps)


# ------------------------------------------------------------------------------------ ours

class OursRunner:
    """A jitted train step with its own params / opt_state (donated, as the Trainer does)."""

    def __init__(self, graphdef, params, ref, batch, reference: str, total_steps: int,
                 compiler_options: dict | None = None, window: int | None = None,
                 micro_batches: int = 1):
        self.cfg = StepConfig(loss=LossConfig.preset("dpo", beta=BETA), reference=reference,
                              logits_window=window, grad_accum=micro_batches)
        if micro_batches > 1:   # the step scans over a leading micro-batch axis (grad_accum)
            batch = {k: v.reshape(micro_batches, v.shape[0] // micro_batches, *v.shape[1:])
                     for k, v in batch.items()}
        tx, schedule = optimizer(total_steps)
        self.params = jax.tree.map(jnp.copy, params)
        self.opt_state = jax.jit(tx.init)(self.params)
        self.ref = ref
        self.batch = batch
        step = jax.jit(make_train_step(graphdef, self.cfg, tx, schedule), donate_argnums=(0, 1),
                       compiler_options=compiler_options)
        t0 = time.perf_counter()
        self.step = step.lower(self.params, self.opt_state, batch, ref).compile()
        self.compile_s = time.perf_counter() - t0
        self.metrics = []
        self.cpu = []   # process CPU seconds of each call (all threads)

    def __call__(self):
        c0 = time.process_time()
        self.params, self.opt_state, m = self.step(self.params, self.opt_state, self.batch, self.ref)
        jax.block_until_ready((self.params, self.opt_state, m))
        self.cpu.append(time.process_time() - c0)
        self.metrics.append(m)


# ------------------------------------------------------------------------------------ TRL

def word_tokenizer(vocab: int):
    """A word-level tokenizer: word 'w<i>' is id i, '</s>' (EOS) is vocab - 1; nothing added."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab - 1)}
    words["</s>"] = vocab - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>",
                                   unk_token="w0")


def run_trl(model_dir: Path, pairs: dict[str, np.ndarray], vocab: int, steps: int, warmup: int,
            workdir: Path, after_step=None, micro_batches: int = 1) -> dict:
    """Train `warmup + steps` DPOTrainer steps; `after_step()` runs after each timed one. Each
    step accumulates gradients over `micro_batches` micro-batches of PAIRS / micro_batches."""
    import warnings

    import datasets
    import torch
    import transformers
    from datasets import Dataset
    from transformers import LlamaForCausalLM, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    # Keep the table readable: no progress bars, deprecation warnings or per-step log dicts.
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    def text(ids):
        return " ".join(f"w{i}" for i in ids)

    # TRL appends EOS to each response text itself, so the texts hold the first 191 tokens.
    data = {"prompt": [text(r[:PROMPT]) for r in pairs["chosen_ids"]],
            "chosen": [" " + text(r[PROMPT:-1]) for r in pairs["chosen_ids"]],
            "rejected": [" " + text(r[PROMPT:-1]) for r in pairs["rejected_ids"]]}
    tokenizer = word_tokenizer(vocab)
    load = dict(dtype=torch.float32, attn_implementation="sdpa")
    policy = LlamaForCausalLM.from_pretrained(model_dir, **load)
    ref = LlamaForCausalLM.from_pretrained(model_dir, **load)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.logs, self.t0, self.c0 = [], [], [], None, None

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)
            if after_step is not None and len(self.times) > warmup:
                after_step()

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    timer = Timer()
    args = DPOConfig(
        output_dir=str(workdir), per_device_train_batch_size=PAIRS // micro_batches,
        gradient_accumulation_steps=micro_batches,
        max_steps=warmup + steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        beta=BETA, loss_type=["sigmoid"], max_length=None, truncation_mode="keep_start",
        precompute_ref_log_probs=False, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, seed=0, disable_dropout=True)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                         train_dataset=Dataset.from_dict(data), processing_class=tokenizer,
                         callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    # The trainer must see exactly our token ids: check its tokenised dataset and collated batch.
    row = trainer.train_dataset[0]
    assert row["prompt_ids"] == pairs["chosen_ids"][0, :PROMPT].tolist(), "prompt ids differ"
    assert row["chosen_ids"] == pairs["chosen_ids"][0, PROMPT:].tolist(), "chosen ids differ"
    assert row["rejected_ids"] == pairs["rejected_ids"][0, PROMPT:].tolist(), "rejected ids differ"
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(PAIRS)])
    assert tuple(collated["input_ids"].shape) == (2 * PAIRS, LENGTH), collated["input_ids"].shape
    assert int(collated["completion_mask"].sum()) == 2 * PAIRS * RESPONSE
    trainer.train()
    first = next((log for log in timer.logs if "loss" in log), {})
    return {"times": timer.times[warmup:], "cpu": timer.cpu[warmup:],
            "warmup_times": timer.times[:warmup], "first": first}


# ------------------------------------------------------------------------------------ breakdown

def breakdown(graphdef, params, ref, batch, batch_pre, total_steps, flops_fwd, cpu_peak,
              steps) -> list[tuple[str, float, float, float]]:
    """Time pieces of the step: forward variants, grad, optimizer, full step with other chunks.

    Returns (name, median wall s, median CPU s, model FLOPs) per piece.
    """
    rows = []
    ids, mask, resp = (jnp.asarray(a) for a in ts._pair_inputs(batch))

    def timed(name, fn, args, flops):
        f = jax.jit(fn)
        jax.block_until_ready(f(*args))
        walls, cpus = time_calls_cpu(lambda: jax.block_until_ready(f(*args)), steps, warmup=1)
        rows.append((name, median(walls), median(cpus), flops))

    def hidden(p, i, m):
        return nnx.merge(graphdef, p).hidden_states(i, m)[0]

    timed("fwd: hidden states only (16 seqs)", hidden, (params, ids, mask),
          flops_fwd["dense"] + flops_fwd["attention"])
    for chunk in (128, 256, 64):
        def logps(p, i, m, r, chunk=chunk):
            return scoring.response_token_logps(nnx.merge(graphdef, p), i, m, r, chunk=chunk)
        timed(f"fwd: response_token_logps chunk={chunk}", logps, (params, ids, mask, resp),
              flops_fwd["total"])

    cfg_pre = StepConfig(loss=LossConfig.preset("dpo", beta=BETA), reference="precompute")
    loss_pre = ts.make_loss_fn(graphdef, cfg_pre)
    timed("fwd+bwd: value_and_grad of the loss, precomputed ref",
          lambda p, b: jax.value_and_grad(loss_pre, has_aux=True)(p, b, None),
          (params, batch_pre), 3 * flops_fwd["total"])
    tx, schedule = optimizer(total_steps)
    opt_state = jax.jit(tx.init)(params)

    def update(p, o, g):
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o
    grads = jax.tree.map(lambda x: x * 1e-3, params)
    timed("optimizer: clip + AdamW update only", update, (params, opt_state, grads), 0.0)

    # The full online step with the time chunk of the log-prob projection changed in place.
    original = ts._forward_logps
    for chunk in (256, 64):
        def patched(gd, p, i, m, r, chunk=chunk):
            return scoring.response_token_logps(nnx.merge(gd, p), i, m, r, chunk=chunk)
        ts._forward_logps = patched
        try:
            runner = OursRunner(graphdef, params, ref, batch, "online", total_steps)
            walls, cpus = time_calls_cpu(runner, steps, warmup=1)
        finally:
            ts._forward_logps = original
        rows.append((f"full step, online ref, chunk={chunk}", median(walls), median(cpus),
                     4 * flops_fwd["total"]))
    return rows


# ------------------------------------------------------------------------------------ main

def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps (rounds) per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    ap.add_argument("--skip-trl", action="store_true", help="time only our steps (trl_s=nan)")
    ap.add_argument("--skip-precompute", action="store_true")
    ap.add_argument("--attention", default="auto", help="model.attention of our model")
    ap.add_argument("--scan-layers", action="store_true", help="model.scan_layers of our model")
    ap.add_argument("--remat", default="none", help="model.remat of our model")
    ap.add_argument("--logits-windows", type=int, default=base_config().data.logits_windows,
                    help="data.logits_windows for our step (1 = LM head over every position)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time pieces of our step (forward variants, grad, optimizer)")
    ap.add_argument("--micro-batches", type=int, default=1,
                    help="both sides accumulate each step's gradient over this many micro-batches "
                         f"of {PAIRS} / N pairs (ours: optim.grad_accum; TRL: "
                         "gradient_accumulation_steps): the same step, smaller working sets")
    args = ap.parse_args()
    if args.micro_batches < 1 or PAIRS % args.micro_batches:
        ap.error(f"--micro-batches={args.micro_batches}: must divide the {PAIRS} pairs of a step")

    cfg = ModelConfig.preset("bench_32m")
    seqs = 2 * PAIRS
    fwd = forward_flops(cfg, seqs, LENGTH)
    flops_online = 4 * fwd["total"]      # policy fwd + bwd (2x fwd) + reference fwd
    flops_pre = 3 * fwd["total"]
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}")
    print(f"model bench_32m: {cfg.num_params() / 1e6:.1f}M parameters; batch {PAIRS} pairs x "
          f"({PROMPT} prompt + {RESPONSE} response) = {seqs} x {LENGTH} tokens")
    print(f"model FLOPs: forward {fwd['total'] / 1e9:.1f} G (dense {fwd['dense'] / 1e9:.1f}, "
          f"attention {fwd['attention'] / 1e9:.1f}, lm head {fwd['lm_head'] / 1e9:.1f}); "
          f"step online ref {flops_online / 1e9:.1f} G, precomputed ref {flops_pre / 1e9:.1f} G")
    peak = MatmulPeak()
    peak.sample(7)

    total_steps = 10 * (args.warmup + args.steps) + 10
    model = init_model(cfg, seed=0, attention=args.attention, scan_layers=args.scan_layers,
                       remat=args.remat)
    # What the Trainer's loader picks for this batch: the LM head skips prompt-only positions.
    window = logits_window([PROMPT] * seqs, LENGTH, args.logits_windows)
    print(f"our model: attention={args.attention} scan_layers={args.scan_layers} remat={args.remat}; "
          f"LM head over the last {window or LENGTH - 1} of {LENGTH - 1} positions "
          f"(data.logits_windows={args.logits_windows}; TRL projects every position, its default "
          "use_logits_to_keep=False; model FLOPs below count every position for all)")
    print(f"micro-batches: {args.micro_batches} of {PAIRS // args.micro_batches} pairs per step on "
          "both sides (ours optim.grad_accum, TRL gradient_accumulation_steps)")
    pairs = make_pairs(cfg.vocab_size, seed=0)
    batch = {k: jnp.asarray(v) for k, v in pairs.items()}
    model_dir = save_pretrained(model, tmp / "model")
    graphdef, params = nnx.split(model)
    ref = jax.tree.map(jnp.copy, params)   # frozen reference copy (never donated)
    batch_pre = dict(batch)
    for side in ("chosen", "rejected"):
        batch_pre[f"ref_{side}_token_logps"] = scoring.score(
            model, batch[f"{side}_ids"], batch[f"{side}_mask"], batch[f"{side}_response_mask"])

    mb = args.micro_batches
    online = OursRunner(graphdef, params, ref, batch, "online", total_steps, window=window,
                        micro_batches=mb)
    pre = (None if args.skip_precompute else
           OursRunner(graphdef, params, None, batch_pre, "precompute", total_steps, window=window,
                      micro_batches=mb))
    for _ in range(args.warmup):
        online()
        if pre is not None:
            pre()
    first_m = online.metrics[0] if online.metrics else None

    # Timed rounds, interleaved so that a change in the machine's load hits every configuration
    # alike: matmul peak sample, our online step, our precomputed step (and, with TRL, one
    # DPOTrainer step before each round, timed by the trainer callback).
    on_times, pre_times, round_peaks = [], [], []

    def one_round():
        round_peaks.append(peak.sample(3))
        on_times.append(time_calls(online, 1, warmup=0)[0])
        if pre is not None:
            pre_times.append(time_calls(pre, 1, warmup=0)[0])

    trl = None
    if args.skip_trl:
        for _ in range(args.steps):
            one_round()
    else:
        trl = run_trl(model_dir, pairs, cfg.vocab_size, args.steps, args.warmup, tmp / "trl",
                      after_step=one_round, micro_batches=mb)
        torch_peak = torch_matmul_peak_flops()

    best_peak, cpu_peak = peak.best, peak.best_per_cpu_second
    ours_s = median(on_times)
    trl_s = median(trl["times"]) if trl is not None else float("nan")
    on_cpu = online.cpu[args.warmup:]
    rows = [("ours (musc_jax), reference online", on_times, on_cpu, flops_online,
             online.compile_s)]
    if pre is not None:
        rows.append(("ours (musc_jax), reference precomputed", pre_times, pre.cpu[args.warmup:],
                     flops_pre, pre.compile_s))
    trl_cpu = float("nan")
    if trl is not None:
        trl_cpu = median(trl["cpu"])
        rows.append(("TRL DPOTrainer (torch CPU), reference online", trl["times"], trl["cpu"],
                     flops_online, None))

    run_peak = median(round_peaks)   # the matmul peak under the load the timed steps ran in
    print()
    print(f"dense fp32 matmul peak (jnp.dot 2048^2, best of 3 before each round): median "
          f"{run_peak / 1e9:.1f} GFLOP/s (rounds: {', '.join(f'{p / 1e9:.0f}' for p in round_peaks)}); "
          f"best of the run {best_peak / 1e9:.1f} GFLOP/s; {cpu_peak / 1e9:.1f} GFLOP per CPU-second")
    print(f"{'configuration':46s} {'s/step median (min..max, n)':30s} {'GFLOP/step':>10s} "
          f"{'GFLOP/s':>8s} {'MFU':>6s} {'MFU@best':>8s} {'vs TRL':>7s} {'CPU s/step':>10s} "
          f"{'CPU eff':>7s} {'compile':>8s}")
    for name, times, cpus, flops, compile_s in rows:
        t, c = median(times), median(cpus)
        print(f"{name:46s} {fmt_times(times):30s} {flops / 1e9:10.1f} {flops / t / 1e9:8.1f} "
              f"{flops / t / run_peak:6.1%} {flops / t / best_peak:8.1%} {trl_s / t:6.2f}x "
              f"{c:10.2f} {flops / c / cpu_peak:7.1%} "
              f"{'' if compile_s is None else f'{compile_s:7.1f}s':>8s}")
    print("  MFU = model FLOPs / median step time / median per-round matmul peak (measured between the\n"
          "  timed steps, so under the same machine load); MFU@best uses the best peak of the whole run\n"
          "  instead (lower when other processes loaded the cores during the steps but not during some\n"
          "  peak sample). CPU s/step = process CPU time (all threads); CPU eff = model FLOPs per\n"
          "  CPU-second / matmul FLOPs per CPU-second (little affected by other load).")
    if trl is not None:
        ratios = [a / b for a, b in zip(trl["times"], on_times)]
        print(f"  per-round speedup (TRL step / our next step): "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median {median(ratios):.2f}x; "
              f"CPU-time ratio TRL/ours {trl_cpu / median(on_cpu):.2f}x")
        print(f"  TRL warm-up step(s): {', '.join(f'{t:.3f} s' for t in trl['warmup_times'])}; "
              f"torch matmul peak {torch_peak / 1e9:.1f} GFLOP/s "
              f"(TRL against torch's own peak: {flops_online / trl_s / torch_peak:.1%})")
        # Same weights and tokens: the first step's loss and policy log-probs should agree.
        first = trl["first"]
        if first_m is not None:
            print(f"  check step 1: loss ours {float(first_m['loss']):.6f} / TRL "
                  f"{first.get('loss', float('nan')):.6f} (ln 2 = {math.log(2):.6f}); logps/chosen "
                  f"ours {float(first_m['logps/chosen']):.3f} / TRL "
                  f"{first.get('logps/chosen', float('nan')):.3f}")

    if args.breakdown:
        print()
        print("breakdown of our step: jitted pieces, median wall and CPU time; CPU eff as above")
        del online, pre
        bd = breakdown(graphdef, ref, ref, batch, batch_pre, total_steps, fwd, cpu_peak,
                       args.steps)
        print(f"  {'piece':52s} {'wall s':>8s} {'CPU s':>8s} {'GFLOP':>7s} {'CPU eff':>7s}")
        for name, wall, cpu, flops in bd:
            eff = f"{flops / cpu / cpu_peak:7.1%}" if flops else ""
            print(f"  {name:52s} {wall:8.3f} {cpu:8.3f} {flops / 1e9:7.1f} {eff:>7s}")

    mfu = flops_online / ours_s / run_peak
    speedup = trl_s / ours_s
    pre_s = median(pre_times) if pre_times else float("nan")
    print(f"train_step: ours_s={ours_s:.4f} trl_s={trl_s:.4f} speedup={speedup:.3f} "
          f"pre_s={pre_s:.4f} pre_speedup={trl_s / pre_s:.3f} mfu={mfu:.4f}")


if __name__ == "__main__":
    main()
