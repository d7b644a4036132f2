"""Shared start-up of the command-line entries: config flag, logging, multi-process runtime, and
how a user's mistake is reported (one message, non-zero exit, no traceback unless asked for).

Every entry (train, sft, pairs, eval, export, plan) parses its flags with `parse_flags` and runs its
body under `report_user_errors`: an unknown config key, a missing config file, a bad value or a
`musc_jax.errors.UserError` raised later prints `<program>: error: <message>` on stderr and exits
with status 2 (flags) or 1 (the run). `--debug` or the environment variable MUSC_DEBUG=1 lets the
exception through with its full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from absl import app, flags
from ml_collections import ConfigDict, config_flags

DEBUG_ENV = "MUSC_DEBUG"
EXIT_RUN, EXIT_FLAGS = 1, 2


def define_config_flag() -> flags.FlagHolder:
    """`--config path.py` (a file with get_config()) plus `--config.a.b=value` overrides, and
    `--debug`."""
    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, f"Show the full traceback of an error (also: {DEBUG_ENV}=1).")
    return config_flags.DEFINE_config_file(
        "config", None, "Path to an ml_collections config file with get_config().",
        lock_config=True)


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """--debug on the command line (read before flags parse, so a parse error can honour it) or
    MUSC_DEBUG set to anything but ''/0."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def program_name() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def fail(message: str, code: int = EXIT_RUN) -> NoReturn:
    """Print one error message (no traceback) and exit with `code`."""
    print(f"{program_name()}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _config_spec(argv: Sequence[str]) -> str | None:
    """The value of --config (`file.py` or `file.py:arg`) in argv, if given."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _override_keys(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(dotted key, the argument as written) for every --config.a.b[=v] in argv."""
    out = []
    for a in argv:
        if a.startswith("--config."):
            out.append((a[len("--config."):].split("=", 1)[0], a))
        elif a.startswith("--noconfig."):   # absl's spelling of a false boolean
            out.append((a[len("--noconfig."):], a))
    return out


def explain_flag_error(argv: Sequence[str], error: BaseException) -> str:
    """One message for a flag-parsing failure: a missing or broken config file, an unknown config
    key (with the nearest valid keys), or absl's own message (bad value, unknown flag)."""
    from musc_jax import config as config_lib

    spec = _config_spec(argv)
    if spec is not None:
        file = spec.split(":", 1)[0]
        if not Path(file).is_file():
            return (f"--config {spec}: config file {file!r} not found (cwd: {os.getcwd()}); "
                    "give a path to a .py file with get_config(), e.g. configs/dpo.py")
        try:
            base = config_lib.read_config_file(spec)
        except Exception as e:  # the file itself is broken: say how (ml_collections embeds a
            # whole traceback in its message; its last line is the cause)
            lines = [x for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
            return f"--config {spec}: the config file failed to load: {lines[-1].strip()}"
        for key, written in _override_keys(argv):
            problem = config_lib.unknown_key_message(base, key)
            if problem:
                return f"{written}: {problem}"
    if isinstance(error, flags.Error):
        return str(error)
    return f"{type(error).__name__}: {error}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flags parser for `app.run(..., flags_parser=parse_flags)` with one-line errors."""
    try:
        rest = flags.FLAGS(argv)
        spec = _config_spec(argv)
        # ml_collections defers a missing config file's error to the first use of the config.
        if spec is not None and not Path(spec.split(":", 1)[0]).is_file():
            raise FileNotFoundError(spec)
        return rest
    except Exception as e:  # noqa: BLE001 - every parse failure becomes one message
        if debug_requested(argv):
            raise
        fail(explain_flag_error(argv, e), EXIT_FLAGS)


def report_user_errors(body: Callable[[], object]) -> object:
    """Run `body()`; a user error becomes one message and exit status 1 (unless debugging)."""
    from musc_jax.errors import user_error_types

    try:
        return body()
    except user_error_types() as e:
        if debug_requested(sys.argv):
            raise
        fail(str(e), EXIT_RUN)


def leave_group(error: BaseException) -> NoReturn:
    """Report `error` and end this process of a multi-process run at once.

    A normal exit would wait in jax's shutdown barrier while the other processes wait for this one
    in their next collective, so the whole job would hang (and the launcher only stops the others
    once a process has exited). `os._exit` skips both; the message is printed first.
    """
    import traceback

    from musc_jax.errors import user_error_types

    if isinstance(error, user_error_types()) and not debug_requested(sys.argv):
        print(f"{program_name()}: error: {error}", file=sys.stderr)
    else:
        traceback.print_exception(error, file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(EXIT_RUN)


def run_app(main: Callable[[list[str]], object]) -> None:
    """`app.run(main)` with one-line errors for bad flags and user errors."""
    app.run(lambda argv: report_user_errors(lambda: main(argv)), flags_parser=parse_flags)


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
        if not maybe_initialize(config):
            body(config)
            return
        try:
            body(config)
        except Exception as e:  # noqa: BLE001 - reported below, then the process leaves
            leave_group(e)

    run_app(_main)
