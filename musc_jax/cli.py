"""Shared start-up of the command-line entries: config flag, logging, multi-process runtime."""

from __future__ import annotations

import logging
from typing import Callable

from absl import app, flags
from ml_collections import ConfigDict, config_flags


def define_config_flag() -> flags.FlagHolder:
    """`--config path.py` (a file with get_config()) plus `--config.a.b=value` overrides."""
    return config_flags.DEFINE_config_file(
        "config", None, "Path to an ml_collections config file with get_config().",
        lock_config=True)


def main_with_config(holder: flags.FlagHolder, body: Callable[[ConfigDict], object]) -> None:
    """Run `body(config)` as an absl program, after logging and jax.distributed set-up."""

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if holder.value is None:
            raise app.UsageError("--config is required, e.g. --config configs/microworld.py")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        for noisy in ("absl", "jax._src", "orbax", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        config = holder.value
        from musc_jax.distributed import maybe_initialize
        maybe_initialize(config)
        body(config)

    app.run(_main)
