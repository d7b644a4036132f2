#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with the package and its
# test extra (torch is installed first and pinned so that pip takes the CPU build), and the
# SmolLM2-135M-Instruct model converted into .models/ (scripts/get_smollm2.sh; SKIP_SMOLLM2=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# The real instruct model of the SmolLM2 tests and configs (a few minutes the first time only).
if [ -z "${SKIP_SMOLLM2:-}" ]; then
  bash scripts/get_smollm2.sh
fi
