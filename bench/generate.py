"""Sampling with a KV cache: musc_jax `generate` vs transformers `generate` (DESIGN 9).

The 32M-parameter `bench_32m` model (hidden 512, 8 layers, 8 heads / 4 KV heads, MLP 1408,
vocab 8192) with random weights; 16 prompts of 64 random tokens; 128 new tokens each, sampled
at temperature 1 with top-p 0.9 (top-k off). No EOS on either side, so every row generates all
128 tokens.

* ours: `musc_jax.generate.generate` (prefill + while_loop decode in one jit, float32), timed
  after a warm-up call that compiles;
* transformers: LlamaForCausalLM (torch, CPU, float32, `torch.set_num_threads(<cores>)`) loaded
  from the same weights (`save_pretrained`), `generate(do_sample=True, top_p=0.9, top_k=0)`,
  timed after a short warm-up generation.

new tokens/s = 16 * 128 / median seconds per call. The last line is machine-readable:

    generate: ours_tok_s=<float> hf_tok_s=<float> speedup=<float>

    python bench/generate.py [--repeats 3] [--hf-repeats 2] [--skip-hf]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import fmt_times, median, time_calls  # noqa: E402
from musc_jax import generate as gen  # noqa: E402
from musc_jax.models import ModelConfig, init_model, save_pretrained  # noqa: E402

BATCH, PROMPT, NEW = 16, 64, 128
TOP_P, TEMPERATURE = 0.9, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of ours")
    parser.add_argument("--hf-repeats", type=int, default=2, help="timed calls of transformers")
    parser.add_argument("--skip-hf", action="store_true", help="time ours only")
    args = parser.parse_args()

    cfg = ModelConfig.preset("bench_32m")
    model = init_model(cfg, seed=0)
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (BATCH, PROMPT)).tolist()
    tokens = BATCH * NEW
    print(f"model bench_32m ({cfg.num_params() / 1e6:.1f}M params), batch {BATCH}, prompt {PROMPT}, "
          f"{NEW} new tokens, temperature {TEMPERATURE}, top-p {TOP_P}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores")

    seed = iter(range(1000))

    def ours():
        out = gen.generate(model, prompts, NEW, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
                           eos_token_id=None, seed=next(seed))
        assert out.tokens.shape == (BATCH, NEW) and np.all(out.lengths == NEW)

    traces = gen.TRACE_COUNTS["generate"]
    ours_times = time_calls(ours, args.repeats, warmup=1)
    assert gen.TRACE_COUNTS["generate"] == traces + 1, "generate recompiled between calls"
    ours_tok_s = tokens / median(ours_times)
    print(f"{'ours (musc_jax)':<22} {fmt_times(ours_times)}  {ours_tok_s:9.1f} new tok/s")

    hf_tok_s = float("nan")
    if not args.skip_hf:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count())
        with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
            save_pretrained(model, Path(tmp) / "model")
            hf = transformers.LlamaForCausalLM.from_pretrained(Path(tmp) / "model",
                                                               dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None   # no EOS: all NEW tokens on every row
        hf.generation_config.pad_token_id = 0
        ids = torch.tensor(prompts, dtype=torch.long)
        mask = torch.ones_like(ids)

        def theirs(n=NEW):
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                  temperature=TEMPERATURE, top_p=TOP_P, top_k=0, max_new_tokens=n)
            assert out.shape == (BATCH, PROMPT + n)

        theirs(8)  # warm-up
        hf_times = time_calls(theirs, args.hf_repeats, warmup=0)
        hf_tok_s = tokens / median(hf_times)
        print(f"{'transformers (torch)':<22} {fmt_times(hf_times)}  {hf_tok_s:9.1f} new tok/s  "
              f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")

    speedup = ours_tok_s / hf_tok_s
    print(f"generate: ours_tok_s={ours_tok_s:.1f} hf_tok_s={hf_tok_s:.1f} speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
