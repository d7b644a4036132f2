"""MuSC pairs on the microworld (DESIGN 5.1, 5.2), built by the microworld base model itself.

    python -m musc_jax.pairs --config configs/pairs_musc.py [--config.pairs.out_dir=runs/x]

Keys (defaults in musc_jax.data.builders.run.base_pairs_config, the microworld's in
musc_jax.microworld.plugin.pairs_config):
  seed                      fixes every random choice (per shard: seed + shard index)
  model.path / tokenizer    the policy, which is also the reference for token weights
  model.param_dtype / batch_size
  data.source               "microworld" | "jsonl" (prompt field, optional IFEval
                            instruction_id_list/kwargs) | "hf" (local HF dataset)
  data.path / prompt_field / split / on_error ("error" | "skip") / num_seeds / levels / world_seed
  pairs.method / out_dir / shard_size / round / progress
  musc.*                    MuscConfig: decomposer (rule | self | given), min_constraints,
                            corrupt_rate, p_drop / p_negate / p_substitute, composer (template |
                            self), compose_style, temperature (0.5), top_p, top_k, max_new_tokens,
                            negativity_filter, shared_filter, keep_unverifiable, drop_identical, ...
  weights.*                 kind (kl | bikl | prob_diff | diff | uniform | none), w_max, w_hi, w_lo,
                            ref_logps, batch_size, chunk, max_length, max_prompt_length, bucket
  ecd.*, teacher.path       used when pairs.method="ecd" (see configs/pairs_ecd.py)
"""

from musc_jax.microworld.plugin import pairs_config


def get_config():
    c = pairs_config("musc")
    c.data.num_seeds = 64
    c.data.levels = (2, 3, 4, 5)      # MuSC needs >= 2 constraints besides the task
    c.pairs.shard_size = 16
    c.musc.decomposer = "given"       # microworld seeds carry their typed constraints
    c.musc.max_new_tokens = 128
    c.weights.kind = "kl"
    c.weights.batch_size = 16
    return c
