"""The default run: MuSC on the microworld, end to end on a CPU (DESIGN 8).

    python -m musc_jax.train --config configs/microworld.py [--config.workdir=DIR]

Loads the shipped base model, evaluates it on the held-out instructions, builds MuSC pairs with
it (x from typed microworld seeds, x' by corrupting 30% of the constraints, y+ = pi(x),
y- = pi(x'), static KL token weights from the base model), keeps the pairs whose y- breaks a
corrupted constraint that y+ follows and where y+ breaks no shared constraint that y- follows
(about 230 of 960), trains with sequence DPO + the token-weighted term for 3 epochs, evaluates
again, and writes report.md, report.png, eval_before.json and eval_after.json into the work dir.

Variants (all `--config.` overrides): loss.a_seq=0 (MuSC "as released": token term only),
weights.source=uniform (coarse only), weights.source=dynamic (dynamic token weights),
build.pairs.method=random|self_reward (baselines), pipeline.recipe=... for the report title.
"""

from ml_collections import ConfigDict

from musc_jax.config import base_config
from musc_jax.data.builders.run import base_pairs_config
from musc_jax.eval import eval_config


def pipeline_config(recipe: str) -> ConfigDict:
    c = base_config()
    c.workdir = f"runs/microworld_{recipe}"
    c.model.path = ""                 # "" = the shipped microworld base model
    c.data.train = "<built by the pipeline>"
    c.data.max_length = 384
    c.data.max_prompt_length = 320
    c.data.truncation = "skip"
    c.train.batch_size = 16
    c.train.epochs = 2
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 5
    c.optim.schedule = "cosine"
    c.checkpoint.every = 0
    c.reference.mode = "online"
    c.pipeline = ConfigDict(dict(
        recipe=recipe,
        iterations=1,
        eval_before=True,
        eval_after=True,
        generate_batch=96,
        train_refiner=False,
        refiner_epochs=1,
        refiner_lr=1e-4,
        eval_each_iteration=True,     # with iterations > 1: eval_iteration_<k>.json after each
        pairs="",                     # a pairs dir built before: skip the build, train on it
    ))
    c.eval = eval_config()
    c.eval.max_new_tokens = 160
    c.eval.batch_size = 100
    c.eval.per_item = True
    c.eval.limit = 0                  # 0 = all 300 held-out instructions
    c.build = base_pairs_config("musc")
    c.build.data.num_seeds = 960
    c.build.data.levels = (2, 3, 4, 5)
    c.build.pairs.shard_size = 192
    c.build.pairs.progress = False
    c.build.musc.decomposer = "given"
    c.build.musc.negativity_filter = True   # keep pairs whose y- violates a corrupted constraint y+ keeps
    c.build.musc.shared_filter = True       # ... and drop those where y- follows a kept one y+ breaks
    c.build.musc.max_new_tokens = 160
    c.build.weights.kind = "kl"
    c.build.weights.batch_size = 32
    return c


def get_config():
    c = pipeline_config("musc")
    c.loss.a_seq = 1.0
    c.loss.a_tok = 1.0
    c.weights.source = "dataset"
    c.train.epochs = 3   # the two filters keep ~230 pairs: 3 epochs give ~45 steps, as other recipes get
    return c
