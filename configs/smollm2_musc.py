"""The main job on a real model: MuSC on SmolLM2-135M-Instruct, end to end on a CPU.

    bash scripts/setup.sh        # converts the model into .models/smollm2-135m-instruct once
    python -m musc_jax.train --config configs/smollm2_musc.py [--config.workdir=DIR]

SmolLM2 builds its own MuSC pairs and is trained on them; nothing stronger is used:

1. eval before: greedy answers to the 120 prompts of ../shared/data/ifeval_dev.jsonl (chat
   template applied, up to `eval.max_new_tokens`), IFEval strict and loose, prompt and
   instruction level.
2. seeds: `build.data.num_seeds` instructions from `musc_jax.data.instructions` (our task stems
   x 1-4 IFEval-type constraints, none from IFEval). They are generated with typed constraints,
   so the decomposition is known (`musc.decomposer="given"`).
3. pairs: x' corrupts ~30% of the constraints (drop / negate / substitute, at least one), x and
   x' composed with the same templates; y+ = pi(x), y- = pi(x') sampled by SmolLM2 at
   temperature 0.7; `musc.negativity_filter="none"` keeps every pair (the paper; no checker);
   static KL token weights from SmolLM2 itself.
4. training: sequence DPO + the token-weighted term (a_seq = a_tok = 1, beta 0.1), reference
   log-probs precomputed once (`reference.mode="precompute"`: one forward pass per pair instead
   of one per pair and epoch, and no second copy of the weights in memory).
5. eval after, then `report.md`, `report.png`, eval_before/after.json and the trained model as
   an HF directory (`<workdir>/export`, loads in transformers) in the work dir.

Sizes, chosen to fit 90 minutes on 2 CPU cores with nothing else running. Budget, counting
2 * 135M FLOPs per token forward and 6 * 135M forward + backward at ~80 GFLOP/s, and
generation at ~70 tokens/s (the issue measured ~36/s with other jobs running):
  eval before + after   2 x 120 ifeval_dev answers of up to 320 tokens        ~18 min
  responses             128 seeds -> 256 answers of up to 192 tokens          ~12 min
  KL token weights      4 forward passes per pair (y+, y- under x and x')     ~8 min
  reference log-probs   precomputed once (2 forward passes per pair)          ~4 min
  training              128 pairs x 2 epochs, batches of 8 (4 microbatches    ~23 min
                        of 2 pairs, for memory), lr 5e-6 cosine, 3 warm-up
plus model loads and compilation: about 70 minutes. Pairs are at most 512 tokens (prompt at
most 256; longer ones are skipped and counted). Measured on the 2 cores with nothing else
running (seed 0, docs/results/smollm2_default_seed0): 75 minutes in all; eval 511 s before and
410 s after, pairs with KL weights 1,334 s, reference log-probs 5.6 min and 32 training steps
of median 54 s (2,249 s together); peak RSS 12.9 GB.

Variants (`--config.` overrides; scripts/smollm2_experiments.py runs them all):
  build.pairs.method=random            random pairs (two samples, coin flip), with loss.a_tok=0
  build.pairs.method=self_reward       self-rewarding (4 samples, self-judged), with loss.a_tok=0
  build.musc.negativity_filter=self    keep pairs the policy itself judges negative (signal: self)
  build.musc.negativity_filter=checker keep pairs the if-verifiable checker finds negative
                                       (signal: checker, the metric's own oracle; labelled so)
  loss.a_tok=0                         sequence-level DPO only (no token-weighted term)
"""

from pathlib import Path

from ml_collections import ConfigDict

import musc_jax.data.instructions  # noqa: F401  (registers the "instructions" seed source)
from musc_jax.config import config_module
from musc_jax.data.builders.run import base_pairs_config

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / ".models" / "smollm2-135m-instruct"
IFEVAL_DEV = REPO.parent / "shared" / "data" / "ifeval_dev.jsonl"


def smollm2_config(recipe: str = "musc") -> ConfigDict:
    """The pipeline config for SmolLM2 (see the module doc); `recipe` names the run."""
    c = config_module(__file__, "microworld.py").pipeline_config(recipe)
    c.workdir = f"runs/smollm2_{recipe}"
    c.model.path = str(MODEL_DIR)
    c.model.param_dtype = "float32"    # CPU; a DPO update (lr 5e-6) is below bfloat16's resolution
    c.data.max_length = 512
    c.data.max_prompt_length = 256
    c.data.truncation = "skip"
    c.train.batch_size = 8
    c.optim.grad_accum = 4
    c.train.epochs = 2
    c.optim.lr = 5e-6
    c.optim.warmup_steps = 3
    c.reference.mode = "precompute"
    c.pipeline.generate_batch = 64
    c.pipeline.title = f"SmolLM2-135M-Instruct: {recipe}"
    c.eval.data = str(IFEVAL_DEV)
    c.eval.max_new_tokens = 320
    c.eval.batch_size = 40
    c.eval.limit = 0

    b = base_pairs_config("musc")
    b.model.path = str(MODEL_DIR)
    b.model.param_dtype = "float32"
    b.data.source = "instructions"
    b.data.num_seeds = 128
    b.data.levels = (1, 2, 3, 4)          # constraints per instruction, cycled
    b.pairs.shard_size = 32
    b.pairs.progress = False
    b.musc.decomposer = "given"
    b.musc.min_constraints = 1
    b.musc.negativity_filter = "none"
    b.musc.temperature = 0.7
    b.musc.max_new_tokens = 192
    b.weights.kind = "kl"
    b.weights.batch_size = 8
    b.weights.max_length = 512
    b.weights.max_prompt_length = 256
    # The baselines' sections, with the same response budget as MuSC's y+ / y-.
    b.random = ConfigDict(dict(temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=192))
    b.self_reward = ConfigDict(dict(samples=4, temperature=0.7, top_p=1.0, top_k=0,
                                    max_new_tokens=192, judge="self", judge_votes=3,
                                    judge_temperature=0.7, judge_max_new_tokens=48))
    c.build = b
    return c


def get_config():
    c = smollm2_config("musc")
    c.loss.a_seq = 1.0
    c.loss.a_tok = 1.0
    c.weights.source = "dataset"
    return c
