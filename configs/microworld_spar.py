"""SPaR on the microworld: self-play with tree-search refinement, three iterations.

    python -m musc_jax.train --config configs/microworld_spar.py

Per iteration the actor samples 5 responses per prompt, the model itself judges each 5 times
(majority, ties dropped), one failed response per prompt is refined by breadth-first tree
search (3 refinements per node, best 2 kept per level, depth <= 3, stop at the first child with
V > 0.5), and the actor trains with DPO + 0.1 SFT on (refined, root) pairs against itself at
the start of the iteration; the refiner trains by SFT on the iteration's refinement traces and
contested judgements (`pipeline.train_refiner=False`: actor and refiner share weights). The judge
writes a short critique before its verdict. `--config.build.spar.judge=verifier` makes the judge
the programmatic verifier (signal "checker", a labelled row).
"""

from ml_collections import ConfigDict

from musc_jax.config import config_module

_mw = config_module(__file__, "microworld.py")


def get_config():
    c = _mw.pipeline_config("spar")
    c.loss.a_seq, c.loss.a_tok, c.loss.sft_weight = 1.0, 0.0, 0.1
    c.pipeline.iterations = 3
    c.build.pairs.method = "spar"
    c.build.data.num_seeds = 160
    c.build.data.levels = (2, 3, 4, 5)
    c.build.pairs.shard_size = 80
    c.build.weights.kind = "none"
    c.build.spar = ConfigDict(dict(
        samples=5, actor_temperature=0.9, actor_top_p=0.9, actor_top_k=0, max_new_tokens=160,
        judge="self", judge_votes=5, judge_temperature=0.7, judge_max_new_tokens=64,
        judge_critique=True,
        branch=3, keep=2, max_depth=3, gate=0.5, search="bfs", budget=0,
        refine_temperature=0.7, refine_top_p=1.0, refine_sft="last", contested_sft=True,
        max_refine_sft=0, max_judge_sft=0,
    ))
    c.pipeline.train_refiner = True   # DESIGN 5.5: the refiner trains by SFT each iteration
    return c
