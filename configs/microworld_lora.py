"""The microworld default (configs/microworld.py) with LoRA instead of full fine-tuning.

    python -m musc_jax.train --config configs/microworld_lora.py [--config.workdir=DIR]
        [--config.pipeline.pairs=RUN/build/pairs]   # train on the pairs of a full-FT run

Everything but the trained parameters and the learning rate is the default MuSC run: the same
seeds, pairs recipe, loss, schedule, batch and epochs. LoRA as in the MuSC paper's released
recipe: adapters on all seven linear maps of every layer, the reference = the base model with the
adapter off (musc_jax.models.lora). Rank 16, alpha 32 and the learning rate 10x full fine-tuning's
(1e-3 vs 1e-4) are the "LoRA Without Regret" defaults (Schulman et al., Thinking Machines 2025:
alpha 32 with the 1/r scale, optimal LoRA learning rate ~10x full fine-tuning's), not tuned on the
held-out evaluation. Result of seed 0: docs/results/microworld_lora_seed0/.
"""

from musc_jax.config import config_module

_mw = config_module(__file__, "microworld.py")


def get_config():
    c = _mw.get_config()
    c.workdir = "runs/microworld_lora"
    c.pipeline.recipe = "musc_lora"
    c.model.lora.rank = 16
    c.model.lora.alpha = 32.0
    c.model.lora.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    c.optim.lr = 1e-3
    return c
