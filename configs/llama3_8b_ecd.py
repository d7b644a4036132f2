"""ECD on Llama-3-8B(-Instruct): plain sequence DPO on evolution-chain pairs (a_seq = 1, a_tok = 0).

    python -m musc_jax.train --config configs/llama3_8b_ecd.py            # TPU v5p-64 (default)
    python -m musc_jax.train --config configs/llama3_8b_ecd.py:h100x8     # one 8xH100 node
    python -m musc_jax.plan --config configs/llama3_8b_ecd.py[:h100x8]    # memory check first

Set the model directory (--config.model.path or MUSC_MODEL_PATH) and the dataset:
ECD pairs built by musc_jax.pairs (no token weights needed)
(--config.data.train or MUSC_TRAIN_DATA). Hardware presets, dtypes, remat, reference precompute,
batch and sequence lengths are shared with configs/llama3_8b_musc.py and documented there.
"""

from musc_jax.config import config_module


def get_config(hardware: str = "v5p64"):
    return config_module(__file__, "llama3_8b_musc.py").scale_out_config("llama3_8b", "ecd", hardware)
