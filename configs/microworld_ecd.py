"""ECD on the microworld: evolution chains with hard negatives, trained with sequence DPO.

    python -m musc_jax.train --config configs/microworld_ecd.py

Chains start from (x0, y0) with y0 a response of the base model that the verifier accepts; each
of K=3 rounds adds or tightens one constraint with the rule evolver, answers with the base
model, and keeps the step when the verifier accepts the answer. Each accepted step gives the
pair (x_k, chosen y_k, rejected y_{k-1}). Loss: a_seq=1, a_tok=0.
"""

from musc_jax.config import config_module
from musc_jax.microworld.plugin import pairs_config

_mw = config_module(__file__, "microworld.py")


def get_config():
    c = _mw.pipeline_config("ecd")
    c.loss.a_seq, c.loss.a_tok, c.loss.sft_weight = 1.0, 0.0, 0.0
    c.build = pairs_config("ecd")
    c.build.data.num_seeds = 480
    c.build.data.levels = (1, 2, 3, 4)   # room to evolve: chains grow by one constraint per step
    c.build.pairs.shard_size = 96
    c.build.pairs.progress = False
    c.build.ecd.evolver = "rule"
    c.build.ecd.rounds = 3
    c.build.ecd.max_new_tokens = 160
    c.build.weights.kind = "none"
    return c
