"""python -m musc_jax.sft --config configs/<x>.py: supervised fine-tuning on (prompt, response) rows.

The same trainer as `musc_jax.train`, with `objective="sft"`: the loss is the token-mean negative
log-likelihood of the responses under the model's chat template.
"""

from __future__ import annotations

import json
import logging

import jax

from musc_jax.cli import define_config_flag, main_with_config

_CONFIG = define_config_flag()


def _body(config) -> None:
    if "sft_pipeline" in config:
        from musc_jax.microworld.build import build_base_model
        build_base_model(config)
        return
    from musc_jax.trainer import run_sft
    metrics = run_sft(config)
    if jax.process_index() == 0:
        logging.getLogger("musc_jax.sft").info("final metrics: %s", json.dumps(metrics))


if __name__ == "__main__":
    main_with_config(_CONFIG, _body)
