"""Preference training on an existing pairs dataset (any recipe's output, or TRL-format data).

    python -m musc_jax.train --config configs/dpo.py \
        --config.model.path=/path/to/hf_model --config.data.train=/path/to/pairs \
        --config.workdir=runs/dpo

Defaults: MuSC loss (sequence DPO + token-weighted term) when the pairs carry token weights;
set --config.loss.a_tok=0 for plain DPO on pairs without weights.
"""

from musc_jax.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/dpo"
    c.train.batch_size = 8
    c.optim.lr = 5e-7
    c.optim.warmup_steps = 10
    return c
