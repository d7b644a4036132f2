"""python -m musc_jax.train --config configs/<x>.py [--config.a.b=value ...]

Trains as the config says. A config with a `pipeline` section (the microworld configs) runs the
whole recipe: build pairs with the model, train, evaluate before and after, write a report.
"""

from __future__ import annotations

import json
import logging

import jax

from musc_jax.cli import define_config_flag, main_with_config

_CONFIG = define_config_flag()


def _body(config) -> None:
    if "pipeline" in config:
        from musc_jax.pipeline import run_pipeline
        run_pipeline(config)
        return
    from musc_jax.trainer import run
    metrics = run(config)
    if jax.process_index() == 0:
        logging.getLogger("musc_jax.train").info("final metrics: %s", json.dumps(metrics))


if __name__ == "__main__":
    main_with_config(_CONFIG, _body)
