"""MuSC on the microworld with one model in every role (issue 13 item 2).

    python -m musc_jax.train --config configs/microworld_one_model.py

The policy decomposes each seed (zero-shot, the prompt its corpus teaches), corrupts (typed
constraints by rule, free-text ones negated / substituted by the policy), composes x and x'
(from the task and constraint sentences; a composition that loses any constraint, free text
included, falls back to the template text and is counted) and responds. stats.json "roles"
counts how often each role's output parsed. The shipped base model (rebuilt in b89183e) was
trained on the corpus that teaches every one of these prompts (configs/microworld_sft.py).
"""

from musc_jax.config import config_module

_mw = config_module(__file__, "microworld.py")


def get_config():
    c = _mw.one_model(_mw.get_config())
    c.pipeline.recipe = "musc_one_model"
    return c
