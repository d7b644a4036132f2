"""ECD on Llama-3-8B(-Instruct): plain sequence DPO on evolution-chain pairs (a_seq = 1, a_tok = 0).

    python -m musc_jax.train --config configs/llama3_8b_ecd.py            # TPU v5p-64 (default)
    python -m musc_jax.train --config configs/llama3_8b_ecd.py:h100x8     # one 8xH100 node
    python -m musc_jax.plan --config configs/llama3_8b_ecd.py[:h100x8]    # memory check first

Set the model directory (--config.model.path or MUSC_MODEL_PATH) and the dataset:
ECD pairs built by musc_jax.pairs (no token weights needed)
(--config.data.train or MUSC_TRAIN_DATA). Hardware presets, dtypes, remat, reference precompute,
batch and sequence lengths are shared with configs/llama3_8b_musc.py and documented there.
"""

import importlib.util
from pathlib import Path


def _scale_out():
    path = Path(__file__).with_name("llama3_8b_musc.py")
    spec = importlib.util.spec_from_file_location("musc_scale_out_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scale_out_config


def get_config(hardware: str = "v5p64"):
    return _scale_out()("llama3_8b", "ecd", hardware)
