"""MuSC on Qwen2-7B(-Instruct): sequence DPO + token-weighted term (a_seq = 1, a_tok = 1).

    python -m musc_jax.train --config configs/qwen2_7b_musc.py            # TPU v5p-64 (default)
    python -m musc_jax.train --config configs/qwen2_7b_musc.py:h100x8     # one 8xH100 node
    python -m musc_jax.plan --config configs/qwen2_7b_musc.py[:h100x8]    # memory check first

Set the model directory (--config.model.path or MUSC_MODEL_PATH) and the dataset:
MuSC pairs with token weights (musc_jax.pairs)
(--config.data.train or MUSC_TRAIN_DATA). Hardware presets, dtypes, remat, reference precompute,
batch and sequence lengths are shared with configs/llama3_8b_musc.py and documented there.
"""

from musc_jax.config import config_module


def get_config(hardware: str = "v5p64"):
    return config_module(__file__, "llama3_8b_musc.py").scale_out_config("qwen2_7b", "musc", hardware)
