"""ECD evolution-chain pairs on the microworld (DESIGN 5.4), built by the base model itself.

    python -m musc_jax.pairs --config configs/pairs_ecd.py [--config.ecd.evolver=policy]

Keys (defaults in musc_jax.data.builders.run.base_pairs_config, the microworld's in
musc_jax.microworld.plugin.pairs_config):
  ecd.evolver               "rule" (taxonomy: add a compatible constraint or tighten a bound) |
                            "policy" (the policy rewrites the instruction) | "teacher" (a separate
                            model at teacher.path)
  ecd.rounds                K evolution attempts per chain (a rejected step keeps the chain's state)
  ecd.p_tighten / types     rule evolver: chance to tighten; "microworld" | "ifeval" | "all" | ids
  ecd.decomposer            "given" (seed's typed constraints, else rule) | "rule"
  ecd.start_samples / answer_samples / temperature / top_p / top_k / max_new_tokens
  ecd.checker               "verifier" (typed constraints); a judge is passed to build_pairs
  ecd.require_negative / keep_unverifiable / drop_identical
  weights.kind              "kl" uses x' = x_{k-1}; "diff" (edit spans) suits minimal-edit pairs
  seed, model.*, data.*, pairs.*, weights.*  as in configs/pairs_musc.py
"""

from musc_jax.microworld.plugin import pairs_config


def get_config():
    c = pairs_config("ecd")
    c.data.num_seeds = 48
    c.data.levels = (1, 2, 3)         # room to evolve: chains grow by one constraint per step
    c.pairs.shard_size = 16
    c.ecd.evolver = "rule"
    c.ecd.rounds = 3
    c.ecd.max_new_tokens = 128
    c.weights.kind = "kl"
    c.weights.batch_size = 16
    return c
