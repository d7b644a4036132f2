"""python -m musc_jax.pairs --config configs/pairs_musc.py [--config.a.b=value ...]

Builds a pairs dataset only (no training): loads the seeds, runs the method's builder with the
policy, computes token weights and writes resumable shards plus stats.json
(`musc_jax.data.builders.run.build_pairs`). Rerunning the same command resumes: finished shards
are skipped.
"""

from __future__ import annotations

import json
import logging

from musc_jax.cli import define_config_flag, main_with_config

_CONFIG = define_config_flag()


def _body(config) -> None:
    from musc_jax.data.builders.run import build_pairs

    result = build_pairs(config)
    s = result.stats
    logging.getLogger("musc_jax.pairs").info(
        "wrote %d pairs to %s (shards: %s); stats in %s", s["pairs"], result.pairs_dir,
        json.dumps(s["shards"]), result.out_dir / "stats.json")


if __name__ == "__main__":
    main_with_config(_CONFIG, _body)
